// The model registry: every version of every model, trained or uploaded,
// with its status, spec and metrics; uploading a TorchScript model with its
// spec and watching its validation; downloading and deleting.

import { useEffect, useRef, useState } from 'react';
import { ApiError, api, formatBytes, uploadModel, type UploadHandle } from '../api';
import { link, navigate } from '../router';
import type { Model } from '../types';
import { ErrorMessage, ProgressBar, shortId } from './Bits';

export function Models() {
  const [models, setModels] = useState<Model[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api.models().then((p) => setModels(p.models), setError);
  }, []);

  // Validation is live: models still validating are asked about every second.
  const validating = (models ?? []).filter((m) => m.status === 'validating').map((m) => m.id);
  const key = validating.join(',');
  useEffect(() => {
    if (!key) return;
    const timer = setInterval(() => {
      for (const id of key.split(',')) {
        api.model(id).then(
          (fresh) => setModels((all) => all?.map((m) => (m.id === id ? { ...fresh, spec: undefined } : m)) ?? null),
          () => {},
        );
      }
    }, 1000);
    return () => clearInterval(timer);
  }, [key]);

  const remove = async (m: Model) => {
    if (!window.confirm(`Delete model ${m.reference}?`)) return;
    setError(null);
    try {
      await api.removeModel(m.id);
      setModels((all) => all?.filter((x) => x.id !== m.id) ?? null);
    } catch (e) {
      setError(e);
    }
  };

  return (
    <section aria-labelledby="models-heading">
      <h1 id="models-heading">Models</h1>
      <UploadModel onUploaded={(m) => setModels((all) => [m, ...(all ?? [])])} />
      <ErrorMessage error={error} onDismiss={() => setError(null)} />
      {models === null && !error && <p className="muted">Loading models…</p>}
      {models?.length === 0 && <p className="empty">No models yet. A successful train task registers one; or upload your own.</p>}
      {models && models.length > 0 && (
        <div className="table-wrap">
          <table className="models">
            <thead>
              <tr>
                <th scope="col">Model</th>
                <th scope="col">Reads</th>
                <th scope="col">Kind</th>
                <th scope="col">Status</th>
                <th scope="col">Metrics</th>
                <th scope="col">Made by</th>
                <th scope="col">Spec</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {models.map((m) => (
                <tr key={m.id} data-testid={`model-${m.reference}`}>
                  <td>
                    <strong>{m.reference}</strong>
                    <br />
                    <code className="muted" title={m.id}>
                      {shortId(m.id)}
                    </code>
                  </td>
                  <td>{m.input === 'image' ? 'images' : (m.target ?? 'a CSV')}</td>
                  <td>{m.kind}</td>
                  <td>
                    <span
                      className={`badge badge-${m.status === 'ready' ? 'succeeded' : m.status === 'invalid' ? 'failed' : 'running'}`}
                      data-testid="model-status"
                    >
                      {m.status}
                    </span>
                    {m.error && (
                      <p className="field-error">
                        {m.error.code}: {m.error.message}
                      </p>
                    )}
                  </td>
                  <td>
                    {Object.entries(m.metrics)
                      .filter(([k, v]) => typeof v === 'number' && !['bytes', 'forward_ms'].includes(k))
                      .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : (v as number).toFixed(4)}`)
                      .join(', ')}
                  </td>
                  <td>
                    {m.source === 'uploaded' ? 'upload' : 'train'}{' '}
                    <a {...link({ page: 'task', id: m.task_id })}>{shortId(m.task_id)}</a>
                  </td>
                  <td>
                    <SpecDetails id={m.id} />
                  </td>
                  <td>
                    <div className="row-actions">
                      <a href={m.download_url} download>
                        Download{m.size ? ` (${formatBytes(m.size)})` : ''}
                      </a>
                      {m.status === 'ready' && (
                        <button type="button" onClick={() => navigate(`/new?model=${m.id}`)}>
                          Predict
                        </button>
                      )}
                      <button type="button" onClick={() => remove(m)} aria-label={`Delete ${m.reference}`}>
                        Delete
                      </button>
                    </div>
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

interface SpecForm {
  name: string;
  input: 'image' | 'tabular';
  width: string;
  height: string;
  channels: '3' | '1';
  mean: string;
  std: string;
  resize: 'stretch' | 'fit' | 'crop';
  features: string;
  labels: string;
  output: 'logits' | 'probabilities';
}

const blank: SpecForm = {
  name: '',
  input: 'image',
  width: '224',
  height: '224',
  channels: '3',
  mean: '',
  std: '',
  resize: 'stretch',
  features: '',
  labels: '',
  output: 'logits',
};

const list = (text: string, split: RegExp) =>
  text
    .split(split)
    .map((s) => s.trim())
    .filter(Boolean);

/** The spec as the server takes it, or the fields at fault. */
export function specFrom(f: SpecForm): { spec?: Record<string, unknown>; errors: Record<string, string> } {
  const errors: Record<string, string> = {};
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(f.name)) errors.name = 'letters, digits, ".", "_" and "-", starting with a letter or digit';
  const spec: Record<string, unknown> = { name: f.name, input: f.input, output: f.output };
  if (f.input === 'image') {
    for (const k of ['width', 'height'] as const) {
      const v = Number(f[k]);
      if (!Number.isInteger(v) || v < 1 || v > 4096) errors[k] = 'a whole number from 1 to 4096';
      spec[k] = v;
    }
    spec.channels = Number(f.channels);
    spec.resize = f.resize;
    for (const k of ['mean', 'std'] as const) {
      if (!f[k].trim()) continue;
      const v = list(f[k], /,/).map(Number);
      if (v.length !== spec.channels || v.some((x) => !Number.isFinite(x) || (k === 'std' && x <= 0)))
        errors[k] = `${spec.channels} ${k === 'std' ? 'positive ' : ''}numbers, comma separated`;
      spec[k] = v;
    }
  } else {
    const features = list(f.features, /,/);
    if (features.length === 0) errors.features = 'the CSV columns the model reads, comma separated';
    spec.features = features;
  }
  // One per line: ImageNet's labels hold commas ("tench, Tinca tinca").
  const labels = list(f.labels, /\n/);
  if (labels.length) spec.labels = labels;
  return Object.keys(errors).length ? { errors } : { spec, errors };
}

function UploadModel({ onUploaded }: { onUploaded: (m: Model) => void }) {
  const [form, setForm] = useState<SpecForm>(blank);
  const [file, setFile] = useState<File | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [failure, setFailure] = useState<unknown>(null);
  const [sent, setSent] = useState<{ sent: number; total: number } | null>(null);
  const handle = useRef<UploadHandle<Model> | null>(null);
  const set = (k: keyof SpecForm) => (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>) =>
    setForm({ ...form, [k]: e.target.value });

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setFailure(null);
    const { spec, errors: found } = specFrom(form);
    if (!file) found.file = 'choose the TorchScript file (torch.jit.save)';
    setErrors(found);
    if (!spec || !file) return;
    const h = uploadModel(spec, file, (s, total) => setSent({ sent: s, total }));
    handle.current = h;
    setSent({ sent: 0, total: file.size });
    try {
      const model = await h.done;
      onUploaded(model);
      setForm({ ...blank, input: form.input });
      setFile(null);
    } catch (err) {
      if (err instanceof ApiError && err.field) setErrors({ [err.field.replace(/^spec\./, '')]: err.message });
      setFailure(err);
    } finally {
      handle.current = null;
      setSent(null);
    }
  };

  const field = (k: keyof SpecForm, label: string, control: React.ReactElement<Record<string, unknown>>, hint?: string) => (
    <div className={`field${errors[k] ? ' invalid' : ''}`}>
      <label htmlFor={`spec-${k}`}>{label}</label>
      {{ ...control, props: { ...control.props, id: `spec-${k}`, 'aria-invalid': !!errors[k] } }}
      {errors[k] ? <small className="field-error">{errors[k]}</small> : hint && <small className="muted">{hint}</small>}
    </div>
  );

  return (
    <details className="upload-model">
      <summary>Upload a TorchScript model</summary>
      <form onSubmit={submit} noValidate aria-busy={sent !== null}>
        <fieldset disabled={sent !== null}>
          <div className={`field${errors.file ? ' invalid' : ''}`}>
            <label htmlFor="spec-file">Model file</label>
            <input id="spec-file" type="file" accept=".pt,.pth,.zip,application/octet-stream" onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
            {errors.file && <small className="field-error">{errors.file}</small>}
          </div>
          <div className="grid">
            {field('name', 'Name', <input value={form.name} onChange={set('name')} placeholder="e.g. resnet18" />, 'each upload of a name is its next version')}
            {field(
              'input',
              'Reads',
              <select value={form.input} onChange={set('input')}>
                <option value="image">images</option>
                <option value="tabular">CSV rows</option>
              </select>,
            )}
            {form.input === 'image' ? (
              <>
                {field('width', 'Input width', <input inputMode="numeric" value={form.width} onChange={set('width')} />)}
                {field('height', 'Input height', <input inputMode="numeric" value={form.height} onChange={set('height')} />)}
                {field(
                  'channels',
                  'Channels',
                  <select value={form.channels} onChange={set('channels')}>
                    <option value="3">3 (RGB)</option>
                    <option value="1">1 (grayscale)</option>
                  </select>,
                )}
                {field(
                  'resize',
                  'Resize',
                  <select value={form.resize} onChange={set('resize')}>
                    <option value="stretch">stretch to the input size</option>
                    <option value="fit">fit inside, padded</option>
                    <option value="crop">cover, centre-cropped</option>
                  </select>,
                )}
                {field('mean', 'Mean', <input value={form.mean} onChange={set('mean')} placeholder="0, 0, 0" />, 'per channel, on pixels scaled to [0, 1]')}
                {field('std', 'Std', <input value={form.std} onChange={set('std')} placeholder="1, 1, 1" />, 'per channel')}
              </>
            ) : (
              field('features', 'Feature columns', <input value={form.features} onChange={set('features')} placeholder="x1, x2, x3" />, 'in the order the model reads them')
            )}
            {field('labels', 'Class labels', <textarea rows={3} value={form.labels} onChange={set('labels')} placeholder="one per line, in output order" />, 'optional')}
            {field(
              'output',
              'Output',
              <select value={form.output} onChange={set('output')}>
                <option value="logits">scores (softmax applied)</option>
                <option value="probabilities">probabilities</option>
              </select>,
            )}
          </div>
        </fieldset>
        {sent ? (
          <div className="upload">
            <ProgressBar fraction={sent.total ? sent.sent / sent.total : 0} label="Model upload progress" />
            <button type="button" onClick={() => handle.current?.cancel()}>
              Cancel upload
            </button>
          </div>
        ) : (
          <button type="submit" className="primary">
            Upload and validate
          </button>
        )}
        <ErrorMessage error={failure} onDismiss={() => setFailure(null)} />
      </form>
    </details>
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
