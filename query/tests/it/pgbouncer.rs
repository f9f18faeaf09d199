//! Acceptance (5): through a real PgBouncer in transaction mode with a pool of 5 server
//! connections, 200 concurrent client connections each doing several reads get no errors.
//! This is what named prepared statements would break: every statement must be unnamed.
//! The cache fence is a lock held on one session, which transaction pooling does not keep:
//! with `QUERY_DIRECT_URLS` it is held past PgBouncer, and without it the cache never serves
//! an answer a commit has replaced.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shared::testkit::{free_port, http, wait_until};

use shared::model::{Category, Status};

use crate::support::{apply, fresh_db, report, seed, start_query, PG};

/// A PgBouncer child process in front of the shared cluster; killed on drop.
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(pg_port: u16) -> PgBouncer {
        let dir = tempfile::Builder::new()
            .prefix("query-pgbouncer-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let users = dir.path().join("userlist.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").expect("write userlist");
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = 5\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                users.display()
            ),
        )
        .expect("write pgbouncer.ini");
        // PgBouncer refuses to run as root; `-u` drops to postgres, which must read the files.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = Command::new("/usr/sbin/pgbouncer");
        if root {
            let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
            let _ = Command::new("chmod")
                .arg("644")
                .arg(&users)
                .arg(&ini)
                .status();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgbouncer");
        wait_until(
            "pgbouncer accepts connections",
            Duration::from_secs(10),
            || {
                postgres::Client::connect(
                    &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    postgres::NoTls,
                )
                .is_ok()
            },
        );
        PgBouncer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn through_pgbouncer_transaction_mode_under_200_connections() {
    fresh_db("bouncer");
    let reports = seed(&mut PG.client("bouncer"), 60);
    let bouncer = PgBouncer::start(PG.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/bouncer", bouncer.port);
    let svc = start_query(&format!("bouncer={url}"), &[]);
    let port = svc.port;

    let ids: Vec<String> = reports.iter().map(|r| r.id.to_string()).collect();
    let threads: Vec<_> = (0..200)
        .map(|t| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let paths = [
                    "/reports".to_owned(),
                    format!("/reports/{}", ids[t % ids.len()]),
                    "/reports?category=kebersihan&status=pending&per_page=5".to_owned(),
                    "/statistics".to_owned(),
                    format!("/reports/{}?min_version=1", ids[(t * 7) % ids.len()]),
                    format!("/reports?page={}&per_page=10", t % 7 + 1),
                ];
                for path in &paths {
                    match http(port, "GET", path, &[], b"") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.push(format!(
                            "{path}: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 1200 requests failed, e.g. {:?}\nservice log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        svc.log()
    );
    let r = http(port, "GET", "/reports", &[], b"").unwrap();
    assert_eq!(r.header("x-query-db"), Some("bouncer"));
    assert_eq!(r.json()["meta"]["total"], 60);
}

/// The total a `/statistics` answer counts.
fn stats_total(port: u16) -> (i64, Option<String>) {
    let r = http(port, "GET", "/statistics", &[], b"").expect("GET /statistics");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let total = r.json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["total_count"].as_i64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(-1);
    (total, r.header("etag").map(str::to_owned))
}

/// Reads through PgBouncer, the fence on `QUERY_DIRECT_URLS`: answers from memory (an `ETag`)
/// and every commit seen by the next read. Without the direct URL the same holds for the
/// answers (whether or not the fence could be taken through the pooler).
#[test]
fn the_cache_fence_is_held_past_pgbouncer_on_the_direct_url() {
    let direct = fresh_db("bouncer_fence");
    seed(&mut PG.client("bouncer_fence"), 3);
    let bouncer = PgBouncer::start(PG.port);
    let pooled = format!(
        "postgres://postgres@127.0.0.1:{}/bouncer_fence",
        bouncer.port
    );
    let fenced = start_query(
        &format!("main={pooled}"),
        &[("QUERY_DIRECT_URLS", format!("main={direct}"))],
    );
    let unfenced = start_query(&format!("main={pooled}"), &[]);
    wait_until("an answer from memory", Duration::from_secs(10), || {
        stats_total(fenced.port).1.is_some()
    });
    let mut c = PG.client("bouncer_fence");
    for n in 0..20 {
        apply(
            &mut c,
            &report(
                10 + n,
                Category::Lainnya,
                Status::Pending,
                shared::model::now_micros(),
            ),
        );
        let want = 4 + i64::from(n);
        for svc in [&fenced, &unfenced] {
            assert_eq!(stats_total(svc.port).0, want, "{}", svc.log());
        }
    }
    // Right after a commit the listener may still be taking the fence back (no ETag for a
    // moment); it is fenced again soon after, on its direct session.
    wait_until(
        "an answer from memory again",
        Duration::from_secs(10),
        || stats_total(fenced.port).1.is_some(),
    );
}
