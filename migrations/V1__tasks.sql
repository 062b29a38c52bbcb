-- Tasks: the task row is the queue entry. Inserting it is the enqueue.
CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    command          text        NOT NULL,
    params           jsonb       NOT NULL DEFAULT '{}',
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    -- When a queued task becomes due (later than now after a retry's backoff).
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    -- The current attempt's lease: every worker write must name the token.
    lease_token      uuid,
    lease_expires_at timestamptz,
    claimed_by       text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    progress         jsonb       NOT NULL
                     DEFAULT '{"fraction": 0, "stage": "queued", "message": "", "metrics": {}}',
    result           jsonb,
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'running') = (lease_token IS NOT NULL))
);

-- The claim's scan: due queued tasks in claim order.
CREATE INDEX tasks_due ON tasks (priority DESC, run_at, id) WHERE status = 'queued';
-- The rescuer's scan: running tasks by lease expiry.
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
-- Listing, newest first. Filtering by status rides on this scan (or on the
-- partial indexes above for queued and running): a (status, created_at)
-- index would add an index write to every status change on the hot path.
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);

CREATE TABLE task_inputs (
    task_id      uuid    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    name         text    NOT NULL,
    size         bigint  NOT NULL,
    sha256       text    NOT NULL,
    content_type text    NOT NULL,
    object_key   text    NOT NULL,
    PRIMARY KEY (task_id, position)
);

CREATE TABLE artifacts (
    task_id      uuid        NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    size         bigint      NOT NULL,
    sha256       text        NOT NULL,
    content_type text        NOT NULL,
    object_key   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, name)
);

CREATE TABLE models (
    id          uuid PRIMARY KEY,
    task_id     uuid        NOT NULL REFERENCES tasks (id),
    kind        text        NOT NULL,
    target      text        NOT NULL,
    spec        jsonb       NOT NULL,
    metrics     jsonb       NOT NULL,
    weights_key text        NOT NULL,
    spec_key    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_created ON models (created_at DESC, id DESC);

-- Wake dispatchers in every process when tasks are queued. Once per
-- statement, so a bulk insert sends one notification, not thousands.
CREATE FUNCTION notify_tasks_queued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('mlq_tasks', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_queued
    AFTER INSERT ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_tasks_queued();

-- A task with its inputs and artifacts, as the API shows it.
CREATE VIEW task_details AS
SELECT t.*,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'position', i.position, 'name', i.name, 'size', i.size, 'sha256', i.sha256,
                'content_type', i.content_type, 'key', i.object_key)
            ORDER BY i.position), '[]')
     FROM task_inputs AS i
     WHERE i.task_id = t.id) AS inputs,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'name', a.name, 'size', a.size, 'sha256', a.sha256,
                'content_type', a.content_type, 'key', a.object_key)
            ORDER BY a.name), '[]')
     FROM artifacts AS a
     WHERE a.task_id = t.id) AS artifacts
FROM tasks AS t;
