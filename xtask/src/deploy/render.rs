//! `cargo xtask render`: deployment files for N/M/R generated from the one topology
//! description in [`crate::cluster::topology`]: `docker-compose.yml`, `nginx.conf`, `pgbouncer.ini`,
//! `userlist.txt`, `command.env` and Kubernetes manifests under `k8s/`.
//!
//! Access control is on by default in what is rendered: the command instances read
//! `COMMAND_API_TOKENS` from `command.env` (Compose) or the Secret `command-api-tokens`
//! (Kubernetes). Both hold a placeholder, never a real secret, with a comment saying to replace
//! it; the real token lives only where the deployment runs.
//!
//! Every file goes through [`ensure_file_contents`], so `--check` fails when a committed copy
//! is stale. YAML is produced from `serde_json` values by `serde_norway` ([`to_yaml`]); keys
//! come out sorted and strings are quoted wherever YAML would mis-type them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use xshell::Shell;

use crate::cluster::topology::{
    Kind, Service, Target, Topology, COMMAND_DB, COMMAND_SECRET, QUERY_DB,
};
use crate::cluster::tuning;

// Every image is built by `cargo xtask images` from one Debian base (see `crate::deploy::images`).
use crate::deploy::images::{
    NGINX as NGINX_IMAGE, PGBOUNCER as PGBOUNCER_IMAGE, POSTGRES as POSTGRES_IMAGE,
    REDIS as REDIS_IMAGE, SERVICE as IMAGE,
};

/// Where `render` writes by default; the committed copy is kept fresh by a test.
pub const DEFAULT_OUT: &str = "deploy/generated";

/// The Compose `env_file` of the command instances (their secret environment).
pub const COMMAND_ENV_FILE: &str = "command.env";

/// What the rendered files hold instead of a token: obviously not one, so a deployment that
/// forgets to replace it is easy to spot (`grep REPLACE`).
pub const TOKEN_PLACEHOLDER: &str = "REPLACE-ME-with-the-output-of-openssl-rand-hex-16";

/// How to replace the placeholder, for the comments of both files.
const SECRET_NOTE: &str = "\
# COMMAND_API_TOKENS: comma-separated bearer tokens; POST/PUT/DELETE need
# `Authorization: Bearer <one of them>` (401 without, 403 with a wrong one).
# The value below is a PLACEHOLDER, not a secret: replace it before deploying,
# e.g. with the output of `openssl rand -hex 16`, and keep the real file out of git.
# An empty value turns access control off (the command log then says auth=OFF).
";

/// `command.env` with `tokens` (the placeholder when rendering, a real token for `up --docker`).
pub fn command_env(tokens: &str) -> String {
    let mut text =
        String::from("# Secret environment of the command instances (Compose env_file).\n");
    text.push_str(SECRET_NOTE);
    for name in Topology::secret_env(Kind::Command) {
        text.push_str(&format!("{name}={tokens}\n"));
    }
    text
}

/// The topology `render` uses without flags: the original deployment's 3 command instances,
/// 3 query instances and 2 query-DB replicas (the defaults `crate::flags` declares; a test
/// keeps the two equal).
#[cfg(test)]
pub fn default_topology() -> Topology {
    Topology::new(3, 3, 2, crate::cluster::topology::Ports::default())
}

pub struct Render {
    pub topo: Topology,
    pub out: PathBuf,
    pub check: bool,
}

impl Render {
    pub fn run(self, sh: &Shell) -> Result<()> {
        self.topo.validate()?;
        let out = sh.current_dir().join(&self.out);
        let files = render_all(&self.topo, &out, &sh.current_dir())?;
        let mut stale = Vec::new();
        for (path, text) in &files {
            if ensure_file_contents(path, text, self.check)? {
                stale.push(path.display().to_string());
            }
        }
        if self.check && !stale.is_empty() {
            bail!(
                "stale generated files (run `cargo xtask render` without --check):\n  {}",
                stale.join("\n  ")
            );
        }
        println!(
            "{} files {} in {}",
            files.len(),
            if self.check { "checked" } else { "rendered" },
            out.display()
        );
        Ok(())
    }
}

