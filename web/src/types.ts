// The shapes mlq's API sends (see the top-level README).

export type Status = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export const STATUSES: Status[] = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

export const isFinished = (s: Status) => s === 'succeeded' || s === 'failed' || s === 'cancelled';

export interface Progress {
  fraction: number;
  stage: string;
  message: string;
  metrics: Record<string, number>;
  at?: string;
}

export interface InputFile {
  name: string;
  size: number;
  sha256: string;
  content_type: string;
}

export interface Artifact extends InputFile {
  url: string;
}

export interface ErrorBody {
  code: string;
  message: string;
  field?: string;
}

export interface Task {
  id: string;
  command: string;
  status: Status;
  progress: Progress;
  params: Record<string, unknown>;
  inputs: InputFile[];
  artifacts: Artifact[];
  result: Record<string, unknown> | null;
  error: ErrorBody | null;
  attempts: number;
  max_attempts: number;
  cancel_requested: boolean;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  seq: number;
}

export interface LogLine {
  seq: number;
  at: string;
  level: 'info' | 'warn' | 'error';
  message: string;
  data?: Record<string, unknown>;
}

export interface Model {
  id: string;
  name: string;
  version: number;
  /** `name@version`. */
  reference: string;
  status: 'validating' | 'ready' | 'invalid';
  source: 'trained' | 'uploaded';
  input: 'tabular' | 'image';
  format: string;
  /** The task that trained it, or that validates it. */
  task_id: string;
  kind: string;
  target: string | null;
  metrics: Record<string, number | string | unknown>;
  error?: { code: string; message: string };
  size: number | null;
  /** Only on a single model's view: the list leaves it out. */
  spec?: Record<string, unknown>;
  download_url: string;
  created_at: string;
}

interface Numbered {
  task: string;
  seq: number;
  at?: string;
  replay?: boolean;
}

export type FeedMessage =
  | { type: 'snapshot'; seq: number; task?: Task; tasks?: Task[] }
  | (Numbered & {
      type: 'status';
      status: Status;
      attempts: number;
      progress: Progress;
      error: ErrorBody | null;
      result: Record<string, unknown> | null;
    })
  | (Numbered & { type: 'progress'; progress: Progress })
  | (Numbered & { type: 'log'; level: LogLine['level']; message: string; data?: Record<string, unknown> })
  | (Numbered & { type: 'deleted' });

export interface User {
  id: string;
  name: string;
  admin: boolean;
  created_at: string;
}

/** Who the dashboard acts as (`GET /api/v1/me`, `POST /api/v1/session`). */
export interface Me {
  user: User;
  via: 'token' | 'session' | 'ticket';
  csrf_token?: string;
  expires_at?: string;
}

/** An API token as listed: never its secret. */
export interface ApiToken {
  id: string;
  user_id: string;
  name: string;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  revoked_at: string | null;
}
