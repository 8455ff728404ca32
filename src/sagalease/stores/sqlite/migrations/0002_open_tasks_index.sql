-- sagalease SQLite schema, version 2: claim_next, list_stale and reap scan
-- only the tasks that have not ended, in creation order, whatever the number
-- of finished tasks kept.

CREATE INDEX tasks_open ON tasks (seq, available_us, lease_expires_us)
    WHERE state IN ('pending', 'running', 'compensating');
