// Looking at stored files: the first rows of a CSV, an image thumbnail.
//
// ImagePreview renders its children over the image, in the image's own
// pixel box: that is where a region tool (drawing the rectangle to
// predict) drops in when image prediction lands.

import { useEffect, useState } from 'react';
import { api } from '../api';
import { ErrorMessage } from './Bits';

/** Parses CSV text (quotes included) into rows; the last, cut-off line is dropped. */
export function parseCsv(text: string, maxRows: number, complete = false): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length && rows.length < maxRows; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(cell);
      cell = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
    } else cell += c;
  }
  if (complete && rows.length < maxRows && (cell || row.length)) rows.push([...row, cell]);
  return rows;
}

export function CsvTable({ rows, caption }: { rows: string[][]; caption: string }) {
  if (rows.length === 0) return <p className="muted">Empty file.</p>;
  const [head, ...body] = rows;
  return (
    <div className="table-wrap">
      <table className="csv">
        <caption>{caption}</caption>
        <thead>
          <tr>
            {head.map((h, i) => (
              <th key={i} scope="col">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {body.map((r, i) => (
            <tr key={i}>
              {r.map((c, j) => (
                <td key={j}>{c}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function CsvPreview({ url, size, caption, rows = 11 }: { url: string; size: number; caption: string; rows?: number }) {
  const [data, setData] = useState<string[][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    const bytes = 64 * 1024;
    api.head(url, bytes).then(
      (text) => live && setData(parseCsv(text, rows, size <= bytes)),
      (e) => live && setError(e),
    );
    return () => {
      live = false;
    };
  }, [url, size, rows]);
  if (error) return <ErrorMessage error={error} />;
  if (!data) return <p className="muted">Loading preview…</p>;
  return <CsvTable rows={data} caption={caption} />;
}

export function ImagePreview({ url, name, children }: { url: string; name: string; children?: React.ReactNode }) {
  return (
    <div className="image-preview">
      <img src={url} alt={name} loading="lazy" />
      {children && <div className="image-overlay">{children}</div>}
    </div>
  );
}

export function InputPreview({ url, name, contentType, size }: { url: string; name: string; contentType: string; size: number }) {
  if (contentType.startsWith('image/')) return <ImagePreview url={url} name={name} />;
  const csv = contentType === 'text/csv' || /\.(csv|txt)$/i.test(name);
  if (csv)
    return <CsvPreview url={url} size={size} caption={`First rows of ${name}`} />;
  return <p className="muted">No preview for {contentType}.</p>;
}
