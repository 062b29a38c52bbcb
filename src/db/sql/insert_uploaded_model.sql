-- Registers an uploaded TorchScript model ($1) as the next version of its
-- name ($5), `validating` until its task ($2) has run it. The name's
-- counter row is taken (or made) and bumped in the same statement.
WITH version AS (
    INSERT INTO model_names (name, last_version) VALUES ($5, 1)
    ON CONFLICT (name) DO UPDATE SET last_version = model_names.last_version + 1
    RETURNING last_version
)
INSERT INTO models (id, task_id, kind, target, spec, metrics, weights_key, spec_key,
                    name, version, status, source, input, format, size)
SELECT $1, $2, 'classification', NULL, $3, '{}', $4, NULL,
       $5, version.last_version, 'validating', 'uploaded', $6, 'torchscript', $7
FROM version
RETURNING *
