//! `cargo xtask images`: every image the rendered deployment uses, built from one Debian
//! bookworm base with Debian packages only, so it works where no image registry is reachable.
//!
//! Chain: a raw bookworm (`debian:bookworm-slim` when a registry answers, else debootstrap'd
//! here and `docker import`ed as [`RAW`]) → [`BASE`] (`deploy/docker/base`: Debian's archive,
//! no recommends, curl for health checks) → PostgreSQL 15, Redis 7, nginx, PgBouncer and the
//! service image with the three binaries cargo built on the host.
//!
//! Guarantees: the rendered files name only the tags in [`ALL`], which are pinned (the major
//! version each Dockerfile checks, never `latest`); every image runs as a non-root user. Each
//! image carries the hash of its inputs (Dockerfile directory, parent image id, binaries) in
//! [`HASH_LABEL`]; an image whose label matches is reused, so a second `images` (or the
//! Compose test) costs seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::deploy::engine::Engine;

/// The raw Debian bookworm every image descends from (pulled or debootstrap'd, then tagged).
pub const RAW: &str = "reporting-debian:bookworm";
/// What a registry would give us, tried first.
const UPSTREAM_DEBIAN: &str = "debian:bookworm-slim";
/// Our base: [`RAW`] plus apt settings and curl.
pub const BASE: &str = "reporting-base:bookworm";
pub const POSTGRES: &str = "reporting-postgres:15";
pub const REDIS: &str = "reporting-redis:7";
pub const NGINX: &str = "reporting-nginx:1.22";
pub const PGBOUNCER: &str = "reporting-pgbouncer:1.18";
/// The service image: command, query and projection; tagged with the workspace version.
pub const SERVICE: &str = concat!("reporting:", env!("CARGO_PKG_VERSION"));

/// Every image the rendered deployment names (Compose and Kubernetes).
pub const ALL: [&str; 5] = [POSTGRES, REDIS, NGINX, PGBOUNCER, SERVICE];

/// Label holding the hash of an image's inputs; equal hash = the image is up to date.
const HASH_LABEL: &str = "org.laporan-warga.inputs";

/// How long to try pulling [`UPSTREAM_DEBIAN`] before building the base ourselves. A reachable
/// registry answers within seconds; an unreachable one can hang on connect far longer.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the service binaries are staged for the build context (see `.dockerignore`).
const STAGE: &str = "target/image/bin";

/// Overrides the Debian mirror used by debootstrap and inside the images.
const MIRROR_ENV: &str = "XTASK_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The binaries of the service image, as `supervise::bin_name` names them.
const BINARIES: [&str; 3] = ["command", "query", "projection"];

pub struct Images {
    /// Use the binaries already in the bin dir (`XTASK_BIN_DIR`, else target/release) instead
    /// of running `cargo build --release` first.
    pub no_build: bool,
}

impl Images {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let engine = crate::deploy::engine::ensure(sh)?;
        build_all(sh, &engine, !self.no_build)
    }
}

/// Builds (or reuses) every image; `cargo_build` first builds the release binaries.
pub fn build_all(sh: &Shell, engine: &Engine, cargo_build: bool) -> Result<()> {
    let root = sh.current_dir();
    let bins = crate::cluster::supervise::bin_dir(&root);
    if cargo_build && std::env::var_os("XTASK_BIN_DIR").is_none() {
        println!("building release binaries (cargo build --release --bins)");
        cmd!(
            sh,
            "cargo build --release --bins --package command --package query --package projection"
        )
        .run()
        .context("release build of the service binaries failed")?;
    }
    let mirror = std::env::var(MIRROR_ENV).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    raw_base(sh, engine, &mirror)?;
    let docker_dir = root.join("deploy/docker");
    let raw_id = image_id(sh, engine, RAW)?;
    build(
        sh,
        engine,
        BASE,
        &docker_dir.join("base"),
        &docker_dir.join("base"),
        &[("RAW", RAW), ("MIRROR", &mirror)],
        &[raw_id.as_str(), &mirror],
    )?;
    let base_id = image_id(sh, engine, BASE)?;
    for (tag, dir) in [
        (POSTGRES, "postgres"),
        (REDIS, "redis"),
        (NGINX, "nginx"),
        (PGBOUNCER, "pgbouncer"),
    ] {
        let dir = docker_dir.join(dir);
        build(sh, engine, tag, &dir, &dir, &[("BASE", BASE)], &[&base_id])?;
    }
    let staged = stage_binaries(&root, &bins)?;
    build(
        sh,
        engine,
        SERVICE,
        &docker_dir.join("service"),
        &root,
        &[("BASE", BASE)],
        &[&base_id, &staged],
    )?;
    println!("images ready: {}", ALL.join(" "));
    Ok(())
}

