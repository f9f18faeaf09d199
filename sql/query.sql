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
-- The columns below are GENERATED from `doc`, the report JSON the projection already writes,
-- so every writer of the read model (the projection, `xtask rebuild`, test seeders) fills them
-- without knowing they exist, and they can never disagree with the document served.
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
-- call from a generated column and an index, the documented way to index unaccented text.
CREATE OR REPLACE FUNCTION report_unaccent(t text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN public.unaccent('public.unaccent'::regdictionary, t);

ALTER TABLE read_reports ADD COLUMN IF NOT EXISTS lat float8
    GENERATED ALWAYS AS (((doc::jsonb) #>> '{location,lat}')::float8) STORED;
ALTER TABLE read_reports ADD COLUMN IF NOT EXISTS lng float8
    GENERATED ALWAYS AS (((doc::jsonb) #>> '{location,lng}')::float8) STORED;
ALTER TABLE read_reports ADD COLUMN IF NOT EXISTS address text
    GENERATED ALWAYS AS ((doc::jsonb) ->> 'address') STORED;
-- The `simple` configuration lower-cases and splits words but never stems: Indonesian words
-- are not mangled by an English stemmer, and "every word must match" means exactly that.
ALTER TABLE read_reports ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, report_unaccent(
        title || ' ' || description || ' ' || coalesce((doc::jsonb) ->> 'address', '')))) STORED;

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

-- Numbered pages at any depth (SPEC §7.1 "`page=N` … its cost must not grow with N").
--
-- An order-statistics index over the newest-first order of the live reports: the key range is
-- cut into buckets by `created_at` (a bucket holds the reports with `bucket <= created_at <`
-- the next bucket's lower bound; the oldest bucket starts at -infinity), and `list_counts`
-- holds the live reports of each bucket per list filter shape: per (category, status), per
-- category (status ''), per status (category '') and in all ('', ''). Page N of a filter is
-- then: sum that filter's bucket counts from the newest bucket until the offset falls inside
-- one (one row per bucket along the primary key), and an index range scan of the filter's
-- newest-first index from that bucket's upper bound, skipping fewer rows than one bucket holds.
--
-- Exact at every committed state: STATEMENT-level triggers with transition tables move the
-- counts in the same transaction as the rows, with one set-based upsert per statement (the
-- projection writes a batch with one multi-row upsert; a row trigger would run per report).
-- Correctness does not depend on where the boundaries lie, only on every count matching its
-- range, so boundaries move freely: a bucket that grows past `list_bucket_rows()` live reports
-- is cut into even pieces of at most half that, and one that shrinks below an eighth of it is
-- merged with its neighbours (`list_counts_rebucket`), each walking only the reports of the
-- range it re-cuts. The triggers take the writers' lock of the DB (the projection's
-- WRITE_LOCK, already held by the projection and a rebuild), so a re-cut never races another
-- transaction's count move. A writer that locks other rows before writing `read_reports`
-- should take that lock first too (the projection does), or two such writers may deadlock.
-- Reports sharing one `created_at` to the microsecond are never split apart: a bucket of more
-- than the limit at a single instant stays whole (and is re-walked when touched).
CREATE TABLE IF NOT EXISTS list_counts (
    category text        NOT NULL,
    status   text        NOT NULL,
    bucket   timestamptz NOT NULL,
    count    bigint      NOT NULL,
    PRIMARY KEY (category, status, bucket)
);

-- The most live reports a bucket may hold before it is cut: it bounds the OFFSET inside a
-- bucket (a deep page skips fewer than this many index entries), while the number of buckets
-- summed for page N is ~ offset / (this / 4) rows of an index. 1 000 keeps both well under a
-- millisecond at a million reports (README "At a million reports"). Tests set
-- `reports.list_bucket_rows` (e.g. `ALTER DATABASE … SET`) to cross boundaries on small data.
CREATE OR REPLACE FUNCTION list_bucket_rows() RETURNS bigint
    LANGUAGE sql STABLE
    RETURN GREATEST(COALESCE(NULLIF(current_setting('reports.list_bucket_rows', true), '')::bigint,
                             1000), 2);

-- Re-cuts the buckets of [lo, hi) (lo a current boundary, hi the next kept one or infinity):
-- its live reports, newest-first key order, into ceil(n / (limit / 2)) pieces of even size,
-- the first starting at lo; counts recomputed from the rows. One walk of the range.
CREATE OR REPLACE FUNCTION list_counts_rebucket(lo timestamptz, hi timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    total  bigint;
    pieces bigint;
BEGIN
    SELECT count(*) INTO total FROM read_reports
     WHERE deleted_at IS NULL AND created_at >= lo AND created_at < hi;
    pieces := GREATEST(1, ceil(total::numeric / GREATEST(list_bucket_rows() / 2, 1)));
    DELETE FROM list_counts WHERE bucket >= lo AND bucket < hi;
    INSERT INTO list_counts (category, status, bucket, count)
    SELECT COALESCE(category, ''), COALESCE(status, ''), b, count(*)
      FROM (SELECT category, status,
                   -- A row's bucket is the latest piece start at or before it (a running max).
                   -- A piece starts only where `created_at` changes, so that every report at
                   -- one instant lies in one bucket, as the boundaries' definition needs.
                   max(CASE WHEN n = 1 THEN lo
                            WHEN created_at <> prev
                             AND (n - 1) * pieces / total <> (n - 2) * pieces / total
                            THEN created_at END)
                       OVER (ORDER BY created_at, id) AS b
              FROM (SELECT category, status, created_at, id,
                           row_number() OVER w AS n, lag(created_at) OVER w AS prev
                      FROM read_reports
                     WHERE deleted_at IS NULL AND created_at >= lo AND created_at < hi
                    WINDOW w AS (ORDER BY created_at, id)) r) p
     GROUP BY GROUPING SETS ((b, category, status), (b, category), (b, status), (b));
    -- The range's first boundary stays even when it holds no live report.
    INSERT INTO list_counts (category, status, bucket, count) VALUES ('', '', lo, 0)
        ON CONFLICT (category, status, bucket) DO NOTHING;
END $$;

-- Moves the counts by one statement's rows (one grouped upsert), then re-cuts the buckets it
-- left too full or too empty. `list_counts_old` / `list_counts_new` are the statement's
-- transition tables; the statement is built per operation because each has only its own.
CREATE OR REPLACE FUNCTION list_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cap     bigint := list_bucket_rows();
    src     text;
    touched timestamptz[];
    todo    timestamptz[];
    b       timestamptz;
    n       bigint;
    lo      timestamptz;
    hi      timestamptz;
BEGIN
    -- Serialise with other writers, and see the boundaries they committed (READ COMMITTED:
    -- every statement below takes its snapshot after the lock is granted). The key is the
    -- projection's writer lock (`projection::writer::WRITE_LOCK`), which the projection and a
    -- rebuild already hold, so for them this costs nothing and never waits.
    PERFORM pg_advisory_xact_lock(123636797826403);
    src := CASE TG_OP
        WHEN 'INSERT' THEN
            'SELECT category, status, created_at, 1 AS delta FROM list_counts_new
              WHERE deleted_at IS NULL'
        WHEN 'UPDATE' THEN
            'SELECT category, status, created_at, 1 AS delta FROM list_counts_new
              WHERE deleted_at IS NULL
             UNION ALL
             SELECT category, status, created_at, -1 FROM list_counts_old
              WHERE deleted_at IS NULL'
        ELSE
            'SELECT category, status, created_at, -1 AS delta FROM list_counts_old
              WHERE deleted_at IS NULL'
        END;
    EXECUTE 'WITH d AS (SELECT (SELECT max(c.bucket) FROM list_counts c
                                 WHERE c.category = '''' AND c.status = ''''
                                   AND c.bucket <= s.created_at) AS bucket,
                                category, status, delta FROM (' || src || ') s),
                  up AS (INSERT INTO list_counts (category, status, bucket, count)
                         SELECT COALESCE(category, ''''), COALESCE(status, ''''), bucket, sum(delta)
                           FROM d
                          GROUP BY GROUPING SETS ((bucket, category, status), (bucket, category),
                                                  (bucket, status), (bucket))
                         HAVING sum(delta) <> 0
                         ON CONFLICT (category, status, bucket)
                         DO UPDATE SET count = list_counts.count + EXCLUDED.count
                         RETURNING bucket)
             SELECT array_agg(DISTINCT bucket) FROM up'
        INTO touched;
    -- The buckets this statement left too full or too empty.
    SELECT array_agg(bucket ORDER BY bucket) INTO todo FROM list_counts
     WHERE category = '' AND status = '' AND bucket = ANY(touched)
       AND (count > cap OR count < cap / 8);
    IF todo IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(todo) > 16 THEN
        -- A bulk statement (a rebuild's DELETE of every row, a bulk load): one walk of the
        -- span it touched, with the older neighbour so an empty oldest piece merges too.
        SELECT COALESCE(max(bucket), todo[1]) INTO lo FROM list_counts
         WHERE category = '' AND status = '' AND bucket < todo[1];
        SELECT min(bucket) INTO hi FROM list_counts
         WHERE category = '' AND status = '' AND bucket > todo[cardinality(todo)];
        PERFORM list_counts_rebucket(lo, COALESCE(hi, 'infinity'));
        RETURN NULL;
    END IF;
    FOREACH b IN ARRAY todo LOOP
        -- An earlier re-cut of this loop may have removed or refilled this bucket.
        SELECT count INTO n FROM list_counts WHERE category = '' AND status = '' AND bucket = b;
        CONTINUE WHEN NOT FOUND OR (n <= cap AND n >= cap / 8);
        lo := b;
        SELECT min(bucket) INTO hi FROM list_counts
         WHERE category = '' AND status = '' AND bucket > b;
        IF n < cap / 8 THEN
            -- Too empty: merge with the older neighbour, or the newer one for the oldest.
            SELECT max(bucket) INTO lo FROM list_counts
             WHERE category = '' AND status = '' AND bucket < b;
            IF lo IS NULL THEN
                lo := b;
                CONTINUE WHEN hi IS NULL; -- a lone bucket: nothing to merge with
                SELECT min(bucket) INTO hi FROM list_counts
                 WHERE category = '' AND status = '' AND bucket > hi;
            END IF;
        END IF;
        PERFORM list_counts_rebucket(lo, COALESCE(hi, 'infinity'));
    END LOOP;
    RETURN NULL;
END $$;

-- TRUNCATE has no transition table: the counts start over with the one open bucket.
CREATE OR REPLACE FUNCTION list_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(123636797826403);
    DELETE FROM list_counts;
    INSERT INTO list_counts (category, status, bucket, count) VALUES ('', '', '-infinity', 0);
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

-- Every (category, status, bucket) whose stored count differs from a GROUP BY over the live
-- rows under the current boundaries: empty when `list_counts` is exact. Counted from the rows,
-- not through the triggers' delta rule, so `check-sync` and the tests catch a bug in that rule.
CREATE OR REPLACE FUNCTION list_counts_drift()
    RETURNS TABLE (category text, status text, bucket timestamptz, counted bigint, stored bigint)
    LANGUAGE sql STABLE AS $$
    WITH counted AS (
        SELECT COALESCE(r.category, '') AS category, COALESCE(r.status, '') AS status,
               r.bucket, count(*) AS n
          FROM (SELECT category, status,
                       (SELECT max(l.bucket) FROM list_counts l
                         WHERE l.category = '' AND l.status = ''
                           AND l.bucket <= created_at) AS bucket
                  FROM read_reports WHERE deleted_at IS NULL) r
         GROUP BY GROUPING SETS ((r.bucket, r.category, r.status), (r.bucket, r.category),
                                 (r.bucket, r.status), (r.bucket)))
    SELECT COALESCE(c.category, l.category), COALESCE(c.status, l.status),
           COALESCE(c.bucket, l.bucket), COALESCE(c.n, 0), COALESCE(l.count, 0)
      FROM counted c
      FULL JOIN list_counts l
        ON l.category = c.category AND l.status = c.status AND l.bucket = c.bucket
     WHERE COALESCE(c.n, 0) <> COALESCE(l.count, 0)
$$;

-- An existing read model gets its counts from its rows, once (this file runs once per text).
SELECT list_counts_rebucket('-infinity', 'infinity')
 WHERE NOT EXISTS (SELECT 1 FROM list_counts);
