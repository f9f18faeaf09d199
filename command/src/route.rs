//! Which endpoint a request was answered as: the closed set of command routes, in the order
//! `/metrics` reports them, each with its `route` label of `command_requests_total`.
//!
//! A leaf module: [`crate::routes`] decides the route and [`crate::metrics`] counts by it, and
//! neither imports the other, so the label table cannot drift from the dispatch (there is no
//! index that must match a list elsewhere).

/// One counted route. A known path with a method it does not allow, an unknown path and a
/// request rejected before routing (bad framing) are all [`Route::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    CreateReport,
    UpdateReport,
    DeleteReport,
    /// `GET /open311/v2/services.json` (SPEC §7.2).
    Open311Services,
    /// `POST /open311/v2/requests.json` (SPEC §7.2).
    Open311CreateRequest,
    Other,
}

impl Route {
    /// Every route, in metrics order (the index is `route as usize`).
    pub const ALL: [Route; 9] = [
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::CreateReport,
        Route::UpdateReport,
        Route::DeleteReport,
        Route::Open311Services,
        Route::Open311CreateRequest,
        Route::Other,
    ];

    /// The `route` label: method and path template.
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "GET /health",
            Route::Ready => "GET /ready",
            Route::Metrics => "GET /metrics",
            Route::CreateReport => "POST /reports",
            Route::UpdateReport => "PUT /reports/{id}",
            Route::DeleteReport => "DELETE /reports/{id}",
            Route::Open311Services => "GET /open311/v2/services.json",
            Route::Open311CreateRequest => "POST /open311/v2/requests.json",
            Route::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in Route::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
