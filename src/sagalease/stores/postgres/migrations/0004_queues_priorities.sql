-- sagalease PostgreSQL schema, version 4: queues, priorities and requeue links.
--
-- Every task belongs to a queue (the tasks of version 3 join 'default') and has
-- a priority (higher runs first; version 3 tasks get 0); a requeued task names
-- the task it copies. Adding a column with a constant default rewrites no row.
--
-- Claims walk the open tasks in claim order, priority first, then creation:
-- tasks_claim for a claim from every queue, tasks_queue_claim for named queues
-- (one queue: an ordered walk; several: the open rows of those queues, sorted).
-- Both are partial on open_seq like tasks_open, so finished tasks are never
-- scanned, and neither holds a column a heartbeat writes (heartbeats stay HOT
-- updates). tasks_open keeps serving the reaper and list_stale, which walk in
-- creation order. tasks_by_queue serves list_tasks(queue=...) in creation order
-- and counts(queue=...) (state is included: claims and ends already change
-- tasks_by_state, so including it costs no HOT update).

ALTER TABLE {schema}.tasks
    ADD COLUMN queue text NOT NULL DEFAULT 'default',
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN requeued_from text,
    ADD CONSTRAINT tasks_queue_length CHECK (length(queue) BETWEEN 1 AND 200),
    ADD CONSTRAINT tasks_priority CHECK (priority BETWEEN -1000 AND 1000),
    ADD CONSTRAINT tasks_requeued_from_length
        CHECK (requeued_from IS NULL OR length(requeued_from) BETWEEN 1 AND 200);

CREATE INDEX tasks_claim ON {schema}.tasks (priority DESC, open_seq)
    WHERE open_seq IS NOT NULL;

CREATE INDEX tasks_queue_claim ON {schema}.tasks (queue, priority DESC, open_seq)
    WHERE open_seq IS NOT NULL;

CREATE INDEX tasks_by_queue ON {schema}.tasks (queue, seq) INCLUDE (state);
