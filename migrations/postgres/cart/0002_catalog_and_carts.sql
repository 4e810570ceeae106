-- The catalog (prices are the server's, never the client's), carts, their lines, and the
-- checkouts that locked, released or completed a cart.
CREATE TABLE products (
    sku              TEXT    PRIMARY KEY,
    name             TEXT    NOT NULL,
    description      TEXT    NOT NULL,
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    currency_code    TEXT    NOT NULL,
    active           BOOLEAN NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE INDEX products_by_currency ON products (currency_code, sku);

CREATE TABLE carts (
    cart_id       TEXT    PRIMARY KEY,
    customer_id   TEXT    NOT NULL,
    currency_code TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'checking_out', 'ordered')),
    checkout_id   TEXT,
    version       BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    CHECK ((state = 'active') = (checkout_id IS NULL))
);

CREATE UNIQUE INDEX carts_by_checkout ON carts (checkout_id) WHERE checkout_id IS NOT NULL;
CREATE INDEX carts_by_customer ON carts (customer_id);

CREATE TABLE cart_lines (
    cart_id          TEXT    NOT NULL REFERENCES carts (cart_id) ON DELETE CASCADE,
    sku              TEXT    NOT NULL REFERENCES products (sku),
    quantity         BIGINT  NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    position         BIGINT  NOT NULL,
    PRIMARY KEY (cart_id, sku)
);

-- One row per checkout that touched a cart: its lock, its release (also a release that came
-- before any lock: a tombstone, so a late LockCart is refused), its completion. Lock and unlock
-- both write this row first, so on Postgres they queue on it and each sees the other's outcome.
CREATE TABLE cart_checkouts (
    checkout_id TEXT    PRIMARY KEY,
    cart_id     TEXT,
    state       TEXT    NOT NULL CHECK (state IN ('locked', 'released', 'completed')),
    updated_at  BIGINT  NOT NULL
);
