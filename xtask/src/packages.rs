//! Installs the system packages the local cluster and the test suite need (PostgreSQL 15,
//! Redis, nginx, PgBouncer, and wrk for `bench --throughput`) on Debian/Ubuntu, saying what it
//! installs.
//!
//! Used by `test` and `up`. Debian's packages start their system services on install; those
//! would hold the ports a developer expects free (5432, 6379, 80, 6432), so after installing we
//! stop them, best-effort.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Where Debian's `postgresql-15` puts its binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

struct Package {
    /// Debian package name.
    name: &'static str,
    /// Files of which one proves the package is installed.
    probes: &'static [&'static str],
    /// System services the package may have started.
    services: &'static [&'static str],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "postgresql-15",
        probes: &["/usr/lib/postgresql/15/bin/initdb"],
        services: &["postgresql"],
    },
    Package {
        name: "postgresql-client-15",
        probes: &["/usr/lib/postgresql/15/bin/psql", "/usr/bin/psql"],
        services: &[],
    },
    Package {
        name: "redis-server",
        probes: &["/usr/bin/redis-server"],
        services: &["redis-server"],
    },
    Package {
        name: "redis-tools",
        probes: &["/usr/bin/redis-cli"],
        services: &[],
    },
    Package {
        name: "nginx",
        probes: &["/usr/sbin/nginx", "/usr/bin/nginx"],
        services: &["nginx"],
    },
    Package {
        name: "pgbouncer",
        probes: &["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"],
        services: &["pgbouncer"],
    },
    // `bench --throughput` drives its closed-loop figures with wrk.
    Package {
        name: "wrk",
        probes: &["/usr/bin/wrk"],
        services: &[],
    },
];

/// Packages whose probe files are all missing.
fn missing() -> Vec<&'static Package> {
    PACKAGES
        .iter()
        .filter(|p| !p.probes.iter().any(|f| Path::new(f).exists()))
        .collect()
}

pub fn is_root() -> bool {
    // No libc call (unsafe is forbidden): root's processes own /proc/self as uid 0.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Installs whatever is missing; a no-op (one line of output) when everything is there.
pub fn ensure_installed(sh: &Shell) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        println!("system packages: postgresql-15, redis, nginx, pgbouncer, wrk present");
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing system packages {} and this is not a Debian/Ubuntu machine (no apt-get); \
             install them by hand",
            names.join(" ")
        );
    }
    println!("installing missing system packages: {}", names.join(" "));
    // `env` is a no-op wrapper, so one command line serves both cases.
    let sudo = if is_root() { "env" } else { "sudo" };
    cmd!(sh, "{sudo} apt-get update -q")
        .run()
        .context("apt-get update failed")?;
    let pkgs = names.clone();
    cmd!(sh, "{sudo} apt-get install -y -q {pkgs...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("apt-get install {} failed", names.join(" ")))?;
    for pkg in &missing {
        for service in pkg.services {
            // Best-effort: in containers there is often no init system at all.
            let _ = cmd!(sh, "{sudo} service {service} stop")
                .quiet()
                .ignore_stderr()
                .ignore_stdout()
                .run();
            let _ = cmd!(sh, "{sudo} update-rc.d {service} disable")
                .quiet()
                .ignore_stderr()
                .ignore_stdout()
                .run();
        }
    }
    let still: Vec<&str> = self::missing().iter().map(|p| p.name).collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

/// Full path of a PostgreSQL 15 tool, falling back to `$PATH`.
pub fn pg_tool(name: &str) -> String {
    let path = Path::new(PG_BIN).join(name);
    if path.exists() {
        path.display().to_string()
    } else {
        name.to_string()
    }
}
