-- Ends an attempt as succeeded with result $4.
UPDATE tasks
SET status        = 'succeeded',
    result        = $4,
    error         = NULL,
    progress      = coalesce($3, progress) || '{"fraction": 1, "stage": "done"}',
    finished_at   = now(),
    updated_at    = now(),
    outcome_lease = lease_token,
    lease_token   = NULL,
    lease_expires_at = NULL
WHERE id = $1 AND lease_token = $2
RETURNING seq
