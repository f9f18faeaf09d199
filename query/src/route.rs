//! Which endpoint a request is for: the closed set of query routes, parsed from the path, in
//! the order `/metrics` reports them, each with its `route` label and its `Allow` methods.
//!
//! A leaf module: [`crate::routes`] answers by it and [`crate::metrics`] counts by it, and
//! neither imports the other.

/// Which endpoint a request is for; also the `route` label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Reports,
    Report,
    Statistics,
    Metrics,
    /// `/reports/{id}/history` (SPEC §7.1).
    History,
    /// `/open311/v2/services.json` (SPEC §7.2).
    Open311Services,
    /// `/open311/v2/requests.json` (SPEC §7.2).
    Open311Requests,
    /// `/open311/v2/requests/{id}.json` (SPEC §7.2).
    Open311Request,
    /// No such path (404).
    Unmatched,
    /// The request was rejected before routing (bad framing, 400/411/413).
    Malformed,
}

impl Route {
    /// Every route, in metrics order (the index is `route as usize`).
    pub const ALL: [Route; 12] = [
        Route::Health,
        Route::Ready,
        Route::Reports,
        Route::Report,
        Route::Statistics,
        Route::Metrics,
        Route::History,
        Route::Open311Services,
        Route::Open311Requests,
        Route::Open311Request,
        Route::Unmatched,
        Route::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Reports => "/reports",
            Route::Report => "/reports/{id}",
            Route::Statistics => "/statistics",
            Route::Metrics => "/metrics",
            Route::History => "/reports/{id}/history",
            Route::Open311Services => "/open311/v2/services.json",
            Route::Open311Requests => "/open311/v2/requests.json",
            Route::Open311Request => "/open311/v2/requests/{id}.json",
            Route::Unmatched => "unmatched",
            Route::Malformed => "malformed",
        }
    }

    /// The methods a route answers: the `Allow` of its 405. The read API is GET only.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Health
            | Route::Ready
            | Route::Reports
            | Route::Report
            | Route::Statistics
            | Route::Metrics
            | Route::History
            | Route::Open311Services
            | Route::Open311Requests
            | Route::Open311Request => "GET",
            Route::Unmatched | Route::Malformed => "",
        }
    }

    /// The route of a path (without query string) and, for `/reports/{id}`, the id segment.
    pub fn of(path: &str) -> (Route, &str) {
        let route = match path {
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/reports" => Route::Reports,
            "/statistics" => Route::Statistics,
            "/metrics" => Route::Metrics,
            "/open311/v2/services.json" => Route::Open311Services,
            "/open311/v2/requests.json" => Route::Open311Requests,
            _ if path.starts_with("/open311/v2/requests/") => {
                // The whole `{id}.json` segment: the handler strips `.json` and checks the id.
                return match path["/open311/v2/requests/".len()..].strip_suffix(".json") {
                    Some(id) if !id.is_empty() && !id.contains('/') => (
                        Route::Open311Request,
                        &path["/open311/v2/requests/".len()..],
                    ),
                    _ => (Route::Unmatched, ""),
                };
            }
            _ => match path.strip_prefix("/reports/") {
                Some(id) if !id.is_empty() && !id.contains('/') => return (Route::Report, id),
                Some(rest) => match rest.strip_suffix("/history") {
                    Some(id) if !id.is_empty() && !id.contains('/') => return (Route::History, id),
                    _ => Route::Unmatched,
                },
                _ => Route::Unmatched,
            },
        };
        (route, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let check = |path: &str, expect: &str| {
            let (route, id) = Route::of(path);
            let got = format!("{} {id}", route.label());
            assert_eq!(got.trim(), expect, "path {path:?}");
        };
        check("/health", "/health");
        check("/reports", "/reports");
        check("/reports/abc", "/reports/{id} abc");
        check("/reports/", "unmatched");
        check("/reports/a/b", "unmatched");
        check("/reports/a/", "unmatched");
        check("/statistics", "/statistics");
        check("/statistics/", "unmatched");
        check("/", "unmatched");
        check("/metrics", "/metrics");
        check("/reports/abc/history", "/reports/{id}/history abc");
        check("/reports//history", "unmatched");
        check("/reports/a/b/history", "unmatched");
        check("/open311/v2/services.json", "/open311/v2/services.json");
        check("/open311/v2/requests.json", "/open311/v2/requests.json");
        check(
            "/open311/v2/requests/abc.json",
            "/open311/v2/requests/{id}.json abc.json",
        );
        check("/open311/v2/requests/.json", "unmatched");
        check("/open311/v2/requests/abc", "unmatched");
        check("/open311/v2/requests/a/b.json", "unmatched");
        check("/open311/v2/services.xml", "unmatched");
        for r in Route::ALL {
            assert_eq!(Route::ALL[r as usize], r);
        }
    }
}
