// One task, live: status and progress, charts, predictions, artifacts,
// inputs, the log tail, and cancel / retry / delete.

import { Suspense, lazy, useEffect, useMemo, useState } from 'react';
import { api, formatBytes } from '../api';
import { openFeed, type Connection } from '../feed';
import { navigate } from '../router';
import { applyToTask, epochSeries, mergeLogs } from '../store';
import { isFinished, type LogLine, type Task } from '../types';
import { ConnectionBanner } from './ConnectionBanner';
import { ImageResults, imagePredictions } from './ImageResults';
import { CsvPreview, CsvTable, InputPreview } from './Previews';
import { LogTail } from './LogTail';
import { ErrorMessage, ProgressBar, StatusBadge, elapsed, useNow } from './Bits';

// The chart library is most of the bundle: load it with the first chart.
const TrainingCharts = lazy(() => import('./Charts').then((m) => ({ default: m.TrainingCharts })));

/** Params as a key/value table: values that are not plain text as JSON. */
export function ParamsTable({ params }: { params: Record<string, unknown> }) {
  // Unset optional params (null) say nothing: the defaults applied.
  const entries = Object.entries(params ?? {}).filter(([, v]) => v !== null);
  if (entries.length === 0) return <span className="muted">none</span>;
  return (
    <table className="params">
      <tbody>
        {entries.map(([k, v]) => (
          <tr key={k}>
            <th scope="row">{k}</th>
            <td>
              <code>{typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : JSON.stringify(v)}</code>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A result value as a table cell: `{a: 0.9, b: 0.1}` reads "a 0.900, b 0.100". */
function cell(v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(4);
  if (v && typeof v === 'object')
    return Object.entries(v)
      .map(([k, x]) => `${k} ${typeof x === 'number' ? x.toFixed(3) : String(x)}`)
      .join(', ');
  return String(v ?? '');
}

/** The inline predictions of a predict result, as table rows. */
function predictionRows(result: Record<string, unknown> | null): string[][] | null {
  const predictions = result?.predictions;
  if (!Array.isArray(predictions) || predictions.length === 0) return null;
  if (typeof predictions[0] !== 'object' || predictions[0] === null) {
    return [['row', 'prediction'], ...predictions.map((p, i) => [String(i + 1), cell(p)])];
  }
  const keys = Object.keys(predictions[0] as object);
  return [keys, ...predictions.map((p) => keys.map((k) => cell((p as Record<string, unknown>)[k])))];
}

export function TaskDetail({ id }: { id: string }) {
  const [task, setTask] = useState<Task | null>(null);
  const [lines, setLines] = useState<LogLine[]>([]);
  const [dropped, setDropped] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const [gone, setGone] = useState(false);
  const [connection, setConnection] = useState<{ state: Connection; detail?: string }>({ state: 'connecting' });
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    setTask(null);
    setLines([]);
    setGone(false);
    // The whole history comes with the first connection (after=0 replays
    // every status change and log line); reconnects resume where it left.
    const feed = openFeed({
      path: `/api/v1/tasks/${id}/events`,
      after: 0,
      onConnection: (state, detail) => setConnection({ state, detail }),
      onMessage: (m) => {
        if (m.type === 'snapshot' && m.task) setTask((t) => (t && t.seq > m.task!.seq ? t : m.task!));
        else if (m.type === 'deleted') setGone(true);
        else if (m.type === 'log')
          setLines((ls) => mergeLogs(ls, [{ seq: m.seq, at: m.at ?? '', level: m.level, message: m.message, data: m.data }]));
        else if (m.type === 'status' || m.type === 'progress') {
          setTask((t) => (t ? applyToTask(t, m) : t));
          // Artifacts are not in the event: read them once the task ends.
          if (m.type === 'status' && isFinished(m.status) && !m.replay) api.task(id).then(setTask, setError);
        }
      },
    });
    api.logs(id).then((page) => setDropped(page.dropped), () => undefined);
    return () => feed.close();
  }, [id]);

  const points = useMemo(() => epochSeries(lines), [lines]);
  const now = useNow(task?.status === 'running');

  if (gone)
    return (
      <section>
        <h1>Task deleted</h1>
        <p>
          Task <code>{id}</code> no longer exists. <a href="/">Back to tasks</a>
        </p>
      </section>
    );
  if (!task)
    return (
      <section aria-busy="true">
        <ConnectionBanner state={connection.state} detail={connection.detail} />
        <ErrorMessage error={error} />
        <p className="muted">Loading task…</p>
      </section>
    );

  const act = async (what: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await what();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const images = task.command === 'predict' ? imagePredictions(task.result) : null;
  const predictions = task.command === 'predict' && !images ? predictionRows(task.result) : null;
  const predictionsCsv = task.artifacts.find((a) => a.name === 'predictions.csv');

  return (
    <section aria-labelledby="task-heading" data-status={task.status}>
      <ConnectionBanner state={connection.state} detail={connection.detail} />
      <div className="detail-head">
        <h1 id="task-heading">
          {task.command} <code>{task.id}</code>
        </h1>
        <StatusBadge status={task.status} />
      </div>
      <div className="actions">
        {(task.status === 'queued' || task.status === 'running') && (
          <button type="button" disabled={busy || task.cancel_requested} onClick={() => act(() => api.cancel(id).then(setTask))}>
            {task.cancel_requested ? 'Cancelling…' : 'Cancel'}
          </button>
        )}
        {(task.status === 'failed' || task.status === 'cancelled') && (
          <button type="button" disabled={busy} onClick={() => act(() => api.retry(id).then(setTask))}>
            Retry
          </button>
        )}
        <button
          type="button"
          className="danger"
          disabled={busy}
          onClick={() => {
            if (confirm(`Delete task ${task.id} with its files and model?`))
              act(async () => {
                await api.remove(id);
                navigate('/');
              });
          }}
        >
          Delete
        </button>
      </div>
      <ErrorMessage error={error} onDismiss={() => setError(null)} />

      <dl className="facts">
        <dt>Progress</dt>
        <dd>
          <ProgressBar fraction={task.progress.fraction} label="Task progress" />
        </dd>
        <dt>Stage</dt>
        <dd data-testid="stage">{task.progress.stage || '–'}</dd>
        <dt>Attempts</dt>
        <dd>
          {task.attempts} of {task.max_attempts}
        </dd>
        <dt>Elapsed</dt>
        <dd>{elapsed(task.started_at, isFinished(task.status) ? task.finished_at : null, now)}</dd>
        <dt>Params</dt>
        <dd>
          <ParamsTable params={task.params} />
        </dd>
      </dl>

      {task.error && (
        <div className="error" role="alert">
          <strong>{task.error.code}</strong>: {task.error.message}
        </div>
      )}

      {task.command === 'train' && (
        <>
          <h2>Training</h2>
          <Suspense fallback={<p className="muted">Loading charts…</p>}>
            <TrainingCharts points={points} />
          </Suspense>
          {typeof task.result?.model_id === 'string' && (
            <p>
              Model <code>{task.result.model_id}</code>{' '}
              <a href={`/new?model=${task.result.model_id}`} onClick={(e) => (e.preventDefault(), navigate(`/new?model=${task.result!.model_id}`))}>
                predict with it
              </a>
            </p>
          )}
        </>
      )}

      {task.command === 'predict' && task.status === 'succeeded' && (
        <>
          <h2>Predictions</h2>
          {images ? (
            <ImageResults taskId={id} inputs={task.inputs} predictions={images} />
          ) : predictions ? (
            <CsvTable rows={predictions} caption="First predictions" />
          ) : predictionsCsv ? (
            <CsvPreview url={predictionsCsv.url} size={predictionsCsv.size} caption="First predictions" />
          ) : null}
        </>
      )}

      <h2>Artifacts</h2>
      {task.artifacts.length === 0 ? (
        <p className="muted">{isFinished(task.status) ? 'None.' : 'Results appear here when the task succeeds.'}</p>
      ) : (
        <ul className="artifacts">
          {task.artifacts.map((a) => (
            <li key={a.name}>
              <a href={a.url} download={a.name}>
                {a.name}
              </a>{' '}
              <span className="muted">
                {formatBytes(a.size)} · sha256 {a.sha256.slice(0, 12)}…
              </span>
            </li>
          ))}
        </ul>
      )}

      <h2>Inputs</h2>
      {task.inputs.map((input, n) => (
        <details key={n} open={n === 0}>
          <summary>
            {input.name} <span className="muted">{formatBytes(input.size)}</span>
          </summary>
          <InputPreview url={`/api/v1/tasks/${id}/inputs/${n}`} name={input.name} contentType={input.content_type} size={input.size} />
        </details>
      ))}
      {task.inputs.length === 0 && <p className="muted">None.</p>}

      <h2>Log</h2>
      <LogTail lines={lines} dropped={dropped} />
    </section>
  );
}
