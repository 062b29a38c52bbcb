-- The tasks table is a queue: every claim and finish leaves a dead row
-- version behind, and the claim's index scan walks past dead entries until
-- vacuum removes them. Vacuum and analyze it after 1 % churn rather than the
-- default 20 %, so claims stay fast and the planner knows how deep the
-- queue is.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.01
);
