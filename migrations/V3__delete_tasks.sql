-- Deleting a task deletes what it produced, its model included: the
-- model's weights are that task's artifacts and go with them.
ALTER TABLE models
    DROP CONSTRAINT models_task_id_fkey,
    ADD CONSTRAINT models_task_id_fkey
        FOREIGN KEY (task_id) REFERENCES tasks (id) ON DELETE CASCADE;
