-- sagalease SQLite schema, version 1: the task records and their history.
-- Times are integer UTC microseconds since the epoch (never text).

CREATE TABLE tasks (
    seq                INTEGER PRIMARY KEY,  -- creation order (rows are never deleted)
    task_id            TEXT    NOT NULL UNIQUE,
    saga_id            TEXT,
    state              TEXT    NOT NULL,
    metadata_json      TEXT    NOT NULL,
    compensations_json TEXT    NOT NULL,
    lease_owner        TEXT,
    lease_token        INTEGER,
    lease_acquired_us  INTEGER,
    lease_expires_us   INTEGER,
    lease_heartbeat_us INTEGER,
    token              INTEGER NOT NULL,
    attempts           INTEGER NOT NULL,
    expirations        INTEGER NOT NULL,
    max_attempts       INTEGER NOT NULL,
    available_us       INTEGER NOT NULL,
    deadline_us        INTEGER,
    created_us         INTEGER NOT NULL,
    updated_us         INTEGER NOT NULL,
    terminal_reason    TEXT,
    notes_json         TEXT    NOT NULL,
    version            INTEGER NOT NULL,
    CHECK (state IN ('pending', 'running', 'compensating',
                     'completed', 'failed', 'compensated', 'quarantined')),
    -- the lease columns are all set or all NULL
    CHECK ((lease_owner IS NULL) = (lease_token IS NULL)
       AND (lease_owner IS NULL) = (lease_acquired_us IS NULL)
       AND (lease_owner IS NULL) = (lease_expires_us IS NULL)
       AND (lease_owner IS NULL) = (lease_heartbeat_us IS NULL)),
    -- a lease only in RUNNING or COMPENSATING, always with the current token
    CHECK (lease_owner IS NULL
        OR (state IN ('running', 'compensating') AND lease_token = token)),
    -- RUNNING always holds a lease (it may have expired)
    CHECK (state <> 'running' OR lease_owner IS NOT NULL),
    CHECK (lease_owner IS NULL
        OR (lease_acquired_us <= lease_heartbeat_us AND lease_heartbeat_us < lease_expires_us)),
    CHECK (attempts >= 0 AND attempts <= max_attempts AND attempts <= token),
    CHECK (expirations >= 0 AND max_attempts >= 1 AND version >= 1),
    -- a terminal task, and only a terminal task, has a reason
    CHECK ((terminal_reason IS NOT NULL)
         = (state IN ('completed', 'failed', 'compensated', 'quarantined')))
) STRICT;

CREATE TABLE history (
    task_id    TEXT    NOT NULL REFERENCES tasks (task_id),
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    event      TEXT    NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at_us      INTEGER NOT NULL,
    owner      TEXT,
    token      INTEGER,
    reason     TEXT,
    args_json  TEXT    NOT NULL,
    PRIMARY KEY (task_id, seq)
) STRICT, WITHOUT ROWID;

CREATE INDEX tasks_by_state ON tasks (state, seq);

CREATE INDEX tasks_by_saga ON tasks (saga_id, seq) WHERE saga_id IS NOT NULL;
