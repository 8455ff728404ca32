-- sagalease PostgreSQL schema, version 1: the task records, their history and
-- the indexes that keep claims flat however many finished tasks are kept.
--
-- Every table lives in the store's own schema; {schema} is replaced by the
-- quoted schema name (an identifier checked by the store, never user data).
--
-- Times are bigint UTC microseconds since the epoch, exactly what the pure
-- core computes with: no conversion, no rounding, no time zone setting can
-- change a stored instant, and comparisons are integer comparisons. (A
-- timestamptz also has microsecond resolution, but every read and write
-- would convert through the session's time zone and psycopg's datetime
-- adapters on the hot path; the view tasks_readable shows them as
-- timestamptz for people.)

CREATE TABLE {schema}.tasks (
    seq                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order
    task_id            text    NOT NULL UNIQUE,
    saga_id            text,
    state              text    NOT NULL,
    metadata_json      text    NOT NULL,
    compensations_json text    NOT NULL,
    lease_owner        text,
    lease_token        bigint,
    lease_acquired_us  bigint,
    lease_expires_us   bigint,
    lease_heartbeat_us bigint,
    token              bigint  NOT NULL,
    attempts           integer NOT NULL,
    expirations        bigint  NOT NULL,
    max_attempts       integer NOT NULL,
    available_us       bigint  NOT NULL,
    deadline_us        bigint,
    created_us         bigint  NOT NULL,
    updated_us         bigint  NOT NULL,
    terminal_reason    text,
    notes_json         text    NOT NULL,
    version            bigint  NOT NULL,
    CONSTRAINT tasks_task_id_length CHECK (length(task_id) BETWEEN 1 AND 200),
    CONSTRAINT tasks_state CHECK (state IN ('pending', 'running', 'compensating',
                                            'completed', 'failed', 'compensated', 'quarantined')),
    -- the lease columns are all set or all NULL
    CONSTRAINT tasks_lease_columns CHECK (
            (lease_owner IS NULL) = (lease_token IS NULL)
        AND (lease_owner IS NULL) = (lease_acquired_us IS NULL)
        AND (lease_owner IS NULL) = (lease_expires_us IS NULL)
        AND (lease_owner IS NULL) = (lease_heartbeat_us IS NULL)),
    -- a lease only in RUNNING or COMPENSATING, always with the current token
    CONSTRAINT tasks_lease_state CHECK (lease_owner IS NULL
        OR (state IN ('running', 'compensating') AND lease_token = token)),
    -- RUNNING always holds a lease (it may have expired)
    CONSTRAINT tasks_running_leased CHECK (state <> 'running' OR lease_owner IS NOT NULL),
    CONSTRAINT tasks_lease_times CHECK (lease_owner IS NULL
        OR (lease_acquired_us <= lease_heartbeat_us AND lease_heartbeat_us < lease_expires_us)),
    CONSTRAINT tasks_attempts CHECK (
        attempts >= 0 AND attempts <= max_attempts AND attempts <= token),
    CONSTRAINT tasks_counters CHECK (expirations >= 0 AND max_attempts >= 1 AND version >= 1),
    -- a terminal task, and only a terminal task, has a reason
    CONSTRAINT tasks_terminal_reason CHECK ((terminal_reason IS NOT NULL)
         = (state IN ('completed', 'failed', 'compensated', 'quarantined')))
);

CREATE TABLE {schema}.history (
    task_id    text    NOT NULL REFERENCES {schema}.tasks (task_id),
    seq        bigint  NOT NULL CHECK (seq >= 1),
    event      text    NOT NULL,
    from_state text,
    to_state   text    NOT NULL,
    at_us      bigint  NOT NULL,
    owner      text,
    token      bigint,
    reason     text,
    args_json  text    NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE INDEX tasks_by_state ON {schema}.tasks (state, seq);

CREATE INDEX tasks_by_saga ON {schema}.tasks (saga_id, seq) WHERE saga_id IS NOT NULL;

-- claim_next, reap and list_stale walk only the tasks that have not ended, in
-- creation order: finished tasks are kept but never scanned.
CREATE INDEX tasks_open ON {schema}.tasks (seq)
    INCLUDE (available_us, lease_expires_us)
    WHERE state IN ('pending', 'running', 'compensating');

-- For people with psql: the instants as timestamptz (exact: whole microseconds).
CREATE VIEW {schema}.tasks_readable AS
SELECT seq, task_id, saga_id, state, lease_owner, lease_token, token, attempts, expirations,
       max_attempts,
       timestamptz 'epoch' + lease_expires_us * interval '1 microsecond' AS lease_expires_at,
       timestamptz 'epoch' + available_us * interval '1 microsecond' AS available_at,
       timestamptz 'epoch' + deadline_us * interval '1 microsecond' AS deadline,
       timestamptz 'epoch' + created_us * interval '1 microsecond' AS created_at,
       timestamptz 'epoch' + updated_us * interval '1 microsecond' AS updated_at,
       terminal_reason, metadata_json::jsonb AS metadata
FROM {schema}.tasks;
