//! Schema migrations, applied by code at start-up. The SQL files in `sql/` are idempotent and
//! run under a transaction-scoped advisory lock, so any number of instances may start at once.

use postgres::GenericClient;

/// The command database schema.
pub const COMMAND_SQL: &str = include_str!("../../sql/command.sql");
/// The query database (read model) schema.
pub const QUERY_SQL: &str = include_str!("../../sql/query.sql");

/// Arbitrary but fixed key for `pg_advisory_xact_lock`, shared by every migrating process.
const MIGRATION_LOCK: i64 = 0x7265_706f_7274;

/// Applies the command-DB schema.
pub fn command_db(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    apply(client, COMMAND_SQL)
}

/// Applies the query-DB schema.
pub fn query_db(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    apply(client, QUERY_SQL)
}

fn apply(client: &mut impl GenericClient, sql: &str) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK});"))?;
    tx.batch_execute(sql)?;
    tx.commit()
}
