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
-- owner's head of queue from the same index. While one owner alone has
-- queued tasks (the common case, and a flood's), there are no turns to
-- take: its head of queue is claimed directly, and the rest is not run.
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
-- The owner with queued tasks, if there is just one: the skip scan is
-- stopped after its second probe.
lone AS (
    SELECT (array_agg(first_two.owner))[1] AS owner
    FROM (SELECT owner FROM owners WHERE owner IS NOT NULL LIMIT 2) AS first_two
    HAVING count(*) = 1
),
-- What each owner runs now, for the limit.
running AS (
    SELECT o.owner,
           CASE WHEN $6::bigint > 0 THEN greatest(0, $6::bigint - (
               SELECT count(*)
               FROM tasks AS r
               WHERE r.status = 'running'
                 AND coalesce(r.owner, '00000000-0000-0000-0000-000000000000'::uuid) = o.owner))
           ELSE $2 END AS room
    FROM owners AS o
    WHERE o.owner IS NOT NULL
),
-- How many each owner could take now: its due tasks (counted up to $2),
-- less what it runs past the limit.
ready AS (
    SELECT r.owner,
           coalesce(turn.served_at, '-infinity') AS served_at,
           least(
               (SELECT count(*)
                FROM (SELECT 1
                      FROM tasks AS t
                      WHERE t.status = 'queued'
                        AND coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) = r.owner
                        AND t.run_at <= now()
                        AND t.command = ANY ($1)
                        AND (cardinality(t.crashed_on) > 0) = $5
                      LIMIT $2) AS due),
               r.room
           ) AS can_take
    FROM running AS r
    LEFT JOIN claim_turns AS turn ON turn.owner = r.owner
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
-- Each owner's share of the places: a lone owner's are all its own, up to
-- its room; otherwise the turns decide (and `places` is not read at all).
shares AS (
    SELECT lone.owner, least($2, (SELECT room FROM running WHERE running.owner = lone.owner))
        AS share
    FROM lone
    UNION ALL
    SELECT owner, count(*)
    FROM places
    WHERE NOT EXISTS (SELECT FROM lone)
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
    -- By primary key, whatever the plan thinks `due` holds: claims run on
    -- a generic plan (db::CLAIM_OPTIONS), which would otherwise join it by
    -- hash.
    WHERE t.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING t.id, t.seq, t.command, t.params, t.attempts, t.max_attempts, t.lease_token,
        t.log_bytes, coalesce(t.owner, '00000000-0000-0000-0000-000000000000'::uuid) AS queue_owner
),
-- Turns matter among owners waiting together. While one owner alone has
-- queued tasks, its turn is noted at most once a second, not on every
-- claim: nearly as current for whoever comes next, and most claims then
-- write nothing here (even a conflict that updates nothing locks its row).
served AS (
    INSERT INTO claim_turns (owner, served_at)
    SELECT c.owner, clock_timestamp()
    FROM (SELECT DISTINCT queue_owner AS owner FROM claimed) AS c
    LEFT JOIN claim_turns AS turn ON turn.owner = c.owner
    WHERE NOT EXISTS (SELECT FROM lone)
       OR turn.served_at IS NULL
       OR turn.served_at < clock_timestamp() - interval '1 second'
    -- In one order, so claims serving the same owners cannot deadlock.
    ORDER BY c.owner
    ON CONFLICT (owner) DO UPDATE SET served_at = excluded.served_at
)
SELECT c.id, c.seq, c.command, c.params, c.attempts, c.max_attempts, c.lease_token, c.log_bytes,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'position', i.position, 'name', i.name, 'size', i.size,
                'sha256', i.sha256, 'content_type', i.content_type, 'key', i.object_key)
            ORDER BY i.position), '[]')
     FROM task_inputs AS i
     WHERE i.task_id = c.id) AS inputs
FROM claimed AS c
