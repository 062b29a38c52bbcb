-- Creates a task for its owner ($7) and its inputs in one statement, so they commit together:
-- inserting the row is the enqueue. $5 is a JSON array of inputs shaped as
-- the task_details view shows them. Foreign keys are checked at the end of
-- the statement, after both inserts.
--
-- $6 are the models the task reads, pinned: each must still be there and
-- ready, and is key-share locked until the insert commits, so a delete
-- (which locks the model first) either waits for the task and sees it, or
-- went first and the insert adds nothing.
WITH pinned AS (
    SELECT id FROM models
    WHERE id = ANY ($6::uuid[]) AND status = 'ready'
    FOR KEY SHARE
), inputs AS (
    INSERT INTO task_inputs (task_id, position, name, size, sha256, content_type, object_key)
    SELECT $1, i.position, i.name, i.size, i.sha256, i.content_type, i.key
    FROM jsonb_to_recordset($5::jsonb)
        AS i (position integer, name text, size bigint, sha256 text, content_type text, key text)
    WHERE (SELECT count(*) FROM pinned) = cardinality($6::uuid[])
)
INSERT INTO tasks (id, command, params, max_attempts, models, owner)
SELECT $1, $2, $3, $4, $6, $7
WHERE (SELECT count(*) FROM pinned) = cardinality($6::uuid[])
RETURNING *, $5::jsonb AS inputs, '[]'::jsonb AS artifacts
