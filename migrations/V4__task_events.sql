-- The live feed. Every change users can see gets a number from one
-- sequence: status changes and log lines are kept in task_events (so a
-- client that reconnects can replay what it missed), progress lives only on
-- the task row (a reconnecting client needs just the latest). Each change
-- is also announced on the mlq_events channel, so every mlq process can push
-- it to its WebSocket clients, whichever process made it.
--
-- Per task, numbers follow commit order: every statement that numbers a
-- change of a task holds that task's row lock.
CREATE SEQUENCE task_event_seq;

ALTER TABLE tasks
    ADD COLUMN seq         bigint  NOT NULL DEFAULT nextval('task_event_seq'),
    -- Bytes of log text stored for the task, and lines refused over the cap.
    ADD COLUMN log_bytes   integer NOT NULL DEFAULT 0,
    ADD COLUMN log_dropped integer NOT NULL DEFAULT 0;

-- No foreign key: rows are only written by the triggers below, for the
-- task whose row they are changing, and a task's deletion deletes its
-- events (tasks_deleted). The key's check would nearly double the cost of
-- every status change on the queue's hot path (measured).
CREATE TABLE task_events (
    seq     bigint PRIMARY KEY DEFAULT nextval('task_event_seq'),
    task_id uuid        NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('status', 'log')),
    data    jsonb       NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
-- Replaying and tailing one task.
CREATE INDEX task_events_task ON task_events (task_id, seq);

-- A payload over pg_notify's 8000-byte limit is announced without its data;
-- listeners read it back by number.
--
-- A NOTIFY holds a database-wide lock from just before its transaction
-- commits until the commit is flushed, so notifying transactions commit one
-- at a time. Sessions on the queue's hot path (submissions, claims,
-- outcomes) set mlq.announce_after_commit: their events are stored but not
-- announced here, and mlq's announcer announces them in batches right after
-- they commit, from a session that does not wait for the flush (see
-- src/db/announcer.rs).
CREATE FUNCTION announce(seq bigint, task uuid, kind text, at timestamptz, data jsonb)
RETURNS void AS $$
DECLARE
    payload text;
BEGIN
    IF current_setting('mlq.announce_after_commit', true) = 'on' THEN
        RETURN;
    END IF;
    payload := json_build_object('seq', seq, 'task', task, 'type', kind, 'at', at, 'data', data);
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('seq', seq, 'task', task, 'type', kind, 'at', at, 'big', true);
    END IF;
    PERFORM pg_notify('mlq_events', payload);
END;
$$ LANGUAGE plpgsql;

-- The wake-up for dispatchers (V1) is deferred the same way: the announcer
-- sends it with the new tasks' events.
CREATE OR REPLACE FUNCTION notify_tasks_queued() RETURNS trigger AS $$
BEGIN
    IF current_setting('mlq.announce_after_commit', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('mlq_tasks', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION tasks_number_change() RETURNS trigger AS $$
BEGIN
    NEW.seq := nextval('task_event_seq');
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_number_change
    BEFORE UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION tasks_number_change();

CREATE FUNCTION tasks_record_status() RETURNS trigger AS $$
BEGIN
    INSERT INTO task_events (seq, task_id, kind, data)
    VALUES (NEW.seq, NEW.id, 'status', jsonb_build_object(
        'status', NEW.status, 'attempts', NEW.attempts, 'progress', NEW.progress,
        'error', NEW.error, 'result', NEW.result));
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_status_created
    AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_record_status();

CREATE TRIGGER tasks_status_changed
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION tasks_record_status();

CREATE FUNCTION tasks_announce_progress() RETURNS trigger AS $$
BEGIN
    PERFORM announce(NEW.seq, NEW.id, 'progress', now(), NEW.progress);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- A status change announces its progress with the status event.
CREATE TRIGGER tasks_progress_changed
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS NOT DISTINCT FROM NEW.status AND OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION tasks_announce_progress();

CREATE FUNCTION tasks_announce_deleted() RETURNS trigger AS $$
BEGIN
    DELETE FROM task_events WHERE task_id = OLD.id;
    PERFORM announce(nextval('task_event_seq'), OLD.id, 'deleted', now(), NULL);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_deleted
    AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_announce_deleted();

CREATE FUNCTION task_events_announce() RETURNS trigger AS $$
BEGIN
    PERFORM announce(NEW.seq, NEW.task_id, NEW.kind, NEW.at, NEW.data);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER task_events_announce
    AFTER INSERT ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_announce();

-- The view lists columns as they were when it was made: make it again so it
-- shows the new ones.
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
