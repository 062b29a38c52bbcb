// Test doubles for the browser's network objects.

import type { CommandInfo } from './schema';
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

/** `train` and `predict` as `GET /api/v1/commands` describes them (trimmed). */
export const commands: CommandInfo[] = [
  {
    name: 'predict',
    summary: 'Runs a registered model over a CSV file, or over images.',
    files: { min: 1, max: 1000 },
    content_types: ['text/csv', 'image/png'],
    timeout_seconds: 1800,
    params: {
      type: 'object',
      properties: {
        model: { type: 'string', minLength: 1, 'x-mlq-model': true },
        region: { anyOf: [{ $ref: '#/$defs/Region' }, { type: 'null' }] },
        batch_size: { type: 'integer', minimum: 1, maximum: 1024, default: 32 },
        top_k: { type: 'integer', minimum: 1, maximum: 100, default: 5 },
        timeout: { type: ['number', 'string', 'null'], minimum: 1 },
      },
      required: ['model'],
      $defs: { Region: { type: 'object', properties: {} } },
    },
  },
  {
    name: 'train',
    summary: 'Fits a neural network to a CSV file and registers it as a model.',
    files: { min: 1, max: 1 },
    content_types: ['text/csv'],
    timeout_seconds: 3600,
    params: {
      type: 'object',
      properties: {
        target: { type: 'string', minLength: 1, 'x-mlq-input': 'csv' },
        kind: { anyOf: [{ $ref: '#/$defs/ProblemKind' }, { type: 'null' }], default: null },
        epochs: { type: 'integer', minimum: 1, maximum: 1000, default: 20 },
        batch_size: { type: 'integer', minimum: 1, maximum: 65536, default: 32 },
        learning_rate: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 0.01 },
        hidden: { type: 'array', items: { type: 'integer', minimum: 1, maximum: 1024 }, maxItems: 8, default: [64, 64], 'x-mlq-input': 'csv' },
        width: { type: ['integer', 'null'], minimum: 8, maximum: 512, 'x-mlq-input': 'zip' },
        timeout: { type: ['number', 'string', 'null'], minimum: 1 },
      },
      required: ['target'],
      $defs: { ProblemKind: { type: 'string', enum: ['classification', 'regression'] } },
    },
  },
];

/** A `fetch` answering the dashboard's GETs: commands, and an empty model list. */
export function fakeFetch(models: unknown[] = []) {
  return async (input: RequestInfo | URL) => {
    const url = String(input);
    if (url.includes('/api/v1/commands')) return new Response(JSON.stringify({ commands }));
    return new Response(JSON.stringify({ models, next_before: null }));
  };
}

/** An XMLHttpRequest the test drives. */
export class FakeXhr {
  static latest: FakeXhr;
  upload: { onprogress: ((e: { loaded: number; total: number; lengthComputable: boolean }) => void) | null } = { onprogress: null };
  onload: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onabort: (() => void) | null = null;
  status = 0;
  responseText = '';
  sent: FormData | null = null;
  aborted = false;
  constructor() {
    FakeXhr.latest = this;
  }
  open() {}
  send(body: FormData) {
    this.sent = body;
  }
  abort() {
    this.aborted = true;
    this.onabort?.();
  }
}

