-- Tasks whose lease expired belong to a process that died or hung. Re-queue
-- each with exponential backoff ($1 ms doubled per attempt so far), or end it
-- if it was cancelled or has used all its attempts.
WITH expired AS (
    SELECT id
    FROM tasks
    WHERE status = 'running'
      AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status           = CASE
                           WHEN t.cancel_requested THEN 'cancelled'
                           WHEN t.attempts >= t.max_attempts THEN 'failed'
                           ELSE 'queued'
                       END,
    run_at           = now() + $1 * interval '1 millisecond' * power(2, least(greatest(t.attempts - 1, 0), 16)),
    error            = CASE
                           WHEN t.cancel_requested THEN
                               '{"code": "cancelled", "message": "the task was cancelled"}'::jsonb
                           WHEN t.attempts >= t.max_attempts THEN jsonb_build_object(
                               'code', 'lease_expired',
                               'message', format('gave up after %s attempts: the process running '
                                   'attempt %s stopped responding (crashed or was killed)',
                                   t.attempts, t.attempts))
                           ELSE jsonb_build_object(
                               'code', 'lease_expired',
                               'message', format('attempt %s stopped responding; retrying', t.attempts))
                       END,
    finished_at      = CASE WHEN t.cancel_requested OR t.attempts >= t.max_attempts THEN now() END,
    lease_token      = NULL,
    lease_expires_at = NULL,
    updated_at       = now()
FROM expired
WHERE t.id = expired.id
RETURNING t.id, t.status
