-- Payments (one per checkout), the append-only double-entry ledger, and the simulated
-- processor's own books (its idempotency is on the processor-side key).
CREATE TABLE payments (
    payment_id            TEXT    PRIMARY KEY,
    checkout_id           TEXT    NOT NULL UNIQUE,
    customer_id           TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('pending', 'authorized', 'capturing',
        'captured', 'partially_refunded', 'refunded', 'voiding', 'voided', 'declined', 'failed',
        'tombstone')),
    currency_code         TEXT    NOT NULL,
    authorized_minor      INTEGER NOT NULL CHECK (authorized_minor >= 0),
    captured_minor        INTEGER NOT NULL CHECK (captured_minor >= 0),
    capture_request_minor INTEGER NOT NULL CHECK (capture_request_minor >= 0),
    refunded_minor        INTEGER NOT NULL CHECK (refunded_minor >= 0),
    refund_pending_minor  INTEGER NOT NULL CHECK (refund_pending_minor >= 0),
    decline_code          TEXT    NOT NULL,
    processor_reference   TEXT    NOT NULL,
    processor_key         TEXT    NOT NULL,
    card_last4            TEXT    NOT NULL,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    CHECK (captured_minor <= authorized_minor),
    CHECK (refunded_minor + refund_pending_minor <= captured_minor)
);

CREATE INDEX payments_by_processor_key ON payments (processor_key);

CREATE TABLE ledger_entries (
    entry_id       TEXT    PRIMARY KEY,
    transaction_id TEXT    NOT NULL,
    payment_id     TEXT    NOT NULL,
    checkout_id    TEXT    NOT NULL,
    account        TEXT    NOT NULL,
    direction      TEXT    NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount_minor   INTEGER NOT NULL CHECK (amount_minor > 0),
    currency_code  TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE INDEX ledger_by_payment ON ledger_entries (payment_id, entry_id);
CREATE INDEX ledger_by_checkout ON ledger_entries (checkout_id, entry_id);
CREATE INDEX ledger_by_transaction ON ledger_entries (transaction_id);

-- The ledger is append-only: the database itself refuses changes and deletions.
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TABLE processor_records (
    processor_key     TEXT    NOT NULL,
    operation         TEXT    NOT NULL
        CHECK (operation IN ('authorize', 'capture', 'void', 'refund')),
    outcome           TEXT    NOT NULL CHECK (outcome IN ('approved', 'declined')),
    reference         TEXT    NOT NULL,
    authorization_key TEXT    NOT NULL,
    amount_minor      INTEGER NOT NULL,
    currency_code     TEXT    NOT NULL,
    decline_code      TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (processor_key, operation)
);

CREATE INDEX processor_by_authorization ON processor_records (authorization_key);
