import type { Connection } from '../feed';

/** Shown while the live feed is down; the feed reconnects by itself. */
export function ConnectionBanner({ state, detail }: { state: Connection; detail?: string }) {
  if (state !== 'lost') return null;
  return (
    <div className="banner" role="status">
      Connection to mlq lost{detail ? ` (${detail})` : ''}. Reconnecting…
    </div>
  );
}
