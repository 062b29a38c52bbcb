-- Bytes user $1's tasks hold in the object store: inputs (uploaded models
-- among them) and artifacts (trained models among them).
SELECT coalesce(sum(held.size), 0)::bigint
FROM tasks AS t
CROSS JOIN LATERAL (
    SELECT i.size FROM task_inputs AS i WHERE i.task_id = t.id
    UNION ALL
    SELECT a.size FROM artifacts AS a WHERE a.task_id = t.id
) AS held
WHERE t.owner = $1
