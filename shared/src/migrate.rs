//! Schema migrations, applied by code at start-up. The SQL files in `sql/` are idempotent and
//! run under a transaction-scoped advisory lock, so any number of instances may start at once.
//!
//! A file already applied, word for word, is not run again: `schema_migrations` keeps the text
//! each database last applied. That matters on a live database: some idempotent statements
//! (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`) still take an ACCESS EXCLUSIVE lock before they
//! find there is nothing to do, and a lock upgrade across two tables that readers are using
//! can deadlock with them (seen: a rebuild while reads flowed). With the check, a restart or a
//! rebuild of a current database only reads one row.

use postgres::GenericClient;

/// The command database schema.
pub const COMMAND_SQL: &str = include_str!("../../sql/command.sql");
/// The query database (read model) schema.
pub const QUERY_SQL: &str = include_str!("../../sql/query.sql");

/// Arbitrary but fixed key for `pg_advisory_xact_lock`, shared by every migrating process.
const MIGRATION_LOCK: i64 = 0x7265_706f_7274;

/// Applies the command-DB schema.
pub fn command_db(client: &mut impl GenericClient) -> Result<Outcome, postgres::Error> {
    apply(client, "command", COMMAND_SQL)
}

/// Applies the query-DB schema.
pub fn query_db(client: &mut impl GenericClient) -> Result<Outcome, postgres::Error> {
    apply(client, "query", QUERY_SQL)
}

/// Whether `apply` ran the file (`Applied`) or found it applied already (`Current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Current,
}

fn apply(
    client: &mut impl GenericClient,
    name: &str,
    sql: &str,
) -> Result<Outcome, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
         CREATE TABLE IF NOT EXISTS schema_migrations (
             name       text        PRIMARY KEY,
             sql        text        NOT NULL,
             applied_at timestamptz NOT NULL
         );"
    ))?;
    let current = tx
        .query_opt(
            "SELECT 1 FROM schema_migrations WHERE name = $1 AND sql = $2",
            &[&name, &sql],
        )?
        .is_some();
    if current {
        tx.commit()?;
        return Ok(Outcome::Current);
    }
    tx.batch_execute(sql)?;
    tx.execute(
        "INSERT INTO schema_migrations (name, sql, applied_at) VALUES ($1, $2, now()) \
         ON CONFLICT (name) DO UPDATE SET sql = EXCLUDED.sql, applied_at = EXCLUDED.applied_at",
        &[&name, &sql],
    )?;
    tx.commit()?;
    Ok(Outcome::Applied)
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;

    /// A file runs once per database; a changed file runs again.
    #[test]
    fn applied_once_per_text() {
        let pg = crate::testkit::PgCluster::start();
        let url = pg.create_db("migrate_once");
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        let v1 = "CREATE TABLE IF NOT EXISTS t (a int); INSERT INTO t VALUES (1);";
        assert_eq!(apply(&mut c, "x", v1).expect("first"), Outcome::Applied);
        assert_eq!(apply(&mut c, "x", v1).expect("again"), Outcome::Current);
        let v2 = "CREATE TABLE IF NOT EXISTS t (a int); INSERT INTO t VALUES (2);";
        assert_eq!(apply(&mut c, "x", v2).expect("changed"), Outcome::Applied);
        let rows: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .expect("count")
            .get(0);
        assert_eq!(rows, 2, "each text ran exactly once");
    }
}
