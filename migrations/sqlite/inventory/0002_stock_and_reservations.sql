-- Warehouses, stock per (sku, warehouse) under optimistic locking, and reservations.
-- The CHECKs are the last line of defence: whatever the code does, stock never goes negative
-- and never more is reserved than is on hand.
CREATE TABLE warehouses (
    warehouse_id TEXT    PRIMARY KEY,
    region       TEXT    NOT NULL,
    priority     INTEGER NOT NULL
);

CREATE TABLE stock (
    sku          TEXT    NOT NULL,
    warehouse_id TEXT    NOT NULL REFERENCES warehouses (warehouse_id),
    on_hand      INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved     INTEGER NOT NULL CHECK (reserved >= 0),
    version      INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (sku, warehouse_id),
    CHECK (reserved <= on_hand)
);

-- One row per checkout: a reservation, or a tombstone when the release came first.
CREATE TABLE reservations (
    reservation_id TEXT    PRIMARY KEY,
    checkout_id    TEXT    NOT NULL UNIQUE,
    state          TEXT    NOT NULL
        CHECK (state IN ('active', 'committed', 'released', 'expired', 'tombstone')),
    expires_at     INTEGER NOT NULL,
    release_reason TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE INDEX reservations_due ON reservations (expires_at) WHERE state = 'active';

CREATE TABLE reservation_lines (
    reservation_id TEXT    NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    sku            TEXT    NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    position       INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, sku)
);

CREATE TABLE reservation_allocations (
    reservation_id TEXT    NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    sku            TEXT    NOT NULL,
    warehouse_id   TEXT    NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku, warehouse_id)
);