/// Makes sure [`RAW`] exists: pulled, or debootstrap'd and imported (saying which).
fn raw_base(sh: &Shell, engine: &Engine, mirror: &str) -> Result<()> {
    let docker = &engine.docker;
    if image_id(sh, engine, RAW).is_ok() {
        println!("base: reusing {RAW}");
        return Ok(());
    }
    let secs = PULL_TIMEOUT.as_secs().to_string();
    let pulled = cmd!(sh, "timeout {secs} {docker} pull {UPSTREAM_DEBIAN}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    if pulled {
        println!("base: pulled {UPSTREAM_DEBIAN}, tagged {RAW}");
        cmd!(sh, "{docker} tag {UPSTREAM_DEBIAN} {RAW}").run()?;
        return Ok(());
    }
    println!(
        "base: {UPSTREAM_DEBIAN} cannot be pulled (no registry answers within {secs}s); \
         building Debian bookworm locally with debootstrap from {mirror}"
    );
    let work = PathBuf::from(format!("/var/tmp/xtask-debootstrap-{}", std::process::id()));
    let result = debootstrap_import(sh, engine, mirror, &work);
    // The tree is ~200 MB of root-owned files; never leave it behind, also on failure.
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn debootstrap_import(sh: &Shell, engine: &Engine, mirror: &str, work: &Path) -> Result<()> {
    let docker = &engine.docker;
    let tree = work.join("rootfs");
    let tar = work.join("rootfs.tar");
    std::fs::create_dir_all(&tree).with_context(|| format!("create {}", tree.display()))?;
    cmd!(sh, "debootstrap --variant=minbase bookworm {tree} {mirror}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("debootstrap of Debian bookworm failed")?;
    // Downloaded .debs and package lists are dead weight in every image built on top.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let _ = cmd!(sh, "find {tree}/{dir} -type f -delete").quiet().run();
    }
    cmd!(sh, "tar -C {tree} -cf {tar} .")
        .quiet()
        .run()
        .context("tar of the debootstrap tree")?;
    cmd!(sh, "{docker} import {tar} {RAW}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("docker import of the debootstrap tree")?;
    println!("base: imported a debootstrap'd bookworm as {RAW}");
    Ok(())
}

/// `docker build` of `tag` unless an image with the same inputs exists.
fn build(
    sh: &Shell,
    engine: &Engine,
    tag: &str,
    dockerfile_dir: &Path,
    context: &Path,
    args: &[(&str, &str)],
    inputs: &[&str],
) -> Result<()> {
    let docker = &engine.docker;
    let mut hash = Fnv::new();
    hash_dir(&mut hash, dockerfile_dir)?;
    for (k, v) in args {
        hash.write(k.as_bytes());
        hash.write(v.as_bytes());
    }
    for input in inputs {
        hash.write(input.as_bytes());
    }
    let hash = format!("{:016x}", hash.0);
    let format = format!("{{{{index .Config.Labels \"{HASH_LABEL}\"}}}}");
    let current = cmd!(sh, "{docker} image inspect --format {format} {tag}")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if current.trim() == hash {
        println!("{tag}: up to date (inputs {hash})");
        return Ok(());
    }
    println!("{tag}: building (inputs {hash})");
    let dockerfile = dockerfile_dir.join("Dockerfile");
    let label = format!("{HASH_LABEL}={hash}");
    let build_args: Vec<String> = args
        .iter()
        .flat_map(|(k, v)| ["--build-arg".to_string(), format!("{k}={v}")])
        .collect();
    cmd!(
        sh,
        "{docker} build --label {label} {build_args...} -f {dockerfile} -t {tag} {context}"
    )
    .env("DOCKER_BUILDKIT", "0")
    .run()
    .with_context(|| format!("docker build of {tag} failed"))?;
    Ok(())
}

/// The image id of `tag`, or an error when it does not exist.
fn image_id(sh: &Shell, engine: &Engine, tag: &str) -> Result<String> {
    let docker = &engine.docker;
    let format = "{{.Id}}";
    let id = cmd!(sh, "{docker} image inspect --format {format} {tag}")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| format!("no image {tag}"))?;
    Ok(id.trim().to_string())
}

/// Hard-links (or copies) the service binaries into [`STAGE`] and returns a fingerprint of
/// them: size and modification time, which cargo changes whenever it rewrites a binary.
fn stage_binaries(root: &Path, bins: &Path) -> Result<String> {
    let stage = root.join(STAGE);
    std::fs::create_dir_all(&stage).with_context(|| format!("create {}", stage.display()))?;
    let mut fingerprint = String::new();
    let mut total = 0u64;
    for name in BINARIES {
        let from = bins.join(name);
        let meta = std::fs::metadata(&from).with_context(|| {
            format!(
                "{} is missing; build it (`cargo build --release --bins`) or point \
                 XTASK_BIN_DIR at the binaries",
                from.display()
            )
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        fingerprint.push_str(&format!("{name}:{}:{mtime};", meta.len()));
        total += meta.len();
        let to = stage.join(name);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
        }
    }
    println!(
        "service image context: {} (the three binaries from {}; .dockerignore keeps out the rest)",
        human(total),
        bins.display()
    );
    Ok(fingerprint)
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn hash_dir(hash: &mut Fnv, dir: &Path) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        hash.write(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or(b""),
        );
        hash.write(&std::fs::read(&path).with_context(|| format!("read {}", path.display()))?);
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable fingerprint of small inputs (no crate for a cache key).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `image:` a rendered file names, for `check`.
    fn images_named(topo: &crate::cluster::topology::Topology) -> Vec<String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let files =
            crate::deploy::render::render_all(topo, dir.path(), dir.path()).expect("render");
        let mut names: Vec<String> = files
            .iter()
            .flat_map(|(_, text)| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("image: ")
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn check(commands: u32, queries: u32, replicas: u32) {
        let topo = crate::cluster::topology::Topology::new(
            commands,
            queries,
            replicas,
            crate::cluster::topology::Ports::default(),
        );
        let named = images_named(&topo);
        let mut expect: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        expect.sort();
        assert_eq!(named, expect, "{commands}/{queries}/{replicas}");
        for image in &named {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{image} has no pinned tag"
            );
        }
    }

    #[test]
    fn rendered_files_name_only_our_pinned_images() {
        check(3, 3, 2);
        check(1, 1, 0);
        check(2, 4, 1);
    }

    #[test]
    fn every_image_runs_as_a_non_root_user() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker");
        for dir in ["postgres", "redis", "nginx", "pgbouncer", "service"] {
            let text = std::fs::read_to_string(root.join(dir).join("Dockerfile"))
                .expect("read Dockerfile");
            let user = text
                .lines()
                .rev()
                .filter_map(|l| l.strip_prefix("USER "))
                .next()
                .unwrap_or("root");
            // Numeric, so Kubernetes can verify runAsNonRoot; never uid 0.
            let uid: Option<u32> = user.split(':').next().and_then(|u| u.trim().parse().ok());
            assert!(uid.is_some_and(|u| u > 0), "{dir} runs as {user}");
        }
    }

    #[test]
    fn inputs_hash_tells_inputs_apart() {
        let h = |parts: &[&[u8]]| {
            let mut f = Fnv::new();
            for p in parts {
                f.write(p);
            }
            f.0
        };
        assert_eq!(h(&[b"a", b"bc"]), h(&[b"a", b"bc"]));
        assert_ne!(h(&[b"ab", b"c"]), h(&[b"a", b"bc"]));
        assert_ne!(h(&[b"a"]), h(&[b"b"]));
    }
}
