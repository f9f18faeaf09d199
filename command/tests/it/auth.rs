//! Writes need `Authorization: Bearer <token>` when `COMMAND_API_TOKENS` is set: 401 without,
//! 403 with a wrong token, nothing written either way; health stays open; the token never
//! appears in the log.

use super::*;

#[test]
fn writes_need_a_valid_token() {
    let db_url = pg().create_db("auth");
    let redis = RedisServer::start();
    let token = "t0ken-Sangat-Rahasia";
    let svc = start_command_with(
        &db_url,
        &redis.url(),
        "command-1",
        &[("COMMAND_API_TOKENS", format!("{token},second"))],
    );
    let body = new_report(1).to_string();
    let none = http(svc.port, "POST", "/reports", &[], body.as_bytes()).expect("post");
    assert_eq!(none.status, 401, "{:?}", none.json());
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = http(
        svc.port,
        "POST",
        "/reports",
        &[("Authorization", "Bearer nope")],
        body.as_bytes(),
    )
    .expect("post");
    assert_eq!(wrong.status, 403);
    let del = http(
        svc.port,
        "DELETE",
        &format!("/reports/{}", uuid::Uuid::new_v4()),
        &[],
        b"",
    )
    .expect("delete");
    assert_eq!(del.status, 401);
    let mut db = postgres::Client::connect(&db_url, postgres::NoTls).expect("db");
    assert_eq!(
        fingerprint(&mut db),
        (0, 0, 0),
        "nothing written without a valid token"
    );

    let bearer = format!("Bearer {token}");
    let ok = http(
        svc.port,
        "POST",
        "/reports",
        &[("Authorization", &bearer)],
        body.as_bytes(),
    )
    .expect("post");
    assert_eq!(ok.status, 201);
    assert_eq!(
        http(svc.port, "GET", "/health", &[], b"")
            .expect("health")
            .status,
        200
    );
    let log = svc.log();
    assert!(log.contains("auth=on (2 tokens)"), "{log}");
    assert!(!log.contains(token), "the token leaked into the log");
}
