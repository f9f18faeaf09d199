//! Pure request-parameter rules of the read API (SPEC §2, §2.2): paging of `GET /reports`, its
//! filters, the statistics filter and `min_version`. No I/O here, so every rule is tested
//! in-module through one `check` helper.
//!
//! Guarantees: a value that is not what the API documents is a 400 that says what was wrong
//! (and lists the valid values for enums); `per_page` above [`MAX_PER_PAGE`] is served as
//! [`MAX_PER_PAGE`], never rejected; offsets never overflow.

use shared::http::ApiError;
use shared::model::{Category, Status};

/// `page` when absent.
pub const DEFAULT_PAGE: i64 = 1;
/// `per_page` when absent (SPEC §2).
pub const DEFAULT_PER_PAGE: i64 = 20;
/// Largest page served: larger requests get this many and `meta.per_page` says so (SPEC §2).
/// It bounds the rows one request reads and the JSON it builds.
pub const MAX_PER_PAGE: i64 = 100;

/// Which of the optional filters a list request carries; each shape has its own partial index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filter {
    pub category: Option<Category>,
    pub status: Option<Status>,
}

/// A validated `GET /reports` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListParams {
    /// 1-based.
    pub page: i64,
    /// Already capped at [`MAX_PER_PAGE`].
    pub per_page: i64,
    pub filter: Filter,
}

impl ListParams {
    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        // `parse` guarantees this does not overflow.
        (self.page - 1).saturating_mul(self.per_page)
    }

    /// Validates the query parameters. Unknown parameters are ignored (SPEC §2.3 spirit: be
    /// open for additions); a repeated known one is a 400 rather than a silent choice.
    pub fn parse(params: &[(String, String)]) -> Result<ListParams, ApiError> {
        let page = match single(params, "page")? {
            Some(v) => positive(v, "page")?,
            None => DEFAULT_PAGE,
        };
        let per_page = match single(params, "per_page")? {
            Some(v) => positive(v, "per_page")?.min(MAX_PER_PAGE),
            None => DEFAULT_PER_PAGE,
        };
        if (page - 1).checked_mul(per_page).is_none() {
            return Err(ApiError::BadRequest(format!("page {page} is too large")));
        }
        Ok(ListParams {
            page,
            per_page,
            filter: Filter {
                category: category(params)?,
                status: single(params, "status")?
                    .map(|v| v.parse::<Status>().map_err(ApiError::BadRequest))
                    .transpose()?,
            },
        })
    }
}

/// The optional `category` filter of `GET /reports` and `GET /statistics`.
pub fn category(params: &[(String, String)]) -> Result<Option<Category>, ApiError> {
    single(params, "category")?
        .map(|v| v.parse::<Category>().map_err(ApiError::BadRequest))
        .transpose()
}

/// `meta.total_pages`: 0 when there is nothing to page through.
pub fn total_pages(total: i64, per_page: i64) -> i64 {
    if total <= 0 || per_page <= 0 {
        0
    } else {
        (total + per_page - 1) / per_page
    }
}

/// `min_version` from the query string or the `X-Min-Version` header; the larger wins when
/// both are given (a client asking for N via either means "at least N"). `None`: no wait.
pub fn min_version(
    params: &[(String, String)],
    header: Option<&str>,
) -> Result<Option<i64>, ApiError> {
    let from_query = single(params, "min_version")?
        .map(|v| non_negative(v, "min_version"))
        .transpose()?;
    let from_header = header
        .map(|v| non_negative(v.trim(), "X-Min-Version"))
        .transpose()?;
    Ok(from_query.max(from_header))
}

/// The value of a parameter given at most once.
pub fn single<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "parameter {name} given more than once"
        )));
    }
    Ok(first.map(String::as_str))
}

fn positive(value: &str, name: &str) -> Result<i64, ApiError> {
    match parse_digits(value) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be a positive integer, got {value:?}"
        ))),
    }
}

fn non_negative(value: &str, name: &str) -> Result<i64, ApiError> {
    parse_digits(value).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} must be a non-negative integer, got {value:?}"
        ))
    })
}

