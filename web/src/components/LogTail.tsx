// A live log tail that follows new lines unless the reader scrolled up.

import { useEffect, useRef } from 'react';
import type { LogLine } from '../types';

export function LogTail({ lines, dropped }: { lines: LogLine[]; dropped: number }) {
  const box = useRef<HTMLOListElement>(null);
  const following = useRef(true);
  useEffect(() => {
    const el = box.current;
    if (el && following.current) el.scrollTop = el.scrollHeight;
  }, [lines.length]);
  return (
    <>
      <ol
        className="log"
        ref={box}
        role="log"
        aria-label="Task log"
        tabIndex={0}
        onScroll={(e) => {
          const el = e.currentTarget;
          following.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
        }}
      >
        {lines.length === 0 && <li className="muted">No log lines yet.</li>}
        {lines.map((l) => (
          <li key={l.seq} className={`log-${l.level}`}>
            <time dateTime={l.at}>{new Date(l.at).toLocaleTimeString()}</time> <span className="level">{l.level}</span>{' '}
            {l.message}
          </li>
        ))}
      </ol>
      {dropped > 0 && <p className="muted">{dropped} later line(s) were over the log limit and not kept.</p>}
    </>
  );
}
