-- Registers the model a succeeded `train` attempt produced.
INSERT INTO models (id, task_id, kind, target, spec, metrics, weights_key, spec_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
