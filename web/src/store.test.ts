import { describe, expect, it, vi } from 'vitest';
import { applyToList, applyToTask, emptyList, epochSeries, mergeLogs } from './store';
import { task } from './testing';
import type { FeedMessage, LogLine } from './types';

const progress = (seq: number, fraction: number): FeedMessage => ({
  type: 'progress',
  task: task().id,
  seq,
  progress: { fraction, stage: `at ${fraction}`, message: '', metrics: {} },
});

describe('applyToTask', () => {
  it('applies newer events and ignores older or repeated ones', () => {
    const t = task({ seq: 10 });
    const newer = applyToTask(t, progress(11, 0.5));
    expect(newer.progress.fraction).toBe(0.5);
    expect(newer.seq).toBe(11);
    expect(applyToTask(newer, progress(11, 0.9))).toBe(newer);
    expect(applyToTask(newer, progress(9, 0.1))).toBe(newer);
  });

  it('takes status, result and finish time from a final status event', () => {
    const done = applyToTask(task(), {
      type: 'status',
      task: task().id,
      seq: 20,
      at: '2026-11-26T10:05:00Z',
      status: 'succeeded',
      attempts: 1,
      progress: { fraction: 1, stage: 'done', message: '', metrics: {} },
      error: null,
      result: { model_id: 'm' },
    });
    expect(done.status).toBe('succeeded');
    expect(done.result).toEqual({ model_id: 'm' });
    expect(done.finished_at).toBe('2026-11-26T10:05:00Z');
  });
});

describe('applyToList', () => {
  it('replaces state with a snapshot, newest first, keeping fresher rows', () => {
    const older = task({ id: 'a', created_at: '2026-01-01T00:00:00Z', seq: 50 });
    const newer = task({ id: 'b', created_at: '2026-02-01T00:00:00Z' });
    let list = applyToList(emptyList, { type: 'snapshot', seq: 1, tasks: [older, newer] }, vi.fn());
    expect(list.order).toEqual(['b', 'a']);
    list = applyToList(list, { type: 'snapshot', seq: 1, tasks: [{ ...older, seq: 40 }] }, vi.fn());
    expect(list.byId.a.seq).toBe(50);
    expect(list.byId.b).toBeUndefined();
  });

  it('fetches tasks it has not seen and forgets deleted ones', () => {
    const fetchMissing = vi.fn();
    let list = applyToList(emptyList, { type: 'snapshot', seq: 1, tasks: [task()] }, fetchMissing);
    applyToList(list, { ...progress(30, 0.1), task: 'new-task' } as FeedMessage, fetchMissing);
    expect(fetchMissing).toHaveBeenCalledWith('new-task');
    list = applyToList(list, { type: 'deleted', task: task().id, seq: 31 }, fetchMissing);
    expect(list.order).toEqual([]);
  });
});

const line = (seq: number, data?: Record<string, unknown>): LogLine => ({
  seq,
  at: '2026-11-26T10:00:00Z',
  level: 'info',
  message: `line ${seq}`,
  data,
});

describe('logs', () => {
  it('merges lines in order without duplicates', () => {
    const merged = mergeLogs([line(1), line(3)], [line(3), line(2), line(4)]);
    expect(merged.map((l) => l.seq)).toEqual([1, 2, 3, 4]);
  });

  it('turns epoch summaries into chart points', () => {
    const points = epochSeries([
      line(1),
      line(2, { epoch: 1, train_loss: 0.9, val_accuracy: 0.5 }),
      line(3, { epoch: 2, train_loss: 0.4, val_accuracy: 0.8 }),
    ]);
    expect(points).toEqual([
      { epoch: 1, train_loss: 0.9, val_accuracy: 0.5 },
      { epoch: 2, train_loss: 0.4, val_accuracy: 0.8 },
    ]);
  });
});
