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

-- Second edition (SPEC §7.1): location, address and full-text search.
--
-- The columns below repeat what `doc` says (location, address) and its words (`search`); every
-- writer of the read model fills them in the statement that writes `doc` (see below).
--
-- Geography, chosen by measurement (README "Location"): contrib `cube` (ships with Debian's
-- PostgreSQL 15, a trusted extension, no package to install). A report is a 3-D point on a
-- sphere of the mean Earth radius; the straight-line (chord) distance between two such points
-- grows strictly with the great-circle distance, so a GiST index on the point answers
-- "nearest first" as an index-ordered KNN scan (`<->`) that reads only the rows it returns,
-- however many reports lie inside the radius; the exact metres are 2R·asin(chord / 2R), the
-- haversine distance itself. `earthdistance` adds nothing this needs (its `earth_distance` is
-- the same formula on a 6 378 168 m sphere), and PostGIS would be a package to install for a
-- KNN we already have. The plain alternative measured — a built-in GiST on `point(lng, lat)`,
-- a bounding box of the radius and a sort — must read and sort every report in the box, which
-- grows with the density of the city; it is kept for `bbox=`, where the answer is newest first
-- anyway.
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS unaccent;

-- A point on the sphere of radius 6 371 008.8 m (the IUGG mean radius), in metres.
CREATE OR REPLACE FUNCTION report_earth_point(lat float8, lng float8) RETURNS public.cube
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN public.cube(ARRAY[
        6371008.8 * cos(radians(lat)) * cos(radians(lng)),
        6371008.8 * cos(radians(lat)) * sin(radians(lng)),
        6371008.8 * sin(radians(lat))]);

-- `unaccent` is STABLE (its dictionary could change); pinning the dictionary makes it safe to
-- call from an index, the documented way to index unaccented text.
CREATE OR REPLACE FUNCTION report_unaccent(t text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN public.unaccent('public.unaccent'::regdictionary, t);

-- `lat`, `lng`, `address` and `search` are plain columns that every writer fills in the same
-- statement as the row (they were generated from `doc` until issue 13: re-parsing `doc` as
-- jsonb four times per row was ~a quarter of each query DB's CPU per applied event). The
-- projection writes the values it has already decoded; `search` is `report_search` of them.
-- `check_sync` and the projection tests hold every writer to "the columns say what `doc` says".
--
-- The `simple` configuration lower-cases and splits words but never stems: Indonesian words
-- are not mangled by an English stemmer, and "every word must match" means exactly that.
CREATE OR REPLACE FUNCTION report_search(title text, description text, address text)
    RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN to_tsvector('simple'::regconfig, report_unaccent(
        title || ' ' || description || ' ' || coalesce(address, '')));

-- Fresh DBs get plain columns; a DB from before keeps its stored values (DROP EXPRESSION
-- neither rewrites nor recomputes). Checked first, so a start-up after the migration takes no
-- ACCESS EXCLUSIVE lock on the table.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN SELECT * FROM (VALUES ('lat', 'float8'), ('lng', 'float8'), ('address', 'text'),
                                     ('search', 'tsvector')) AS c(name, type) LOOP
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = current_schema() AND table_name = 'read_reports'
                         AND column_name = col.name) THEN
            EXECUTE format('ALTER TABLE read_reports ADD COLUMN %I %s', col.name, col.type);
        ELSIF EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE table_schema = current_schema() AND table_name = 'read_reports'
                        AND column_name = col.name AND is_generated = 'ALWAYS') THEN
            EXECUTE format('ALTER TABLE read_reports ALTER COLUMN %I DROP EXPRESSION IF EXISTS',
                           col.name);
        END IF;
    END LOOP;
END
$$;

-- near=: KNN over the sphere points of live located reports.
CREATE INDEX IF NOT EXISTS read_reports_near
    ON read_reports USING gist (report_earth_point(lat, lng))
    WHERE deleted_at IS NULL AND lat IS NOT NULL;
-- bbox=: containment of the plain (lng, lat) point.
CREATE INDEX IF NOT EXISTS read_reports_bbox
    ON read_reports USING gist (point(lng, lat))
    WHERE deleted_at IS NULL AND lat IS NOT NULL;
-- q=: every word of the query in the search vector.
CREATE INDEX IF NOT EXISTS read_reports_search
    ON read_reports USING gin (search) WHERE deleted_at IS NULL;

-- Every version of every report (SPEC §7.1 `GET /reports/{id}/history`), one row per event,
-- written by the projection in the same transaction as `read_reports`. Each row keeps the
-- event's payload (the full snapshot, or the tombstone), so what changed between versions is
-- worked out when it is read, and rows may arrive in any order or twice. Deleting a report
-- keeps its history.
CREATE TABLE IF NOT EXISTS report_history (
    report_id  uuid        NOT NULL,
    version    bigint      NOT NULL,
    event_type text        NOT NULL,
    at         timestamptz NOT NULL,
    payload    text        NOT NULL,
    PRIMARY KEY (report_id, version)
);

-- Autovacuum for an insert-mostly read model (issue 13). With the defaults, ANALYZE of
-- `read_reports` ran after every 10 % of growth and took up to a third of the query DBs' CPU
-- during a catch-up. The planner needs little from it: row counts come from the table's
-- current size at plan time, and the shape of the data (categories, statuses, words, places)
-- does not change as the table grows, so statistics from half the rows still fit. Columns
-- no query filters or sorts on (`doc`, `title`, `description`, `address`, the history's
-- `payload`) get no statistics at all: ANALYZE no longer sorts and detoasts them. Set only
-- when different, so a start-up takes no lock.
DO $$
DECLARE
    t record;
    c record;
BEGIN
    FOR t IN SELECT oid::regclass AS rel, reloptions FROM pg_class
             WHERE oid IN ('read_reports'::regclass, 'report_history'::regclass) LOOP
        IF t.reloptions IS NULL OR NOT t.reloptions @> ARRAY[
               'autovacuum_analyze_scale_factor=0.5', 'autovacuum_analyze_threshold=1000'] THEN
            EXECUTE format('ALTER TABLE %s SET (autovacuum_analyze_scale_factor = 0.5, '
                           'autovacuum_analyze_threshold = 1000)', t.rel);
        END IF;
    END LOOP;
    FOR c IN SELECT attrelid::regclass AS rel, attname FROM pg_attribute
             WHERE ((attrelid = 'read_reports'::regclass
                     AND attname IN ('doc', 'title', 'description', 'address'))
                 OR (attrelid = 'report_history'::regclass AND attname = 'payload'))
               AND attstattarget <> 0 LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS 0', c.rel, c.attname);
    END LOOP;
END
$$;

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

-- SPEC §7.3: query instances may answer from memory only while the read model is unchanged.
-- Every statement that changes what a list or the statistics answer (the projection's batch,
-- a rebuild, a checkpoint move) moves `read_model_position` in the same transaction, so a
-- query instance that reads this one row sees a new position exactly when a change is
-- visible (a snapshot, not a signal: no delivery delay). One writer per DB at a time
-- (`WRITE_LOCK`), so the row is never contended.
CREATE TABLE IF NOT EXISTS read_model_position (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    position bigint  NOT NULL
);
INSERT INTO read_model_position (id, position) VALUES (true, 1) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION read_model_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE read_model_position SET position = position + 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER read_reports_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON read_reports
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
CREATE OR REPLACE TRIGGER statistics_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON statistics
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
CREATE OR REPLACE TRIGGER checkpoint_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
