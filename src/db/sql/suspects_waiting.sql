-- Whether a suspect (a queued task a process died running) is due: then
-- dispatchers stop claiming until they can run it alone.
SELECT EXISTS (
    SELECT 1 FROM tasks
    WHERE status = 'queued' AND cardinality(crashed_on) > 0 AND run_at <= now()
)
