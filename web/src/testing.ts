// Test doubles for the browser's network objects.

import type { Task } from './types';

/** A WebSocket the test drives: `emit` delivers a message, `drop` closes it. */
export class FakeSocket {
  static all: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  closed = false;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }

  open() {
    this.onopen?.();
  }

  emit(message: unknown) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  drop(reason = '') {
    this.closed = true;
    this.onclose?.({ code: 1006, reason });
  }

  close() {
    this.drop();
  }

  static latest(): FakeSocket {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
}

export function task(overrides: Partial<Task> = {}): Task {
  return {
    id: '11111111-2222-3333-4444-555555555555',
    command: 'train',
    status: 'running',
    progress: { fraction: 0.25, stage: 'epoch 1/4', message: '', metrics: {} },
    params: { target: 'label' },
    inputs: [{ name: 'data.csv', size: 120, sha256: 'ab'.repeat(32), content_type: 'text/csv' }],
    artifacts: [],
    result: null,
    error: null,
    attempts: 1,
    max_attempts: 3,
    cancel_requested: false,
    created_at: '2026-11-26T10:00:00Z',
    started_at: '2026-11-26T10:00:01Z',
    finished_at: null,
    seq: 10,
    ...overrides,
  };
}
