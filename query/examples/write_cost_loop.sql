-- The tight-loop half of `write_cost` (README "At a million reports"): N transactions of one
-- K-row upsert each, run inside the server by a procedure, so no round trip or client is in
-- the figure; prints the backend's CPU milliseconds for them (/proc/self/schedstat, so the
-- server must run on Linux and the caller be a superuser). Uses the scratch DBs of
-- `WRITE_COST_KEEP_DB=1 cargo run --release -p query --example write_cost -- URL`, whose
-- reports have ids 77726974-6563-6f73-0000-<n>. Per DB (on, off, baseline), alternating:
--   psql -d write_cost_on -f query/examples/write_cost_loop.sql
--   psql -d write_cost_on -c "CALL bench(500, 'create', 1)"     -- or 'update', 'delete'
-- The upserts are the projection's statement shapes (projection/src/writer.rs).
CREATE OR REPLACE PROCEDURE bench(n int, kind text, k int) LANGUAGE plpgsql AS $f$
DECLARE
  t0 timestamptz := clock_timestamp();
  ids uuid[];
  c0 bigint;
  i int;
BEGIN
  SELECT array_agg(id) INTO ids FROM (SELECT id FROM read_reports WHERE deleted_at IS NULL ORDER BY id LIMIT n * k) x;
  COMMIT;
  t0 := clock_timestamp();
  c0 := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
  FOR i IN 0 .. n - 1 LOOP
    PERFORM pg_advisory_xact_lock(123636797826403);
    IF kind = 'create' THEN
      INSERT INTO read_reports (id, title, description, category, status, version, created_at, updated_at, deleted_at, doc, lat, lng, address, search)
      SELECT id, title, description, category, status, version, created_at, updated_at, NULL, doc, lat, lng, address, report_search(title, description, address)
      FROM unnest(ARRAY(SELECT gen_random_uuid() FROM generate_series(1, k)), array_fill('t'::text, ARRAY[k]), array_fill('d'::text, ARRAY[k]),
                  ARRAY(SELECT (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + (i * k + g) % 6] FROM generate_series(1, k) g),
                  array_fill('pending'::text, ARRAY[k]), array_fill(1::int8, ARRAY[k]), array_fill(clock_timestamp(), ARRAY[k]), array_fill(clock_timestamp(), ARRAY[k]),
                  array_fill('{}'::text, ARRAY[k]), array_fill(-6.2::float8, ARRAY[k]), array_fill(106.8::float8, ARRAY[k]), array_fill(NULL::text, ARRAY[k]))
        AS b(id, title, description, category, status, version, created_at, updated_at, doc, lat, lng, address)
      ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, description = EXCLUDED.description, category = EXCLUDED.category, status = EXCLUDED.status, version = EXCLUDED.version, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, deleted_at = NULL, doc = EXCLUDED.doc, lat = EXCLUDED.lat, lng = EXCLUDED.lng, address = EXCLUDED.address, search = EXCLUDED.search
      WHERE read_reports.version < EXCLUDED.version AND read_reports.deleted_at IS NULL;
    ELSIF kind = 'update' THEN
      INSERT INTO read_reports (id, title, description, category, status, version, created_at, updated_at, deleted_at, doc, lat, lng, address, search)
      SELECT id, title, description, category, status, version, created_at, updated_at, NULL, doc, lat, lng, address, report_search(title, description, address)
      FROM (SELECT id, title, description, category, (ARRAY['pending','in_progress','resolved','rejected'])[1 + (i + version::int) % 4] AS status, version + 1 AS version, created_at, clock_timestamp() AS updated_at, doc, lat, lng, address
              FROM read_reports WHERE id = ANY (ids[i * k + 1 : i * k + k])) b
      ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, description = EXCLUDED.description, category = EXCLUDED.category, status = EXCLUDED.status, version = EXCLUDED.version, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, deleted_at = NULL, doc = EXCLUDED.doc, lat = EXCLUDED.lat, lng = EXCLUDED.lng, address = EXCLUDED.address, search = EXCLUDED.search
      WHERE read_reports.version < EXCLUDED.version AND read_reports.deleted_at IS NULL;
    ELSE
      INSERT INTO read_reports (id, title, description, category, status, version, created_at, updated_at, deleted_at, doc, lat, lng, address, search)
      SELECT id, '', '', '', '', version, at, at, at, doc, NULL, NULL, NULL, report_search('', '', NULL)
      FROM (SELECT id, version + 1 AS version, clock_timestamp() AS at, '{}'::text AS doc FROM read_reports WHERE id = ANY (ids[i * k + 1 : i * k + k])) b
      ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, updated_at = EXCLUDED.deleted_at, deleted_at = EXCLUDED.deleted_at
      WHERE read_reports.version < EXCLUDED.version;
    END IF;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'ms=%', round((split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint - c0) / 1e6, 1);
END $f$;
