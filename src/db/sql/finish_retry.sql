-- Ends a failed attempt (error $4) and queues the task again after $5 ms.
-- A cancel that arrived while the attempt failed wins over the retry, and
-- the task ends with the cancelled error $6.
UPDATE tasks
SET status        = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    finished_at   = CASE WHEN cancel_requested THEN now() END,
    error         = CASE WHEN cancel_requested THEN $6::jsonb ELSE $4 END,
    run_at        = now() + $5 * interval '1 millisecond',
    progress      = coalesce($3, progress) || '{"stage": "waiting to retry"}',
    updated_at    = now(),
    outcome_lease = lease_token,
    lease_token   = NULL,
    lease_expires_at = NULL
WHERE id = $1 AND lease_token = $2
RETURNING seq
