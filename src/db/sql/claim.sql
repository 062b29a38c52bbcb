-- Claims up to $2 due tasks for worker $4, with a lease of $3 ms. $5 picks
-- suspects (tasks a process died running, see `crashed_on`), which run
-- alone, or the others. $6 is the most tasks one owner may run at once
-- (0: no limit).
--
-- Fair across users: the owners with due tasks take the $2 places in turns,
-- one place a round, the owner served longest ago first (`claim_turns`).
-- Within an owner's share, tasks go in claim order (priority, then due
-- time). Rows another process is claiming right now are skipped.
--
-- Every step reads an index: the owners by a skip scan of
-- tasks_due_by_owner (one probe per owner, however long the queue), each
-- owner's head of queue from the same index.
WITH RECURSIVE owners (owner) AS (
    (SELECT coalesce(owner, '00000000-0000-0000-0000-000000000000'::uuid)
     FROM tasks
     WHERE status = 'queued'
     ORDER BY 1
     LIMIT 1)
    UNION ALL
    SELECT (SELECT coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid)
            FROM tasks AS t
            WHERE t.status = 'queued'
              AND coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) > o.owner
            ORDER BY 1
            LIMIT 1)
    FROM owners AS o
    WHERE o.owner IS NOT NULL
),
-- How many each owner could take now: its due tasks (counted up to $2),
-- less what it runs past the limit.
ready AS (
    SELECT o.owner,
           coalesce(turn.served_at, '-infinity') AS served_at,
           least(
               (SELECT count(*)
                FROM (SELECT 1
                      FROM tasks AS t
                      WHERE t.status = 'queued'
                        AND coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) = o.owner
                        AND t.run_at <= now()
                        AND t.command = ANY ($1)
                        AND (cardinality(t.crashed_on) > 0) = $5
                      LIMIT $2) AS due),
               CASE WHEN $6::bigint > 0 THEN greatest(0, $6::bigint - (
                   SELECT count(*)
                   FROM tasks AS r
                   WHERE r.status = 'running'
                     AND coalesce(r.owner, '00000000-0000-0000-0000-000000000000'::uuid) = o.owner))
               ELSE $2 END
           ) AS can_take
    FROM owners AS o
    LEFT JOIN claim_turns AS turn ON turn.owner = o.owner
    WHERE o.owner IS NOT NULL
),
-- Round n gives one place to each owner that can take n; places go in
-- round order, and within a round to the owner served longest ago.
places AS (
    SELECT r.owner
    FROM ready AS r
    CROSS JOIN LATERAL generate_series(1, r.can_take) AS round (n)
    ORDER BY round.n, r.served_at, r.owner
    LIMIT $2
),
shares AS (
    SELECT owner, count(*) AS share
    FROM places
    GROUP BY owner
),
due AS (
    SELECT head.id
    FROM shares AS s
    CROSS JOIN LATERAL (
        SELECT t.id
        FROM tasks AS t
        WHERE t.status = 'queued'
          AND coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) = s.owner
          AND t.run_at <= now()
          AND t.command = ANY ($1)
          AND (cardinality(t.crashed_on) > 0) = $5
        ORDER BY coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid),
                 t.priority DESC, t.run_at, t.id
        LIMIT s.share
        FOR UPDATE SKIP LOCKED
    ) AS head
),
claimed AS (
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
    RETURNING t.id, t.seq, t.command, t.params, t.attempts, t.max_attempts, t.lease_token,
        t.log_bytes, coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) AS queue_owner
),
served AS (
    INSERT INTO claim_turns (owner, served_at)
    SELECT owner, clock_timestamp()
    FROM (SELECT DISTINCT queue_owner AS owner FROM claimed) AS served_owners
    -- In one order, so claims serving the same owners cannot deadlock.
    ORDER BY owner
    ON CONFLICT (owner) DO UPDATE SET served_at = excluded.served_at
    -- Turns matter among owners waiting together. While one owner alone
    -- has due tasks, its turn is noted at most once a second, not on every
    -- claim: nearly as current for whoever comes next, far fewer writes.
    WHERE (SELECT count(*) FROM ready WHERE can_take > 0) > 1
       OR claim_turns.served_at < excluded.served_at - interval '1 second'
)
SELECT c.id, c.seq, c.command, c.params, c.attempts, c.max_attempts, c.lease_token, c.log_bytes,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'position', i.position, 'name', i.name, 'size', i.size,
                'sha256', i.sha256, 'content_type', i.content_type, 'key', i.object_key)
            ORDER BY i.position), '[]')
     FROM task_inputs AS i
     WHERE i.task_id = c.id) AS inputs
FROM claimed AS c
