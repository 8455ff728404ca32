-- sagalease SQLite schema, version 3: the index by state covers only the tasks
-- that have ended (listing by an open state walks tasks_open), so that claims
-- and heartbeats, which never touch an ended task, write one index page fewer.

DROP INDEX tasks_by_state;

CREATE INDEX tasks_ended ON tasks (state, seq)
    WHERE state IN ('completed', 'failed', 'compensated', 'quarantined');
