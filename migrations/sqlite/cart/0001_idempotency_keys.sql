-- Idempotency keys of the shared kit (DESIGN §5): one row per (RPC, request_id).
-- A one-transaction command claims its row, makes its change and stores its answer together;
-- a command with an effect outside the database (the payment processor) commits its claim
-- first and advances `recovery_point` as it goes, fenced by `lock_token`.
CREATE TABLE idempotency_keys (
    scope            TEXT    NOT NULL,
    request_id       TEXT    NOT NULL,
    fingerprint      BLOB    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('in_progress', 'done')),
    response_code    INTEGER,
    response_message TEXT,
    response_body    BLOB,
    recovery_point   TEXT    NOT NULL,
    recovery_data    BLOB,
    lock_token       TEXT    NOT NULL,
    locked_until     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    expires_at       INTEGER NOT NULL,
    PRIMARY KEY (scope, request_id),
    CHECK (state = 'in_progress' OR response_code IS NOT NULL)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
