import { fireEvent, render, screen } from '@testing-library/react';
import { useState } from 'react';
import { describe, expect, it, vi } from 'vitest';
import { clamp, nudge, RegionPicker, toBox, type Region } from './RegionPicker';

describe('region maths', () => {
  it('normalises corners given in any order', () => {
    expect(toBox({ top_left: { x: 30, y: 5 }, bottom_right: { x: 10, y: 25 } })).toEqual({ x: 10, y: 5, width: 20, height: 20 });
  });
  it('keeps a box inside the image', () => {
    expect(clamp({ x: -5, y: 90, width: 50, height: 50 }, 100, 100)).toEqual({ x: 0, y: 90, width: 50, height: 10 });
  });
  it('moves with arrows and resizes with Shift, never leaving the image', () => {
    const b = { x: 90, y: 0, width: 10, height: 10 };
    expect(nudge(b, 'ArrowRight', false, 5, 100, 100)).toEqual(b);
    expect(nudge(b, 'ArrowLeft', false, 5, 100, 100)).toEqual({ ...b, x: 85 });
    expect(nudge(b, 'ArrowDown', true, 5, 100, 100)).toEqual({ ...b, height: 15 });
    expect(nudge(b, 'a', false, 5, 100, 100)).toBeNull();
  });
});

const file = new File([new Uint8Array([1])], 'cat.png', { type: 'image/png' });

function Harness({ onRegion }: { onRegion: (r: Region | null) => void }) {
  const [region, setRegion] = useState<Region | null>(null);
  return (
    <RegionPicker
      file={file}
      region={region}
      onChange={(r) => {
        setRegion(r);
        onRegion(r);
      }}
    />
  );
}

describe('RegionPicker', () => {
  it('draws, moves, resizes and clears a region from the keyboard', () => {
    URL.createObjectURL = vi.fn(() => 'blob:cat');
    URL.revokeObjectURL = vi.fn();
    const seen = vi.fn();
    render(<Harness onRegion={seen} />);
    const img = screen.getByAltText('The chosen image, cat.png');
    Object.defineProperty(img, 'naturalWidth', { value: 400 });
    Object.defineProperty(img, 'naturalHeight', { value: 200 });
    fireEvent.load(img);
    expect(screen.getByText('No region: the whole 400 × 200 image is used.')).toBeInTheDocument();
    const frame = screen.getByRole('application');
    fireEvent.keyDown(frame, { key: 'Enter' });
    expect(screen.getByText('From (100, 50) to (300, 150): 200 × 100 px')).toBeInTheDocument();
    fireEvent.keyDown(frame, { key: 'ArrowRight' });
    fireEvent.keyDown(frame, { key: 'ArrowDown', shiftKey: true });
    expect(seen).toHaveBeenLastCalledWith({ top_left: { x: 104, y: 50 }, bottom_right: { x: 304, y: 154 } });
    // Typed numbers adjust it too.
    fireEvent.change(screen.getByLabelText('width'), { target: { value: '50' } });
    expect(screen.getByText('From (104, 50) to (154, 154): 50 × 104 px')).toBeInTheDocument();
    fireEvent.click(screen.getByRole('button', { name: 'Clear region' }));
    expect(seen).toHaveBeenLastCalledWith(null);
    expect(screen.queryByTestId('region-box')).toBeNull();
  });
});
