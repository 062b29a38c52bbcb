-- Claims up to $2 due tasks for worker $4, with a lease of $3 ms.
-- One statement: pick due rows in claim order, skipping rows another
-- process is claiming right now, and mark them running. $5 picks suspects
-- (tasks a process died running, see `crashed_on`), which run alone, or
-- the others.
WITH due AS (
    SELECT id
    FROM tasks
    WHERE status = 'queued'
      AND run_at <= now()
      AND command = ANY ($1)
      AND (cardinality(crashed_on) > 0) = $5
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status           = 'running',
    attempts         = t.attempts + 1,
    lease_token      = gen_random_uuid(),
    lease_expires_at = now() + $3 * interval '1 millisecond',
    claimed_by       = $4,
    started_at       = coalesce(t.started_at, now()),
    updated_at       = now(),
    progress         = '{"fraction": 0, "stage": "starting", "message": "", "metrics": {}}'
FROM due
WHERE t.id = due.id
RETURNING t.id, t.seq, t.command, t.params, t.attempts, t.max_attempts, t.lease_token, t.log_bytes,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'position', i.position, 'name', i.name, 'size', i.size,
                'sha256', i.sha256, 'content_type', i.content_type, 'key', i.object_key)
            ORDER BY i.position), '[]')
     FROM task_inputs AS i
     WHERE i.task_id = t.id) AS inputs
