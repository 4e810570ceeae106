-- A table with a rowid and a TEXT primary key is two b-trees in SQLite: the rows by rowid and
-- an index by the key, so every insert and every keyed update touches both. Steps, attempts and
-- events are only ever reached through their saga's key, so they are stored in key order
-- instead (one b-tree, and a saga's rows side by side for the checkout view). Rows are copied,
-- not recreated: nothing stored is lost.
CREATE TABLE saga_steps_by_key (
    saga_id               TEXT    NOT NULL REFERENCES sagas (saga_id),
    step_index            INTEGER NOT NULL,
    name                  TEXT    NOT NULL,
    status                TEXT    NOT NULL,
    forward_attempts      INTEGER NOT NULL,
    compensation_attempts INTEGER NOT NULL,
    -- Attempts made before an operator's retry: the retry budget counts from here.
    forward_retry_base    INTEGER NOT NULL,
    compensation_retry_base INTEGER NOT NULL,
    may_have_applied      BOOLEAN NOT NULL,
    PRIMARY KEY (saga_id, step_index)
) WITHOUT ROWID;
INSERT INTO saga_steps_by_key (saga_id, step_index, name, status, forward_attempts,
        compensation_attempts, forward_retry_base, compensation_retry_base, may_have_applied)
    SELECT saga_id, step_index, name, status, forward_attempts, compensation_attempts,
        forward_retry_base, compensation_retry_base, may_have_applied
    FROM saga_steps;
DROP TABLE saga_steps;
ALTER TABLE saga_steps_by_key RENAME TO saga_steps;

CREATE TABLE saga_attempts_by_key (
    saga_id     TEXT    NOT NULL REFERENCES sagas (saga_id),
    step_index  INTEGER NOT NULL,
    direction   TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    request_id  TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    status_code TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    PRIMARY KEY (saga_id, step_index, direction, number)
) WITHOUT ROWID;
INSERT INTO saga_attempts_by_key (saga_id, step_index, direction, number, request_id, outcome,
        status_code, message, started_at, ended_at)
    SELECT saga_id, step_index, direction, number, request_id, outcome, status_code, message,
        started_at, ended_at
    FROM saga_attempts;
DROP TABLE saga_attempts;
ALTER TABLE saga_attempts_by_key RENAME TO saga_attempts;

CREATE TABLE saga_events_by_key (
    saga_id  TEXT    NOT NULL REFERENCES sagas (saga_id),
    sequence INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    step     TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    PRIMARY KEY (saga_id, sequence)
) WITHOUT ROWID;
INSERT INTO saga_events_by_key (saga_id, sequence, at, kind, step, message, status)
    SELECT saga_id, sequence, at, kind, step, message, status FROM saga_events;
DROP TABLE saga_events;
ALTER TABLE saga_events_by_key RENAME TO saga_events;
