-- The live credential $1 of kind $2, with its user. When $3 (single use),
-- it is spent in the same statement, so it can be presented only once.
-- Otherwise its last use is noted, at most once a minute, so a busy token
-- does not write on every request.
WITH live AS (
    SELECT c.id
    FROM credentials AS c
    WHERE c.id = $1 AND c.kind = $2
      AND c.revoked_at IS NULL
      AND (c.expires_at IS NULL OR c.expires_at > now())
      -- A session opened with a token ends with it.
      AND NOT EXISTS (
          SELECT 1
          FROM credentials AS p
          WHERE p.id = c.parent
            AND (p.revoked_at IS NOT NULL OR p.expires_at <= now()))
), touched AS (
    UPDATE credentials AS c
    SET last_used_at = now(),
        revoked_at   = CASE WHEN $3 THEN now() END
    FROM live
    -- Checked again on the newest row version if another statement
    -- changed it meanwhile: a ticket spent by that one is not spent twice.
    WHERE c.id = live.id AND c.revoked_at IS NULL
      AND ($3 OR c.last_used_at IS NULL OR c.last_used_at < now() - interval '1 minute')
    RETURNING c.id
)
SELECT c.secret_hash, u.id AS user_id, u.name AS user_name, u.admin,
       u.created_at AS user_created_at,
       -- A single-use credential counts only if this statement spent it:
       -- of two callers racing with it, one wins.
       (NOT $3 OR EXISTS (SELECT 1 FROM touched)) AS usable
FROM credentials AS c
JOIN live ON live.id = c.id
JOIN users AS u ON u.id = c.user_id
