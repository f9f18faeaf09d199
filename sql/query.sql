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
-- The place cells of a point (`query::cells`): one cell of each level, 0.005° up to 20.48° a
-- side, each level four times the one before; the level in bits 48.., the column (from lng
-- -180) in bits 24..48, the row (from lat -90) below. `query::cells::cell` is the same
-- formula, term for term (a test compares them), so a box's cover holds every point in it.
CREATE OR REPLACE FUNCTION report_cells(lat float8, lng float8) RETURNS int8[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ARRAY[
        (0::int8 << 48) | (floor((lng + 180) / 0.005::float8)::int8 << 24)
            | floor((lat + 90) / 0.005::float8)::int8,
        (1::int8 << 48) | (floor((lng + 180) / 0.02::float8)::int8 << 24)
            | floor((lat + 90) / 0.02::float8)::int8,
        (2::int8 << 48) | (floor((lng + 180) / 0.08::float8)::int8 << 24)
            | floor((lat + 90) / 0.08::float8)::int8,
        (3::int8 << 48) | (floor((lng + 180) / 0.32::float8)::int8 << 24)
            | floor((lat + 90) / 0.32::float8)::int8,
        (4::int8 << 48) | (floor((lng + 180) / 1.28::float8)::int8 << 24)
            | floor((lat + 90) / 1.28::float8)::int8,
        (5::int8 << 48) | (floor((lng + 180) / 5.12::float8)::int8 << 24)
            | floor((lat + 90) / 5.12::float8)::int8,
        (6::int8 << 48) | (floor((lng + 180) / 20.48::float8)::int8 << 24)
            | floor((lat + 90) / 20.48::float8)::int8];

-- q=: every word of the query in the search vector, and with a place the cells that cover it
-- (`query::search`): one GIN scan intersects the words' posting lists with the cells', so a
-- rare word in a large box, or a word that never occurs in the box, costs its few matches
-- instead of a scan of the box (0.47 s for a 2° box at a million reports) or of the word's
-- matches (malioboro, 8 %, in a Jakarta box: 0.1 s). A query on `search` alone reads this
-- index as it read the former `read_reports_search`, which it replaces.
CREATE INDEX IF NOT EXISTS read_reports_search_place
    ON read_reports USING gin (search, report_cells(lat, lng)) WHERE deleted_at IS NULL;
DROP INDEX IF EXISTS read_reports_search;
-- near= with category= and/or status=: the KNN scan of `read_reports_near` must fetch every
-- report of the radius from the table to test the filter, all of them when none matches (a
-- category never reported in that part of a city: ~8 700 rows at a million reports, README
-- "At a million reports"). Here the filter is an index condition: contrib `btree_gist`
-- (Debian's PostgreSQL 15, trusted) lets GiST carry the text columns, and with them first
-- the tree is split by (category, status) before space, so a filter prunes whole subtrees
-- and the KNN scan reads only matching reports. Measured against the spatial column first
-- (which tests the filter on every leaf of the radius, 3x the pages when nothing matches);
-- plain `near=` keeps `read_reports_near`, which one subtree per filter value would slow.
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX IF NOT EXISTS read_reports_near_filtered
    ON read_reports USING gist (category, status, report_earth_point(lat, lng))
    WHERE deleted_at IS NULL AND lat IS NOT NULL;
-- bbox= without q=: how many reports a box holds (with its category/status) is counted here
-- first, up to `query::search::BOX_SORT_ROWS`, and a box that holds no more is answered from
-- these entries alone, sorted newest first. The keys and every column the statement reads
-- (lat and lng too: the planner only scans an expression index index-only when the columns
-- under the expression are there) are in the index, so that count is an index-only scan and
-- reads no table rows (2 500 reports of a small box: ~700 index pages instead of a walk of
-- 10 000 table rows and a bitmap scan of 2 500 more). Filters first, as for near=, so a
-- category absent from the box prunes the tree instead of reading the box.
CREATE INDEX IF NOT EXISTS read_reports_box
    ON read_reports USING gist (category, status, point(lng, lat))
    INCLUDE (created_at, id, lat, lng)
    WHERE deleted_at IS NULL AND lat IS NOT NULL;

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
-- Which reports each position changed, so that a query instance's answers by id survive the
-- positions that did not touch their report (`query/src/cache.rs`, the point cache): every
-- statement on `read_reports` moves the position and records the ids it wrote under the new
-- position (NULL: more than `read_model_changes_max()` rows, or a TRUNCATE: every report).
-- The record is complete for every position above `read_model_position.changes_from`; older
-- rows are pruned every 256 positions, keeping the last 4 096 (a listener needs the changes
-- since its last fence, normally one commit ago; one further behind forgets every answer).
CREATE TABLE IF NOT EXISTS read_model_changes (
    position bigint PRIMARY KEY,
    ids      uuid[]
);
ALTER TABLE read_model_position ADD COLUMN IF NOT EXISTS changes_from bigint;
-- An upgraded DB has no record of the positions before this one.
UPDATE read_model_position SET changes_from = position WHERE changes_from IS NULL;
CREATE OR REPLACE FUNCTION read_model_changes_max() RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT 4096';
CREATE OR REPLACE FUNCTION read_reports_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p bigint;
BEGIN
    UPDATE read_model_position SET position = position + 1 RETURNING position INTO p;
    INSERT INTO read_model_changes (position, ids)
    SELECT p, CASE WHEN n > read_model_changes_max() THEN NULL
                   ELSE (SELECT array_agg(id) FROM changed_rows) END
    FROM (SELECT count(*) AS n FROM changed_rows) c WHERE n > 0;
    IF p % 256 = 0 THEN
        DELETE FROM read_model_changes WHERE position <= p - 4096;
        UPDATE read_model_position SET changes_from = p - 4096 WHERE changes_from < p - 4096;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION read_reports_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH p AS (UPDATE read_model_position SET position = position + 1 RETURNING position)
    INSERT INTO read_model_changes (position, ids) SELECT position, NULL FROM p;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS read_reports_changed ON read_reports;
CREATE OR REPLACE TRIGGER read_reports_inserted
    AFTER INSERT ON read_reports REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION read_reports_rows_changed();
CREATE OR REPLACE TRIGGER read_reports_updated
    AFTER UPDATE ON read_reports REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION read_reports_rows_changed();
CREATE OR REPLACE TRIGGER read_reports_deleted
    AFTER DELETE ON read_reports REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION read_reports_rows_changed();
CREATE OR REPLACE TRIGGER read_reports_truncated
    AFTER TRUNCATE ON read_reports
    FOR EACH STATEMENT EXECUTE FUNCTION read_reports_truncated();
CREATE OR REPLACE TRIGGER statistics_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON statistics
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
CREATE OR REPLACE TRIGGER checkpoint_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();

-- The cache fence (SPEC §7.3): a query instance answers from memory with no round trip per
-- request, so no transaction that moves the position may commit while any instance still
-- serves the old one. Each instance's cache listener holds the fence lock F SHARED on its own
-- connection while it serves a position from memory, and idles in `read_model_fence_wait`.
-- At COMMIT (a deferred trigger on the position row, so every writer passes here, the
-- projection's batches, a rebuild and any hand-written SQL alike) the transaction takes the
-- committing lock C, then cancels the listeners' waits until it can take F EXCLUSIVE: each
-- listener marks its position unknown, lets go of F, and waits for C (the commit) before it
-- takes F again and reads the new position. Both locks are released after the commit is
-- visible. Guarantees:
-- - a commit never happens while an instance can answer the position before it from memory;
-- - a listener that misses a cancel (it was between two statements) gets the next one,
--   0.5 ms later: the writer cancels every holder until none is left, and a listener that
--   let go cannot take F back before the commit, so it cannot hold the writer up again;
-- - a listener that does not let go within `read_model_fence_evict_after()` (its instance
--   stopped or hung) has its connection cut, and the commit waits out its lease
--   (`read_model_fence_lease()`: an instance serves from memory only within that long after
--   it last sent a statement on that connection, `query/src/cache.rs`);
-- - with no listener (caches off) a commit pays one try-lock.
-- F is `pg_advisory_lock(29042, 1667326824)`, C `(29042, 1667326825)`. Cancelling and
-- cutting off another role's backend takes that role, a superuser or `pg_signal_backend`;
-- without it a listener lets go at its next tick (100 ms) and a stuck one holds the commit
-- until the writer's statement timeout (the writer retries), never a stale answer.
-- Shapes of these functions that an earlier schema of this fence had.
DROP FUNCTION IF EXISTS read_model_fence_evict_after();
DROP FUNCTION IF EXISTS read_model_fence_pids(boolean, text);
DROP FUNCTION IF EXISTS read_model_fence_wait(integer);
CREATE OR REPLACE FUNCTION read_model_fence_lease() RETURNS double precision
    LANGUAGE sql IMMUTABLE AS 'SELECT 1.0::double precision';
CREATE OR REPLACE FUNCTION read_model_fence_evict_after() RETURNS interval
    LANGUAGE sql IMMUTABLE AS $$SELECT interval '1 second'$$;
-- Other backends of this DB granted advisory lock (29042, `objid`) in `want_mode`.
CREATE OR REPLACE FUNCTION read_model_fence_holders(objid_wanted bigint, want_mode text)
    RETURNS SETOF integer LANGUAGE sql AS $$
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = 29042 AND objid = objid_wanted AND objsubid = 2
      AND granted AND mode = want_mode AND pid <> pg_backend_pid()
$$;
-- A listener's idle tick on the session that took the fence as backend `holder`: true as soon
-- as a writer is committing (found at the start or the end, or the wait is cancelled by the
-- writer: SQLSTATE 57014), false after `tick_ms`. A session that does not hold the fence
-- (a transaction pooler handed the statement to another backend) is an error, so a lease is
-- only ever renewed by the session whose lock holds writers back.
CREATE OR REPLACE FUNCTION read_model_fence_wait(tick_ms integer, holder integer)
    RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF pg_backend_pid() <> holder OR NOT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND pid = holder AND granted AND mode = 'ShareLock'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid = 29042 AND objid = 1667326824 AND objsubid = 2) THEN
        RAISE EXCEPTION 'this session does not hold the cache fence (a transaction pooler in between?)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT read_model_fence_holders(1667326825, 'ExclusiveLock')) THEN
        RETURN true;
    END IF;
    PERFORM pg_sleep(tick_ms / 1000.0);
    RETURN EXISTS (SELECT read_model_fence_holders(1667326825, 'ExclusiveLock'));
END $$;
CREATE OR REPLACE FUNCTION read_model_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cut_off timestamptz;
BEGIN
    -- No listener holds it, or this transaction took it already (the position moves once
    -- per statement): nothing to wait for.
    IF pg_try_advisory_xact_lock(29042, 1667326824) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(29042, 1667326825);
    cut_off := clock_timestamp() + read_model_fence_evict_after();
    LOOP
        BEGIN
            PERFORM pg_cancel_backend(p) FROM read_model_fence_holders(1667326824, 'ShareLock') AS p;
        EXCEPTION WHEN insufficient_privilege THEN
            NULL; -- the listeners find this writer committing at their next tick
        END;
        PERFORM pg_sleep(0.0005);
        EXIT WHEN pg_try_advisory_xact_lock(29042, 1667326824);
        IF clock_timestamp() > cut_off THEN
            -- A listener that did not let go (its instance stopped or hung): cut it off and
            -- wait until its backend is gone, take the fence, then out-wait the lease the
            -- listener may still believe it holds (holding the fence, so no listener serves).
            PERFORM pg_terminate_backend(p, 1000)
                FROM read_model_fence_holders(1667326824, 'ShareLock') AS p;
            PERFORM pg_advisory_xact_lock(29042, 1667326824);
            PERFORM pg_sleep(read_model_fence_lease());
            EXIT;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS read_model_fence ON read_model_position;
CREATE CONSTRAINT TRIGGER read_model_fence
    AFTER INSERT OR UPDATE ON read_model_position
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION read_model_fence();

-- Numbered pages at any depth (SPEC §7.1 "`page=N` … its cost must not grow with N").
--
-- An order-statistics index over the newest-first order of the live reports, per list filter
-- shape: (category, status), (category, status ''), (category '', status) and ('', '') for no
-- filter. Each shape cuts its own reports into buckets by `created_at` (a bucket holds the
-- shape's reports with `bucket <= created_at <` that shape's next bucket; the oldest starts at
-- -infinity, present or implied), and `list_counts` holds each bucket's live count. Page N of
-- a filter then: sum that shape's bucket counts from the newest bucket until the offset falls
-- inside one (one primary-key row per bucket), and range-scan the filter's newest-first index
-- from that bucket's upper bound, skipping fewer rows than one bucket holds. Buckets are per
-- shape so that a filter matching 1/24 of the reports walks as few buckets as no filter does.
--
-- Exact at every committed state: STATEMENT-level triggers with transition tables move the
-- counts in the same transaction as the rows, with one grouped upsert per statement (the
-- projection writes a batch with one multi-row upsert; a row trigger would run per report).
-- Correctness does not depend on where the boundaries lie, only on every count matching its
-- range, so boundaries move freely: a bucket that grows past `list_bucket_rows()` live reports
-- is re-cut into even pieces of at most half that, and one that shrinks below an eighth of it
-- is merged with its neighbours (`list_counts_rebucket`), each walking only the reports of the
-- range it re-cuts. The triggers take the writers' lock of the DB (the projection's
-- WRITE_LOCK, already held by the projection and a rebuild), so a re-cut never races another
-- transaction's count move. A writer that locks other rows before writing `read_reports`
-- should take that lock first too (the projection does), or two such writers may deadlock.
-- Reports sharing one `created_at` to the microsecond are never split apart: more than the
-- limit at a single instant stay in one bucket (re-walked when touched).
CREATE TABLE IF NOT EXISTS list_counts (
    category text        NOT NULL,
    status   text        NOT NULL,
    bucket   timestamptz NOT NULL,
    count    bigint      NOT NULL,
    PRIMARY KEY (category, status, bucket)
);

-- The most live reports a bucket may hold before it is cut: it bounds the OFFSET inside a
-- bucket (a deep page skips fewer than this many index keys), while the buckets summed for
-- page N are ~ offset / (this / 4) rows of an index. 1 000 keeps both well under a
-- millisecond at a million reports (README "At a million reports"). Tests set
-- `reports.list_bucket_rows` (e.g. `ALTER DATABASE … SET`) to cross boundaries on small data.
CREATE OR REPLACE FUNCTION list_bucket_rows() RETURNS bigint
    LANGUAGE sql STABLE
    RETURN GREATEST(COALESCE(NULLIF(current_setting('reports.list_bucket_rows', true), '')::bigint,
                             1000), 2);

-- The rows of one shape, as a condition on `read_reports` that its partial index matches.
CREATE OR REPLACE FUNCTION list_shape_rows(c text, s text) RETURNS text
    LANGUAGE sql IMMUTABLE
    RETURN 'deleted_at IS NULL'
        || CASE WHEN c <> '' THEN format(' AND category = %L', c) ELSE '' END
        || CASE WHEN s <> '' THEN format(' AND status = %L', s) ELSE '' END;

-- Re-cuts shape (c, s)'s buckets in [lo, hi) (lo a current boundary or -infinity, hi the
-- next kept one or infinity): its live reports, in key order, into ceil(n / (limit / 2))
-- pieces of even size, the first starting at lo; counts recomputed from the rows. One walk.
CREATE OR REPLACE FUNCTION list_counts_rebucket(c text, s text, lo timestamptz, hi timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    total  bigint;
    pieces bigint;
    rows   text := list_shape_rows(c, s) || ' AND created_at >= $1 AND created_at < $2';
BEGIN
    EXECUTE 'SELECT count(*) FROM read_reports WHERE ' || rows INTO total USING lo, hi;
    pieces := GREATEST(1, ceil(total::numeric / GREATEST(list_bucket_rows() / 2, 1)));
    DELETE FROM list_counts
     WHERE category = c AND status = s AND bucket >= lo AND bucket < hi;
    -- A row's bucket is the latest piece start at or before it (a running max). A piece
    -- starts only where `created_at` changes, so every report of one instant lies in one
    -- bucket, as the boundaries' definition needs.
    EXECUTE 'INSERT INTO list_counts (category, status, bucket, count)
             SELECT $3, $4, b, count(*)
               FROM (SELECT max(CASE WHEN n = 1 THEN $1
                                     WHEN created_at <> prev
                                      AND (n - 1) * $5 / $6 <> (n - 2) * $5 / $6
                                     THEN created_at END)
                                OVER (ORDER BY created_at, id) AS b
                       FROM (SELECT created_at, id, row_number() OVER w AS n,
                                    lag(created_at) OVER w AS prev
                               FROM read_reports WHERE ' || rows || '
                             WINDOW w AS (ORDER BY created_at, id)) r) p
              GROUP BY b'
        USING lo, hi, c, s, pieces, GREATEST(total, 1);
    -- The range's first boundary stays even when it holds no live report.
    INSERT INTO list_counts (category, status, bucket, count) VALUES (c, s, lo, 0)
        ON CONFLICT (category, status, bucket) DO NOTHING;
END $$;

-- Re-cuts every shape from scratch: an existing read model at migration, and a rebuild.
CREATE OR REPLACE FUNCTION list_counts_rebucket_all() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    DELETE FROM list_counts;
    FOR k IN SELECT DISTINCT COALESCE(category, '') AS c, COALESCE(status, '') AS s
               FROM read_reports WHERE deleted_at IS NULL
              GROUP BY GROUPING SETS ((category, status), (category), (status), ())
    LOOP
        PERFORM list_counts_rebucket(k.c, k.s, '-infinity', 'infinity');
    END LOOP;
END $$;

-- Re-cuts one bucket of shape (c, s) if it is too full (into pieces), or merges it with its
-- older neighbour (the newer one for the oldest bucket) if it is too empty.
CREATE OR REPLACE FUNCTION list_counts_fix(c text, s text, b timestamptz, cap bigint)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n  bigint;
    lo timestamptz := b;
    hi timestamptz;
BEGIN
    -- An earlier re-cut of the same statement may have removed or refilled this bucket.
    SELECT count INTO n FROM list_counts WHERE category = c AND status = s AND bucket = b;
    IF NOT FOUND OR (n <= cap AND n >= cap / 8) THEN
        RETURN;
    END IF;
    SELECT min(bucket) INTO hi FROM list_counts WHERE category = c AND status = s AND bucket > b;
    IF n < cap / 8 THEN
        SELECT max(bucket) INTO lo FROM list_counts WHERE category = c AND status = s AND bucket < b;
        IF lo IS NULL THEN
            IF hi IS NULL THEN
                RETURN; -- a lone bucket: nothing to merge with
            END IF;
            lo := b;
            SELECT min(bucket) INTO hi FROM list_counts
             WHERE category = c AND status = s AND bucket > hi;
        END IF;
    END IF;
    PERFORM list_counts_rebucket(c, s, lo, COALESCE(hi, 'infinity'));
END $$;

-- Re-cuts the buckets one statement left too full or too empty (`list_counts_move`, below):
-- per shape, a bulk statement (a rebuild's DELETE of every row, a bulk load) re-cuts the span
-- it touched in one walk; otherwise each bucket with its neighbours. Rare (a bucket crosses
-- a limit once per ~500 reports of its shape), so kept out of the trigger's common path.
CREATE OR REPLACE FUNCTION list_counts_recut(tc text[], ts text[], tb timestamptz[])
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    cap bigint := list_bucket_rows();
    k   record;
    lo  timestamptz;
    hi  timestamptz;
BEGIN
    FOR k IN SELECT c, s, count(*) AS n, min(b) AS first, max(b) AS last
               FROM unnest(tc, ts, tb) AS t(c, s, b) GROUP BY c, s
    LOOP
        IF k.n > 16 THEN
            SELECT COALESCE(max(bucket), k.first) INTO lo FROM list_counts
             WHERE category = k.c AND status = k.s AND bucket < k.first;
            SELECT min(bucket) INTO hi FROM list_counts
             WHERE category = k.c AND status = k.s AND bucket > k.last;
            PERFORM list_counts_rebucket(k.c, k.s, lo, COALESCE(hi, 'infinity'));
        ELSE
            FOR lo IN SELECT b FROM unnest(tc, ts, tb) AS t(c, s, b)
                       WHERE c = k.c AND s = k.s ORDER BY b
            LOOP
                PERFORM list_counts_fix(k.c, k.s, lo, cap);
            END LOOP;
        END IF;
    END LOOP;
END $$;

-- Moves the counts by one statement's rows in one statement, then has the buckets it left
-- too full or too empty re-cut. `list_counts_old` / `list_counts_new` are the statement's
-- transition tables; each operation has only its own, so each branch has its own statement.
--
-- What this costs is what every projection statement pays (issue 13 points 5 and 6; measured
-- with `cargo run --release -p query --example write_cost`, README "At a million reports"),
-- and almost all of it was per call, not per row:
-- - the statements referred to PL/pgSQL variables, so each was a parameterised plan that the
--   plan cache chose to re-plan for every call (a custom plan looked cheaper than the generic
--   one for one row): ~0.3 ms a call. These statements use no variable at all, so they are
--   planned once per session (and `list_bucket_rows()` is read inside the statement);
-- - the projection's upsert (INSERT … ON CONFLICT DO UPDATE) fires both the INSERT and the
--   UPDATE trigger, one of them usually with no rows: that call now only looks at its
--   transition table, and takes the writers' lock in the same statement only if a row is
--   there;
-- - an update's old and new row were paired with a join; now the old rows count −1 and the
--   new ones +1 and equal (shape, created_at) pairs cancel before any bucket is looked up,
--   so a status change looks up the two shapes it moves, a title edit none, and there is no
--   join whose plan (made once, for the first call's size) could suit small statements only;
-- - shapes holding a single bucket (any shape with fewer than limit / 8 live reports) were
--   handed to `list_counts_fix` after every write, to find it had no neighbour to merge with;
--   such a bucket is flagged only when its shape has another bucket.
-- - the bucket look-ups (one per changed (shape, created_at)) are planned once per session,
--   when `list_counts` may be a page or two, and a sequential scan won there; the hot bucket
--   rows are updated by every statement, so the table fills with dead versions between
--   prunes and that plan then read all of them for every look-up (a batch of 50: ~60 µs a
--   row). `enable_seqscan = off` for this function keeps them primary-key probes.
-- Exactness: each row's shapes get its delta in the bucket that holds its `created_at` now,
-- in the same statement snapshot, under the writers' lock; re-cuts see below.
CREATE OR REPLACE FUNCTION list_counts_move() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off AS $$
DECLARE
    tc text[];
    ts text[];
    tb timestamptz[];
BEGIN
    -- Serialise with other writers, and see the boundaries they committed (READ COMMITTED:
    -- every statement below takes its snapshot after the lock is granted). The key is the
    -- projection's writer lock (`projection::writer::WRITE_LOCK`), which the projection and a
    -- rebuild already hold, so for them this costs nothing and never waits. Taken only when
    -- the transition table has a row to count: a statement with nothing to move stops here.
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_advisory_xact_lock(123636797826403)
           FROM list_counts_new WHERE deleted_at IS NULL LIMIT 1;
    ELSE
        PERFORM pg_advisory_xact_lock(123636797826403)
           FROM list_counts_old WHERE deleted_at IS NULL LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The same statement in each branch but for `d`, the rows it moves (±1 each) in each of
    -- their four shapes (an UPDATE's netted per (shape, created_at) first), each counted in
    -- the bucket that holds it: the latest boundary at or before it (one primary-key probe,
    -- the newest bucket's for a new report), else the implied -infinity one. Flagged: a
    -- bucket over the limit, or under an eighth of it in a shape with another bucket (before
    -- this statement, or touched by it) to merge with.
    IF TG_OP = 'INSERT' THEN
        WITH d AS (SELECT sh.c, sh.s, m.created_at, 1 AS delta
                     FROM list_counts_new m
                     CROSS JOIN LATERAL (VALUES (m.category, m.status), (m.category, ''),
                                                ('', m.status), ('', '')) AS sh(c, s)
                    WHERE m.deleted_at IS NULL),
             up AS (INSERT INTO list_counts AS l (category, status, bucket, count)
                    SELECT d.c, d.s,
                           COALESCE((SELECT b.bucket FROM list_counts b
                                      WHERE b.category = d.c AND b.status = d.s
                                        AND b.bucket <= d.created_at
                                      ORDER BY b.bucket DESC LIMIT 1), '-infinity'),
                           sum(d.delta)
                      FROM d GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
                    ON CONFLICT (category, status, bucket)
                    DO UPDATE SET count = l.count + EXCLUDED.count
                    RETURNING l.category, l.status, l.bucket, l.count)
        SELECT array_agg(up.category), array_agg(up.status), array_agg(up.bucket)
          INTO tc, ts, tb
          FROM up
         WHERE up.count > list_bucket_rows()
            OR (up.count < list_bucket_rows() / 8
                AND (EXISTS (SELECT FROM list_counts o
                              WHERE o.category = up.category AND o.status = up.status
                                AND o.bucket <> up.bucket)
                     OR EXISTS (SELECT FROM up n
                                 WHERE n.category = up.category AND n.status = up.status
                                   AND n.bucket <> up.bucket)));
    ELSIF TG_OP = 'UPDATE' THEN
        WITH m AS (SELECT category, status, created_at, 1 AS delta
                     FROM list_counts_new WHERE deleted_at IS NULL
                   UNION ALL
                   SELECT category, status, created_at, -1
                     FROM list_counts_old WHERE deleted_at IS NULL),
             d AS (SELECT sh.c, sh.s, m.created_at, sum(m.delta) AS delta
                     FROM m CROSS JOIN LATERAL (VALUES (m.category, m.status), (m.category, ''),
                                                       ('', m.status), ('', '')) AS sh(c, s)
                    GROUP BY 1, 2, 3 HAVING sum(m.delta) <> 0),
             up AS (INSERT INTO list_counts AS l (category, status, bucket, count)
                    SELECT d.c, d.s,
                           COALESCE((SELECT b.bucket FROM list_counts b
                                      WHERE b.category = d.c AND b.status = d.s
                                        AND b.bucket <= d.created_at
                                      ORDER BY b.bucket DESC LIMIT 1), '-infinity'),
                           sum(d.delta)
                      FROM d GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
                    ON CONFLICT (category, status, bucket)
                    DO UPDATE SET count = l.count + EXCLUDED.count
                    RETURNING l.category, l.status, l.bucket, l.count)
        SELECT array_agg(up.category), array_agg(up.status), array_agg(up.bucket)
          INTO tc, ts, tb
          FROM up
         WHERE up.count > list_bucket_rows()
            OR (up.count < list_bucket_rows() / 8
                AND (EXISTS (SELECT FROM list_counts o
                              WHERE o.category = up.category AND o.status = up.status
                                AND o.bucket <> up.bucket)
                     OR EXISTS (SELECT FROM up n
                                 WHERE n.category = up.category AND n.status = up.status
                                   AND n.bucket <> up.bucket)));
    ELSE
        WITH d AS (SELECT sh.c, sh.s, m.created_at, -1 AS delta
                     FROM list_counts_old m
                     CROSS JOIN LATERAL (VALUES (m.category, m.status), (m.category, ''),
                                                ('', m.status), ('', '')) AS sh(c, s)
                    WHERE m.deleted_at IS NULL),
             up AS (INSERT INTO list_counts AS l (category, status, bucket, count)
                    SELECT d.c, d.s,
                           COALESCE((SELECT b.bucket FROM list_counts b
                                      WHERE b.category = d.c AND b.status = d.s
                                        AND b.bucket <= d.created_at
                                      ORDER BY b.bucket DESC LIMIT 1), '-infinity'),
                           sum(d.delta)
                      FROM d GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
                    ON CONFLICT (category, status, bucket)
                    DO UPDATE SET count = l.count + EXCLUDED.count
                    RETURNING l.category, l.status, l.bucket, l.count)
        SELECT array_agg(up.category), array_agg(up.status), array_agg(up.bucket)
          INTO tc, ts, tb
          FROM up
         WHERE up.count > list_bucket_rows()
            OR (up.count < list_bucket_rows() / 8
                AND (EXISTS (SELECT FROM list_counts o
                              WHERE o.category = up.category AND o.status = up.status
                                AND o.bucket <> up.bucket)
                     OR EXISTS (SELECT FROM up n
                                 WHERE n.category = up.category AND n.status = up.status
                                   AND n.bucket <> up.bucket)));
    END IF;
    IF tb IS NULL THEN
        RETURN NULL;
    END IF;
    -- The projection's upsert fires this UPDATE trigger first and the INSERT one after it.
    -- A re-cut counts the rows as they are, the inserted ones included, whose +1 the INSERT
    -- trigger is still to add: re-cut here, they would be counted twice. So an UPDATE's
    -- re-cuts wait for the end of the transaction (`list_counts_due`, below), when every
    -- statement's counts have moved; INSERT (last in an upsert) and DELETE re-cut at once.
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO list_counts_due (category, status, bucket)
        SELECT * FROM unnest(tc, ts, tb);
    ELSE
        PERFORM list_counts_recut(tc, ts, tb);
    END IF;
    RETURN NULL;
END $$;

-- Buckets an UPDATE left too full or too empty, re-cut when the transaction commits (a
-- deferred constraint trigger: it fires after every statement of the transaction, still
-- under the writers' lock). Empty outside a transaction that is writing.
CREATE TABLE IF NOT EXISTS list_counts_due (
    category text        NOT NULL,
    status   text        NOT NULL,
    bucket   timestamptz NOT NULL
);

-- Re-cuts every due bucket at once; the trigger fires once per due row, so later calls find
-- the table already emptied. A bucket an earlier re-cut removed or refilled is skipped there.
CREATE OR REPLACE FUNCTION list_counts_recut_due() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tc text[];
    ts text[];
    tb timestamptz[];
BEGIN
    WITH q AS (DELETE FROM list_counts_due RETURNING category, status, bucket)
    SELECT array_agg(c), array_agg(s), array_agg(b) INTO tc, ts, tb
      FROM (SELECT DISTINCT category, status, bucket FROM q) AS x(c, s, b);
    IF tb IS NOT NULL THEN
        PERFORM list_counts_recut(tc, ts, tb);
    END IF;
    RETURN NULL;
END $$;

-- CREATE OR REPLACE does not apply to constraint triggers: created once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'list_counts_due'::regclass
                     AND tgname = 'list_counts_due_recut') THEN
        CREATE CONSTRAINT TRIGGER list_counts_due_recut AFTER INSERT ON list_counts_due
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION list_counts_recut_due();
    END IF;
END
$$;

-- TRUNCATE has no transition table: every shape starts over with its implied first bucket.
CREATE OR REPLACE FUNCTION list_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(123636797826403);
    DELETE FROM list_counts;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER list_counts_insert AFTER INSERT ON read_reports
    REFERENCING NEW TABLE AS list_counts_new
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_move();
CREATE OR REPLACE TRIGGER list_counts_update AFTER UPDATE ON read_reports
    REFERENCING OLD TABLE AS list_counts_old NEW TABLE AS list_counts_new
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_move();
CREATE OR REPLACE TRIGGER list_counts_delete AFTER DELETE ON read_reports
    REFERENCING OLD TABLE AS list_counts_old
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_move();
CREATE OR REPLACE TRIGGER list_counts_truncate AFTER TRUNCATE ON read_reports
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_clear();

-- Every (category, status, bucket) whose stored count differs from a count of the live rows
-- under that shape's current boundaries: empty when `list_counts` is exact. Counted from the
-- rows, not through the triggers' delta rule, so `check-sync` and the tests catch a bug in it.
CREATE OR REPLACE FUNCTION list_counts_drift()
    RETURNS TABLE (category text, status text, bucket timestamptz, counted bigint, stored bigint)
    LANGUAGE sql STABLE AS $$
    WITH counted AS (
        SELECT k.c AS category, k.s AS status,
               COALESCE((SELECT max(l.bucket) FROM list_counts l
                          WHERE l.category = k.c AND l.status = k.s
                            AND l.bucket <= r.created_at), '-infinity') AS bucket,
               count(*) AS n
          FROM read_reports r
          CROSS JOIN LATERAL (VALUES (r.category, r.status), (r.category, ''),
                                     ('', r.status), ('', '')) AS k(c, s)
         WHERE r.deleted_at IS NULL
         GROUP BY 1, 2, 3)
    SELECT COALESCE(c.category, l.category), COALESCE(c.status, l.status),
           COALESCE(c.bucket, l.bucket), COALESCE(c.n, 0), COALESCE(l.count, 0)
      FROM counted c
      FULL JOIN list_counts l
        ON l.category = c.category AND l.status = c.status AND l.bucket = c.bucket
     WHERE COALESCE(c.n, 0) <> COALESCE(l.count, 0)
$$;

-- An existing read model gets its counts from its rows, once (this file runs once per text).
SELECT list_counts_rebucket_all() WHERE NOT EXISTS (SELECT 1 FROM list_counts);
