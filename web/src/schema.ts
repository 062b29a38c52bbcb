// Forms from the commands' own descriptions: `GET /api/v1/commands` gives
// each command's params as JSON Schema, with ranges and defaults. The
// dashboard reads its fields, checks and defaults from there instead of
// repeating the server's limits.

export type JsonSchema = Record<string, unknown>;

export interface CommandInfo {
  name: string;
  summary: string;
  files: { min: number; max: number };
  content_types: string[];
  timeout_seconds: number;
  params: JsonSchema;
}

export type FieldKind = 'integer' | 'number' | 'string' | 'enum' | 'integers' | 'strings' | 'model' | 'boolean' | 'object';

export interface FieldSpec {
  name: string;
  kind: FieldKind;
  required: boolean;
  description?: string;
  /** As the text box shows it. */
  default?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  /** For lists: each item's bounds. */
  item?: FieldSpec;
  options?: string[];
  /** The kind of input file the param applies to (`csv`, `zip`), when it
   * applies to one only (`x-mlq-input`). */
  input?: string;
}

/** A schema with `$ref`s to `$defs` followed and nullable wrappers removed. */
function resolve(schema: JsonSchema, defs: Record<string, JsonSchema>): JsonSchema {
  const ref = schema.$ref as string | undefined;
  if (ref?.startsWith('#/$defs/')) {
    const def = defs[ref.slice('#/$defs/'.length)];
    if (def) return { ...resolve(def, defs), ...withoutRef(schema) };
  }
  const branches = (schema.anyOf ?? schema.oneOf) as JsonSchema[] | undefined;
  if (branches) {
    const real = branches.filter((b) => b.type !== 'null');
    if (real.length === 1) return { ...resolve(real[0], defs), ...withoutBranches(schema) };
    // A choice of constants (a documented enum).
    const consts = real.map((b) => b.const).filter((c): c is string => typeof c === 'string');
    if (consts.length === real.length) return { type: 'string', enum: consts, ...withoutBranches(schema) };
  }
  return schema;
}

function withoutRef(s: JsonSchema): JsonSchema {
  const { $ref: _ref, ...rest } = s;
  return rest;
}

function withoutBranches(s: JsonSchema): JsonSchema {
  const { anyOf: _a, oneOf: _o, ...rest } = s;
  return rest;
}

function types(s: JsonSchema): string[] {
  const t = s.type;
  return (Array.isArray(t) ? t : t ? [t] : []).filter((x) => x !== 'null') as string[];
}

function kindOf(s: JsonSchema, defs: Record<string, JsonSchema>): FieldKind {
  if (s['x-mlq-model']) return 'model';
  if (Array.isArray(s.enum)) return 'enum';
  const t = types(s);
  if (t.includes('array')) {
    const item = resolve((s.items ?? {}) as JsonSchema, defs);
    return types(item).includes('integer') || types(item).includes('number') ? 'integers' : 'strings';
  }
  if (t.includes('integer')) return 'integer';
  if (t.includes('number')) return 'number';
  if (t.includes('boolean')) return 'boolean';
  if (t.includes('string')) return 'string';
  return 'object';
}

function show(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.join(', ');
  return String(value);
}

function spec(name: string, raw: JsonSchema, required: boolean, defs: Record<string, JsonSchema>): FieldSpec {
  const s = resolve(raw, defs);
  const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : undefined);
  const kind = kindOf(s, defs);
  const field: FieldSpec = {
    name,
    kind,
    required,
    description: s.description as string | undefined,
    default: show(s.default),
    minimum: num('minimum'),
    maximum: num('maximum'),
    exclusiveMinimum: num('exclusiveMinimum'),
    exclusiveMaximum: num('exclusiveMaximum'),
    minLength: num('minLength'),
    maxLength: num('maxLength'),
    minItems: num('minItems'),
    maxItems: num('maxItems'),
    options: Array.isArray(s.enum) ? (s.enum as string[]) : undefined,
    input: typeof s['x-mlq-input'] === 'string' ? (s['x-mlq-input'] as string) : undefined,
  };
  if (kind === 'integers' || kind === 'strings') field.item = spec('item', (s.items ?? {}) as JsonSchema, true, defs);
  return field;
}

