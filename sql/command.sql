-- Command database: the source of truth. Applied by the command service at start-up;
-- every statement is idempotent so several instances may apply it at once.

-- One row per report ever created. A delete keeps the row (deleted_at set, version bumped) so
-- versions keep increasing and a deleted id can never be reused.
CREATE TABLE IF NOT EXISTS reports (
    id          uuid        PRIMARY KEY,
    title       text        NOT NULL,
    description text        NOT NULL,
    category    text        NOT NULL,
    status      text        NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz
);

-- The append-only event log, which is also the outbox: written in the same transaction as the
-- report row, published to Redis by the relay in position order, then marked published.
CREATE TABLE IF NOT EXISTS event_log (
    position     bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL,
    report_id    uuid        NOT NULL,
    version      bigint      NOT NULL,
    payload      text        NOT NULL,
    created_at   timestamptz NOT NULL,
    published_at timestamptz,
    UNIQUE (report_id, version)
);

-- The relay's work queue: only unpublished rows, in position order.
CREATE INDEX IF NOT EXISTS event_log_unpublished
    ON event_log (position) WHERE published_at IS NULL;

-- The relay's leadership lease (command/src/lease.rs): at most one row. The relay that holds
-- an unexpired lease publishes; `epoch` grows with every new term and fences a stale leader's
-- publishes in Redis. Expiry is judged by this database's clock.
CREATE TABLE IF NOT EXISTS relay_lease (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    holder     text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Second edition (SPEC §7.1): where a report is. Both coordinates or neither (the service
-- validates; the CHECK keeps a half-located row out even if a bug slipped through).
ALTER TABLE reports ADD COLUMN IF NOT EXISTS lat float8;
ALTER TABLE reports ADD COLUMN IF NOT EXISTS lng float8;
ALTER TABLE reports ADD COLUMN IF NOT EXISTS address text;
DO $$ BEGIN
    ALTER TABLE reports ADD CONSTRAINT reports_location_pair CHECK ((lat IS NULL) = (lng IS NULL));
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- Second edition (SPEC §7.2): the photo link an Open311 client sent with a request. A column
-- of its own (not only in the event payload) because `xtask rebuild` rebuilds read models
-- from these columns.
ALTER TABLE reports ADD COLUMN IF NOT EXISTS media_url text;
