-- Whether the outcome of the attempt holding lease $2 on task $1 is
-- recorded: a retried outcome whose first try's answer was lost finds it.
SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND outcome_lease = $2)
