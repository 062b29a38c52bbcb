-- Recording an outcome can fail after its COMMIT was sent (the connection
-- drops before the answer comes back): the commit may have landed. The
-- lease whose outcome was recorded last is kept, so the retry of such an
-- outcome finds it already there instead of taking it for a lost lease.
ALTER TABLE tasks
    ADD COLUMN outcome_lease uuid,
    -- The processes (`claimed_by`) whose lease on the task expired: each
    -- died, or stopped answering, while running it. Two such ends fail the
    -- task, so one input cannot take down a third process.
    ADD COLUMN crashed_on text[] NOT NULL DEFAULT '{}';

-- Suspects (queued tasks a process died running) run alone: a dispatcher
-- looks for them before it claims anything else.
CREATE INDEX tasks_suspects ON tasks (run_at)
    WHERE status = 'queued' AND cardinality(crashed_on) > 0;
