// Drag and drop of one or many files, with a keyboard-usable file picker.

import { useRef, useState } from 'react';
import { formatBytes } from '../api';

export function Dropzone({
  files,
  onChange,
  multiple = true,
  accept,
}: {
  files: File[];
  onChange: (files: File[]) => void;
  multiple?: boolean;
  accept?: string;
}) {
  const input = useRef<HTMLInputElement>(null);
  const [over, setOver] = useState(false);
  const add = (list: FileList | null) => {
    if (!list || list.length === 0) return;
    const added = [...list];
    onChange(multiple ? [...files, ...added] : added.slice(0, 1));
  };

  return (
    <div>
      <div
        className={`dropzone${over ? ' over' : ''}`}
        data-testid="dropzone"
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          add(e.dataTransfer.files);
        }}
      >
        <p>Drop {multiple ? 'files' : 'a file'} here, or</p>
        <button type="button" onClick={() => input.current?.click()}>
          Choose {multiple ? 'files' : 'a file'}
        </button>
        <input
          ref={input}
          type="file"
          hidden
          multiple={multiple}
          accept={accept}
          aria-label="Files to upload"
          onChange={(e) => {
            add(e.target.files);
            e.target.value = '';
          }}
        />
      </div>
      {files.length > 0 && (
        <ul className="files" aria-label="Selected files">
          {files.map((f, i) => (
            <li key={`${f.name}-${i}`}>
              <span>{f.name}</span> <span className="muted">{formatBytes(f.size)}</span>
              <button
                type="button"
                className="link"
                aria-label={`Remove ${f.name}`}
                onClick={() => onChange(files.filter((_, j) => j !== i))}
              >
                remove
              </button>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
