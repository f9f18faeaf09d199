//! `cargo xtask render`: deployment files for N/M/R generated from the one topology
//! description in [`crate::topology`]: `docker-compose.yml`, `nginx.conf`, `pgbouncer.ini`,
//! `userlist.txt`, `command.env` and Kubernetes manifests under `k8s/`.
//!
//! Access control is on by default in what is rendered: the command instances read
//! `COMMAND_API_TOKENS` from `command.env` (Compose) or the Secret `command-api-tokens`
//! (Kubernetes). Both hold a placeholder, never a real secret, with a comment saying to replace
//! it; the real token lives only where the deployment runs.
//!
//! Every file goes through [`ensure_file_contents`], so `--check` fails when a committed copy
//! is stale. YAML is produced from `serde_json` values by a small emitter ([`to_yaml`]); keys
//! come out sorted, strings are always quoted, so the output cannot be mis-typed by YAML.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use xshell::Shell;

use crate::topology::{Kind, Service, Target, Topology, COMMAND_DB, COMMAND_SECRET, QUERY_DB};

/// The image the Dockerfile builds; holds all three service binaries.
pub const IMAGE: &str = "reporting:latest";
const POSTGRES_IMAGE: &str = "postgres:15";
const REDIS_IMAGE: &str = "redis:7";
const PGBOUNCER_IMAGE: &str = "edoburu/pgbouncer:latest";
const NGINX_IMAGE: &str = "nginx:1.25";

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
/// 3 query instances and 2 query-DB replicas.
pub fn default_topology() -> Topology {
    Topology::new(3, 3, 2, crate::topology::Ports::default())
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

/// Every generated file: (absolute path, contents). `root` is the repository root, used for
/// the Compose build context.
pub fn render_all(topo: &Topology, out: &Path, root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let context = relative(out, root);
    let mut files = vec![
        (
            out.join("docker-compose.yml"),
            to_yaml(&compose(topo, &context)),
        ),
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
        let mut text = docs.iter().map(to_yaml).collect::<Vec<_>>().join("---\n");
        if name == "command.yaml" {
            text = format!("# The Secret `{COMMAND_SECRET}` below:\n{SECRET_NOTE}{text}");
        }
        files.push((out.join("k8s").join(name), text));
    }
    Ok(files)
}

/// Path from `from` to `to`, both absolute (for `build.context`).
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn env_map(env: &[(&str, String)]) -> Value {
    Value::Object(env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn pg_healthcheck() -> Value {
    json!({"test": ["CMD", "pg_isready", "-U", "postgres"], "interval": "2s", "timeout": "2s", "retries": 30})
}

/// docker-compose.yml: one container per service of the topology.
pub fn compose(topo: &Topology, context: &str) -> Value {
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
                    "environment": {"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": db},
                    "volumes": [format!("{}:/var/lib/postgresql/data", svc.name)],
                    "healthcheck": pg_healthcheck(),
                    "restart": "unless-stopped",
                })
            }
            Kind::Redis => {
                volumes.insert("redis".into(), json!({}));
                json!({
                    "image": REDIS_IMAGE,
                    "command": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"],
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
                        deps.insert("pgbouncer".into(), json!({"condition": "service_started"}));
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
                    "build": {"context": context, "dockerfile": "deploy/Dockerfile"},
                    "command": [crate::supervise::bin_name(svc.kind)],
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
                    .map(|n| (n, json!({"condition": "service_started"})))
                    .collect();
                json!({
                    "image": NGINX_IMAGE,
                    "command": ["nginx", "-c", "/etc/nginx/nginx.conf"],
                    "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro"],
                    "ports": [format!("{0}:8080", topo.ports.write), format!("{0}:8090", topo.ports.read)],
                    "depends_on": deps,
                    "restart": "unless-stopped",
                })
            }
        };
        services.insert(svc.name.clone(), value);
    }
    json!({"name": "reporting", "services": services, "volumes": volumes})
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

fn http_probe(port: u16) -> Value {
    json!({"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5, "failureThreshold": 3})
}

/// A Deployment of our image running one binary; INSTANCE_ID is the pod name.
fn app_deployment(name: &str, app: &str, replicas: u32, kind: Kind, config: &str) -> Value {
    let port = kind.container_port();
    let mut env = vec![
        json!({"name": "INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
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
                    "containers": [{
                        "name": app,
                        "image": IMAGE,
                        "command": [crate::supervise::bin_name(kind)],
                        "ports": [{"containerPort": port}],
                        "envFrom": [{"configMapRef": {"name": config}}],
                        "env": env,
                        "readinessProbe": http_probe(port),
                        "livenessProbe": http_probe(port),
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
                "spec": {"containers": [merge(json!({"name": svc.name, "image": image}), container)]},
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
                "ports": [{"containerPort": 5432}],
                "env": [
                    {"name": "POSTGRES_HOST_AUTH_METHOD", "value": "trust"},
                    {"name": "POSTGRES_DB", "value": db},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 5},
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
                "args": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data"],
                "ports": [{"containerPort": 6379}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
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
                        "containers": [{
                            "name": "pgbouncer",
                            "image": PGBOUNCER_IMAGE,
                            "ports": [{"containerPort": 6432}],
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
                        "containers": [{
                            "name": "nginx",
                            "image": NGINX_IMAGE,
                            "command": ["nginx", "-c", "/etc/nginx/conf/nginx.conf"],
                            "ports": [{"containerPort": 8080}, {"containerPort": 8090}],
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

/// Block-style YAML for a JSON value. Strings are double-quoted JSON strings (valid YAML), or
/// literal blocks when they span lines; keys are quoted unless plainly safe.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn scalar(v: &Value, indent: usize) -> Option<String> {
    Some(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let block = s.ends_with('\n')
                && !s.ends_with("\n\n")
                && !s.starts_with([' ', '\n'])
                && !s.contains(['\t', '\r']);
            if block {
                let pad = " ".repeat(indent + 2);
                let body: String = s
                    .lines()
                    .map(|l| {
                        if l.is_empty() {
                            "\n".to_string()
                        } else {
                            format!("{pad}{l}\n")
                        }
                    })
                    .collect();
                format!("|\n{body}")
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => return None,
    })
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !k.starts_with(['-', '.'])
        && !matches!(
            k,
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                match scalar(v, indent) {
                    Some(s) if s.starts_with('|') => out.push_str(&format!("{pad}{}: {s}", key(k))),
                    Some(s) => out.push_str(&format!("{pad}{}: {s}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        emit(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match scalar(item, indent) {
                    Some(s) if s.starts_with('|') => out.push_str(&format!("{pad}- {s}")),
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        // The first line of the nested block moves up behind the dash.
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other, indent) {
                out.push_str(&pad);
                out.push_str(&s);
                if !s.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
}
