// How feed messages change what the dashboard shows. Pure functions, so
// the rules (never go back to an older state) are tested on their own.

import type { FeedMessage, LogLine, Task } from './types';

/** Tasks by id, newest first in `order`. */
export interface TaskList {
  byId: Record<string, Task>;
  order: string[];
}

export const emptyList: TaskList = { byId: {}, order: [] };

const newestFirst = (byId: Record<string, Task>) =>
  Object.values(byId)
    .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0))
    .map((t) => t.id);

/** Applies a change to one task; ignores anything not newer than it knows. */
export function applyToTask(task: Task, m: FeedMessage): Task {
  if (m.type === 'snapshot' || m.type === 'deleted' || m.type === 'log') return task;
  if (m.task !== task.id || m.seq <= task.seq) return task;
  if (m.type === 'progress') return { ...task, progress: m.progress, seq: m.seq };
  const finished = m.status === 'succeeded' || m.status === 'failed' || m.status === 'cancelled';
  return {
    ...task,
    status: m.status,
    attempts: m.attempts,
    progress: m.progress,
    error: m.error,
    result: m.result,
    seq: m.seq,
    started_at: task.started_at ?? (m.status === 'running' ? m.at ?? null : null),
    finished_at: finished ? m.at ?? task.finished_at : null,
  };
}

export function applyToList(list: TaskList, m: FeedMessage, fetchMissing: (id: string) => void): TaskList {
  switch (m.type) {
    case 'snapshot': {
      if (!m.tasks) return list;
      const byId: Record<string, Task> = {};
      for (const t of m.tasks) {
        const known = list.byId[t.id];
        byId[t.id] = known && known.seq > t.seq ? known : t;
      }
      return { byId, order: newestFirst(byId) };
    }
    case 'deleted': {
      if (!list.byId[m.task]) return list;
      const byId = { ...list.byId };
      delete byId[m.task];
      return { byId, order: list.order.filter((id) => id !== m.task) };
    }
    case 'log':
      return list;
    default: {
      const known = list.byId[m.task];
      if (!known) {
        // A task created since the snapshot: its row has what the event lacks.
        fetchMissing(m.task);
        return list;
      }
      const next = applyToTask(known, m);
      return next === known ? list : { ...list, byId: { ...list.byId, [m.task]: next } };
    }
  }
}

export function addTask(list: TaskList, task: Task): TaskList {
  const known = list.byId[task.id];
  if (known && known.seq >= task.seq) return list;
  const byId = { ...list.byId, [task.id]: task };
  return { byId, order: known ? list.order : newestFirst(byId) };
}

/** Adds log lines from the feed or a fetch, in order, without duplicates. */
export function mergeLogs(lines: LogLine[], more: LogLine[]): LogLine[] {
  if (more.length === 0) return lines;
  const last = lines.length ? lines[lines.length - 1].seq : 0;
  if (more.every((l) => l.seq > last)) return [...lines, ...more].sort((a, b) => a.seq - b.seq);
  const bySeq = new Map(lines.map((l) => [l.seq, l]));
  for (const l of more) bySeq.set(l.seq, l);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/** The per-epoch metrics a train task logged, for its charts. */
export function epochSeries(lines: LogLine[]): Array<Record<string, number>> {
  const byEpoch = new Map<number, Record<string, number>>();
  for (const line of lines) {
    const epoch = line.data?.epoch;
    if (typeof epoch !== 'number') continue;
    const point: Record<string, number> = { epoch };
    for (const [k, v] of Object.entries(line.data ?? {})) if (typeof v === 'number') point[k] = v;
    byEpoch.set(epoch, point);
  }
  return [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch);
}
