// Registered models: what each predicts, how well, and its spec.

import { useEffect, useState } from 'react';
import { api } from '../api';
import { link, navigate } from '../router';
import type { Model } from '../types';
import { ErrorMessage, shortId } from './Bits';

export function Models() {
  const [models, setModels] = useState<Model[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api.models().then((p) => setModels(p.models), setError);
  }, []);
  const numbered = (models ?? []).map((m) => ({ model: m, version: m.version }));
  return (
    <section aria-labelledby="models-heading">
      <h1 id="models-heading">Models</h1>
      <ErrorMessage error={error} />
      {models === null && !error && <p className="muted">Loading models…</p>}
      {models?.length === 0 && <p className="empty">No models yet. A successful train task registers one.</p>}
      {numbered.length > 0 && (
        <div className="table-wrap">
          <table className="models">
            <thead>
              <tr>
                <th scope="col">Model</th>
                <th scope="col">Target</th>
                <th scope="col">Version</th>
                <th scope="col">Kind</th>
                <th scope="col">Status</th>
                <th scope="col">Metrics</th>
                <th scope="col">Trained by</th>
                <th scope="col">Spec</th>
                <th scope="col" />
              </tr>
            </thead>
            <tbody>
              {numbered.map(({ model: m, version }) => (
                <tr key={m.id}>
                  <td>
                    <code title={m.id}>{shortId(m.id)}</code>
                  </td>
                  <td>{m.target ?? m.input}</td>
                  <td>
                    {m.name}@{version}
                  </td>
                  <td>{m.kind}</td>
                  <td>
                    <span
                      className={`badge badge-${m.status === 'ready' ? 'succeeded' : m.status === 'invalid' ? 'failed' : 'running'}`}
                      title={m.error?.message}
                    >
                      {m.status}
                    </span>
                  </td>
                  <td>
                    {Object.entries(m.metrics)
                      .filter(([, v]) => typeof v === 'number')
                      .map(([k, v]) => `${k} ${(v as number).toFixed(4)}`)
                      .join(', ')}
                  </td>
                  <td>
                    <a {...link({ page: 'task', id: m.task_id })}>{shortId(m.task_id)}</a>
                  </td>
                  <td>
                    <SpecDetails id={m.id} />
                  </td>
                  <td>
                    <button type="button" onClick={() => navigate(`/new?model=${m.id}`)}>
                      Predict
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

// A model's spec can be megabytes (one entry per feature column), so the
// list leaves it out and it is fetched when opened.
function SpecDetails({ id }: { id: string }) {
  const [spec, setSpec] = useState<unknown>(undefined);
  const [error, setError] = useState<unknown>(null);
  return (
    <details
      onToggle={(e) => {
        if ((e.target as HTMLDetailsElement).open && spec === undefined) {
          api.model(id).then((m) => setSpec(m.spec), setError);
        }
      }}
    >
      <summary>spec</summary>
      <ErrorMessage error={error} />
      {spec === undefined ? <p className="muted">Loading…</p> : <pre>{JSON.stringify(spec, null, 2)}</pre>}
    </details>
  );
}
