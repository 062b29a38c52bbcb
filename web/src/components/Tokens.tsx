// The user's API tokens: mint one (shown once), see when each was last
// used, revoke.

import { useEffect, useState } from 'react';
import { api } from '../api';
import type { ApiToken } from '../types';
import { ErrorMessage } from './Bits';

const when = (t: string | null) => (t ? new Date(t).toLocaleString() : '–');

export function Tokens() {
  const [tokens, setTokens] = useState<ApiToken[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [name, setName] = useState('');
  const [expiresIn, setExpiresIn] = useState('90d');
  const [minted, setMinted] = useState<string | null>(null);

  const load = () => api.tokens().then((p) => setTokens(p.tokens), setError);
  useEffect(() => {
    void load();
  }, []);

  const mint = async () => {
    setError(null);
    try {
      const t = await api.mintToken(name.trim(), expiresIn || undefined);
      setMinted(t.token);
      setName('');
      await load();
    } catch (e) {
      setError(e);
    }
  };

  const revoke = async (t: ApiToken) => {
    if (!window.confirm(`Revoke token ${t.name || t.id}? Clients using it stop working at once.`)) return;
    setError(null);
    try {
      await api.revokeToken(t.id);
      await load();
    } catch (e) {
      setError(e);
    }
  };

  return (
    <section aria-labelledby="tokens-heading">
      <h1 id="tokens-heading">API tokens</h1>
      <form
        className="mint"
        onSubmit={(e) => {
          e.preventDefault();
          void mint();
        }}
      >
        <label htmlFor="token-name">Name</label>
        <input id="token-name" value={name} maxLength={100} onChange={(e) => setName(e.target.value)} placeholder="laptop" />
        <label htmlFor="token-expiry">Expires in</label>
        <select id="token-expiry" value={expiresIn} onChange={(e) => setExpiresIn(e.target.value)}>
          <option value="1d">1 day</option>
          <option value="30d">30 days</option>
          <option value="90d">90 days</option>
          <option value="365d">1 year</option>
          <option value="">never</option>
        </select>
        <button type="submit">Create token</button>
      </form>
      {minted && (
        <div className="minted" role="status">
          <p>Your new token. Copy it now: it is not shown again.</p>
          <code data-testid="minted-token">{minted}</code>
          <button type="button" className="link" onClick={() => setMinted(null)}>
            Done
          </button>
        </div>
      )}
      <ErrorMessage error={error} onDismiss={() => setError(null)} />
      {tokens && tokens.length === 0 && <p className="empty">No tokens yet.</p>}
      {tokens && tokens.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Created</th>
                <th scope="col">Last used</th>
                <th scope="col">Expires</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {tokens.map((t) => (
                <tr key={t.id} className={t.revoked_at ? 'revoked' : undefined}>
                  <td>{t.name || <span className="muted">unnamed</span>}</td>
                  <td>{when(t.created_at)}</td>
                  <td>{when(t.last_used_at)}</td>
                  <td>{t.expires_at ? when(t.expires_at) : 'never'}</td>
                  <td>
                    {t.revoked_at ? (
                      <span className="muted">revoked</span>
                    ) : (
                      <button type="button" className="link danger" onClick={() => revoke(t)}>
                        Revoke
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
