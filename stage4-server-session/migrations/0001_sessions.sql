-- Sessions in PostgreSQL (`stage4 --store postgres`): one row per session,
-- one row per cart line, one row per remembered idempotency key.
--
-- A session is named by the SHA-256 of its id (hex), never the id: whoever
-- reads the table or a backup cannot lift live session ids out of it.

CREATE TABLE sessions (
    digest     text PRIMARY KEY,
    born       timestamptz NOT NULL DEFAULT now(),
    -- Checked on every read and change (an expired row is not a session);
    -- a periodic sweep deletes the expired rows.
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE cart_lines (
    session text     NOT NULL REFERENCES sessions (digest) ON DELETE CASCADE,
    sku     text     NOT NULL,
    qty     smallint NOT NULL CHECK (qty BETWEEN 1 AND 99),
    -- Keeps the lines in the order they were first added, as every other
    -- store does; an update leaves it alone.
    position bigint  GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (session, sku)
);

CREATE TABLE applied_changes (
    session    text        NOT NULL REFERENCES sessions (digest) ON DELETE CASCADE,
    key        text        NOT NULL,
    -- The first answer, as the shop's JSON for it.
    answer     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (session, key)
);
