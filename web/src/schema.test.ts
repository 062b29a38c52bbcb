import { describe, expect, it } from 'vitest';
import { fields, parse, range, toParams } from './schema';

// The shape schemars gives `train`'s params (trimmed).
const train = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  properties: {
    target: { type: 'string', minLength: 1, description: 'The column to predict.' },
    kind: { anyOf: [{ $ref: '#/$defs/ProblemKind' }, { type: 'null' }], default: null },
    epochs: { type: 'integer', format: 'uint32', minimum: 1, maximum: 1000, default: 20 },
    learning_rate: { type: 'number', format: 'double', exclusiveMinimum: 0, maximum: 1, default: 0.01 },
    hidden: { type: 'array', items: { type: 'integer', minimum: 1, maximum: 1024 }, maxItems: 8, default: [64, 64] },
    features: { type: ['array', 'null'], items: { type: 'string' }, minItems: 1 },
    model: { type: 'string', 'x-mlq-model': true },
  },
  required: ['target'],
  additionalProperties: false,
  $defs: { ProblemKind: { type: 'string', enum: ['classification', 'regression'] } },
};

describe('schema forms', () => {
  const specs = fields(train);
  const byName = Object.fromEntries(specs.map((f) => [f.name, f]));

  it('reads fields, kinds, defaults and bounds', () => {
    expect(specs.map((f) => [f.name, f.kind])).toEqual([
      ['target', 'string'],
      ['kind', 'enum'],
      ['epochs', 'integer'],
      ['learning_rate', 'number'],
      ['hidden', 'integers'],
      ['features', 'strings'],
      ['model', 'model'],
    ]);
    expect(byName.kind.options).toEqual(['classification', 'regression']);
    expect(byName.epochs.default).toBe('20');
    expect(byName.hidden.default).toBe('64, 64');
    expect(range(byName.epochs)).toBe('[1, 1000]');
    expect(range(byName.learning_rate)).toBe('(0, 1]');
    expect(byName.target.required).toBe(true);
    expect(byName.epochs.required).toBe(false);
  });

  it('checks values as the server does', () => {
    expect(parse(byName.epochs, '1000')).toEqual({ value: 1000 });
    expect(parse(byName.epochs, '1001').error).toContain('[1, 1000]');
    expect(parse(byName.epochs, '2.5').error).toBe('a whole number');
    expect(parse(byName.learning_rate, '0').error).toContain('(0, 1]');
    expect(parse(byName.hidden, '8, 4')).toEqual({ value: [8, 4] });
    expect(parse(byName.hidden, '8, 0').error).toContain('[1, 1024]');
    expect(parse(byName.hidden, '1,2,3,4,5,6,7,8,9').error).toBe('at most 8 items');
    expect(parse(byName.kind, 'both').error).toContain('classification');
    expect(parse(byName.target, ' ').error).toBe('required');
    expect(parse(byName.epochs, '')).toEqual({});
  });

  it('builds params from what was given', () => {
    const { params, errors } = toParams(specs, { target: 'label', epochs: '5', hidden: '16', features: 'a, b' });
    expect(errors).toEqual({});
    expect(params).toEqual({ target: 'label', epochs: 5, hidden: [16], features: ['a', 'b'] });
    expect(Object.keys(toParams(specs, { epochs: '0' }).errors).sort()).toEqual(['epochs', 'target']);
  });
});
