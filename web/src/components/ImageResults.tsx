// An image predict's results: each image with the region the model looked
// at drawn over it, next to its likeliest classes. Images that came inside
// a zip are listed without a picture (only the zip was stored).

interface Class {
  label: string;
  index: number;
  probability: number;
}

export interface ImagePrediction {
  file: string;
  /** Which of the task's files it is; absent for an image inside a zip. */
  input?: number;
  width?: number;
  height?: number;
  region?: { x: number; y: number; width: number; height: number };
  top?: Class[];
  error?: { code: string; message: string };
}

/** The inline predictions of a result, when they are image predictions. */
export function imagePredictions(result: Record<string, unknown> | null): ImagePrediction[] | null {
  const p = result?.predictions;
  if (!Array.isArray(p) || p.length === 0) return null;
  return typeof (p[0] as Record<string, unknown>).file === 'string' ? (p as ImagePrediction[]) : null;
}

const percent = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 });

export function ImageResults({
  taskId,
  inputs,
  predictions,
}: {
  taskId: string;
  inputs: { name: string }[];
  predictions: ImagePrediction[];
}) {
  return (
    <div className="image-results" data-testid="image-results">
      {predictions.map((p, i) => {
        const n = p.input !== undefined && p.input < inputs.length ? p.input : -1;
        const box = p.region && p.width && p.height ? p.region : null;
        return (
          <figure key={i} data-testid="image-result">
            {n >= 0 && (
              <div className="region-overlay">
                <img src={`/api/v1/tasks/${taskId}/inputs/${n}`} alt={p.file} loading="lazy" />
                {box && (
                  <div
                    className="region-box"
                    role="img"
                    aria-label={`region ${box.width} × ${box.height} at (${box.x}, ${box.y})`}
                    style={{
                      left: `${(box.x / p.width!) * 100}%`,
                      top: `${(box.y / p.height!) * 100}%`,
                      width: `${(box.width / p.width!) * 100}%`,
                      height: `${(box.height / p.height!) * 100}%`,
                    }}
                  />
                )}
              </div>
            )}
            <figcaption>
              <strong>{p.file}</strong>
              {p.error ? (
                <span className="field-error">
                  {' '}
                  {p.error.code}: {p.error.message}
                </span>
              ) : (
                <ol className="top-classes">
                  {p.top?.map((c) => (
                    <li key={c.index}>
                      {c.label} <span className="muted">{percent.format(c.probability)}</span>
                    </li>
                  ))}
                </ol>
              )}
            </figcaption>
          </figure>
        );
      })}
    </div>
  );
}
