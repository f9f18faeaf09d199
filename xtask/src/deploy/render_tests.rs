//! Tests of the rendered deployment files for several topologies: every service, upstream and
//! environment variable present and consistent with [`crate::topology`], the YAML parses, and
//! the real nginx and PgBouncer accept the generated configs.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::render::render_all;
use crate::topology::{Kind, Ports, Target, Topology};

const SHAPES: [(u32, u32, u32); 3] = [(1, 1, 0), (3, 3, 2), (8, 6, 4)];

fn topo(n: u32, m: u32, r: u32) -> Topology {
    Topology::new(n, m, r, Ports::default())
}

/// Renders into a fresh temp dir: (dir guard, files by path relative to the dir).
fn rendered(t: &Topology) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = render_all(t, dir.path(), Path::new("/repo")).expect("render");
    for (path, text) in &files {
        crate::render::ensure_file_contents(path, text, false).expect("write");
    }
    let rel = files
        .into_iter()
        .map(|(p, text)| {
            (
                p.strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string(),
                text,
            )
        })
        .collect();
    (dir, rel)
}

fn file<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
    files
        .iter()
        .find(|(p, _)| p == name)
        .map(|(_, t)| t.as_str())
        .unwrap_or_else(|| panic!("{name} not rendered"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{text}"))
        })
        .collect()
}

#[test]
fn compose_has_every_service_with_its_env() {
    for (n, m, r) in SHAPES {
        let t = topo(n, m, r);
        let (_dir, files) = rendered(&t);
        let docs = yaml_docs(file(&files, "docker-compose.yml"));
        assert_eq!(docs.len(), 1);
        let services = docs[0]["services"].as_object().expect("services map");
        let got: BTreeSet<&str> = services.keys().map(String::as_str).collect();
        let all = t.services();
        let want: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(got, want, "n={n} m={m} r={r}");
        for svc in &all {
            let env = &services[&svc.name]["environment"];
            for (k, v) in t.env(svc, Target::Compose) {
                assert_eq!(env[k].as_str(), Some(v.as_str()), "{} {k}", svc.name);
            }
            // Every host a service points at is itself a service of the file.
            for (_, v) in t.env(svc, Target::Compose) {
                for host in hosts_in(&v) {
                    assert!(
                        want.contains(host.as_str()),
                        "{}: unknown host {host} in {v}",
                        svc.name
                    );
                }
            }
        }
        for k in 1..=m {
            let urls = services[&format!("query-{k}")]["environment"]["QUERY_DATABASE_URLS"]
                .as_str()
                .expect("urls");
            let first = urls.split(',').next().unwrap_or("");
            if k <= r {
                assert!(
                    first.starts_with(&format!("query-db-replica{k}=")),
                    "{urls}"
                );
            } else {
                assert!(
                    first.starts_with("query-db-primary=postgres://postgres@pgbouncer:6432/"),
                    "{urls}"
                );
            }
            assert_eq!(urls.split(',').count() as u32, r + 1, "{urls}");
        }
        // Access control on by default: command instances read the token from command.env,
        // which holds a placeholder and says so.
        for svc in &all {
            let env_file = &services[&svc.name]["env_file"];
            if svc.kind == Kind::Command {
                assert_eq!(
                    env_file,
                    &serde_json::json!(["command.env"]),
                    "{}",
                    svc.name
                );
            } else {
                assert!(env_file.is_null(), "{} has an env_file", svc.name);
            }
        }
        let env = file(&files, "command.env");
        assert!(
            env.contains("\nCOMMAND_API_TOKENS=REPLACE-ME-"),
            "command.env: {env}"
        );
        assert!(env.contains("# The value below is a PLACEHOLDER"), "{env}");
        let volumes = docs[0]["volumes"].as_object().expect("volumes");
        assert_eq!(
            volumes.len() as u32,
            2 + r + 1,
            "one volume per DB plus redis"
        );
    }
}

/// Host names in `scheme://user@host:port/..` entries of an env value.
fn hosts_in(v: &str) -> Vec<String> {
    v.split(',')
        .filter_map(|entry| {
            let url = entry.split_once('=').map_or(entry, |(_, u)| u);
            let rest = url.split_once("://")?.1;
            let rest = rest.split_once('@').map_or(rest, |(_, h)| h);
            Some(rest.split([':', '/']).next()?.to_string())
        })
        .collect()
}

