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