/// Writes `text` to `path` unless it already holds exactly that. With `check`, never writes.
/// Returns whether the file was (or, with `check`, would have been) changed.
pub fn ensure_file_contents(path: &Path, text: &str, check: bool) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    if check {
        eprintln!("stale: {}", path.display());
        return Ok(true);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    println!("updated {}", path.display());
    Ok(true)
}

/// Every generated file: (absolute path, contents). `_root` (the repository root) is no longer
/// needed: Compose runs images built by `cargo xtask images`, it builds nothing itself.
pub fn render_all(topo: &Topology, out: &Path, _root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![
        (out.join("docker-compose.yml"), to_yaml(&compose(topo))?),
        (
            out.join("nginx.conf"),
            topo.nginx_conf(Target::Compose, None),
        ),
        (
            out.join("pgbouncer.ini"),
            topo.pgbouncer_ini(Target::Compose, None),
        ),
        (out.join("userlist.txt"), topo.pgbouncer_userlist()),
        (out.join(COMMAND_ENV_FILE), command_env(TOKEN_PLACEHOLDER)),
    ];
    for (name, docs) in kube(topo) {
        let docs = docs.iter().map(to_yaml).collect::<Result<Vec<_>>>()?;
        let mut text = docs.join("---\n");
        if name == "command.yaml" {
            text = format!("# The Secret `{COMMAND_SECRET}` below:\n{SECRET_NOTE}{text}");
        }
        files.push((out.join("k8s").join(name), text));
    }
    Ok(files)
}

