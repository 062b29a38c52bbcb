// The login page. A one-time login link (`/login#code=…`, printed by
// `mlq serve` on first run) logs in by itself; otherwise the user pastes an
// API token once, and the session lives on in an HttpOnly cookie.

import { useEffect, useRef, useState } from 'react';
import { api } from '../api';
import type { Me } from '../types';
import { ErrorMessage } from './Bits';

/** The login code in the URL's fragment, which browsers never send to the server. */
export function codeFromHash(hash: string): string | null {
  const code = new URLSearchParams(hash.replace(/^#/, '')).get('code');
  return code && code.trim() ? code.trim() : null;
}

export function Login({ onLogin }: { onLogin: (me: Me) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const tried = useRef(false);

  const login = async (credential: { token: string } | { code: string }) => {
    setBusy(true);
    setError(null);
    try {
      const me = await api.login(credential);
      // The code is spent: keep it out of the address bar and history.
      history.replaceState(null, '', '/');
      onLogin(me);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  useEffect(() => {
    const code = codeFromHash(location.hash);
    if (code && !tried.current) {
      tried.current = true;
      void login({ code });
    }
  }, []);

  return (
    <section className="login" aria-labelledby="login-heading">
      <h1 id="login-heading">Log in to mlq</h1>
      <p className="muted">
        Paste an API token. <code>mlq user create NAME</code> prints one; the token is sent once and the
        dashboard keeps a session cookie instead.
      </p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) void login({ token: token.trim() });
        }}
      >
        <label htmlFor="token">API token</label>
        <input
          id="token"
          type="password"
          autoComplete="off"
          spellCheck={false}
          value={token}
          onChange={(e) => setToken(e.target.value)}
          placeholder="mlq_…"
        />
        <button type="submit" disabled={busy || !token.trim()}>
          {busy ? 'Logging in…' : 'Log in'}
        </button>
      </form>
      <ErrorMessage error={error} onDismiss={() => setError(null)} />
    </section>
  );
}
