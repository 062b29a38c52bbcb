// Starting a task: a form per command, files by drag and drop, and an
// upload with a real progress bar (bytes sent) and a cancel button.

import { useEffect, useRef, useState } from 'react';
import { ApiError, api, formatBytes, upload, type UploadHandle } from '../api';
import { navigate } from '../router';
import type { Model } from '../types';
import { Dropzone } from './Dropzone';
import { ErrorMessage, ProgressBar, shortId } from './Bits';

type Command = 'train' | 'predict';

interface TrainForm {
  target: string;
  kind: '' | 'classification' | 'regression';
  epochs: string;
  batch_size: string;
  learning_rate: string;
  hidden: string;
  validation_split: string;
}

const trainDefaults: TrainForm = {
  target: '',
  kind: '',
  epochs: '20',
  batch_size: '32',
  learning_rate: '0.01',
  hidden: '64, 64',
  validation_split: '0.2',
};

type Errors = Record<string, string>;

/** Checks the train form as the server would; returns params or errors. */
export function trainParams(f: TrainForm): { params?: Record<string, unknown>; errors: Errors } {
  const errors: Errors = {};
  const int = (name: keyof TrainForm, min: number, max: number) => {
    const v = Number(f[name]);
    if (!Number.isInteger(v) || v < min || v > max) errors[name] = `a whole number from ${min} to ${max}`;
    return v;
  };
  if (!f.target.trim()) errors.target = 'name the column to predict';
  const epochs = int('epochs', 1, 1000);
  const batch = int('batch_size', 1, 65536);
  const lr = Number(f.learning_rate);
  if (!(lr > 0 && lr <= 1)) errors.learning_rate = 'a number above 0 and at most 1';
  const split = Number(f.validation_split);
  if (!(split >= 0 && split <= 0.5)) errors.validation_split = 'a number from 0 to 0.5';
  const hidden = f.hidden.trim() === '' ? [] : f.hidden.split(',').map((s) => Number(s.trim()));
  if (hidden.length > 8 || hidden.some((h) => !Number.isInteger(h) || h < 1 || h > 1024))
    errors.hidden = 'up to 8 layer sizes from 1 to 1024, separated by commas';
  if (Object.keys(errors).length) return { errors };
  const params: Record<string, unknown> = {
    target: f.target.trim(),
    epochs,
    batch_size: batch,
    learning_rate: lr,
    hidden,
    validation_split: split,
  };
  if (f.kind) params.kind = f.kind;
  return { params, errors };
}

/** FileReader rather than Blob.text(): older engines (and jsdom) lack the latter. */
function readText(blob: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsText(blob);
  });
}

/** The header row of a CSV file chosen locally, to offer its columns. */
async function csvColumns(file: File): Promise<string[]> {
  const head = await readText(file.slice(0, 64 * 1024));
  const line = head.split(/\r?\n/)[0] ?? '';
  return line
    .split(',')
    .map((c) => c.trim().replace(/^"|"$/g, ''))
    .filter(Boolean);
}

function Field({
  label,
  name,
  error,
  children,
  hint,
}: {
  label: string;
  name: string;
  error?: string;
  hint?: string;
  children: React.ReactElement<Record<string, unknown>>;
}) {
  const id = `field-${name}`;
  const describedBy = error ? `${id}-error` : hint ? `${id}-hint` : undefined;
  return (
    <div className={`field${error ? ' invalid' : ''}`}>
      <label htmlFor={id}>{label}</label>
      {{
        ...children,
        props: { ...children.props, id, 'aria-invalid': !!error, 'aria-describedby': describedBy },
      }}
      {hint && !error && (
        <small id={`${id}-hint`} className="muted">
          {hint}
        </small>
      )}
      {error && (
        <small id={`${id}-error`} className="field-error">
          {error}
        </small>
      )}
    </div>
  );
}

