-- Claims take turns across owners and walk tasks_due_by_owner (V8); the
-- FIFO index of V1 is read by nothing now, and every submission paid to
-- keep it.
DROP INDEX tasks_due;