fn env_map(env: &[(&str, String)]) -> Value {
    Value::Object(env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn pg_healthcheck() -> Value {
    json!({"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "postgres"], "interval": "2s", "timeout": "2s", "retries": 30})
}

/// Health of one of our services inside its container: `/ready` where the service has one
/// (its dependencies answer), `/health` for the projection (it has only that).
fn service_healthcheck(kind: Kind) -> Value {
    let path = if kind == Kind::Projection {
        "/health"
    } else {
        "/ready"
    };
    let url = format!("http://127.0.0.1:{}{path}", kind.container_port());
    json!({"test": ["CMD", "curl", "-fsS", "-o", "/dev/null", url], "interval": "2s", "timeout": "2s", "retries": 60})
}

/// Published ports: every service on the host's loopback at its `up` port (so `status`,
/// `check-sync` and `bench` reach them as they reach a local cluster), nginx on every
/// interface (the user-facing endpoints).
fn published(svc: &Service) -> Value {
    let ports: Vec<String> = match svc.kind {
        Kind::Nginx => svc
            .ports
            .iter()
            .zip([8080, 8090])
            .map(|((host, _), inner)| format!("{host}:{inner}"))
            .collect(),
        kind => vec![format!(
            "127.0.0.1:{}:{}",
            svc.port(),
            kind.container_port()
        )],
    };
    json!(ports)
}

/// docker-compose.yml: one container per service of the topology.
pub fn compose(topo: &Topology) -> Value {
    let mut services = Map::new();
    let mut volumes = Map::new();
    let all = topo.services();
    let names = |kind: Kind| {
        all.iter()
            .filter(move |s| s.kind == kind)
            .map(|s| s.name.clone())
    };
    for svc in &all {
        let value = match svc.kind {
            Kind::Postgres => {
                volumes.insert(svc.name.clone(), json!({}));
                let db = if svc.name == "command-db" {
                    COMMAND_DB
                } else {
                    QUERY_DB
                };
                json!({
                    "image": POSTGRES_IMAGE,
                    // The image's entrypoint runs `postgres -D $PGDATA` with these appended.
                    "command": tuning::postgres_args(&svc.name),
                    "environment": {"POSTGRES_DB": db},
                    "ports": published(svc),
                    "volumes": [format!("{}:/var/lib/postgresql/data", svc.name)],
                    "healthcheck": pg_healthcheck(),
                    "restart": "unless-stopped",
                })
            }
            Kind::Redis => {
                volumes.insert("redis".into(), json!({}));
                json!({
                    "image": REDIS_IMAGE,
                    "command": ["redis-server", "--dir", "/data", "--appendonly", "yes", "--appendfsync", "everysec", "--save", tuning::REDIS_SAVE, "--protected-mode", "no"],
                    "ports": published(svc),
                    "volumes": ["redis:/data"],
                    "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "2s", "timeout": "2s", "retries": 30},
                    "restart": "unless-stopped",
                })
            }
            Kind::Pgbouncer => {
                let deps: Map<String, Value> = names(Kind::Postgres)
                    .filter(|n| n != "command-db")
                    .map(|n| (n, json!({"condition": "service_healthy"})))
                    .collect();
                json!({
                    "image": PGBOUNCER_IMAGE,
                    "command": ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"],
                    "healthcheck": {"test": ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6432"], "interval": "2s", "timeout": "2s", "retries": 30},
                    "ports": published(svc),
                    "volumes": ["./pgbouncer.ini:/etc/pgbouncer/pgbouncer.ini:ro", "./userlist.txt:/etc/pgbouncer/userlist.txt:ro"],
                    "depends_on": deps,
                    "restart": "unless-stopped",
                })
            }
            Kind::Command | Kind::Query | Kind::Projection => {
                let mut deps = Map::new();
                let healthy = json!({"condition": "service_healthy"});
                match svc.kind {
                    Kind::Command => {
                        deps.insert("command-db".into(), healthy.clone());
                        deps.insert("redis".into(), healthy);
                    }
                    Kind::Query => {
                        deps.insert("pgbouncer".into(), healthy.clone());
                        for n in names(Kind::Postgres).filter(|n| n != "command-db") {
                            deps.insert(n, healthy.clone());
                        }
                    }
                    _ => {
                        deps.insert("redis".into(), healthy.clone());
                        for n in names(Kind::Postgres).filter(|n| n != "command-db") {
                            deps.insert(n, healthy.clone());
                        }
                    }
                }
                let mut value = json!({
                    "image": IMAGE,
                    "command": [svc.kind.bin_name()],
                    "healthcheck": service_healthcheck(svc.kind),
                    "ports": published(svc),
                    "environment": env_map(&topo.env(svc, Target::Compose)),
                    "depends_on": deps,
                    "restart": "unless-stopped",
                    "stop_grace_period": "20s",
                });
                if !Topology::secret_env(svc.kind).is_empty() {
                    value["env_file"] = json!([COMMAND_ENV_FILE]);
                }
                value
            }
            Kind::Nginx => {
                let deps: Map<String, Value> = names(Kind::Command)
                    .chain(names(Kind::Query))
                    .map(|n| (n, json!({"condition": "service_healthy"})))
                    .collect();
                json!({
                    "image": NGINX_IMAGE,
                    "command": ["nginx", "-c", "/etc/nginx/nginx.conf"],
                    "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro"],
                    "ports": published(svc),
                    "depends_on": deps,
                    "restart": "unless-stopped",
                })
            }
        };
        services.insert(svc.name.clone(), value);
    }
    // No top-level `name`: Compose v1 (Debian's) rejects it; the project is `-p` instead.
    json!({"services": services, "volumes": volumes})
}

fn meta(name: &str, app: &str) -> Value {
    json!({"name": name, "labels": {"app": app, "part-of": "reporting"}})
}

fn service(name: &str, app: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "targetPort": p}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name, app), "spec": {"selector": {"app": app}, "ports": ports}})
}

fn http_probe(path: &str, port: u16) -> Value {
    json!({"httpGet": {"path": path, "port": port}, "periodSeconds": 5, "failureThreshold": 3})
}

fn exec_probe(command: &[&str]) -> Value {
    json!({"exec": {"command": command}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 6})
}

