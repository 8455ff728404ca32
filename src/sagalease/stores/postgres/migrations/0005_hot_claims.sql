-- sagalease PostgreSQL schema, version 5: claims become HOT updates too.
--
-- A claim changes state (pending to running), and state was a column of two
-- indexes (tasks_by_state, and tasks_by_queue's INCLUDE): every claim wrote a
-- new entry into every index of the table, as heartbeats did before version 3.
-- Now no index holds state. The ended tasks are listed by state through
-- ended_state (the state once the task has ended, NULL before), which a claim,
-- a heartbeat or a release never changes; the open tasks are listed through
-- tasks_open (open_seq) and filtered by state from the row; tasks_by_queue keeps
-- queue and seq only. An end (complete, fail, ...) still changes open_seq and so
-- is no HOT update: the task leaves the open indexes then.

ALTER TABLE {schema}.tasks ADD COLUMN ended_state text GENERATED ALWAYS AS (
    CASE WHEN state IN ('completed', 'failed', 'compensated', 'quarantined') THEN state END
) STORED;

DROP INDEX {schema}.tasks_by_state;

CREATE INDEX tasks_ended ON {schema}.tasks (ended_state, seq) WHERE ended_state IS NOT NULL;

DROP INDEX {schema}.tasks_by_queue;

CREATE INDEX tasks_by_queue ON {schema}.tasks (queue, seq);
