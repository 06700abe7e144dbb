-- Stage 5's schema: shoppers' accounts and addresses, and the catalog.
-- Run on the primary by every instance at start (`sqlx::migrate!`, which
-- takes an advisory lock, so concurrent starts apply it once).

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         TEXT        NOT NULL,
    -- argon2id, in the PHC string format: `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
    password_hash TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One account per address, whatever its case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE addresses (
    user_id    BIGINT      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    line1      TEXT        NOT NULL,
    line2      TEXT        NOT NULL DEFAULT '',
    city       TEXT        NOT NULL,
    postcode   TEXT        NOT NULL,
    country    CHAR(2)     NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Seeded at start from the `shop` crate's catalog (the same 270 SKUs the
-- earlier stages sell from static data).
CREATE TABLE products (
    sku         TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    garment     TEXT    NOT NULL,
    colour      TEXT    NOT NULL,
    size        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0)
);
