-- Appends log lines ($5 the lines, $6 their times) to a task's log, fenced
-- by the lease ($1 task, $2 token); $3 bytes and $4 dropped lines are added
-- to its counts. The UPDATE runs first (the INSERT reads its row), so the
-- task's row lock is held before the lines are numbered.
WITH owner AS (
    UPDATE tasks
    SET log_bytes = log_bytes + $3, log_dropped = log_dropped + $4
    WHERE id = $1 AND lease_token = $2
    RETURNING id
), lines AS (
    INSERT INTO task_events (task_id, kind, data, at)
    SELECT owner.id, 'log', line.data, line.at
    FROM owner, unnest($5::jsonb[], $6::timestamptz[]) WITH ORDINALITY AS line (data, at, n)
    ORDER BY line.n
    RETURNING seq
)
SELECT (SELECT count(*) FROM owner) AS held, (SELECT min(seq) FROM lines) AS first
