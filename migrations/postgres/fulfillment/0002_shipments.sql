-- Shipments per (checkout, warehouse), their lines and their tracking history, plus one row
-- per checkout that creates and cancels queue on (and that holds the tombstone of a cancel
-- that came before any create).
CREATE TABLE fulfillment_checkouts (
    checkout_id TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL CHECK (state IN ('created', 'cancelled', 'tombstone')),
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE shipments (
    shipment_id     TEXT    PRIMARY KEY,
    checkout_id     TEXT    NOT NULL REFERENCES fulfillment_checkouts (checkout_id),
    warehouse_id    TEXT    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('pending', 'packed', 'shipped', 'delivered', 'cancelled')),
    tracking_number TEXT    NOT NULL,
    recipient_name  TEXT    NOT NULL,
    line1           TEXT    NOT NULL,
    line2           TEXT    NOT NULL,
    city            TEXT    NOT NULL,
    region          TEXT    NOT NULL,
    postal_code     TEXT    NOT NULL,
    country_code    TEXT    NOT NULL,
    phone           TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (checkout_id, warehouse_id)
);

CREATE TABLE shipment_lines (
    shipment_id TEXT    NOT NULL REFERENCES shipments (shipment_id),
    sku         TEXT    NOT NULL,
    quantity    BIGINT  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (shipment_id, sku)
);

CREATE TABLE shipment_events (
    shipment_id TEXT    NOT NULL REFERENCES shipments (shipment_id),
    sequence    BIGINT  NOT NULL,
    status      TEXT    NOT NULL,
    at          BIGINT  NOT NULL,
    PRIMARY KEY (shipment_id, sequence)
);
