//! Every SQL statement of the query service, against the read model of `sql/query.sql`.
//!
//! All statements are parameterized and sent with `query_typed` (an unnamed statement with
//! the parameter types given, one round trip), which is valid through PgBouncer in transaction
//! mode, where named prepared statements are not.
//!
//! Guarantees:
//! - tombstones (`deleted_at` set) are never served: every list filters them and the lookup
//!   by id reports them as [`Lookup::Deleted`];
//! - a list page and its total come from one statement, hence one snapshot;
//! - totals are the sum over the exact `statistics` table (O(1) at a million rows), and each
//!   list shape matches one of the partial indexes, so no statement scans `read_reports`;
//! - rows are copied from `doc` into the response body as they are, never re-serialised.

use postgres::types::Type;
use postgres::GenericClient;
use shared::http::ApiError;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::paging::{Filter, ListParams};

/// An error of the read path. Mapped to an HTTP answer in exactly one place, the `From` impl
/// below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// 503 with `Retry-After`: no query DB answered; the message names each DB tried.
    Unavailable(String),
    /// 503 as well (the API has no 500), logged as an error: a DB answered with an error that
    /// is not an outage, or holds data the service cannot serve. A bug or a schema problem.
    Failed { db: String, detail: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => f.write_str(m),
            StoreError::Failed { db, detail } => write!(f, "query db {db}: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Failed { db, detail } => {
                shared::error!("query db {db}: {detail}");
                ApiError::Unavailable(format!("query db {db} failed; see the service log"))
            }
        }
    }
}

macro_rules! list_sql {
    ($reports:literal, $stats:literal) => {
        concat!(
            "WITH page AS (SELECT doc, created_at, id FROM read_reports \
             WHERE deleted_at IS NULL",
            $reports,
            " ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2) \
             SELECT t.total, page.doc \
             FROM (SELECT COALESCE(sum(count), 0)::int8 AS total FROM statistics",
            $stats,
            ") AS t LEFT JOIN page ON true \
             ORDER BY page.created_at DESC, page.id DESC"
        )
    };
}

/// List without filters; `$1` limit, `$2` offset. Uses `read_reports_newest`.
pub const LIST_ALL: &str = list_sql!("", "");
/// List by category (`$3`). Uses `read_reports_category_newest`.
pub const LIST_CATEGORY: &str = list_sql!(" AND category = $3", " WHERE category = $3");
/// List by status (`$3`). Uses `read_reports_status_newest`.
pub const LIST_STATUS: &str = list_sql!(" AND status = $3", " WHERE status = $3");
/// List by category (`$3`) and status (`$4`). Uses `read_reports_category_status_newest`.
pub const LIST_CATEGORY_STATUS: &str = list_sql!(
    " AND category = $3 AND status = $4",
    " WHERE category = $3 AND status = $4"
);

/// One report by id, tombstones included so the caller can tell "deleted" from "not yet".
pub const REPORT_BY_ID: &str =
    "SELECT version, deleted_at IS NOT NULL AS deleted, doc FROM read_reports WHERE id = $1";

/// Live counts per (category, status), optionally for one category (`$1`, NULL = all).
pub const STATISTICS: &str = "SELECT category, status, count, last_updated FROM statistics \
     WHERE $1::text IS NULL OR category = $1";

/// This DB's position in the event stream and how long ago it last applied something.
pub const CHECKPOINT: &str = "SELECT position, \
     EXTRACT(EPOCH FROM (now() - updated_at))::float8 AS age \
     FROM checkpoint WHERE stream = 'report-events'";

/// The statement for a filter shape and its parameters after limit and offset.
pub fn list_sql(filter: &Filter) -> &'static str {
    match (filter.category, filter.status) {
        (None, None) => LIST_ALL,
        (Some(_), None) => LIST_CATEGORY,
        (None, Some(_)) => LIST_STATUS,
        (Some(_), Some(_)) => LIST_CATEGORY_STATUS,
    }
}

/// Appends one page of documents to `out`, comma-separated (the caller writes the brackets),
/// and returns the total number of live reports matching the filter.
pub fn list(
    client: &mut impl GenericClient,
    params: &ListParams,
    out: &mut Vec<u8>,
) -> Result<i64, postgres::Error> {
    let limit = params.per_page;
    let offset = params.offset();
    let category = params.filter.category.map(|c| c.as_str());
    let status = params.filter.status.map(|s| s.as_str());
    let mut args: Vec<(&(dyn postgres::types::ToSql + Sync), Type)> =
        vec![(&limit, Type::INT8), (&offset, Type::INT8)];
    if let Some(c) = &category {
        args.push((c, Type::TEXT));
    }
    if let Some(s) = &status {
        args.push((s, Type::TEXT));
    }
    let rows = client.query_typed(list_sql(&params.filter), &args)?;
    let mut total = 0;
    let mut first = true;
    for row in &rows {
        total = row.try_get::<_, i64>(0)?;
        if let Some(doc) = row.try_get::<_, Option<&str>>(1)? {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(doc.as_bytes());
        }
    }
    Ok(total)
}

/// What the read model holds for one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    /// A tombstone: the report was deleted at this version and never comes back.
    Deleted {
        version: i64,
    },
    /// A live report; its document was appended to the output.
    Live {
        version: i64,
    },
}

/// Looks one report up; a live one's `doc` is appended to `out`.
pub fn report(
    client: &mut impl GenericClient,
    id: &Uuid,
    out: &mut Vec<u8>,
) -> Result<Lookup, postgres::Error> {
    let rows = client.query_typed(REPORT_BY_ID, &[(id, Type::UUID)])?;
    let Some(row) = rows.first() else {
        return Ok(Lookup::Missing);
    };
    let version: i64 = row.try_get(0)?;
    if row.try_get::<_, bool>(1)? {
        return Ok(Lookup::Deleted { version });
    }
    out.extend_from_slice(row.try_get::<_, &str>(2)?.as_bytes());
    Ok(Lookup::Live { version })
}

/// One row of the `statistics` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub category: String,
    pub status: String,
    pub count: i64,
    pub last_updated: OffsetDateTime,
}

/// The statistics rows, optionally for one category.
pub fn statistics(
    client: &mut impl GenericClient,
    category: Option<&str>,
) -> Result<Vec<StatRow>, postgres::Error> {
    client
        .query_typed(STATISTICS, &[(&category, Type::TEXT)])?
        .iter()
        .map(|row| {
            Ok(StatRow {
                category: row.try_get(0)?,
                status: row.try_get(1)?,
                count: row.try_get(2)?,
                last_updated: row.try_get(3)?,
            })
        })
        .collect()
}

/// `(position, age in seconds)` of this DB's checkpoint; `None` before the first event.
pub fn checkpoint(client: &mut impl GenericClient) -> Result<Option<(i64, f64)>, postgres::Error> {
    let rows = client.query_typed(CHECKPOINT, &[])?;
    rows.first()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}
