-- Registers a model ($1) as the next version of its name ($9): a `train`
-- attempt's, or an upload waiting for its validation task ($2). The
-- name's counter row is taken (or made) and bumped in the same statement,
-- so concurrent registrations of one name get distinct versions.
WITH version AS (
    INSERT INTO model_names (name, last_version) VALUES ($9, 1)
    ON CONFLICT (name) DO UPDATE SET last_version = model_names.last_version + 1
    RETURNING last_version
)
INSERT INTO models (id, task_id, kind, target, spec, metrics, weights_key, spec_key,
                    name, version, input, format, size, status, source)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, version.last_version, $10, $11, $12, $13, $14
FROM version
RETURNING *
