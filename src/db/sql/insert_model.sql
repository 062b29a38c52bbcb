-- Registers a model ($1) as the next version of its name ($9) among its
-- owner's models: a `train` attempt's, or an upload waiting for its
-- validation task ($2). The owner is the task's. The name's counter row is
-- taken (or made) and bumped in the same statement, so concurrent
-- registrations of one name get distinct versions.
WITH version AS (
    INSERT INTO model_names (owner, name, last_version)
    SELECT t.owner, $9, 1 FROM tasks AS t WHERE t.id = $2
    ON CONFLICT (owner, name) DO UPDATE SET last_version = model_names.last_version + 1
    RETURNING owner, last_version
)
INSERT INTO models (id, task_id, kind, target, spec, metrics, weights_key, spec_key,
                    name, version, input, format, size, status, source, owner)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, version.last_version, $10, $11, $12, $13, $14,
       version.owner
FROM version
RETURNING *
