-- The live credential $1 of kind $2, with its user: not revoked, not
-- expired, and for a session opened with a token, that token is live too.
-- Read only: nothing is noted or spent until the secret has matched.
SELECT c.secret_hash, c.expires_at,
       -- Its last use is noted at most once a minute, by the server's clock.
       (c.last_used_at IS NULL OR c.last_used_at < now() - interval '1 minute') AS note_use,
       u.id AS user_id, u.name AS user_name, u.admin,
       u.created_at AS user_created_at
FROM credentials AS c
JOIN users AS u ON u.id = c.user_id
WHERE c.id = $1 AND c.kind = $2
  AND c.revoked_at IS NULL
  AND (c.expires_at IS NULL OR c.expires_at > now())
  AND NOT EXISTS (
      SELECT 1
      FROM credentials AS p
      WHERE p.id = c.parent
        AND (p.revoked_at IS NOT NULL OR p.expires_at <= now()))
