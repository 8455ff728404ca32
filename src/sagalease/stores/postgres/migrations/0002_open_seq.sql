-- sagalease PostgreSQL schema, version 2: claim_next, reap and list_stale walk
-- the open tasks through a column that only they have (open_seq: seq while the
-- task has not ended, NULL after). The planner cannot answer "the oldest open
-- task" from the primary key any more: with statistics taken while most tasks
-- were pending it did, and then filtered out every finished task on each claim.

ALTER TABLE {schema}.tasks ADD COLUMN open_seq bigint GENERATED ALWAYS AS (
    CASE WHEN state IN ('pending', 'running', 'compensating') THEN seq END
) STORED;

DROP INDEX {schema}.tasks_open;

CREATE INDEX tasks_open ON {schema}.tasks (open_seq)
    INCLUDE (available_us, lease_expires_us)
    WHERE open_seq IS NOT NULL;
