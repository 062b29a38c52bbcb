// The live task table: filters, status badges, progress and elapsed time.

import { useMemo, useState } from 'react';
import { link } from '../router';
import { STATUSES, isFinished, type Status, type Task } from '../types';
import { ProgressBar, StatusBadge, elapsed, shortId, useNow } from './Bits';

export function TaskTable({ tasks }: { tasks: Task[] }) {
  const [status, setStatus] = useState<'' | Status>('');
  const [command, setCommand] = useState('');
  const [search, setSearch] = useState('');
  const commands = useMemo(() => [...new Set(tasks.map((t) => t.command))].sort(), [tasks]);
  const shown = tasks.filter(
    (t) =>
      (!status || t.status === status) &&
      (!command || t.command === command) &&
      (!search || t.id.includes(search.trim().toLowerCase())),
  );
  const now = useNow(tasks.some((t) => t.status === 'running'));

  return (
    <section aria-labelledby="tasks-heading">
      <h1 id="tasks-heading">Tasks</h1>
      <div className="filters" role="search">
        <label>
          Status
          <select value={status} onChange={(e) => setStatus(e.target.value as Status | '')}>
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Command
          <select value={command} onChange={(e) => setCommand(e.target.value)}>
            <option value="">all</option>
            {commands.map((c) => (
              <option key={c}>{c}</option>
            ))}
          </select>
        </label>
        <label>
          Task id
          <input type="search" value={search} placeholder="e.g. 3f2a" onChange={(e) => setSearch(e.target.value)} />
        </label>
      </div>
      {shown.length === 0 ? (
        <p className="empty">{tasks.length ? 'No task matches these filters.' : 'No tasks yet. Start one from “New task”.'}</p>
      ) : (
        <div className="table-wrap">
          <table className="tasks">
            <thead>
              <tr>
                <th scope="col">Task</th>
                <th scope="col">Command</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">Stage</th>
                <th scope="col">Elapsed</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((t) => (
                <tr key={t.id} data-task={t.id} data-status={t.status}>
                  <td>
                    <a {...link({ page: 'task', id: t.id })} aria-label={`Task ${t.id}`}>
                      <code>{shortId(t.id)}</code>
                    </a>
                  </td>
                  <td>{t.command}</td>
                  <td>
                    <StatusBadge status={t.status} />
                  </td>
                  <td>
                    <ProgressBar fraction={t.progress.fraction} label={`Progress of task ${shortId(t.id)}`} />
                  </td>
                  <td className="stage">{t.status === 'failed' ? t.error?.code : t.progress.stage}</td>
                  <td>{elapsed(t.started_at, isFinished(t.status) ? t.finished_at : null, now)}</td>
                  <td>
                    <time dateTime={t.created_at}>{new Date(t.created_at).toLocaleString()}</time>
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
