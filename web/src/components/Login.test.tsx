import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { api, setCsrfToken } from '../api';
import { Login, codeFromHash } from './Login';

const me = { user: { id: 'u', name: 'alice', admin: false, created_at: '' }, via: 'session', csrf_token: 'c5rf' };

function answer(body: unknown, status = 200) {
  return vi.fn(async () => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } }));
}

afterEach(() => {
  vi.unstubAllGlobals();
  setCsrfToken(undefined);
  history.replaceState(null, '', '/');
});

describe('codeFromHash', () => {
  it('reads the one-time code from the fragment only', () => {
    expect(codeFromHash('#code=mlql_abc')).toBe('mlql_abc');
    expect(codeFromHash('#other=1')).toBeNull();
    expect(codeFromHash('')).toBeNull();
    expect(codeFromHash('#code=')).toBeNull();
  });
});

describe('Login', () => {
  it('logs in by itself with the code of a login link, then forgets the link', async () => {
    history.replaceState(null, '', '/login#code=mlql_one');
    const fetch = answer(me);
    vi.stubGlobal('fetch', fetch);
    const onLogin = vi.fn();
    render(<Login onLogin={onLogin} />);
    await waitFor(() => expect(onLogin).toHaveBeenCalledWith(me));
    const [url, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe('/api/v1/session');
    expect(JSON.parse(String(init.body))).toEqual({ code: 'mlql_one' });
    expect(location.hash).toBe('');
  });

  it('sends a pasted token once and shows why a bad one failed', async () => {
    vi.stubGlobal('fetch', answer({ error: { code: 'unauthorized', message: 'the credential is invalid, revoked or expired' } }, 401));
    const onLogin = vi.fn();
    render(<Login onLogin={onLogin} />);
    await userEvent.type(screen.getByLabelText('API token'), 'mlq_wrong');
    await userEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(await screen.findByRole('alert')).toHaveTextContent('invalid, revoked or expired');
    expect(onLogin).not.toHaveBeenCalled();
  });
});

describe('the CSRF token', () => {
  it('goes with every write, and not with reads', async () => {
    const fetch = answer({ tasks: [], next_before: null });
    vi.stubGlobal('fetch', fetch);
    setCsrfToken('c5rf');
    await api.tasks();
    await api.cancel('t').catch(() => undefined);
    const headers = (i: number) => new Headers((fetch.mock.calls[i] as unknown as [string, RequestInit])[1].headers);
    expect(headers(0).get('x-csrf-token')).toBeNull();
    expect(headers(1).get('x-csrf-token')).toBe('c5rf');
  });
});