#[test]
fn nginx_and_pgbouncer_list_every_backend() {
    for (n, m, r) in SHAPES {
        let t = topo(n, m, r);
        let (_dir, files) = rendered(&t);
        let nginx = file(&files, "nginx.conf");
        let servers: Vec<&str> = nginx
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|s| *s != "{")
            .collect();
        let mut want: Vec<String> = (1..=n).map(|k| format!("command-{k}:8081")).collect();
        want.extend((1..=m).map(|k| format!("query-{k}:8091")));
        assert_eq!(servers, want);
        assert!(nginx.contains("least_conn;"));
        assert!(nginx.contains("keepalive 64;"));
        assert!(nginx.contains("proxy_next_upstream error timeout http_502 http_503;"));
        assert!(!nginx.contains("non_idempotent"));
        // Hardening: rate limits on both ports, body limit, timeouts, errors as JSON.
        for needle in [
            "server_tokens off;",
            "client_max_body_size 64k;",
            "limit_req_zone $binary_remote_addr zone=writes:10m rate=1000r/s;",
            "limit_req_zone $binary_remote_addr zone=reads:10m rate=2000r/s;",
            "limit_req zone=writes burst=1000 nodelay;",
            "limit_req zone=reads burst=2000 nodelay;",
            "limit_req_status 429;",
            "proxy_intercept_errors off;",
            "proxy_connect_timeout 1s;",
            "proxy_read_timeout 10s;",
            "proxy_send_timeout 10s;",
            "error_page 502 504 = @upstream_unavailable;",
            r#"return 429 '{"success":false,"error":"rate limit exceeded","instance":"nginx"}';"#,
            r#"return 503 '{"success":false,"error":"upstream unavailable","instance":"nginx"}';"#,
        ] {
            assert!(nginx.contains(needle), "nginx.conf lacks {needle}");
        }
        assert_eq!(nginx.matches("error_page 429 = @rate_limited;").count(), 2);
        assert_eq!(nginx.matches("error_page 413 = @too_large;").count(), 2);
        assert_eq!(
            nginx.matches("max_fails=3 fail_timeout=10s").count() as u32,
            n + m
        );

        let ini = file(&files, "pgbouncer.ini");
        assert!(ini.contains("pool_mode = transaction"));
        assert!(ini.contains("default_pool_size = 5"));
        assert!(ini.contains("ignore_startup_parameters = extra_float_digits,options"));
        assert!(ini.contains("reports_read = host=query-db-primary port=5432"));
        for k in 1..=r {
            assert!(ini.contains(&format!(
                "reports_read_replica{k} = host=query-db-replica{k} port=5432"
            )));
        }
    }
}

