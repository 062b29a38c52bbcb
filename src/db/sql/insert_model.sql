-- Registers the model a succeeded `train` attempt produced, as the next
-- version of its name ($9): the name's counter row is taken (or made) and
-- bumped in the same statement, so concurrent registrations of one name
-- get distinct versions.
WITH version AS (
    INSERT INTO model_names (name, last_version) VALUES ($9, 1)
    ON CONFLICT (name) DO UPDATE SET last_version = model_names.last_version + 1
    RETURNING last_version
)
INSERT INTO models (id, task_id, kind, target, spec, metrics, weights_key, spec_key,
                    name, version, input, format, size, status, source)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, version.last_version, $10, $11, $12, 'ready', 'trained'
FROM version
