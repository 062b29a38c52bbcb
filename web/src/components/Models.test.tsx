import { act, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeXhr } from '../testing';
import type { Model } from '../types';
import { Models, specFrom } from './Models';

const model = (over: Partial<Model> = {}): Model => ({
  id: '99999999-2222-3333-4444-555555555555',
  name: 'colours',
  version: 1,
  reference: 'colours@1',
  status: 'validating',
  source: 'uploaded',
  input: 'image',
  format: 'torchscript',
  task_id: '88888888-2222-3333-4444-555555555555',
  kind: 'classification',
  target: null,
  metrics: {},
  size: 1234,
  download_url: '/api/v1/models/99999999-2222-3333-4444-555555555555/download',
  created_at: '2026-12-02T10:00:00Z',
  ...over,
});

describe('specFrom', () => {
  it('builds an image spec and names bad fields', () => {
    const base = { name: 'net', input: 'image', width: '32', height: '16', channels: '1', mean: '0.5', std: '0.25', resize: 'crop', features: '', labels: 'a\nb', output: 'logits' } as const;
    expect(specFrom(base).spec).toEqual({ name: 'net', input: 'image', output: 'logits', width: 32, height: 16, channels: 1, resize: 'crop', mean: [0.5], std: [0.25], labels: ['a', 'b'] });
    const bad = specFrom({ ...base, name: '../x', width: '0', std: '0' });
    expect(Object.keys(bad.errors).sort()).toEqual(['name', 'std', 'width']);
    expect(specFrom({ ...base, input: 'tabular' }).errors).toHaveProperty('features');
  });
});

describe('Models', () => {
  beforeEach(() => vi.stubGlobal('XMLHttpRequest', FakeXhr));
  afterEach(() => vi.unstubAllGlobals());

  it('uploads a model and shows its validation live', async () => {
    let status: Model['status'] = 'validating';
    vi.stubGlobal(
      'fetch',
      vi.fn(async (input: RequestInfo | URL) => {
        const url = String(input);
        if (url.startsWith('/api/v1/models?')) return new Response(JSON.stringify({ models: [], next_before: null }));
        return new Response(JSON.stringify(model({ status, metrics: status === 'ready' ? { outputs: 3 } : {} })));
      }),
    );
    render(<Models />);
    expect(await screen.findByText(/No models yet/)).toBeInTheDocument();
    await userEvent.click(screen.getByText('Upload a TorchScript model'));
    await userEvent.click(screen.getByRole('button', { name: 'Upload and validate' }));
    expect(screen.getByText('choose the TorchScript file (torch.jit.save)')).toBeInTheDocument();

    await userEvent.upload(screen.getByLabelText('Model file'), new File(['pt'], 'net.pt'));
    await userEvent.type(screen.getByLabelText('Name'), 'colours');
    await userEvent.type(screen.getByLabelText('Class labels'), 'red{enter}green{enter}blue');
    await userEvent.click(screen.getByRole('button', { name: 'Upload and validate' }));
    const xhr = FakeXhr.latest;
    expect(JSON.parse(String(xhr.sent?.get('spec')))).toMatchObject({ name: 'colours', input: 'image', width: 224, labels: ['red', 'green', 'blue'] });
    act(() => {
      xhr.status = 202;
      xhr.responseText = JSON.stringify(model());
      xhr.onload?.();
    });
    expect(await screen.findByTestId('model-colours@1')).toHaveTextContent('validating');
    status = 'ready';
    await waitFor(() => expect(screen.getByTestId('model-status')).toHaveTextContent('ready'), { timeout: 3000 });
    expect(screen.getByRole('button', { name: 'Predict' })).toBeInTheDocument();
    expect(screen.getByRole('link', { name: /Download/ })).toHaveAttribute('href', model().download_url);
  });
});
