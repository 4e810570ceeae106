-- Idempotency keys of the shared kit (DESIGN §5): one row per (RPC, request_id).
-- A one-transaction command claims its row, makes its change and stores its answer together;
-- a command with an effect outside the database (the payment processor) commits its claim
-- first and advances `recovery_point` as it goes, fenced by `lock_token`.
CREATE TABLE idempotency_keys (
    scope            TEXT    NOT NULL,
    request_id       TEXT    NOT NULL,
    fingerprint      BYTEA   NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('in_progress', 'done')),
    response_code    INTEGER,
    response_message TEXT,
    response_body    BYTEA,
    recovery_point   TEXT    NOT NULL,
    recovery_data    BYTEA,
    lock_token       TEXT    NOT NULL,
    locked_until     BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    completed_at     BIGINT,
    expires_at       BIGINT  NOT NULL,
    PRIMARY KEY (scope, request_id),
    CHECK (state = 'in_progress' OR response_code IS NOT NULL)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
