-- Ends an attempt, and the task, as failed with error $4.
UPDATE tasks
SET status        = 'failed',
    error         = $4,
    progress      = coalesce($3, progress),
    finished_at   = now(),
    updated_at    = now(),
    outcome_lease = lease_token,
    lease_token   = NULL,
    lease_expires_at = NULL
WHERE id = $1 AND lease_token = $2
RETURNING seq
