// A WebSocket feed that reconnects by itself. It remembers the highest
// sequence number it saw and resumes from there, so a dropped connection
// loses nothing: the server sends a fresh snapshot and replays the rest.

import type { FeedMessage } from './types';

export type Connection = 'connecting' | 'open' | 'lost';

export interface FeedOptions {
  /** Path of the feed, e.g. `/api/v1/events` or `/api/v1/tasks/{id}/events`. */
  path: string;
  /** Extra query parameters. */
  query?: Record<string, string>;
  /** Resume after this number on the first connection too. */
  after?: number;
  onMessage: (message: FeedMessage) => void;
  onConnection?: (state: Connection, detail?: string) => void;
  /** For tests: how to make a socket. */
  socket?: (url: string) => WebSocket;
}

export interface Feed {
  close: () => void;
  /** Drops the connection now, as a network failure would (then reconnects). */
  drop: () => void;
}

const MAX_BACKOFF_MS = 10_000;

export function openFeed(options: FeedOptions): Feed {
  let after = options.after ?? 0;
  let socket: WebSocket | null = null;
  let closed = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const make = options.socket ?? ((url: string) => new WebSocket(url));

  const url = () => {
    const params = new URLSearchParams(options.query ?? {});
    // `after: 0` asks for the whole history: the server replays only when
    // `after` is given.
    if (after > 0 || options.after !== undefined) params.set('after', String(after));
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const qs = params.toString();
    return `${proto}//${location.host}${options.path}${qs ? `?${qs}` : ''}`;
  };

  const connect = () => {
    if (closed) return;
    options.onConnection?.('connecting');
    const ws = make(url());
    socket = ws;
    ws.onopen = () => {
      attempt = 0;
      options.onConnection?.('open');
    };
    ws.onmessage = (e) => {
      let message: FeedMessage;
      try {
        message = JSON.parse(String(e.data));
      } catch {
        return;
      }
      if (message.seq !== undefined && message.seq > after) after = message.seq;
      options.onMessage(message);
    };
    ws.onclose = (e) => {
      if (socket !== ws) return;
      socket = null;
      if (closed) return;
      options.onConnection?.('lost', e.reason || undefined);
      const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt++;
      timer = setTimeout(connect, delay);
    };
  };

  connect();
  return {
    close: () => {
      closed = true;
      clearTimeout(timer);
      socket?.close();
    },
    drop: () => socket?.close(4000, 'dropped by the client'),
  };
}
