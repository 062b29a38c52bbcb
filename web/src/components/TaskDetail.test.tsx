import { act, render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeSocket, task } from '../testing';
import { TaskDetail } from './TaskDetail';

const t = task();

function mockFetch(routes: Record<string, () => Response>) {
  return vi.fn(async (input: RequestInfo | URL) => {
    const url = String(input);
    for (const [prefix, respond] of Object.entries(routes)) if (url.startsWith(prefix)) return respond();
    return new Response(JSON.stringify({ error: { code: 'not_found', message: `no route for ${url}` } }), { status: 404 });
  });
}

const json = (body: unknown, status = 200) => () => new Response(JSON.stringify(body), { status });

describe('TaskDetail', () => {
  beforeEach(() => {
    FakeSocket.all = [];
    vi.stubGlobal('WebSocket', FakeSocket);
    vi.stubGlobal(
      'fetch',
      mockFetch({
        [`/api/v1/tasks/${t.id}/logs`]: json({ lines: [], next_after: 0, dropped: 0 }),
        [`/api/v1/tasks/${t.id}/inputs/0`]: () => new Response('a,label\n1,0\n2,1\n'),
        [`/api/v1/tasks/${t.id}/retry`]: json({ error: { code: 'task_not_retryable', message: 'task is running; only failed or cancelled tasks can be retried' } }, 409),
      }),
    );
  });
  afterEach(() => vi.unstubAllGlobals());

  it('follows the task live: snapshot, progress, logs and epoch charts', async () => {
    render(<TaskDetail id={t.id} />);
    const socket = FakeSocket.latest();
    expect(socket.url).toContain(`/api/v1/tasks/${t.id}/events`);
    act(() => {
      socket.open();
      socket.emit({ type: 'snapshot', seq: 10, task: t });
    });
    expect(await screen.findByRole('heading', { level: 1 })).toHaveTextContent(t.id);
    expect(screen.getByRole('progressbar', { name: 'Task progress' })).toHaveAttribute('aria-valuenow', '25');

    act(() => {
      socket.emit({ type: 'progress', task: t.id, seq: 11, progress: { fraction: 0.5, stage: 'epoch 2/4', message: '', metrics: {} } });
      socket.emit({ type: 'log', task: t.id, seq: 12, at: '2026-11-26T10:00:03Z', level: 'info', message: 'epoch 1/4: train_loss 0.7', data: { epoch: 1, train_loss: 0.7, val_loss: 0.8 } });
      socket.emit({ type: 'log', task: t.id, seq: 13, at: '2026-11-26T10:00:04Z', level: 'info', message: 'epoch 2/4: train_loss 0.5', data: { epoch: 2, train_loss: 0.5, val_loss: 0.6 } });
      // An older progress event arriving late changes nothing.
      socket.emit({ type: 'progress', task: t.id, seq: 9, progress: { fraction: 0.1, stage: 'old', message: '', metrics: {} } });
    });
    expect(screen.getByRole('progressbar', { name: 'Task progress' })).toHaveAttribute('aria-valuenow', '50');
    expect(screen.getByTestId('stage')).toHaveTextContent('epoch 2/4');
    expect(screen.getByRole('log')).toHaveTextContent('epoch 2/4: train_loss 0.5');
    // The chart library loads lazily: allow for a slow, busy machine.
    expect(await screen.findByTestId('charts', {}, { timeout: 10_000 })).toHaveAttribute('data-epochs', '2');
    // The CSV input is previewed.
    expect(await screen.findByRole('table', { name: /First rows of data.csv/ })).toBeInTheDocument();
  });

  it('shows an API error in words and a banner while the feed is down', async () => {
    render(<TaskDetail id={t.id} />);
    const socket = FakeSocket.latest();
    act(() => {
      socket.open();
      socket.emit({ type: 'snapshot', seq: 10, task: { ...t, status: 'failed', error: { code: 'diverged', message: 'training diverged' } } });
    });
    expect(await screen.findByRole('alert')).toHaveTextContent('diverged: training diverged');
    await userEvent.click(screen.getByRole('button', { name: 'Retry' }));
    const refusal = await screen.findByText(/only failed or cancelled tasks can be retried/);
    expect(refusal.closest('[role=alert]')).not.toBeNull();
    act(() => socket.drop('server restart'));
    expect(screen.getByRole('status')).toHaveTextContent('Connection to mlq lost (server restart). Reconnecting');
  });

  it('says so when the task is deleted elsewhere', async () => {
    render(<TaskDetail id={t.id} />);
    const socket = FakeSocket.latest();
    act(() => {
      socket.emit({ type: 'snapshot', seq: 10, task: t });
      socket.emit({ type: 'deleted', task: t.id, seq: 11 });
    });
    expect(await screen.findByRole('heading', { name: 'Task deleted' })).toBeInTheDocument();
  });

  it('shows params as a table, and image predictions with their region', async () => {
    const done = task({
      command: 'predict',
      status: 'succeeded',
      params: { model: 'abc', region: { top_left: { x: 1, y: 2 }, bottom_right: { x: 11, y: 12 } } },
      inputs: [{ name: 'cat.png', size: 10, sha256: 'ab'.repeat(32), content_type: 'image/png' }],
      result: {
        predictions: [
          { file: 'cat.png', input: 0, width: 40, height: 20, region: { x: 1, y: 2, width: 10, height: 10 }, top: [{ label: 'cat', index: 0, probability: 0.875 }] },
          { file: 'bad.png', error: { code: 'invalid_image', message: 'the image is corrupt' } },
        ],
      },
    });
    render(<TaskDetail id={t.id} />);
    act(() => {
      FakeSocket.latest().open();
      FakeSocket.latest().emit({ type: 'snapshot', seq: 10, task: done });
    });
    expect(await screen.findByRole('rowheader', { name: 'model' })).toBeInTheDocument();
    expect(screen.getByText('abc')).toBeInTheDocument();
    const figures = screen.getAllByTestId('image-result');
    expect(figures).toHaveLength(2);
    expect(figures[0]).toHaveTextContent('cat 87.5%');
    expect(screen.getAllByAltText('cat.png')[0]).toHaveAttribute('src', `/api/v1/tasks/${t.id}/inputs/0`);
    const box = screen.getByRole('img', { name: 'region 10 × 10 at (1, 2)' });
    expect(box.style.left).toBe('2.5%');
    expect(box.style.width).toBe('25%');
    expect(figures[1]).toHaveTextContent('invalid_image: the image is corrupt');
  });
});
