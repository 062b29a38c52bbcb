-- Records a running attempt's progress ($3), fenced by its lease.
UPDATE tasks SET progress = $3, updated_at = now()
WHERE id = $1 AND lease_token = $2
