-- Extends the leases ($1 ids, $2 tokens) that still hold by $3 ms. Leases
-- missing from the result were lost.
UPDATE tasks AS t
SET lease_expires_at = now() + $3 * interval '1 millisecond'
FROM unnest($1::uuid[], $2::uuid[]) AS l (id, token)
WHERE t.id = l.id
  AND t.lease_token = l.token
  AND t.status = 'running'
RETURNING l.token, t.cancel_requested
