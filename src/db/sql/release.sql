-- Hands a running task back to the queue at once (shutdown), fenced by its
-- lease ($1 task, $2 token). The attempt does not count.
WITH released AS (
    UPDATE tasks
    SET status      = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
        finished_at = CASE WHEN cancel_requested THEN now() END,
        attempts    = attempts - 1,
        run_at      = now(),
        updated_at  = now(),
        progress    = progress || '{"stage": "requeued"}',
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE id = $1 AND lease_token = $2
    RETURNING id
)
SELECT pg_notify('mlq_tasks', '') FROM released
