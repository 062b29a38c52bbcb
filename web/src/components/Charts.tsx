// Loss and accuracy per epoch, from the epoch summaries a train task logs.

import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea'];
const tick = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 3 });

/** Accuracy lives in [0, 1], and the axis shows all of it; losses and
 * errors are never negative, so their axis starts at 0. */
export function domainFor(keys: string[]): [number, number | 'auto'] {
  return keys.length > 0 && keys.every((k) => /accuracy/.test(k)) ? [0, 1] : [0, 'auto'];
}

function Chart({ title, points, keys }: { title: string; points: Array<Record<string, number>>; keys: string[] }) {
  const shown = keys.filter((k) => points.some((p) => k in p));
  if (shown.length === 0) return null;
  const last = points[points.length - 1];
  return (
    <figure className="chart" aria-label={title}>
      <figcaption>
        {title}{' '}
        <span className="muted">
          (epoch {last.epoch}: {shown.map((k) => `${k} ${last[k]?.toFixed(4) ?? '–'}`).join(', ')})
        </span>
      </figcaption>
      <ResponsiveContainer width="100%" height={220}>
        <LineChart data={points} margin={{ top: 8, right: 16, bottom: 8, left: 8 }}>
          <CartesianGrid strokeDasharray="3 3" />
          <XAxis dataKey="epoch" allowDecimals={false} />
          <YAxis width={72} domain={domainFor(shown)} allowDataOverflow={false} tickFormatter={(v: number) => tick.format(v)} />
          <Tooltip />
          <Legend />
          {shown.map((k, i) => (
            <Line key={k} type="monotone" dataKey={k} stroke={COLORS[i % COLORS.length]} dot={false} isAnimationActive={false} />
          ))}
        </LineChart>
      </ResponsiveContainer>
    </figure>
  );
}

export function TrainingCharts({ points }: { points: Array<Record<string, number>> }) {
  if (points.length === 0) return <p className="muted">Charts appear after the first epoch.</p>;
  const losses = ['train_loss', 'val_loss'];
  const quality = Object.keys(points[points.length - 1]).filter((k) => k !== 'epoch' && !losses.includes(k));
  return (
    <div className="charts" data-testid="charts" data-epochs={points.length}>
      <Chart title="Loss" points={points} keys={losses} />
      <Chart title="Validation quality" points={points} keys={quality} />
    </div>
  );
}
