// Drawing the region of an image a model should look at: drag with a
// mouse, a pen or a finger; or use the keyboard (arrows move the box,
// Shift+arrows resize it, Delete clears it); or type its numbers. The
// region is in the original image's pixels, as `predict` takes it.

import { useEffect, useRef, useState } from 'react';

export interface Region {
  top_left: { x: number; y: number };
  bottom_right: { x: number; y: number };
}

interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

export function toBox(r: Region): Box {
  const x = Math.min(r.top_left.x, r.bottom_right.x);
  const y = Math.min(r.top_left.y, r.bottom_right.y);
  return { x, y, width: Math.abs(r.bottom_right.x - r.top_left.x), height: Math.abs(r.bottom_right.y - r.top_left.y) };
}

export function toRegion(b: Box): Region {
  return { top_left: { x: b.x, y: b.y }, bottom_right: { x: b.x + b.width, y: b.y + b.height } };
}

/** A box kept inside an image of `w` × `h`, with whole-pixel corners. */
export function clamp(b: Box, w: number, h: number): Box {
  const x = Math.round(Math.min(Math.max(b.x, 0), w));
  const y = Math.round(Math.min(Math.max(b.y, 0), h));
  return {
    x,
    y,
    width: Math.round(Math.min(Math.max(b.width, 0), w - x)),
    height: Math.round(Math.min(Math.max(b.height, 0), h - y)),
  };
}

/** What a key does to the box: move it, or with Shift resize it. */
export function nudge(b: Box, key: string, shift: boolean, step: number, w: number, h: number): Box | null {
  const d: Record<string, [number, number]> = {
    ArrowLeft: [-step, 0],
    ArrowRight: [step, 0],
    ArrowUp: [0, -step],
    ArrowDown: [0, step],
  };
  const m = d[key];
  if (!m) return null;
  if (shift) return clamp({ ...b, width: Math.max(1, b.width + m[0]), height: Math.max(1, b.height + m[1]) }, w, h);
  return clamp({ ...b, x: Math.min(Math.max(b.x + m[0], 0), w - b.width), y: Math.min(Math.max(b.y + m[1], 0), h - b.height) }, w, h);
}

export function RegionPicker({
  file,
  region,
  onChange,
}: {
  file: File;
  region: Region | null;
  onChange: (r: Region | null) => void;
}) {
  const [url, setUrl] = useState<string | null>(null);
  const [size, setSize] = useState<{ w: number; h: number } | null>(null);
  const frame = useRef<HTMLDivElement>(null);
  const start = useRef<{ x: number; y: number } | null>(null);

  useEffect(() => {
    const u = URL.createObjectURL(file);
    setUrl(u);
    setSize(null);
    return () => URL.revokeObjectURL(u);
  }, [file]);

  const box = region ? toBox(region) : null;
  const w = size?.w ?? 1;
  const h = size?.h ?? 1;

  /** The pointer's position in the image's own pixels. */
  const at = (e: React.PointerEvent) => {
    const r = frame.current!.getBoundingClientRect();
    return {
      x: Math.min(Math.max(((e.clientX - r.left) / r.width) * w, 0), w),
      y: Math.min(Math.max(((e.clientY - r.top) / r.height) * h, 0), h),
    };
  };
  const drag = (e: React.PointerEvent, done: boolean) => {
    if (!start.current) return;
    const p = at(e);
    const b = clamp(
      {
        x: Math.min(start.current.x, p.x),
        y: Math.min(start.current.y, p.y),
        width: Math.abs(p.x - start.current.x),
        height: Math.abs(p.y - start.current.y),
      },
      w,
      h,
    );
    onChange(b.width > 0 && b.height > 0 ? toRegion(b) : done ? null : region);
    if (done) start.current = null;
  };

  const onKey = (e: React.KeyboardEvent) => {
    if (!size) return;
    if (e.key === 'Delete' || e.key === 'Backspace' || e.key === 'Escape') {
      if (box) {
        e.preventDefault();
        onChange(null);
      }
      return;
    }
    if (!box && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      onChange(toRegion(clamp({ x: w / 4, y: h / 4, width: w / 2, height: h / 2 }, w, h)));
      return;
    }
    if (!box) return;
    const step = Math.max(1, Math.round(Math.max(w, h) / 100)) * (e.altKey ? 10 : 1);
    const next = nudge(box, e.key, e.shiftKey, step, w, h);
    if (next) {
      e.preventDefault();
      onChange(toRegion(next));
    }
  };

  const edit = (key: keyof Box) => (e: React.ChangeEvent<HTMLInputElement>) => {
    const v = Number(e.target.value);
    if (!Number.isFinite(v)) return;
    const b = clamp({ ...(box ?? { x: 0, y: 0, width: w, height: h }), [key]: v }, w, h);
    onChange(b.width > 0 && b.height > 0 ? toRegion(b) : null);
  };

  const pct = (v: number, of: number) => `${(v / of) * 100}%`;
  return (
    <div className="region-picker">
      <span className="label" id="region-label">
        Region (optional): drag on the image, or focus it and use the arrow keys
      </span>
      <div
        ref={frame}
        className="region-frame"
        role="application"
        aria-labelledby="region-label"
        aria-describedby="region-help region-value"
        tabIndex={0}
        onKeyDown={onKey}
        onPointerDown={(e) => {
          if (!size) return;
          (e.target as Element).setPointerCapture?.(e.pointerId);
          start.current = at(e);
        }}
        onPointerMove={(e) => drag(e, false)}
        onPointerUp={(e) => drag(e, true)}
        onPointerCancel={() => (start.current = null)}
        style={{ touchAction: 'none' }}
        data-testid="region-frame"
      >
        {url && (
          <img
            src={url}
            alt={`The chosen image, ${file.name}`}
            draggable={false}
            onLoad={(e) => setSize({ w: e.currentTarget.naturalWidth, h: e.currentTarget.naturalHeight })}
          />
        )}
        {box && size && (
          <div
            className="region-box"
            data-testid="region-box"
            style={{ left: pct(box.x, w), top: pct(box.y, h), width: pct(box.width, w), height: pct(box.height, h) }}
          />
        )}
      </div>
      <small id="region-help" className="muted">
        Enter draws a box; arrows move it, Shift+arrows resize it (Alt for bigger steps); Delete clears it.
      </small>
      <p id="region-value" aria-live="polite">
        {box
          ? `From (${box.x}, ${box.y}) to (${box.x + box.width}, ${box.y + box.height}): ${box.width} × ${box.height} px`
          : size
            ? `No region: the whole ${size.w} × ${size.h} image is used.`
            : 'Loading the image…'}
      </p>
      {size && (
        <div className="region-numbers">
          {(['x', 'y', 'width', 'height'] as (keyof Box)[]).map((k) => (
            <label key={k}>
              {k}
              <input
                type="number"
                min={0}
                max={k === 'x' || k === 'width' ? w : h}
                value={box ? box[k] : ''}
                placeholder={k === 'width' ? String(w) : k === 'height' ? String(h) : '0'}
                onChange={edit(k)}
              />
            </label>
          ))}
          <button type="button" onClick={() => onChange(null)} disabled={!box}>
            Clear region
          </button>
        </div>
      )}
    </div>
  );
}
