//! Configuration from environment variables (SPEC §5). Each service's `Config::from_env()`
//! reads its variables through these helpers: a missing variable takes its default, a bad
//! value is an error naming the variable — never a panic.

use std::fmt;
use std::str::FromStr;

/// A variable that is set but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad value {:?} for {}: {}",
            self.value, self.name, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// The variable as a string, or `default` when unset or empty.
pub fn string(name: &'static str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// The variable parsed as `T`, or `default` when unset or empty.
pub fn parse<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            value: v.clone(),
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

/// One query database: a name for logs and metrics and its connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDb {
    pub name: String,
    pub url: String,
}

/// Parses `QUERY_DATABASE_URLS`: comma-separated entries, each `url` or `name=url`. An entry
/// without a name is called after its host, port and database.
pub fn named_dbs(name: &'static str, value: &str) -> Result<Vec<NamedDb>, ConfigError> {
    let mut out: Vec<NamedDb> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (db_name, url) = match entry.split_once('=') {
            Some((n, u)) if !n.contains(':') && !n.contains('/') => (n.trim().to_owned(), u.trim()),
            _ => (default_db_name(entry), entry),
        };
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(ConfigError {
                name,
                value: redact_url(entry),
                reason: "expected postgres://… or name=postgres://…".into(),
            });
        }
        if out.iter().any(|d| d.name == db_name) {
            return Err(ConfigError {
                name,
                value: redact_url(entry),
                reason: format!("database name {db_name:?} appears twice"),
            });
        }
        out.push(NamedDb {
            name: db_name,
            url: url.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(ConfigError {
            name,
            value: value.to_owned(),
            reason: "at least one database URL is needed".into(),
        });
    }
    Ok(out)
}

fn default_db_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('?').next().unwrap_or(rest).replace('/', ":")
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_db_lists() {
        let dbs = named_dbs(
            "QUERY_DATABASE_URLS",
            "primary=postgres://u:pw@h:5/db, postgres://h2:6/db2",
        )
        .unwrap();
        assert_eq!(dbs[0].name, "primary");
        assert_eq!(dbs[0].url, "postgres://u:pw@h:5/db");
        assert_eq!(dbs[1].name, "h2:6:db2");
        assert!(named_dbs("Q", "").is_err());
        assert!(named_dbs("Q", "mysql://x").is_err());
        assert!(named_dbs("Q", "a=postgres://h/x,a=postgres://h/y").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(redact_url("redis://:pw@h/"), "redis://:***@h/");
    }
}
