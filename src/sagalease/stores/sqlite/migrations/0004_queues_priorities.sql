-- sagalease SQLite schema, version 4: queues, priorities and requeued tasks.
-- Existing tasks land in the queue 'default' at priority 0, which is what the
-- records of version 3 mean; their histories are unchanged (a create entry
-- names a queue or a priority only when it is not the default).

ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';

ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -1000 AND 1000);

ALTER TABLE tasks ADD COLUMN requeued_from TEXT;

-- Claims walk the open tasks in claim order (the highest priority first, then
-- creation), over every queue or one index range per named queue, and filter
-- on the covered availability and lease columns before reading a row. Their
-- predicate, "terminal_reason IS NULL", is "the task has not ended" by the
-- table's CHECK (a reason exactly when ended), so it restates no state list.
CREATE INDEX tasks_claim ON tasks (priority DESC, seq, available_us, lease_expires_us)
    WHERE terminal_reason IS NULL;

CREATE INDEX tasks_claim_queue
    ON tasks (queue, priority DESC, seq, available_us, lease_expires_us)
    WHERE terminal_reason IS NULL;

-- Listings and counts of one queue, by state in creation order.
CREATE INDEX tasks_by_queue ON tasks (queue, state, seq);

-- tasks_open now serves reap, list_stale and listings by open state, none of
-- which reads available_us (claims used to).
DROP INDEX tasks_open;

CREATE INDEX tasks_open ON tasks (seq, lease_expires_us)
    WHERE state IN ('pending', 'running', 'compensating');
