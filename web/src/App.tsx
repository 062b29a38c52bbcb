// The shell: navigation, the connection banner, and the page for the URL.
// The task list follows the all-tasks feed for as long as the page is open.

import { useCallback, useEffect, useState } from 'react';
import { api, setCsrfToken, whenUnauthorized } from './api';
import { openFeed, type Connection } from './feed';
import { link, navigate, useRoute } from './router';
import { addTask, applyToList, emptyList, type TaskList } from './store';
import { ConnectionBanner } from './components/ConnectionBanner';
import { Models } from './components/Models';
import { NewTask } from './components/NewTask';
import { TaskDetail } from './components/TaskDetail';
import { TaskTable } from './components/TaskTable';
import { Login } from './components/Login';
import { Tokens } from './components/Tokens';
import { ApiDocs } from './components/ApiDocs';
import type { Me } from './types';

function useTaskList() {
  const [list, setList] = useState<TaskList>(emptyList);
  const [connection, setConnection] = useState<{ state: Connection; detail?: string }>({ state: 'connecting' });
  const fetchMissing = useCallback((id: string) => {
    api.task(id).then(
      (t) => setList((l) => addTask(l, t)),
      () => undefined, // deleted meanwhile: its deletion event follows
    );
  }, []);
  useEffect(() => {
    const feed = openFeed({
      path: '/api/v1/events',
      query: { limit: '200' },
      onConnection: (state, detail) => setConnection({ state, detail }),
      onMessage: (m) => setList((l) => applyToList(l, m, fetchMissing)),
    });
    return () => feed.close();
  }, [fetchMissing]);
  return { list, connection };
}

/** Who is logged in: `undefined` while asking, `null` when no one is. */
function useMe() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const accept = useCallback((m: Me | null) => {
    setCsrfToken(m?.csrf_token);
    setMe(m);
  }, []);
  useEffect(() => {
    whenUnauthorized(() => accept(null));
    api.me().then(accept, () => accept(null));
  }, [accept]);
  return [me, accept] as const;
}

export function App() {
  const [me, setMe] = useMe();
  useEffect(() => {
    document.title = me === null ? 'Log in · mlq' : 'mlq';
  }, [me]);
  if (me === undefined) return <p className="muted">Loading…</p>;
  if (me === null) {
    return (
      <main id="main">
        <Login
          onLogin={(m) => {
            setMe(m);
            navigate({ page: 'tasks' });
          }}
        />
      </main>
    );
  }
  return <Shell me={me} onLogout={() => setMe(null)} />;
}

function Shell({ me, onLogout }: { me: Me; onLogout: () => void }) {
  const route = useRoute();
  const { list, connection } = useTaskList();
  const model = new URLSearchParams(location.search).get('model') ?? undefined;

  useEffect(() => {
    const titles = { tasks: 'Tasks', new: 'New task', task: 'Task', models: 'Models', tokens: 'API tokens', api: 'API', login: 'Tasks' };
    document.title = `${titles[route.page]} · mlq`;
  }, [route]);

  const logout = async () => {
    try {
      await api.logout();
    } finally {
      onLogout();
      navigate('/login');
    }
  };

  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <a {...link({ page: 'tasks' })} className="brand">
          mlq
        </a>
        <nav aria-label="Main">
          <a {...link({ page: 'tasks' })} aria-current={route.page === 'tasks' ? 'page' : undefined}>
            Tasks
          </a>
          <a {...link({ page: 'new' })} aria-current={route.page === 'new' ? 'page' : undefined}>
            New task
          </a>
          <a {...link({ page: 'models' })} aria-current={route.page === 'models' ? 'page' : undefined}>
            Models
          </a>
          <a {...link({ page: 'api' })} aria-current={route.page === 'api' ? 'page' : undefined}>
            API
          </a>
        </nav>
        <span className="who">
          <a {...link({ page: 'tokens' })} aria-current={route.page === 'tokens' ? 'page' : undefined} title="API tokens">
            {me.user.name}
            {me.user.admin ? ' (admin)' : ''}
          </a>
          <button type="button" className="link" onClick={logout}>
            Log out
          </button>
        </span>
        <span className={`live live-${connection.state}`} aria-label={`Live updates: ${connection.state}`}>
          {connection.state === 'open' ? 'live' : connection.state}
        </span>
      </header>
      <ConnectionBanner state={connection.state} detail={connection.detail} />
      <main id="main">
        {(route.page === 'tasks' || route.page === 'login') && <TaskTable tasks={list.order.map((id) => list.byId[id])} />}
        {route.page === 'new' && <NewTask key={model} initialModel={model} />}
        {route.page === 'task' && <TaskDetail id={route.id} />}
        {route.page === 'models' && <Models />}
        {route.page === 'tokens' && <Tokens />}
        {route.page === 'api' && <ApiDocs />}
      </main>
    </>
  );
}


