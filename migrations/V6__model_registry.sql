-- The model registry. Every model has a name and a version (`name@3`);
-- users upload their own TorchScript models besides those `train` makes,
-- and an uploaded model is usable once a worker has loaded it and run a
-- forward pass (its `validate_model` task).

-- One row per name: the last version handed out. Versions are never
-- reused, even after a delete, so `name@3` always means the same model.
CREATE TABLE model_names (
    name         text PRIMARY KEY,
    last_version integer NOT NULL
);

ALTER TABLE models
    ADD COLUMN name    text,
    ADD COLUMN version integer,
    ADD COLUMN status  text NOT NULL DEFAULT 'ready'
        CHECK (status IN ('validating', 'ready', 'invalid')),
    -- How it came to be: made by `train`, or uploaded.
    ADD COLUMN source  text NOT NULL DEFAULT 'trained'
        CHECK (source IN ('trained', 'uploaded')),
    -- What it reads.
    ADD COLUMN input   text NOT NULL DEFAULT 'tabular'
        CHECK (input IN ('tabular', 'image')),
    -- How its weights file is read: `mlq.mlp.v1`, `mlq.cnn.v1`, `torchscript`.
    ADD COLUMN format  text NOT NULL DEFAULT 'mlq.mlp.v1',
    -- Why it is invalid: {code, message}.
    ADD COLUMN error   jsonb,
    ADD COLUMN size    bigint,
    ALTER COLUMN target DROP NOT NULL,
    ALTER COLUMN spec_key DROP NOT NULL;

UPDATE models SET name = 'model-' || id::text, version = 1;
INSERT INTO model_names (name, last_version)
SELECT name, max(version) FROM models GROUP BY name;

ALTER TABLE models
    ALTER COLUMN name SET NOT NULL,
    ALTER COLUMN version SET NOT NULL,
    ADD CONSTRAINT models_name_version UNIQUE (name, version),
    ADD CONSTRAINT models_name_known FOREIGN KEY (name) REFERENCES model_names (name);

-- `name` alone means its latest ready version.
CREATE INDEX models_ready_versions ON models (name, version DESC) WHERE status = 'ready';

-- The models a task reads, so a model in use by a queued or running task
-- is not deleted from under it.
ALTER TABLE tasks ADD COLUMN models uuid[] NOT NULL DEFAULT '{}';
UPDATE tasks SET models = ARRAY[(params ->> 'model')::uuid]
WHERE command = 'predict' AND params ? 'model';
CREATE INDEX tasks_active_models ON tasks USING gin (models)
    WHERE status IN ('queued', 'running') AND models <> '{}';

-- An uploaded model's status follows its validation task, whichever way
-- that task ends (recorded outcome, rescue, cancel) or is retried.
CREATE FUNCTION validation_settled() RETURNS trigger AS $$
BEGIN
    UPDATE models
    SET status  = CASE NEW.status
                      WHEN 'succeeded' THEN 'ready'
                      WHEN 'queued' THEN 'validating'
                      WHEN 'running' THEN 'validating'
                      ELSE 'invalid' END,
        error   = CASE WHEN NEW.status IN ('failed', 'cancelled')
                       THEN coalesce(NEW.error, '{"code": "cancelled", "message": "validation was cancelled"}')
                  END,
        metrics = CASE WHEN NEW.status = 'succeeded' THEN coalesce(NEW.result, '{}') ELSE metrics END,
        kind    = CASE WHEN NEW.status = 'succeeded' THEN coalesce(NEW.result ->> 'kind', kind) ELSE kind END
    WHERE task_id = NEW.id AND source = 'uploaded';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_validation_settled
    AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.command = 'validate_model' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION validation_settled();
