//! The query schema's migration from the generated place columns (before issue 13) to plain
//! ones: an existing read model keeps its stored values, start-ups after it change nothing,
//! and the writer's rows land in it as in a fresh DB.

use postgres::{Client, NoTls};

use crate::support::{pg, place_mismatches};

/// `read_reports` as the schema created it while `lat`, `lng`, `address` and `search` were
/// generated from `doc` (sql/query.sql before the change), with the two functions they need.
const OLD_SCHEMA: &str = "
    CREATE EXTENSION IF NOT EXISTS unaccent;
    CREATE OR REPLACE FUNCTION report_unaccent(t text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN public.unaccent('public.unaccent'::regdictionary, t);
    CREATE TABLE read_reports (
        id uuid PRIMARY KEY, title text NOT NULL, description text NOT NULL,
        category text NOT NULL, status text NOT NULL, version bigint NOT NULL,
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
        deleted_at timestamptz, doc text NOT NULL);
    ALTER TABLE read_reports ADD COLUMN lat float8
        GENERATED ALWAYS AS (((doc::jsonb) #>> '{location,lat}')::float8) STORED;
    ALTER TABLE read_reports ADD COLUMN lng float8
        GENERATED ALWAYS AS (((doc::jsonb) #>> '{location,lng}')::float8) STORED;
    ALTER TABLE read_reports ADD COLUMN address text
        GENERATED ALWAYS AS ((doc::jsonb) ->> 'address') STORED;
    ALTER TABLE read_reports ADD COLUMN search tsvector
        GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, report_unaccent(
            title || ' ' || description || ' ' || coalesce((doc::jsonb) ->> 'address', '')))) STORED;
    INSERT INTO read_reports (id, title, description, category, status, version, created_at,
                              updated_at, doc)
    VALUES (gen_random_uuid(), 'Jalan rusak', 'Lubang besar', 'infrastruktur', 'pending', 1,
            now(), now(),
            '{\"location\":{\"lat\":-6.2,\"lng\":106.8},\"address\":\"Jl. Sudirman 1\"}');";

fn generated(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT column_name::text, is_generated::text FROM information_schema.columns \
         WHERE table_name = 'read_reports' AND column_name IN ('lat', 'lng', 'address', 'search') \
         ORDER BY 1",
        &[],
    )
    .expect("columns")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn generated_place_columns_become_plain_and_keep_their_values() {
    // Given a read model created by the old schema, with a located row
    let url = pg().create_db("schema_generated");
    let mut c = Client::connect(&url, NoTls).expect("connect");
    c.batch_execute(OLD_SCHEMA).expect("old schema");
    assert!(generated(&mut c).iter().all(|(_, g)| g == "ALWAYS"));
    let before: (f64, f64, String, String) = {
        let r = c
            .query_one(
                "SELECT lat, lng, address, search::text FROM read_reports",
                &[],
            )
            .expect("row");
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };

    // When the current schema is applied at two start-ups
    shared::migrate::query_db(&mut c).expect("migrate");
    shared::migrate::query_db(&mut c).expect("migrate again");

    // Then the four columns are plain, the stored values are kept, ...
    assert!(
        generated(&mut c).iter().all(|(_, g)| g == "NEVER"),
        "{:?}",
        generated(&mut c)
    );
    let r = c
        .query_one(
            "SELECT lat, lng, address, search::text FROM read_reports",
            &[],
        )
        .expect("row");
    let after: (f64, f64, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(after, before);
    // ... and they still say what the doc says, as the writer's own rows do.
    let (wrong, located) = place_mismatches(&mut c);
    assert_eq!((wrong, located), (0, 1));
}

#[test]
fn insert_mostly_tables_are_analyzed_less_often_and_only_where_queries_look() {
    // Given a fresh query DB, migrated at two start-ups
    let url = pg().create_db("schema_autovacuum");
    let mut c = Client::connect(&url, NoTls).expect("connect");
    shared::migrate::query_db(&mut c).expect("migrate");
    shared::migrate::query_db(&mut c).expect("migrate again");

    // Then both insert-mostly tables wait for half their size in changes before ANALYZE ...
    for table in ["read_reports", "report_history"] {
        let options: Vec<String> = c
            .query_one(
                "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = $1::text::regclass",
                &[&table],
            )
            .expect("reloptions")
            .get(0);
        for want in [
            "autovacuum_analyze_scale_factor=0.5",
            "autovacuum_analyze_threshold=1000",
        ] {
            assert!(options.iter().any(|o| o == want), "{table}: {options:?}");
        }
    }
    // ... and gather statistics only for the columns queries filter or sort on.
    let unanalyzed: Vec<String> = c
        .query(
            "SELECT attrelid::regclass::text || '.' || attname FROM pg_attribute \
             WHERE attrelid IN ('read_reports'::regclass, 'report_history'::regclass) \
               AND attnum > 0 AND attstattarget = 0 ORDER BY 1",
            &[],
        )
        .expect("attributes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        unanalyzed,
        [
            "read_reports.address",
            "read_reports.description",
            "read_reports.doc",
            "read_reports.title",
            "report_history.payload"
        ]
    );
}
