-- Creates a task and its inputs in one statement, so they commit together:
-- inserting the row is the enqueue. $5 is a JSON array of inputs shaped as
-- the task_details view shows them. Foreign keys are checked at the end of
-- the statement, after both inserts.
WITH inputs AS (
    INSERT INTO task_inputs (task_id, position, name, size, sha256, content_type, object_key)
    SELECT $1, i.position, i.name, i.size, i.sha256, i.content_type, i.key
    FROM jsonb_to_recordset($5::jsonb)
        AS i (position integer, name text, size bigint, sha256 text, content_type text, key text)
)
INSERT INTO tasks (id, command, params, max_attempts)
VALUES ($1, $2, $3, $4)
RETURNING *, $5::jsonb AS inputs, '[]'::jsonb AS artifacts
