// The API reference: mlq's own OpenAPI document (/api/v1/openapi.json),
// rendered by operation, grouped by tag. Written here rather than pulled
// in (Swagger UI and the like run inline scripts, which the CSP forbids).

import { useEffect, useState } from 'react';
import { api } from '../api';
import { ErrorMessage } from './Bits';

type Json = Record<string, unknown>;

export interface OpenApiDoc {
  openapi: string;
  info: { title: string; description?: string; version: string };
  tags?: { name: string; description?: string }[];
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Json>; responses?: Record<string, Json> };
}

interface Operation {
  summary?: string;
  description?: string;
  tags?: string[];
  security?: Json[];
  parameters?: { name: string; in: string; required?: boolean; description?: string; schema?: Json }[];
  requestBody?: { content: Record<string, { schema?: Json }> };
  responses: Record<string, Json>;
}

const METHODS = ['get', 'post', 'put', 'patch', 'delete'];

/** Follows a `$ref` within the document. */
function resolve(doc: OpenApiDoc, node: Json | undefined): Json | undefined {
  const ref = node?.$ref;
  if (typeof ref !== 'string') return node;
  const [, kind, name] = ref.replace('#/components/', '#/').split('/');
  const table = (doc.components as Record<string, Record<string, Json>> | undefined)?.[kind];
  return table?.[name];
}

/** A schema in a few words: `TaskView`, `string (uuid)`, `[ModelView]`. */
export function typeOf(schema: Json | undefined): string {
  if (!schema) return 'any';
  if (typeof schema.$ref === 'string') return schema.$ref.split('/').pop() ?? '?';
  const variants = (schema.oneOf ?? schema.anyOf) as Json[] | undefined;
  if (variants) return variants.filter((v) => v.type !== 'null').map(typeOf).join(' | ') || 'null';
  if (Array.isArray(schema.enum)) return schema.enum.map((v) => JSON.stringify(v)).join(' | ');
  const types = ([] as unknown[]).concat(schema.type ?? []).filter((t) => t !== 'null') as string[];
  if (types.includes('array')) return `[${typeOf(schema.items as Json | undefined)}]`;
  const base = types.join(' | ') || 'any';
  return schema.format ? `${base} (${schema.format})` : base;
}

function Fields({ doc, schema }: { doc: OpenApiDoc; schema: Json | undefined }) {
  const target = resolve(doc, schema);
  const properties = target?.properties as Record<string, Json> | undefined;
  if (!properties) return <code>{typeOf(schema)}</code>;
  const required = new Set((target?.required as string[] | undefined) ?? []);
  return (
    <table className="params">
      <tbody>
        {Object.entries(properties).map(([name, p]) => (
          <tr key={name}>
            <th scope="row">
              <code>{name}</code>
              {required.has(name) ? '' : '?'}
            </th>
            <td>
              <code>{typeOf(p)}</code>
              {typeof p.description === 'string' && <span className="muted"> {p.description}</span>}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function OperationView({ doc, method, path, op }: { doc: OpenApiDoc; method: string; path: string; op: Operation }) {
  const open = op.security?.some((s) => Object.keys(s).length === 0);
  return (
    <details className="operation" id={`${method}-${path}`}>
      <summary>
        <span className={`method method-${method}`}>{method.toUpperCase()}</span> <code>{path}</code>{' '}
        <span className="muted">{op.summary}</span>
        {open && <span className="badge badge-queued">no credential</span>}
      </summary>
      {op.description && <p>{op.description}</p>}
      {op.parameters && op.parameters.length > 0 && (
        <>
          <h3>Parameters</h3>
          <table className="params">
            <tbody>
              {op.parameters.map((p) => (
                <tr key={`${p.in}-${p.name}`}>
                  <th scope="row">
                    <code>{p.name}</code>
                    {p.required ? '' : '?'}
                  </th>
                  <td>
                    <code>{typeOf(p.schema)}</code> <span className="muted">in {p.in}</span>
                    {p.description && <span className="muted"> · {p.description}</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {op.requestBody &&
        Object.entries(op.requestBody.content).map(([type, content]) => (
          <div key={type}>
            <h3>
              Body <code>{type}</code>
            </h3>
            <Fields doc={doc} schema={content.schema} />
          </div>
        ))}
      <h3>Answers</h3>
      <ul className="answers">
        {Object.entries(op.responses).map(([status, r]) => {
          const answer = resolve(doc, r);
          const content = answer?.content as Record<string, { schema?: Json }> | undefined;
          const body = content && Object.entries(content)[0];
          return (
            <li key={status}>
              <strong>{status}</strong> {String(answer?.description ?? '')}
              {body?.[1].schema && (
                <>
                  {' '}
                  → <code>{typeOf(body[1].schema)}</code>
                </>
              )}
            </li>
          );
        })}
      </ul>
    </details>
  );
}

export function ApiDocs() {
  const [doc, setDoc] = useState<OpenApiDoc | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api.openapi().then(setDoc, setError);
  }, []);

  if (!doc) {
    return error ? (
      <ErrorMessage error={error} onDismiss={() => setError(null)} />
    ) : (
      <p className="muted" role="status">
        Loading the API document…
      </p>
    );
  }
  const operations = Object.entries(doc.paths).flatMap(([path, item]) =>
    METHODS.filter((m) => item[m]).map((method) => ({ path, method, op: item[method] })),
  );
  const tags = doc.tags?.length ? doc.tags : [{ name: 'default', description: '' }];
  return (
    <section aria-labelledby="api-heading" className="api-docs">
      <h1 id="api-heading">API</h1>
      <p>{doc.info.description}</p>
      <p className="muted">
        OpenAPI {doc.openapi} · {operations.length} operations ·{' '}
        <a href="/api/v1/openapi.json" download="mlq-openapi.json">
          the document as JSON
        </a>
      </p>
      {tags.map((tag) => {
        const ours = operations.filter(({ op }) => (op.tags?.[0] ?? 'default') === tag.name);
        if (ours.length === 0) return null;
        return (
          <section key={tag.name} aria-labelledby={`tag-${tag.name}`}>
            <h2 id={`tag-${tag.name}`}>
              {tag.name} <span className="muted">{tag.description}</span>
            </h2>
            {ours.map(({ path, method, op }) => (
              <OperationView key={`${method} ${path}`} doc={doc} method={method} path={path} op={op} />
            ))}
          </section>
        );
      })}
      <h2>Schemas</h2>
      {Object.entries(doc.components?.schemas ?? {}).map(([name, schema]) => (
        <details key={name} className="operation" id={`schema-${name}`}>
          <summary>
            <code>{name}</code> <span className="muted">{String(schema.description ?? '')}</span>
          </summary>
          <Fields doc={doc} schema={schema} />
        </details>
      ))}
    </section>
  );
}
