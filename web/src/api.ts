// The REST client. Every failure becomes an ApiError whose message is fit
// to show: the server's own words when it sent a JSON error.

import type { OpenApiDoc } from './components/ApiDocs';
import type { CommandInfo } from './schema';
import type { ApiToken, ErrorBody, LogLine, Me, Model, Task } from './types';

// The session's CSRF token: every write the session cookie authenticates
// must carry it, so a form another site posts cannot act for the user.
let csrfToken = '';
export function setCsrfToken(token: string | undefined) {
  csrfToken = token ?? '';
}

// Called when the server says the session is gone (401), so the shell can
// show the login page.
let onUnauthorized: () => void = () => undefined;
export function whenUnauthorized(handler: () => void) {
  onUnauthorized = handler;
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field?: string;

  constructor(status: number, body: ErrorBody) {
    super(body.message);
    this.status = status;
    this.code = body.code;
    this.field = body.field;
  }
}

async function failure(res: Response): Promise<ApiError> {
  try {
    const body = await res.json();
    if (body?.error?.message) return new ApiError(res.status, body.error);
  } catch {
    // Not JSON: describe the status instead.
  }
  return new ApiError(res.status, {
    code: 'http_error',
    message: `the server answered ${res.status} ${res.statusText}`.trim(),
  });
}

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  let res: Response;
  const method = (init?.method ?? 'GET').toUpperCase();
  const headers = new Headers(init?.headers);
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers.set('x-csrf-token', csrfToken);
  try {
    res = await fetch(path, { ...init, headers, credentials: 'same-origin' });
  } catch {
    throw new ApiError(0, { code: 'network', message: 'cannot reach mlq; check your connection' });
  }
  if (res.status === 401 && path !== '/api/v1/session') onUnauthorized();
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return undefined as T;
  return res.json() as Promise<T>;
}

const json = (body: unknown): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});

export const api = {
  me: () => request<Me>('/api/v1/me'),
  login: (credential: { token: string } | { code: string }) =>
    request<Me>('/api/v1/session', json(credential)),
  logout: () => request<void>('/api/v1/session', { method: 'DELETE' }),
  tokens: () => request<{ tokens: ApiToken[] }>('/api/v1/tokens'),
  mintToken: (name: string, expiresIn?: string) =>
    request<ApiToken & { token: string }>(
      '/api/v1/tokens',
      json(expiresIn ? { name, expires_in: expiresIn } : { name }),
    ),
  revokeToken: (id: string) => request<void>(`/api/v1/tokens/${id}`, { method: 'DELETE' }),
  tasks: (status?: string, limit = 100) =>
    request<{ tasks: Task[]; next_before: string | null }>(
      `/api/v1/tasks?limit=${limit}${status ? `&status=${status}` : ''}`,
    ),
  task: (id: string) => request<Task>(`/api/v1/tasks/${id}`),
  submit: (command: string, params: Record<string, unknown>) =>
    request<Task>('/api/v1/tasks', json({ command, params })),
  cancel: (id: string) => request<Task>(`/api/v1/tasks/${id}/cancel`, { method: 'POST' }),
  retry: (id: string) => request<Task>(`/api/v1/tasks/${id}/retry`, { method: 'POST' }),
  remove: (id: string) => request<void>(`/api/v1/tasks/${id}`, { method: 'DELETE' }),
  logs: (id: string, after = 0) =>
    request<{ lines: LogLine[]; next_after: number; dropped: number }>(
      `/api/v1/tasks/${id}/logs?after=${after}&limit=10000`,
    ),
  commands: () => request<{ commands: CommandInfo[] }>('/api/v1/commands'),
  openapi: () => request<OpenApiDoc>('/api/v1/openapi.json'),
  models: () => request<{ models: Model[]; next_before: string | null }>('/api/v1/models?limit=200'),
  model: (id: string) => request<Model>(`/api/v1/models/${encodeURIComponent(id)}`),
  removeModel: (id: string) => request<void>(`/api/v1/models/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  /** The first `bytes` of a stored file, for previews. */
  head: async (url: string, bytes = 64 * 1024): Promise<string> => {
    const res = await fetch(url, { headers: { range: `bytes=0-${bytes - 1}` } });
    if (!res.ok) throw await failure(res);
    return res.text();
  },
};

export interface UploadHandle<T = Task> {
  /** Resolves with what was created; rejects with an ApiError. */
  done: Promise<T>;
  cancel: () => void;
}

/**
 * Posts a multipart form, reporting bytes sent. fetch() cannot report
 * upload progress, so this uses XMLHttpRequest.
 */
function postForm<T>(url: string, form: FormData, onProgress: (sent: number, total: number) => void): UploadHandle<T> {
  const xhr = new XMLHttpRequest();
  const done = new Promise<T>((resolve, reject) => {
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 401) onUnauthorized();
      let body: any = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // handled below
      }
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body as T);
      else if (body?.error?.message) reject(new ApiError(xhr.status, body.error));
      else reject(new ApiError(xhr.status, { code: 'http_error', message: `upload failed with status ${xhr.status}` }));
    };
    xhr.onerror = () => reject(new ApiError(0, { code: 'network', message: 'the upload was interrupted; check your connection' }));
    xhr.onabort = () => reject(new ApiError(0, { code: 'aborted', message: 'upload cancelled' }));
  });
  xhr.open('POST', url);
  if (csrfToken) xhr.setRequestHeader('x-csrf-token', csrfToken);
  xhr.send(form);
  return { done, cancel: () => xhr.abort() };
}

/** Submits a task with files. */
export function upload(
  command: string,
  params: Record<string, unknown>,
  files: File[],
  onProgress: (sent: number, total: number) => void,
): UploadHandle {
  const form = new FormData();
  form.append('command', command);
  form.append('params', JSON.stringify(params));
  for (const file of files) form.append('file', file, file.name);
  return postForm<Task>('/api/v1/tasks', form, onProgress);
}

/** Uploads a TorchScript model with its spec; the model comes back `validating`. */
export function uploadModel(
  spec: Record<string, unknown>,
  file: File,
  onProgress: (sent: number, total: number) => void,
): UploadHandle<Model> {
  const form = new FormData();
  form.append('spec', JSON.stringify(spec));
  form.append('file', file, file.name);
  return postForm<Model>('/api/v1/models', form, onProgress);
}

export const formatBytes = (n: number): string => {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
};
