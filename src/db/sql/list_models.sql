-- One page of models ($3 at most), newest first: those created before the
-- model $2 when given, of name $1 when given, owned by $4 unless it is
-- NULL (everyone's).
SELECT m.*
FROM models AS m
WHERE ($4::uuid IS NULL OR m.owner = $4)
  AND ($1::text IS NULL OR m.name = $1)
  AND ($2::uuid IS NULL
       OR (m.created_at, m.id) < (SELECT c.created_at, c.id FROM models AS c
                                WHERE c.id = $2
                                  -- Another user's id is no cursor: it would
                                  -- tell when their model was made.
                                  AND ($4::uuid IS NULL OR c.owner = $4)))
ORDER BY m.created_at DESC, m.id DESC
LIMIT $3