fn tcp_probe(port: u16) -> Value {
    json!({"tcpSocket": {"port": port}, "periodSeconds": 5, "failureThreshold": 3})
}

/// Requests (what the scheduler reserves) and limits (where the kernel stops a container) as
/// (cpu request, memory request, cpu limit, memory limit). Sized from the measured footprint
/// on the 2-core test machine (README, RSS per service) with room for load: a service uses
/// tens of MB, PostgreSQL's shared buffers and work memory need more.
fn resources(kind: Kind) -> Value {
    let (cpu, mem, cpu_max, mem_max) = match kind {
        Kind::Postgres => ("250m", "256Mi", "2", "1Gi"),
        Kind::Redis => ("100m", "64Mi", "1", "512Mi"),
        Kind::Command | Kind::Query | Kind::Projection => ("100m", "64Mi", "1", "512Mi"),
        Kind::Pgbouncer | Kind::Nginx => ("50m", "32Mi", "500m", "128Mi"),
    };
    json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu_max, "memory": mem_max}})
}

/// The uid/gid each image runs as (its Dockerfile's numeric `USER`): Kubernetes verifies
/// runAsNonRoot against it, and `fsGroup` makes volume claims writable for it.
fn run_as(kind: Kind) -> u32 {
    match kind {
        Kind::Postgres | Kind::Redis | Kind::Pgbouncer => 999,
        Kind::Nginx => 33,
        Kind::Command | Kind::Query | Kind::Projection => 10001,
    }
}

/// Pod security context: never root, and the volume group of [`run_as`].
fn pod_security(kind: Kind) -> Value {
    let id = run_as(kind);
    json!({"runAsNonRoot": true, "runAsUser": id, "runAsGroup": id, "fsGroup": id, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// Container security context: no privilege escalation, no Linux capabilities.
fn container_security() -> Value {
    json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
}

/// A Deployment of our image running one binary; INSTANCE_ID is the pod name.
fn app_deployment(name: &str, app: &str, replicas: u32, kind: Kind, config: &str) -> Value {
    let port = kind.container_port();
    let mut env = vec![
        json!({"name": "INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    // The projection has no /ready; its /health answers once its threads run.
    let ready = if kind == Kind::Projection {
        "/health"
    } else {
        "/ready"
    };
    for secret in Topology::secret_env(kind) {
        env.push(json!({"name": secret, "valueFrom": {"secretKeyRef": {"name": COMMAND_SECRET, "key": secret}}}));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, app),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "deployment": name}},
            "strategy": if kind == Kind::Projection { json!({"type": "Recreate"}) } else { json!({"type": "RollingUpdate"}) },
            "template": {
                "metadata": {"labels": {"app": app, "deployment": name, "part-of": "reporting"}},
                "spec": {
                    "terminationGracePeriodSeconds": 20,
                    "securityContext": pod_security(kind),
                    "containers": [{
                        "name": app,
                        "image": IMAGE,
                        "command": [kind.bin_name()],
                        "ports": [{"containerPort": port}],
                        "envFrom": [{"configMapRef": {"name": config}}],
                        "env": env,
                        "readinessProbe": http_probe(ready, port),
                        "livenessProbe": http_probe("/health", port),
                        "resources": resources(kind),
                        "securityContext": container_security(),
                    }],
                },
            },
        },
    })
}

fn config_map(name: &str, app: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(name, app), "data": data})
}

/// Env of one instance for a ConfigMap: everything but INSTANCE_ID (the pod name instead).
fn config_env(topo: &Topology, svc: &Service) -> Value {
    let env: Vec<(&str, String)> = topo
        .env(svc, Target::Kube)
        .into_iter()
        .filter(|(k, _)| *k != "INSTANCE_ID")
        .collect();
    env_map(&env)
}