#[test]
fn kubernetes_manifests_are_consistent() {
    for (n, m, r) in SHAPES {
        let t = topo(n, m, r);
        let (_dir, files) = rendered(&t);
        let docs: Vec<Value> = files
            .iter()
            .filter(|(p, _)| p.starts_with("k8s/"))
            .flat_map(|(_, text)| yaml_docs(text))
            .collect();
        let of =
            |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
        let name = |d: &Value| d["metadata"]["name"].as_str().unwrap_or("").to_string();

        let sets: BTreeSet<String> = of("StatefulSet").into_iter().map(name).collect();
        let mut want: BTreeSet<String> = t.query_db_names().into_iter().collect();
        want.insert("command-db".into());
        want.insert("redis".into());
        assert_eq!(sets, want);

        let services: BTreeSet<String> = of("Service").into_iter().map(name).collect();
        for s in want.iter().map(String::as_str).chain([
            "command",
            "query",
            "projection",
            "pgbouncer",
            "nginx",
        ]) {
            assert!(services.contains(s), "no Service {s}");
        }

        let deployments = of("Deployment");
        let replicas = |app: &str| -> u64 {
            deployments
                .iter()
                .filter(|d| d["metadata"]["labels"]["app"] == app)
                .map(|d| d["spec"]["replicas"].as_u64().unwrap_or(0))
                .sum()
        };
        assert_eq!(replicas("command"), u64::from(n));
        assert_eq!(replicas("query"), u64::from(m));
        assert_eq!(replicas("projection"), 1);

        let maps: BTreeSet<String> = of("ConfigMap").into_iter().map(name).collect();
        let secrets = of("Secret");
        let mut secret_refs = 0;
        for d in &deployments {
            let spec = &d["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    if r.is_null() {
                        continue;
                    }
                    secret_refs += 1;
                    let key = r["key"].as_str().unwrap_or("");
                    assert!(
                        secrets.iter().any(|s| s["metadata"]["name"] == r["name"]
                            && s["stringData"][key].is_string()),
                        "{} uses missing Secret key {r}",
                        name(d)
                    );
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    let cm = e["configMapRef"]["name"].as_str().unwrap_or("");
                    assert!(maps.contains(cm), "{} uses missing ConfigMap {cm}", name(d));
                }
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                let cm = v["configMap"]["name"].as_str().unwrap_or("");
                assert!(
                    maps.contains(cm),
                    "{} mounts missing ConfigMap {cm}",
                    name(d)
                );
            }
        }
        assert_eq!(
            secret_refs, 1,
            "the command Deployment reads COMMAND_API_TOKENS"
        );
        let command_env = deployments
            .iter()
            .find(|d| name(d) == "command")
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].to_string())
            .unwrap_or_default();
        assert!(command_env.contains("COMMAND_API_TOKENS"), "{command_env}");
        // Replica-reading query Deployments point at their replica first.
        for k in 1..=r.min(m) {
            let cm = of("ConfigMap")
                .into_iter()
                .find(|d| name(d) == format!("query-replica{k}-config"))
                .unwrap_or_else(|| panic!("no config for query-replica{k}"));
            let urls = cm["data"]["QUERY_DATABASE_URLS"].as_str().unwrap_or("");
            assert!(urls.starts_with(&format!("query-db-replica{k}=")), "{urls}");
        }
        let nginx_cm = of("ConfigMap")
            .into_iter()
            .find(|d| name(d) == "nginx-config")
            .expect("nginx-config");
        assert_eq!(
            nginx_cm["data"]["nginx.conf"].as_str(),
            Some(t.nginx_conf(Target::Kube, None).as_str())
        );
    }
}

fn have(binary: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(binary).exists())
}

