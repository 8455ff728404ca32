-- sagalease PostgreSQL schema, version 3: heartbeats become HOT updates.
-- A heartbeat changes lease_expires_us, lease_heartbeat_us, updated_us and
-- version. lease_expires_us was an INCLUDE column of tasks_open, so every
-- heartbeat inserted a new entry into every index of the table. The INCLUDE
-- columns bought nothing (claims lock the row, so they read the heap anyway);
-- without them, and with free space left in each page, a heartbeat rewrites
-- the row in place of the index entries.

DROP INDEX {schema}.tasks_open;

CREATE INDEX tasks_open ON {schema}.tasks (open_seq) WHERE open_seq IS NOT NULL;

ALTER TABLE {schema}.tasks SET (fillfactor = 80);
