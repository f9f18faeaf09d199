//! The rendered Kubernetes manifests (issue 10): valid against the API schemas of a pinned
//! Kubernetes version, offline (`kubernetes-validate`, which ships the schemas; installed with
//! pip when missing), and shaped as an operator expects — readiness (`/ready`) and liveness
//! (`/health`) probes, requests and limits, a non-root security context on every workload,
//! PostgreSQL and Redis as StatefulSets with volume claims, secrets only from a Secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The Kubernetes version the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.34.0";
/// The validator release (its schemas cover [`KUBERNETES_VERSION`]).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";

fn python() -> &'static str {
    "python3"
}

/// Where the validator is installed when Python does not have it: a directory of our own
/// under target/ (`pip install --target`), so no system or user site is touched (and
/// Debian's externally-managed Python does not refuse).
fn private_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kubernetes-validate")
}

fn python_cmd() -> Command {
    let mut c = Command::new(python());
    c.env("PYTHONPATH", private_site());
    c
}

/// Installs the validator when `import kubernetes_validate` fails.
fn ensure_validator() {
    let present = python_cmd()
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return;
    }
    println!(
        "installing {VALIDATOR} with pip into {}",
        private_site().display()
    );
    let out = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(private_site())
        .arg(VALIDATOR)
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install {VALIDATOR}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the validator on `files`: (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = python_cmd()
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn render(dir: &Path) -> Vec<PathBuf> {
    let out = Command::new(XTASK)
        .args([
            "render",
            "--commands",
            "3",
            "--queries",
            "3",
            "--replicas",
            "2",
            "--out",
        ])
        .arg(dir)
        .output()
        .expect("run xtask render");
    assert!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("k8s"))
        .expect("k8s dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn docs(files: &[PathBuf]) -> Vec<Value> {
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("YAML document");
            all.push(value);
        }
    }
    all
}

#[test]
fn manifests_are_valid_for_the_pinned_kubernetes_version() {
    ensure_validator();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = render(dir.path());
    assert_eq!(files.len(), 7, "{files:?}");
    let (ok, text) = validate(&files);
    assert!(ok, "kubernetes-validate {KUBERNETES_VERSION}:\n{text}");
    // The validator rejects what the API server would (so a pass above means something).
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: \"two\"\n  \
         selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: x}}\n    \
         spec: {containers: [{name: x, image: y, livenessprobe: {}}]}\n",
    )
    .expect("write bad manifest");
    let (ok, text) = validate(&[bad]);
    assert!(!ok, "a wrong type and an unknown field must fail:\n{text}");
}

#[test]
fn every_workload_has_probes_resources_and_runs_as_non_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let docs = docs(&render(dir.path()));
    let mut stateful = Vec::new();
    let mut workloads = 0;
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = doc["metadata"]["name"].as_str().unwrap_or("?").to_string();
        if kind == "ConfigMap" {
            let keys: Vec<&String> = doc["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            assert!(
                keys.iter()
                    .all(|k| !k.contains("TOKEN") && !k.contains("PASSWORD")),
                "secret-looking key in ConfigMap {name}: {keys:?}"
            );
        }
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        workloads += 1;
        let pod = &doc["spec"]["template"]["spec"];
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert!(
            sc["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{name}: runAsUser {:?}",
            sc["runAsUser"]
        );
        for c in pod["containers"].as_array().expect("containers") {
            let cname = c["name"].as_str().unwrap_or("?");
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(c[probe].is_object(), "{name}/{cname}: no {probe}");
            }
            for (what, key) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                assert!(
                    c["resources"][what][key].is_string(),
                    "{name}/{cname}: no resources.{what}.{key}"
                );
            }
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"], false,
                "{name}/{cname}: allowPrivilegeEscalation"
            );
            // Our services: ready on /ready (the projection has only /health), alive on /health.
            let image = c["image"].as_str().unwrap_or("");
            if image.starts_with("reporting:") {
                let ready = c["readinessProbe"]["httpGet"]["path"].as_str();
                let live = c["livenessProbe"]["httpGet"]["path"].as_str();
                let want_ready = if cname == "projection" {
                    "/health"
                } else {
                    "/ready"
                };
                assert_eq!(ready, Some(want_ready), "{name}: readiness path");
                assert_eq!(live, Some("/health"), "{name}: liveness path");
            }
            if image.starts_with("reporting-postgres:") || image.starts_with("reporting-redis:") {
                assert_eq!(kind, "StatefulSet", "{name} keeps data: a StatefulSet");
            }
            // Secret environment only from a Secret.
            for env in c["env"].as_array().into_iter().flatten() {
                let var = env["name"].as_str().unwrap_or("");
                if var.contains("TOKEN") || var.contains("PASSWORD") || var.contains("SECRET") {
                    assert!(
                        env["valueFrom"]["secretKeyRef"].is_object() && env.get("value").is_none(),
                        "{name}: {var} not from a Secret"
                    );
                }
            }
        }
        if kind == "StatefulSet" {
            assert!(
                doc["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
                    .is_string(),
                "{name}: no volume claim"
            );
            stateful.push(name);
        }
    }
    stateful.sort();
    assert_eq!(
        stateful,
        [
            "command-db",
            "query-db-primary",
            "query-db-replica1",
            "query-db-replica2",
            "redis"
        ],
        "StatefulSets"
    );
    // command, query-replica1/2 + query, projection, pgbouncer, nginx, 4 DBs, redis.
    assert_eq!(workloads, 12, "workloads");
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("a Secret for the command tokens");
    assert!(
        secret["stringData"]["COMMAND_API_TOKENS"]
            .as_str()
            .is_some_and(|v| v.starts_with("REPLACE-ME")),
        "the Secret holds the placeholder the command service refuses"
    );
}