export function NewTask({ initialModel }: { initialModel?: string }) {
  const [command, setCommand] = useState<Command>(initialModel ? 'predict' : 'train');
  const [files, setFiles] = useState<File[]>([]);
  const [train, setTrain] = useState<TrainForm>(trainDefaults);
  const [columns, setColumns] = useState<string[]>([]);
  const [models, setModels] = useState<Model[]>([]);
  const [model, setModel] = useState(initialModel ?? '');
  const [errors, setErrors] = useState<Errors>({});
  const [failure, setFailure] = useState<unknown>(null);
  const [sent, setSent] = useState<{ sent: number; total: number } | null>(null);
  const handle = useRef<UploadHandle | null>(null);

  useEffect(() => {
    api
      .models()
      .then((page) => setModels(page.models))
      .catch(setFailure);
  }, []);

  useEffect(() => {
    const csv = files.find((f) => /\.csv$/i.test(f.name) || f.type === 'text/csv');
    if (!csv) return setColumns([]);
    csvColumns(csv).then(setColumns, () => setColumns([]));
  }, [files]);

  const set = (name: keyof TrainForm) => (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
    setTrain({ ...train, [name]: e.target.value });

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setFailure(null);
    let params: Record<string, unknown>;
    const found: Errors = {};
    if (command === 'train') {
      const checked = trainParams(train);
      Object.assign(found, checked.errors);
      params = checked.params ?? {};
    } else {
      if (!model) found.model = 'choose a model';
      params = { model };
    }
    if (files.length === 0) found.files = 'choose a CSV file';
    else if (files.length > 1) found.files = `${command} takes one file; remove ${files.length - 1} of them`;
    setErrors(found);
    if (Object.keys(found).length) return;

    const h = upload(command, params, files, (s, total) => setSent({ sent: s, total }));
    handle.current = h;
    setSent({ sent: 0, total: files.reduce((n, f) => n + f.size, 0) });
    try {
      const task = await h.done;
      navigate({ page: 'task', id: task.id });
    } catch (err) {
      if (err instanceof ApiError && err.field) setErrors({ [err.field]: err.message });
      if (!(err instanceof ApiError && err.code === 'aborted')) setFailure(err);
      else setFailure(new Error('Upload cancelled; nothing was stored.'));
    } finally {
      handle.current = null;
      setSent(null);
    }
  };

  const uploading = sent !== null;
  return (
    <section aria-labelledby="new-heading">
      <h1 id="new-heading">New task</h1>
      <form onSubmit={submit} noValidate aria-busy={uploading}>
        <fieldset disabled={uploading}>
          <legend>Command</legend>
          <div className="segmented" role="radiogroup" aria-label="Command">
            {(['train', 'predict'] as Command[]).map((c) => (
              <label key={c} className={command === c ? 'active' : ''}>
                <input type="radio" name="command" value={c} checked={command === c} onChange={() => setCommand(c)} />
                {c}
              </label>
            ))}
          </div>

          <div className="field">
            <span className="label" id="files-label">
              Data (CSV)
            </span>
            <Dropzone files={files} onChange={setFiles} accept=".csv,text/csv" />
            {errors.files && <small className="field-error">{errors.files}</small>}
          </div>

          {command === 'train' ? (
            <div className="grid">
              <Field label="Target column" name="target" error={errors.target}>
                {columns.length ? (
                  <select value={train.target} onChange={set('target')}>
                    <option value="">choose…</option>
                    {columns.map((c) => (
                      <option key={c}>{c}</option>
                    ))}
                  </select>
                ) : (
                  <input value={train.target} onChange={set('target')} placeholder="e.g. label" />
                )}
              </Field>
              <Field label="Problem" name="kind" hint="inferred from the target when automatic">
                <select value={train.kind} onChange={set('kind')}>
                  <option value="">automatic</option>
                  <option value="classification">classification</option>
                  <option value="regression">regression</option>
                </select>
              </Field>
              <Field label="Epochs" name="epochs" error={errors.epochs}>
                <input inputMode="numeric" value={train.epochs} onChange={set('epochs')} />
              </Field>
              <Field label="Batch size" name="batch_size" error={errors.batch_size}>
                <input inputMode="numeric" value={train.batch_size} onChange={set('batch_size')} />
              </Field>
              <Field label="Learning rate" name="learning_rate" error={errors.learning_rate}>
                <input inputMode="decimal" value={train.learning_rate} onChange={set('learning_rate')} />
              </Field>
              <Field label="Hidden layers" name="hidden" error={errors.hidden} hint="sizes, comma separated">
                <input value={train.hidden} onChange={set('hidden')} />
              </Field>
              <Field label="Validation split" name="validation_split" error={errors.validation_split}>
                <input inputMode="decimal" value={train.validation_split} onChange={set('validation_split')} />
              </Field>
            </div>
          ) : (
            <Field label="Model" name="model" error={errors.model}>
              <select value={model} onChange={(e) => setModel(e.target.value)}>
                <option value="">choose…</option>
                {models.map((m) => (
                  <option key={m.id} value={m.id}>
                    {m.target} ({m.kind}) · {shortId(m.id)} · {new Date(m.created_at).toLocaleString()}
                  </option>
                ))}
              </select>
            </Field>
          )}
        </fieldset>

        {uploading ? (
          <div className="upload">
            <ProgressBar fraction={sent.total ? sent.sent / sent.total : 0} label="Upload progress" />
            <span className="muted" aria-live="polite">
              {formatBytes(sent.sent)} of {formatBytes(sent.total)} sent
            </span>
            <button type="button" onClick={() => handle.current?.cancel()}>
              Cancel upload
            </button>
          </div>
        ) : (
          <button type="submit" className="primary">
            Start {command}
          </button>
        )}
        <ErrorMessage error={failure} onDismiss={() => setFailure(null)} />
      </form>
    </section>
  );
}
