-- Whether a suspect (a queued task a process died running) that this
-- process can run ($1 its commands) is due: then its dispatcher stops
-- claiming until it can run it alone.
SELECT EXISTS (
    SELECT 1 FROM tasks
    WHERE status = 'queued' AND cardinality(crashed_on) > 0 AND run_at <= now()
      AND command = ANY($1)
)
