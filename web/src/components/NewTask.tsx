// Starting a task: a form per command, files by drag and drop, and an
// upload with a real progress bar (bytes sent) and a cancel button.

import { useEffect, useRef, useState } from 'react';
import { ApiError, api, formatBytes, upload, type UploadHandle } from '../api';
import { navigate } from '../router';
import { fields, range, toParams, type CommandInfo, type FieldSpec } from '../schema';
import type { Model } from '../types';
import { Dropzone } from './Dropzone';
import { RegionPicker, type Region } from './RegionPicker';
import { ErrorMessage, ProgressBar } from './Bits';

type Errors = Record<string, string>;

/** `batch_size` → "Batch size". */
export function label(name: string): string {
  const words = name.replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** Fields the form shows as text boxes or selects; `timeout` and the image
 * region have their own controls. */
function shownFields(info: CommandInfo | undefined): FieldSpec[] {
  return info ? fields(info.params).filter((f) => f.name !== 'timeout' && f.kind !== 'object') : [];
}

/** `csv`, `zip` or `image`, by the name and declared type. */
export function fileKind(f: File): string {
  if (/\.zip$/i.test(f.name) || f.type.includes('zip')) return 'zip';
  if (f.type.startsWith('image/')) return 'image';
  return 'csv';
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
  const [commands, setCommands] = useState<CommandInfo[] | null>(null);
  const [command, setCommand] = useState<string>(initialModel ? 'predict' : 'train');
  const [files, setFiles] = useState<File[]>([]);
  const [texts, setTexts] = useState<Record<string, Record<string, string>>>(
    initialModel ? { predict: { model: initialModel } } : {},
  );
  const [columns, setColumns] = useState<string[]>([]);
  const [models, setModels] = useState<Model[]>([]);
  const [region, setRegion] = useState<Region | null>(null);
  const [errors, setErrors] = useState<Errors>({});
  const [failure, setFailure] = useState<unknown>(null);
  const [sent, setSent] = useState<{ sent: number; total: number } | null>(null);
  const handle = useRef<UploadHandle | null>(null);

  useEffect(() => {
    api.commands().then((r) => setCommands(r.commands), setFailure);
    api
      .models()
      .then((page) => setModels(page.models.filter((m) => m.status === 'ready')))
      .catch(setFailure);
  }, []);

  useEffect(() => {
    const csv = files.find((f) => /\.csv$/i.test(f.name) || f.type === 'text/csv');
    if (!csv) return setColumns([]);
    csvColumns(csv).then(setColumns, () => setColumns([]));
  }, [files]);

  const info = commands?.find((c) => c.name === command);
  // Params for one kind of file (a CSV's target, a zip's image size) are
  // hidden once only files of other kinds are chosen.
  const kinds = new Set(files.map(fileKind));
  const specs = shownFields(info).filter((f) => !f.input || kinds.size === 0 || kinds.has(f.input));
  const values = texts[command] ?? {};
  const chosen = models.find((m) => m.id === values.model || m.reference === values.model || m.name === values.model);
  const images = chosen?.input === 'image';
  const firstImage = files.find((f) => f.type.startsWith('image/'));
  // A region drawn on one image means nothing on another.
  useEffect(() => setRegion(null), [firstImage]);
  // A model named in the address but not on the first page of the list.
  useEffect(() => {
    if (!initialModel || models.some((m) => m.id === initialModel || m.reference === initialModel)) return;
    api.model(initialModel).then(
      (m) => m.status === 'ready' && setModels((all) => (all.some((x) => x.id === m.id) ? all : [m, ...all])),
      () => {},
    );
  }, [initialModel, models]);
  const set = (name: string) => (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
    setTexts({ ...texts, [command]: { ...values, [name]: e.target.value } });

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    if (!info) return;
    setFailure(null);
    const { params, errors: found } = toParams(specs, values);
    if (images && region) params.region = region;
    const { min, max } = info.files;
    const what = images
      ? 'an image or a zip of images'
      : command === 'train'
        ? 'a CSV file, or a zip of images in class folders'
        : 'a CSV file';
    if (files.length < min) found.files = `choose ${what}`;
    else if (files.length > max)
      found.files = max === 1 ? `${command} takes one file; remove ${files.length - 1} of them` : `${command} takes at most ${max} files`;
    setErrors(found);
    if (Object.keys(found).length) return;

    const h = upload(command, params, files, (s, total) => setSent({ sent: s, total }));
    handle.current = h;
    setSent({ sent: 0, total: files.reduce((n, f) => n + f.size, 0) });
    try {
      const task = await h.done;
      navigate({ page: 'task', id: task.id });
    } catch (err) {
      if (err instanceof ApiError && err.field) setErrors({ [err.field.split(/[.[]/)[0]]: err.message });
      if (!(err instanceof ApiError && err.code === 'aborted')) setFailure(err);
      else setFailure(new Error('Upload cancelled; nothing was stored.'));
    } finally {
      handle.current = null;
      setSent(null);
    }
  };

  const control = (f: FieldSpec) => {
    const value = values[f.name] ?? '';
    if (f.kind === 'model')
      return (
        <select value={value} onChange={set(f.name)}>
          <option value="">choose…</option>
          {models.map((m) => (
            <option key={m.id} value={m.id}>
              {m.reference} · {m.target ?? m.input} ({m.kind}) · {new Date(m.created_at).toLocaleString()}
            </option>
          ))}
        </select>
      );
    if (f.name === 'target' && columns.length)
      return (
        <select value={value} onChange={set(f.name)}>
          <option value="">choose…</option>
          {columns.map((c) => (
            <option key={c}>{c}</option>
          ))}
        </select>
      );
    if (f.kind === 'enum')
      return (
        <select value={value} onChange={set(f.name)}>
          <option value="">{f.required ? 'choose…' : 'automatic'}</option>
          {f.options?.map((o) => (
            <option key={o}>{o}</option>
          ))}
        </select>
      );
    return (
      <input
        value={value}
        onChange={set(f.name)}
        placeholder={f.default ?? (f.name === 'target' ? 'e.g. label' : undefined)}
        inputMode={f.kind === 'integer' ? 'numeric' : f.kind === 'number' ? 'decimal' : undefined}
      />
    );
  };

  const hint = (f: FieldSpec) => {
    const bounds = range(f);
    const list = f.kind === 'integers' || f.kind === 'strings' ? 'comma separated' : undefined;
    const item = f.item ? range(f.item) : undefined;
    return [list, bounds, item && `each ${item}`].filter(Boolean).join('; ') || undefined;
  };

  const uploading = sent !== null;
  return (
    <section aria-labelledby="new-heading">
      <h1 id="new-heading">New task</h1>
      {commands === null && !failure && <p className="muted">Loading commands…</p>}
      <form onSubmit={submit} noValidate aria-busy={uploading}>
        <fieldset disabled={uploading || !info}>
          <legend>Command</legend>
          <div className="segmented" role="radiogroup" aria-label="Command">
            {(commands ?? []).map((c) => (
              <label key={c.name} className={command === c.name ? 'active' : ''} title={c.summary}>
                <input
                  type="radio"
                  name="command"
                  value={c.name}
                  checked={command === c.name}
                  onChange={() => {
                    setCommand(c.name);
                    setErrors({});
                  }}
                />
                {c.name}
              </label>
            ))}
          </div>
          {info && <p className="muted">{info.summary}</p>}

          {info && info.files.max > 0 && (
            <div className="field">
              <span className="label" id="files-label">
                {images
                  ? 'Images (PNG, JPEG, BMP, GIF, WebP, or a zip)'
                  : command === 'train'
                    ? 'Data (CSV, or a zip with a folder of images per class)'
                    : 'Data (CSV)'}
              </span>
              <Dropzone
                files={files}
                onChange={setFiles}
                accept={
                  images ? 'image/*,.zip,application/zip' : command === 'train' ? '.csv,text/csv,.zip,application/zip' : '.csv,text/csv'
                }
              />
              {errors.files && <small className="field-error">{errors.files}</small>}
            </div>
          )}

          <div className="grid">
            {specs.map((f) => (
              <Field key={`${command}-${f.name}`} label={f.name === 'target' ? 'Target column' : label(f.name)} name={f.name} error={errors[f.name]} hint={hint(f)}>
                {control(f)}
              </Field>
            ))}
          </div>

          {images && firstImage && (
            <RegionPicker file={firstImage} region={region} onChange={setRegion} />
          )}
          {errors.region && <small className="field-error">{errors.region}</small>}
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
          <button type="submit" className="primary" disabled={!info}>
            Start {command}
          </button>
        )}
        <ErrorMessage error={failure} onDismiss={() => setFailure(null)} />
      </form>
    </section>
  );
}
