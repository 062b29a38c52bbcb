-- Users, their credentials, and what each user owns.
--
-- Every task and model belongs to a user; other users cannot see it (the
-- API answers 404), admins see everything. Rows from before users existed
-- have no owner: only admins see them.

CREATE TABLE users (
    id         uuid PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    admin      boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Everything that proves who a caller is: API tokens users mint, dashboard
-- sessions, single-use WebSocket tickets and the first run's one-time
-- login code. Only a SHA-256 of each secret is kept; the id is public (it
-- is the first part of the token) and says which hash to compare against.
CREATE TABLE credentials (
    id           uuid PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         text        NOT NULL CHECK (kind IN ('token', 'session', 'ticket', 'login')),
    name         text        NOT NULL DEFAULT '',
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    -- Set when revoked, and when a single-use ticket or code is used.
    revoked_at   timestamptz
);
CREATE INDEX credentials_user ON credentials (user_id, kind, created_at DESC);

ALTER TABLE tasks ADD COLUMN owner uuid REFERENCES users (id);
-- A user's own tasks, newest first.
CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC, id DESC);

-- Model names are per user: two users may each have an `iris`.
ALTER TABLE models
    ADD COLUMN owner uuid REFERENCES users (id),
    DROP CONSTRAINT models_name_known,
    DROP CONSTRAINT models_name_version;
ALTER TABLE model_names
    DROP CONSTRAINT model_names_pkey,
    ADD COLUMN owner uuid REFERENCES users (id),
    ADD CONSTRAINT model_names_owner_name UNIQUE NULLS NOT DISTINCT (owner, name);
ALTER TABLE models
    ADD CONSTRAINT models_owner_name_version UNIQUE NULLS NOT DISTINCT (owner, name, version),
    ADD CONSTRAINT models_name_known FOREIGN KEY (owner, name) REFERENCES model_names (owner, name);
DROP INDEX models_ready_versions;
CREATE INDEX models_ready_versions ON models (owner, name, version DESC) WHERE status = 'ready';
CREATE INDEX models_owner_created ON models (owner, created_at DESC, id DESC);

-- Announcements carry the task's owner, so each process's feed hands an
-- event only to connections allowed to see it. `announce` (V4) keeps its
-- signature for the triggers that call it and looks the owner up.
CREATE FUNCTION announce_owned(seq bigint, task uuid, kind text, at timestamptz, data jsonb,
                               owner uuid)
RETURNS void AS $$
DECLARE
    payload text;
BEGIN
    IF current_setting('mlq.announce_after_commit', true) = 'on' THEN
        RETURN;
    END IF;
    payload := json_build_object('seq', seq, 'task', task, 'type', kind, 'at', at,
                                 'owner', owner, 'data', data);
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('seq', seq, 'task', task, 'type', kind, 'at', at,
                                     'owner', owner, 'big', true);
    END IF;
    PERFORM pg_notify('mlq_events', payload);
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION announce(seq bigint, task uuid, kind text, at timestamptz, data jsonb)
RETURNS void AS $$
BEGIN
    IF current_setting('mlq.announce_after_commit', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM announce_owned(seq, task, kind, at, data,
                           (SELECT t.owner FROM tasks AS t WHERE t.id = task));
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION tasks_announce_progress() RETURNS trigger AS $$
BEGIN
    PERFORM announce_owned(NEW.seq, NEW.id, 'progress', now(), NEW.progress, NEW.owner);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- The row is gone by now: its owner comes from OLD.
CREATE OR REPLACE FUNCTION tasks_announce_deleted() RETURNS trigger AS $$
BEGIN
    DELETE FROM task_events WHERE task_id = OLD.id;
    PERFORM announce_owned(nextval('task_event_seq'), OLD.id, 'deleted', now(), NULL, OLD.owner);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- The view lists columns as they were when it was made: make it again so it
-- shows the owner.
DROP VIEW task_details;
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
