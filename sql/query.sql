-- Query database: one read model, fed by the projection. Applied by the projection at
-- start-up for every query database; idempotent.

-- Every report the projection has seen, deleted ones included (deleted_at set: a tombstone, so
-- an older event arriving late can never bring a deleted report back). `doc` is the report's
-- ready-made JSON, so the read path serves rows without building JSON per field.
CREATE TABLE IF NOT EXISTS read_reports (
    id          uuid        PRIMARY KEY,
    title       text        NOT NULL,
    description text        NOT NULL,
    category    text        NOT NULL,
    status      text        NOT NULL,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    doc         text        NOT NULL
);

-- The list orders newest first with id as tie-break, optionally filtered by category and/or
-- status; one partial index per filter shape keeps every page an index range scan.
CREATE INDEX IF NOT EXISTS read_reports_newest
    ON read_reports (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS read_reports_category_newest
    ON read_reports (category, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS read_reports_status_newest
    ON read_reports (status, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS read_reports_category_status_newest
    ON read_reports (category, status, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- Live reports per (category, status), moved in the same transaction as the rows, so it equals
-- GROUP BY category, status over the live rows at every committed state. Also the source of
-- list totals, which keeps counting O(1) at a million rows.
CREATE TABLE IF NOT EXISTS statistics (
    category     text        NOT NULL,
    status       text        NOT NULL,
    count        bigint      NOT NULL CHECK (count >= 0),
    last_updated timestamptz NOT NULL,
    PRIMARY KEY (category, status)
);

-- How far this database has applied the stream, written in the same transaction as the data.
CREATE TABLE IF NOT EXISTS checkpoint (
    stream     text        PRIMARY KEY,
    entry_id   text        NOT NULL,
    position   bigint      NOT NULL,
    applied    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);

-- Bounded retention (SPEC §7.4). `stale`: the projection found this read model missing events
-- the stream no longer holds (it fell beyond the retention bound, or it is a restored backup, a
-- new DB, or it followed a stream Redis has since lost); query instances do not read a stale
-- DB, and the projection clears the mark only after rebuilding it from the command DB and
-- catching up. `stream_epoch`: the identity of the stream this checkpoint refers to (a random
-- id kept in Redis next to the stream), so a checkpoint from before a Redis data loss is
-- recognised. Added only when missing: ALTER TABLE would lock the table on every start-up.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'checkpoint'
                     AND column_name = 'stale') THEN
        ALTER TABLE checkpoint ADD COLUMN stale boolean NOT NULL DEFAULT false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'checkpoint'
                     AND column_name = 'stream_epoch') THEN
        ALTER TABLE checkpoint ADD COLUMN stream_epoch text;
    END IF;
END
$$;
