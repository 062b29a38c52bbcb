import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { openFeed, type Connection } from './feed';
import { FakeSocket } from './testing';

describe('openFeed', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    FakeSocket.all = [];
  });
  afterEach(() => vi.useRealTimers());

  it('reconnects after a drop, resuming after the newest number seen', () => {
    const states: Connection[] = [];
    const messages: unknown[] = [];
    const feed = openFeed({
      path: '/api/v1/events',
      onMessage: (m) => messages.push(m),
      onConnection: (s) => states.push(s),
      socket: (url) => new FakeSocket(url) as unknown as WebSocket,
    });
    const first = FakeSocket.latest();
    expect(first.url).toMatch(/\/api\/v1\/events$/);
    first.open();
    first.emit({ type: 'snapshot', seq: 7, tasks: [] });
    first.emit({ type: 'progress', task: 't', seq: 12, progress: {} });
    first.drop('server restart');
    expect(states).toEqual(['connecting', 'open', 'lost']);

    vi.advanceTimersByTime(10_000);
    const second = FakeSocket.latest();
    expect(second).not.toBe(first);
    expect(second.url).toMatch(/after=12$/);
    second.open();
    expect(states.at(-1)).toBe('open');
    expect(messages).toHaveLength(2);
    feed.close();
    vi.advanceTimersByTime(60_000);
    expect(FakeSocket.all).toHaveLength(2);
  });

  it('asks for the whole history when told to start after 0', () => {
    const feed = openFeed({
      path: '/api/v1/tasks/t/events',
      after: 0,
      onMessage: () => undefined,
      socket: (url) => new FakeSocket(url) as unknown as WebSocket,
    });
    expect(FakeSocket.latest().url).toMatch(/\/api\/v1\/tasks\/t\/events\?after=0$/);
    feed.close();
  });
});
