-- Durable saga state (DESIGN §4): one row per saga, one per step, one per attempt (written
-- before its command is sent, completed after), and an append-only event timeline.
CREATE TABLE sagas (
    saga_id          TEXT    PRIMARY KEY,
    saga_type        TEXT    NOT NULL,
    cart_id          TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('running', 'compensating', 'completed',
        'compensated', 'needs_attention')),
    direction        TEXT    NOT NULL CHECK (direction IN ('forward', 'compensation')),
    step_index       BIGINT  NOT NULL,
    input            TEXT    NOT NULL,
    outputs          TEXT    NOT NULL,
    failure_reason   TEXT    NOT NULL,
    failure_message  TEXT    NOT NULL,
    failure_step     TEXT    NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    pivot_started    BOOLEAN NOT NULL,
    deadline_at      BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT  NOT NULL,
    version          BIGINT  NOT NULL,
    trace_context    TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE status IN ('running', 'compensating');
CREATE INDEX sagas_by_customer ON sagas (customer_id, created_at);
CREATE INDEX sagas_by_created ON sagas (created_at);

CREATE TABLE saga_steps (
    saga_id               TEXT    NOT NULL REFERENCES sagas (saga_id),
    step_index            BIGINT  NOT NULL,
    name                  TEXT    NOT NULL,
    status                TEXT    NOT NULL,
    forward_attempts      BIGINT  NOT NULL,
    compensation_attempts BIGINT  NOT NULL,
    -- Attempts made before an operator's retry: the retry budget counts from here.
    forward_retry_base    BIGINT  NOT NULL,
    compensation_retry_base BIGINT  NOT NULL,
    may_have_applied      BOOLEAN NOT NULL,
    PRIMARY KEY (saga_id, step_index)
);

CREATE TABLE saga_attempts (
    saga_id     TEXT    NOT NULL REFERENCES sagas (saga_id),
    step_index  BIGINT  NOT NULL,
    direction   TEXT    NOT NULL,
    number      BIGINT  NOT NULL,
    request_id  TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    status_code TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    ended_at    BIGINT,
    PRIMARY KEY (saga_id, step_index, direction, number)
);

CREATE TABLE saga_events (
    saga_id  TEXT    NOT NULL REFERENCES sagas (saga_id),
    sequence BIGINT  NOT NULL,
    at       BIGINT  NOT NULL,
    kind     TEXT    NOT NULL,
    step     TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    PRIMARY KEY (saga_id, sequence)
);
