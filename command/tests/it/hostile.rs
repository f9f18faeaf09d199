//! Hostile HTTP against every command endpoint: an answer below 500 each time (a 4xx wherever
//! the input is wrong), nothing written, no worker stuck afterwards.

use shared::testkit::hostile::{self, Endpoint};

use super::*;

#[test]
fn hostile_http_on_every_endpoint() {
    let stack = Stack::new("hostile");
    post(stack.svc.port, &new_report(0));
    // An unknown id: a slow but well-formed DELETE must not count as a hostile write.
    let report_path: &'static str =
        Box::leak(format!("/reports/{}", uuid::Uuid::new_v4()).into_boxed_str());
    let mut db = stack.db();
    let before = fingerprint(&mut db);
    hostile::run(
        stack.svc.port,
        &[
            Endpoint {
                method: "GET",
                path: "/health",
                takes_body: false,
            },
            Endpoint {
                method: "GET",
                path: "/ready",
                takes_body: false,
            },
            Endpoint {
                method: "GET",
                path: "/metrics",
                takes_body: false,
            },
            Endpoint {
                method: "POST",
                path: "/reports",
                takes_body: true,
            },
            Endpoint {
                method: "PUT",
                path: report_path,
                takes_body: true,
            },
            Endpoint {
                method: "DELETE",
                path: report_path,
                takes_body: false,
            },
            Endpoint {
                method: "GET",
                path: "/open311/v2/services.json",
                takes_body: false,
            },
            Endpoint {
                method: "POST",
                path: "/open311/v2/requests.json",
                takes_body: true,
            },
        ],
    );
    assert_eq!(
        fingerprint(&mut db),
        before,
        "hostile input changed the database"
    );
    assert!(stack.svc.is_running());
}
