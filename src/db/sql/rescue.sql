-- Tasks whose lease expired belong to a process that died or hung. Re-queue
-- each after a backoff ($1: the delay in ms after each attempt number, from
-- `retry_delay`), or end it: when it was cancelled, when it has used all its attempts, or when
-- this is the second process that died running it (its input is then taken
-- to have killed them; see `crashed_on`). Leases in $2 are the rescuer's
-- own live ones: never taken from under it, whatever their expiry says.
-- $3 is the error a cancelled task ends with.
WITH expired AS (
    SELECT id
    FROM tasks
    WHERE status = 'running'
      AND lease_expires_at < now()
      AND NOT (lease_token = ANY ($2::uuid[]))
    ORDER BY lease_expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), judged AS (
    SELECT t.id,
           t.crashed_on || coalesce(t.claimed_by, 'unknown') AS crashed_on,
           CASE
               WHEN t.cancel_requested THEN 'cancelled'
               WHEN cardinality(t.crashed_on) + 1 >= 2 THEN 'crashed'
               WHEN t.attempts >= t.max_attempts THEN 'exhausted'
               ELSE 'retry'
           END AS verdict
    FROM tasks AS t
    JOIN expired USING (id)
)
UPDATE tasks AS t
SET status           = CASE j.verdict
                           WHEN 'cancelled' THEN 'cancelled'
                           WHEN 'retry' THEN 'queued'
                           ELSE 'failed'
                       END,
    run_at           = now() + ($1::float8[])[least(greatest(t.attempts, 1), cardinality($1::float8[]))]
                               * interval '1 millisecond',
    crashed_on       = j.crashed_on,
    error            = CASE j.verdict
                           WHEN 'cancelled' THEN $3::jsonb
                           WHEN 'crashed' THEN jsonb_build_object(
                               'code', 'worker_crashed',
                               'message', format('the processes running this task died twice '
                                   '(on %s); its input is taken to crash them, so it is not run '
                                   'again', array_to_string(j.crashed_on, ' and ')))
                           WHEN 'exhausted' THEN jsonb_build_object(
                               'code', 'lease_expired',
                               'message', format('gave up after %s attempts: the process running '
                                   'attempt %s stopped responding (crashed or was killed)',
                                   t.attempts, t.attempts))
                           ELSE jsonb_build_object(
                               'code', 'lease_expired',
                               'message', format('attempt %s stopped responding on %s; retrying',
                                   t.attempts, coalesce(t.claimed_by, 'an unknown process')))
                       END,
    finished_at      = CASE WHEN j.verdict = 'retry' THEN NULL ELSE now() END,
    lease_token      = NULL,
    lease_expires_at = NULL,
    updated_at       = now()
FROM judged AS j
WHERE t.id = j.id
RETURNING t.id, t.status, j.verdict
