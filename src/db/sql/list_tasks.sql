-- Newest first. $1: status filter or NULL; $2: cursor task id or NULL
-- (tasks created before it); $3: page size; $4: the owner whose tasks to
-- list, or NULL for everyone's.
SELECT t.*
FROM task_details AS t
WHERE ($4::uuid IS NULL OR t.owner = $4)
  AND ($1::text IS NULL OR t.status = $1)
  AND ($2::uuid IS NULL
       OR (t.created_at, t.id) < (SELECT c.created_at, c.id FROM tasks AS c
                                WHERE c.id = $2
                                  -- Another user's id is no cursor: it would
                                  -- tell when their task was made.
                                  AND ($4::uuid IS NULL OR c.owner = $4)))
ORDER BY t.created_at DESC, t.id DESC
LIMIT $3
