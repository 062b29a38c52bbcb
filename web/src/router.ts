// A small history router: the dashboard has a handful of pages, which does not
// warrant a routing library. mlq serves index.html for every page path.

import { useEffect, useState } from 'react';

export type Route =
  | { page: 'tasks' }
  | { page: 'new' }
  | { page: 'task'; id: string }
  | { page: 'models' }
  | { page: 'tokens' }
  | { page: 'api' }
  | { page: 'login' };

export function parse(path: string): Route {
  const task = path.match(/^\/tasks\/([0-9a-f-]{36})\/?$/i);
  if (task) return { page: 'task', id: task[1] };
  if (path.startsWith('/new')) return { page: 'new' };
  if (path.startsWith('/models')) return { page: 'models' };
  if (path.startsWith('/tokens')) return { page: 'tokens' };
  if (path === '/api-docs' || path.startsWith('/api-docs/')) return { page: 'api' };
  if (path.startsWith('/login')) return { page: 'login' };
  return { page: 'tasks' };
}

export function href(route: Route): string {
  switch (route.page) {
    case 'task':
      return `/tasks/${route.id}`;
    case 'new':
      return '/new';
    case 'models':
      return '/models';
    case 'tokens':
      return '/tokens';
    case 'api':
      return '/api-docs';
    case 'login':
      return '/login';
    default:
      return '/';
  }
}

export function navigate(route: Route | string) {
  const path = typeof route === 'string' ? route : href(route);
  if (path === location.pathname) return;
  history.pushState(null, '', path);
  window.dispatchEvent(new PopStateEvent('popstate'));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.pathname));
  useEffect(() => {
    const onPop = () => setRoute(parse(location.pathname));
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, []);
  return route;
}

/** Props for an <a> that navigates in place (and still opens in a new tab). */
export function link(route: Route) {
  const to = href(route);
  return {
    href: to,
    onClick: (e: React.MouseEvent) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      navigate(to);
    },
  };
}
