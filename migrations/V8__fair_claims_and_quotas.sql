-- Fair claims, per-user quotas, and sessions tied to the token that
-- opened them.
--
-- Claims take turns across owners (db/sql/claim.sql): each claim finds the
-- owners with queued tasks and the head of each owner's queue by index, so
-- one user's flood does not stand in front of another's task. Tasks from
-- before users existed have no owner and queue together as the nil uuid.
CREATE INDEX tasks_due_by_owner
    ON tasks ((coalesce(owner, '00000000-0000-0000-0000-000000000000'::uuid)), priority DESC, run_at, id)
    WHERE status = 'queued';
-- What each owner runs now, for the limit on running tasks.
CREATE INDEX tasks_running_by_owner
    ON tasks ((coalesce(owner, '00000000-0000-0000-0000-000000000000'::uuid)))
    WHERE status = 'running';

-- When each owner was last handed a worker: the owner waiting longest goes
-- first. One small row per owner, written by the claim that served it.
CREATE TABLE claim_turns (
    owner     uuid PRIMARY KEY,
    served_at timestamptz NOT NULL
);

-- Bytes each user uploaded on each UTC day, for the daily upload quota.
-- Deleting what was uploaded does not give the day's allowance back.
CREATE TABLE upload_days (
    owner uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day   date   NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (owner, day)
);

-- A dashboard session opened with an API token lasts no longer than the
-- token: revoking or expiring the token ends the session too.
ALTER TABLE credentials ADD COLUMN parent uuid REFERENCES credentials (id) ON DELETE CASCADE;
