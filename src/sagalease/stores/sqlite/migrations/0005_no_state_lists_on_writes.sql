-- sagalease SQLite schema, version 5: nothing a write evaluates tests a list of
-- more than two constant states. SQLite evaluates "state IN ('a', 'b', 'c')" by
-- building a temporary index of the list, with a page cache of its own (87 KB
-- allocated and freed), in every statement that evaluates it: the state CHECKs
-- on every write of the state, and the tasks_open and tasks_ended predicates on
-- every claim and every end, six such indexes a lease cycle. In a process whose
-- heap top was where they landed, each one grew and trimmed the heap: a lease
-- cycle on a connection that had just created its tasks took 400 us instead of
-- 190. The CHECKs now write their lists as OR chains, and the two indexes test
-- terminal_reason, which the table's CHECK ties to the ended states (a reason
-- exactly when ended), as the claim indexes already do.
--
-- A CHECK cannot be changed in place: the table is rebuilt (SQLite's documented
-- procedure; the store runs this migration with foreign keys off and checks
-- them before it commits). Columns, their order and every value are unchanged.

CREATE TABLE tasks_v5 (
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
    queue              TEXT    NOT NULL DEFAULT 'default',
    priority           INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    requeued_from      TEXT,
    CHECK (state = 'pending' OR state = 'running' OR state = 'compensating'
        OR state = 'completed' OR state = 'failed' OR state = 'compensated'
        OR state = 'quarantined'),
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
         = (state = 'completed' OR state = 'failed' OR state = 'compensated'
            OR state = 'quarantined'))
) STRICT;

INSERT INTO tasks_v5 (
    seq, task_id, saga_id, state, metadata_json, compensations_json, lease_owner,
    lease_token, lease_acquired_us, lease_expires_us, lease_heartbeat_us, token,
    attempts, expirations, max_attempts, available_us, deadline_us, created_us,
    updated_us, terminal_reason, notes_json, version, queue, priority, requeued_from
)
SELECT
    seq, task_id, saga_id, state, metadata_json, compensations_json, lease_owner,
    lease_token, lease_acquired_us, lease_expires_us, lease_heartbeat_us, token,
    attempts, expirations, max_attempts, available_us, deadline_us, created_us,
    updated_us, terminal_reason, notes_json, version, queue, priority, requeued_from
FROM tasks ORDER BY seq;

DROP TABLE tasks;

ALTER TABLE tasks_v5 RENAME TO tasks;

CREATE INDEX tasks_by_saga ON tasks (saga_id, seq) WHERE saga_id IS NOT NULL;

CREATE INDEX tasks_ended ON tasks (state, seq) WHERE terminal_reason IS NOT NULL;

CREATE INDEX tasks_claim ON tasks (priority DESC, seq, available_us)
    WHERE terminal_reason IS NULL;

CREATE INDEX tasks_claim_queue ON tasks (queue, priority DESC, seq, available_us)
    WHERE terminal_reason IS NULL;

CREATE INDEX tasks_by_queue ON tasks (queue, state, seq);

CREATE INDEX tasks_open ON tasks (seq) WHERE terminal_reason IS NULL;