/** The fields of a params schema, in the schema's order. */
export function fields(schema: JsonSchema): FieldSpec[] {
  const defs = (schema.$defs ?? {}) as Record<string, JsonSchema>;
  const props = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  return Object.entries(props).map(([name, s]) => spec(name, s, required.has(name), defs));
}

/** A bound as the server words it: `[1, 1000]`, `(0, 1]`. */
export function range(f: FieldSpec): string | undefined {
  const low = f.minimum !== undefined ? `[${f.minimum}` : f.exclusiveMinimum !== undefined ? `(${f.exclusiveMinimum}` : undefined;
  const high = f.maximum !== undefined ? `${f.maximum}]` : f.exclusiveMaximum !== undefined ? `${f.exclusiveMaximum})` : undefined;
  if (low && high) return `${low}, ${high}`;
  if (low) return `at least ${low.slice(1)}`;
  if (high) return `at most ${high.slice(0, -1)}`;
  return undefined;
}

function checkNumber(f: FieldSpec, v: number): string | undefined {
  if (!Number.isFinite(v)) return 'a number';
  if (f.kind === 'integer' && !Number.isInteger(v)) return 'a whole number';
  const out =
    (f.minimum !== undefined && v < f.minimum) ||
    (f.maximum !== undefined && v > f.maximum) ||
    (f.exclusiveMinimum !== undefined && v <= f.exclusiveMinimum) ||
    (f.exclusiveMaximum !== undefined && v >= f.exclusiveMaximum);
  return out ? `must be in ${range(f)}` : undefined;
}

/** One field's text as the value the server takes, or why not. Empty text
 * means "not given": the server's default applies. */
export function parse(f: FieldSpec, text: string): { value?: unknown; error?: string } {
  const t = text.trim();
  if (t === '') return f.required ? { error: 'required' } : {};
  switch (f.kind) {
    case 'integer':
    case 'number': {
      const v = Number(t);
      const error = checkNumber(f, v);
      return error ? { error } : { value: v };
    }
    case 'integers':
    case 'strings': {
      const items = t.split(',').map((s) => s.trim());
      if (f.maxItems !== undefined && items.length > f.maxItems) return { error: `at most ${f.maxItems} items` };
      if (f.minItems !== undefined && items.length < f.minItems) return { error: `at least ${f.minItems} items` };
      if (f.kind === 'strings') return { value: items };
      const values = items.map(Number);
      for (const v of values) {
        const error = f.item ? checkNumber(f.item, v) : Number.isFinite(v) ? undefined : 'numbers';
        if (error) return { error: `each ${error.replace('must be in', 'in')}` };
      }
      return { value: values };
    }
    case 'enum':
      return f.options?.includes(t) ? { value: t } : { error: `one of ${f.options?.join(', ')}` };
    case 'boolean':
      return { value: t === 'true' };
    case 'object':
      try {
        return { value: JSON.parse(t) };
      } catch {
        return { error: 'JSON' };
      }
    default:
      if (f.maxLength !== undefined && [...t].length > f.maxLength) return { error: `at most ${f.maxLength} characters` };
      return { value: t };
  }
}

/** Params from a form's texts: what was given, parsed, or the errors. */
export function toParams(specs: FieldSpec[], texts: Record<string, string>): { params: Record<string, unknown>; errors: Record<string, string> } {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const f of specs) {
    const { value, error } = parse(f, texts[f.name] ?? '');
    if (error) errors[f.name] = error;
    else if (value !== undefined) params[f.name] = value;
  }
  return { params, errors };
}