fn stateful_set(svc: &Service, image: &str, container: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&svc.name, &svc.name),
        "spec": {
            "serviceName": svc.name,
            "replicas": 1,
            "selector": {"matchLabels": {"app": svc.name}},
            "template": {
                "metadata": {"labels": {"app": svc.name, "part-of": "reporting"}},
                "spec": {
                    "securityContext": pod_security(svc.kind),
                    "containers": [merge(json!({
                        "name": svc.name,
                        "image": image,
                        "resources": resources(svc.kind),
                        "securityContext": container_security(),
                    }), container)],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Kubernetes manifests, one file per part: (file name, documents).
pub fn kube(topo: &Topology) -> Vec<(String, Vec<Value>)> {
    let all = topo.services();
    let mut databases = Vec::new();
    for svc in all.iter().filter(|s| s.kind == Kind::Postgres) {
        let db = if svc.name == "command-db" {
            COMMAND_DB
        } else {
            QUERY_DB
        };
        databases.push(stateful_set(
            svc,
            POSTGRES_IMAGE,
            json!({
                // Appended by the image's entrypoint to `postgres -D $PGDATA`.
                "args": tuning::postgres_args(&svc.name),
                "ports": [{"containerPort": 5432}],
                "env": [
                    {"name": "POSTGRES_DB", "value": db},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                "readinessProbe": exec_probe(&["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]),
                "livenessProbe": exec_probe(&["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]),
            }),
        ));
        databases.push(service(&svc.name, &svc.name, &[("postgres", 5432)]));
    }
    let mut redis = Vec::new();
    for svc in all.iter().filter(|s| s.kind == Kind::Redis) {
        redis.push(stateful_set(
            svc,
            REDIS_IMAGE,
            json!({
                "args": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec", "--save", tuning::REDIS_SAVE, "--dir", "/data", "--protected-mode", "no"],
                "ports": [{"containerPort": 6379}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": exec_probe(&["redis-cli", "ping"]),
                "livenessProbe": exec_probe(&["redis-cli", "ping"]),
            }),
        ));
        redis.push(service("redis", "redis", &[("redis", 6379)]));
    }
    let pgbouncer = vec![
        config_map(
            "pgbouncer-config",
            "pgbouncer",
            json!({"pgbouncer.ini": topo.pgbouncer_ini(Target::Kube, None), "userlist.txt": topo.pgbouncer_userlist()}),
        ),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("pgbouncer", "pgbouncer"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "pgbouncer"}},
                "template": {
                    "metadata": {"labels": {"app": "pgbouncer", "part-of": "reporting"}},
                    "spec": {
                        "securityContext": pod_security(Kind::Pgbouncer),
                        "containers": [{
                            "name": "pgbouncer",
                            "image": PGBOUNCER_IMAGE,
                            "command": ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"],
                            "ports": [{"containerPort": 6432}],
                            // Listening is what PgBouncer promises; the query DBs have their own probes.
                            "readinessProbe": tcp_probe(6432),
                            "livenessProbe": tcp_probe(6432),
                            "resources": resources(Kind::Pgbouncer),
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/pgbouncer", "readOnly": true}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "pgbouncer-config"}}],
                    },
                },
            },
        }),
        service("pgbouncer", "pgbouncer", &[("pgbouncer", 6432)]),
    ];
    let first = |kind: Kind| all.iter().find(|s| s.kind == kind).cloned();
    let mut command = Vec::new();
    if let Some(svc) = first(Kind::Command) {
        let data: Map<String, Value> = Topology::secret_env(Kind::Command)
            .iter()
            .map(|k| (k.to_string(), json!(TOKEN_PLACEHOLDER)))
            .collect();
        command.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(COMMAND_SECRET, "command"),
            "type": "Opaque",
            "stringData": data,
        }));
        command.push(config_map(
            "command-config",
            "command",
            config_env(topo, &svc),
        ));
        command.push(app_deployment(
            "command",
            "command",
            topo.commands,
            Kind::Command,
            "command-config",
        ));
        command.push(service(
            "command",
            "command",
            &[("http", Kind::Command.container_port())],
        ));
    }
    let mut query = Vec::new();
    for (name, replicas, k) in topo.query_groups() {
        let Some(svc) = topo.service(&format!("query-{k}")) else {
            continue;
        };
        let config = format!("{name}-config");
        query.push(config_map(&config, "query", config_env(topo, &svc)));
        query.push(app_deployment(
            &name,
            "query",
            replicas,
            Kind::Query,
            &config,
        ));
    }
    query.push(service(
        "query",
        "query",
        &[("http", Kind::Query.container_port())],
    ));
    let mut projection = Vec::new();
    if let Some(svc) = first(Kind::Projection) {
        projection.push(config_map(
            "projection-config",
            "projection",
            config_env(topo, &svc),
        ));
        projection.push(app_deployment(
            "projection",
            "projection",
            1,
            Kind::Projection,
            "projection-config",
        ));
        projection.push(service(
            "projection",
            "projection",
            &[("http", Kind::Projection.container_port())],
        ));
    }
    let nginx = vec![
        config_map(
            "nginx-config",
            "nginx",
            json!({"nginx.conf": topo.nginx_conf(Target::Kube, None)}),
        ),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("nginx", "nginx"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx", "part-of": "reporting"}},
                    "spec": {
                        "securityContext": pod_security(Kind::Nginx),
                        "containers": [{
                            "name": "nginx",
                            "image": NGINX_IMAGE,
                            "command": ["nginx", "-c", "/etc/nginx/conf/nginx.conf"],
                            "ports": [{"containerPort": 8080}, {"containerPort": 8090}],
                            // Ready when reads pass through to a query instance; alive while
                            // it accepts connections (a query outage must not restart nginx).
                            "readinessProbe": http_probe("/health", 8090),
                            "livenessProbe": tcp_probe(8080),
                            "resources": resources(Kind::Nginx),
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/nginx/conf", "readOnly": true}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "nginx-config"}}],
                    },
                },
            },
        }),
        service("nginx", "nginx", &[("writes", 8080), ("reads", 8090)]),
    ];
    vec![
        ("databases.yaml".into(), databases),
        ("redis.yaml".into(), redis),
        ("pgbouncer.yaml".into(), pgbouncer),
        ("command.yaml".into(), command),
        ("query.yaml".into(), query),
        ("projection.yaml".into(), projection),
        ("nginx.yaml".into(), nginx),
    ]
}

/// Block-style YAML for a JSON value, through `serde_norway` (a maintained serde YAML
/// emitter): keys in `Value`'s order (sorted), strings quoted wherever YAML would otherwise
/// read them as another type.
///
/// `serde_norway` quotes for YAML 1.2, where `yes`, `no`, `on`, `off` are plain strings. The
/// readers of these files are YAML 1.1 (Compose v1 through PyYAML, Kubernetes through
/// go-yaml), which read them as booleans: `redis-server --appendonly yes` became
/// `--appendonly True` and both tools rejected the file. Such strings are therefore marked
/// before emitting and single-quoted after; the marker cannot occur in our own values.
pub fn to_yaml(v: &Value) -> Result<String> {
    let yaml = serde_norway::to_string(&mark_yaml11_scalars(v)).context("render YAML")?;
    Ok(yaml.replace(YAML11_MARK, "'"))
}

/// Prefix of a string that must come out single-quoted (see [`to_yaml`]).
const YAML11_MARK: &str = "__yaml11_quote__";

/// Every string a YAML 1.1 reader takes for a boolean or null, marked for quoting: a marked
/// string is a plain scalar for the emitter, which ends up as `'yes'`.
fn mark_yaml11_scalars(v: &Value) -> Value {
    const YAML11_SPECIAL: [&str; 10] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    match v {
        Value::String(s) if YAML11_SPECIAL.contains(&s.to_ascii_lowercase().as_str()) => {
            Value::String(format!("{YAML11_MARK}{s}{YAML11_MARK}"))
        }
        Value::Array(items) => Value::Array(items.iter().map(mark_yaml11_scalars).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), mark_yaml11_scalars(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