/// Upstream host names cannot be resolved here: point them at 127.0.0.1 for `nginx -t`.
fn localize_upstreams(conf: &str) -> String {
    conf.lines()
        .map(|l| match l.trim().strip_prefix("server ") {
            Some(rest) if rest.contains(':') => {
                let port_and_rest = rest.split_once(':').map_or("", |x| x.1);
                format!("        server 127.0.0.1:{port_and_rest}")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn nginx_accepts_the_configs() {
    if !have("nginx") {
        println!("note: nginx not installed; skipping `nginx -t`");
        return;
    }
    for (n, m, r) in SHAPES {
        let t = topo(n, m, r);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        let local = dir.path().join("local.conf");
        std::fs::write(&local, t.nginx_conf(Target::Local, Some(dir.path()))).expect("write");
        let compose = dir.path().join("compose.conf");
        std::fs::write(
            &compose,
            localize_upstreams(&t.nginx_conf(Target::Compose, None)),
        )
        .expect("write");
        let kube = dir.path().join("kube.conf");
        std::fs::write(&kube, localize_upstreams(&t.nginx_conf(Target::Kube, None)))
            .expect("write");
        for conf in [&local, &compose, &kube] {
            let out = Command::new("nginx")
                .arg("-t")
                .arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(conf)
                .output()
                .expect("run nginx -t");
            assert!(
                out.status.success(),
                "nginx -t rejected {} for {n}/{m}/{r}:\n{}",
                conf.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn pgbouncer_accepts_the_configs() {
    if !have("pgbouncer") {
        println!("note: pgbouncer not installed; skipping the PgBouncer start test");
        return;
    }
    let t = topo(3, 3, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    // PgBouncer runs as `postgres` when we are root; it must be able to read the files.
    Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .expect("chmod");
    std::fs::write(dir.path().join("userlist.txt"), t.pgbouncer_userlist()).expect("userlist");
    let auth_line = format!("auth_file = {}", dir.path().join("userlist.txt").display());
    for target in [Target::Local, Target::Compose] {
        let port = free_port();
        let ini = t
            .pgbouncer_ini(target, Some(dir.path()))
            .lines()
            .map(|l| {
                if l.starts_with("listen_port") {
                    format!("listen_port = {port}")
                } else if l.starts_with("listen_addr") {
                    "listen_addr = 127.0.0.1".to_string()
                } else if l.starts_with("auth_file") {
                    auth_line.clone()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(&path, ini).expect("ini");
        let mut cmd = Command::new("pgbouncer");
        cmd.arg(&path).stdout(Stdio::null()).stderr(Stdio::piped());
        if crate::packages::is_root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .arg(flag)
                    .arg("postgres")
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("numeric id")
            };
            cmd.uid(id("-u")).gid(id("-g"));
        }
        let mut child = cmd.spawn().expect("start pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut listening = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                listening = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        assert!(
            listening,
            "pgbouncer did not accept the {target:?} config:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn render_check_detects_stale_files() {
    let t = topo(1, 1, 0);
    let (dir, files) = rendered(&t);
    let path = dir.path().join(&files[0].0);
    assert!(!crate::render::ensure_file_contents(&path, &files[0].1, true).expect("check"));
    std::fs::write(&path, "stale").expect("write");
    assert!(crate::render::ensure_file_contents(&path, &files[0].1, true).expect("check"));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "stale",
        "--check never writes"
    );
}

#[test]
fn committed_render_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let out = root.join(crate::render::DEFAULT_OUT);
    let files = render_all(&crate::render::default_topology(), &out, root).expect("render");
    let stale: Vec<String> = files
        .iter()
        .filter(|(path, text)| {
            crate::render::ensure_file_contents(path, text, true).expect("check")
        })
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        stale.is_empty(),
        "stale: {stale:?}; run `cargo xtask render`"
    );
}

/// The real nginx with the local config, every instance down: nginx's own answers are JSON in
/// the services' envelope (503 for no instance, 413 for a big body, 429 past the rate limit),
/// and its `Server` header names no version.
#[test]
fn nginx_answers_its_own_errors_as_json() {
    if !have("nginx") {
        println!("note: nginx not installed; skipping the nginx error-page test");
        return;
    }
    // Nothing listens on the instance ports: command-1 = command_base + 1, and so on.
    let ports = Ports {
        write: free_port(),
        read: free_port(),
        command_base: free_port() - 1,
        query_base: free_port() - 1,
        ..Ports::default()
    };
    let t = Topology::new(1, 1, 0, ports.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, t.nginx_conf(Target::Local, Some(dir.path()))).expect("write");
    let mut child = Command::new("nginx")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start nginx");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // The master takes its workers with it on SIGTERM (kill() is SIGKILL: not enough).
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", ports.read)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        assert!(child.try_wait().ok().flatten().is_none(), "nginx exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _stop = Stop(child);

    let json = |r: &shared::testkit::HttpResponse| r.json();
    for port in [ports.write, ports.read] {
        let r = shared::testkit::http(port, "GET", "/reports", &[], b"").expect("GET");
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            json(&r),
            serde_json::json!({"success": false, "error": "upstream unavailable", "instance": "nginx"})
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-instance-id"), Some("nginx"));
        assert_eq!(r.header("server"), Some("nginx"), "no version");
    }
    let big = vec![b'x'; 100 * 1024];
    let r = shared::testkit::http(ports.write, "POST", "/reports", &[], &big).expect("POST");
    assert_eq!(r.status, 413);
    assert_eq!(json(&r)["instance"], "nginx");

    // Past burst + rate: pipelined requests on keep-alive connections (nginx closes one
    // after 1000 requests), fast enough that the 1000 r/s refill cannot keep up.
    let one = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        ports.write
    );
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..4 {
        let text = pipelined(ports.write, &one.repeat(1000));
        ok += text.matches("HTTP/1.1 503 ").count();
        limited += text.matches("HTTP/1.1 429 ").count();
        if limited > 0 {
            assert!(
                text.contains(
                    r#"{"success":false,"error":"rate limit exceeded","instance":"nginx"}"#
                ),
                "429 body"
            );
            break;
        }
    }
    println!("{ok} requests passed the limit, then {limited} were refused");
    assert!(
        limited > 0,
        "no 429 after {ok} requests within the burst of 1000"
    );
    assert!(ok >= 1000, "the burst of 1000 passes: {ok}");
}

/// Writes `requests` on one connection (from a second thread, so neither side blocks the
/// other) and reads every answer until nginx closes the connection.
fn pipelined(port: u16, requests: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let bytes = requests.as_bytes().to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let _ = sender.join();
    String::from_utf8_lossy(&answer).into_owned()
}