/// Plain ASCII digits only: no sign, no spaces, no `0x`; too large for i64 is `None`.
fn parse_digits(value: &str) -> Option<i64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Vec<(String, String)> {
        shared::http::parse_query(q).unwrap()
    }

    /// `expect` is the debug form of the parsed params, or `400: <part of the message>`.
    fn check(query: &str, expect: &str) {
        let got = match ListParams::parse(&params(query)) {
            Ok(p) => format!(
                "page={} per_page={} offset={} category={:?} status={:?}",
                p.page,
                p.per_page,
                p.offset(),
                p.filter.category.map(Category::as_str),
                p.filter.status.map(Status::as_str)
            ),
            Err(e) => format!("{}: {}", e.status(), e.message()),
        };
        assert!(
            got.contains(expect),
            "query {query:?}\nexpected: {expect}\n     got: {got}"
        );
    }

    #[test]
    fn list_params() {
        check("", "page=1 per_page=20 offset=0 category=None status=None");
        check("page=3&per_page=10", "page=3 per_page=10 offset=20");
        check("per_page=100", "per_page=100");
        check("per_page=101", "per_page=100");
        check("per_page=1000", "page=1 per_page=100 offset=0");
        check(
            "per_page=99999999999999999999",
            "400: per_page must be a positive integer",
        );
        check("page=0", "400: page must be a positive integer, got \"0\"");
        check(
            "page=-1",
            "400: page must be a positive integer, got \"-1\"",
        );
        check("page=abc", "400: page must be a positive integer");
        check("page=", "400: page must be a positive integer");
        check("page=1.5", "400: page must be a positive integer");
        check("page=+2", "400: page must be a positive integer");
        check("page=%202", "400: page must be a positive integer");
        check("per_page=0", "400: per_page must be a positive integer");
        check("page=1&page=2", "400: parameter page given more than once");
        check(
            "page=9223372036854775807&per_page=100",
            "400: page 9223372036854775807 is too large",
        );
        check(
            "page=9223372036854775807&per_page=1",
            "offset=9223372036854775806",
        );
        check(
            "category=kebersihan",
            "category=Some(\"kebersihan\") status=None",
        );
        check(
            "category=kesehatan&status=in_progress",
            "category=Some(\"kesehatan\") status=Some(\"in_progress\")",
        );
        check(
            "category=Kebersihan",
            "400: unknown category \"Kebersihan\"; valid values: kebersihan, kriminalitas, \
             infrastruktur, kesehatan, keamanan, lainnya",
        );
        check(
            "status=done",
            "400: unknown status \"done\"; valid values: pending, in_progress, resolved, rejected",
        );
        check("category=", "400: unknown category \"\"");
        check("unknown=1&page=2", "page=2 per_page=20");
    }

    #[test]
    fn pages() {
        let check = |total, per_page, expect| {
            assert_eq!(total_pages(total, per_page), expect, "{total}/{per_page}")
        };
        check(0, 20, 0);
        check(1, 20, 1);
        check(20, 20, 1);
        check(21, 20, 2);
        check(250, 100, 3);
        check(250, 1, 250);
    }

    #[test]
    fn min_versions() {
        let check = |query: &str, header: Option<&str>, expect: &str| {
            let got = match min_version(&params(query), header) {
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("{}: {}", e.status(), e.message()),
            };
            assert!(got.contains(expect), "{query:?} {header:?}: {got}");
        };
        check("", None, "None");
        check("min_version=3", None, "Some(3)");
        check("", Some("4"), "Some(4)");
        check("", Some(" 4 "), "Some(4)");
        check("min_version=3", Some("5"), "Some(5)");
        check("min_version=6", Some("5"), "Some(6)");
        check("min_version=0", None, "Some(0)");
        check(
            "min_version=x",
            None,
            "400: min_version must be a non-negative",
        );
        check("", Some("-1"), "400: X-Min-Version must be a non-negative");
        check(
            "min_version=1&min_version=2",
            None,
            "400: parameter min_version",
        );
    }
}
