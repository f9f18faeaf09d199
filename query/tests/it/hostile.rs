//! Hostile HTTP against every query endpoint: an answer below 500 each time (a 4xx wherever
//! the input is wrong) and no worker stuck afterwards.

use shared::testkit::hostile::{self, Endpoint};

use crate::support::{fresh_db, start_query};

#[test]
fn hostile_http_on_every_endpoint() {
    let url = fresh_db("hostile");
    let svc = start_query(&format!("query-db-primary={url}"), &[]);
    let report_path: &'static str =
        Box::leak(format!("/reports/{}", uuid::Uuid::new_v4()).into_boxed_str());
    let history_path: &'static str =
        Box::leak(format!("/reports/{}/history", uuid::Uuid::new_v4()).into_boxed_str());
    let open311_path: &'static str =
        Box::leak(format!("/open311/v2/requests/{}.json", uuid::Uuid::new_v4()).into_boxed_str());
    let get = |path: &'static str| Endpoint {
        method: "GET",
        path,
        takes_body: false,
    };
    hostile::run(
        svc.port,
        &[
            get("/health"),
            get("/ready"),
            get("/metrics"),
            get("/reports"),
            get("/reports?category=kebersihan&page=2"),
            get(report_path),
            get("/statistics"),
            get(history_path),
            get("/reports?near=-6.2,106.8&radius_m=500&q=jalan&status=pending"),
            get("/reports?bbox=106.7,-6.3,106.9,-6.1&per_page=5"),
            get("/reports?cursor=n.1750000000000000.0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e"),
            get("/open311/v2/services.json"),
            get("/open311/v2/requests.json"),
            get("/open311/v2/requests.json?status=open&service_code=kebersihan,keamanan&start_date=2010-04-14T06:37:38-08:00"),
            get(open311_path),
        ],
    );
    assert!(svc.is_running());
}
