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

struct Package {
    /// Debian package name.
    name: &'static str,
    /// Files of which one proves the package is installed.
    probes: &'static [&'static str],
    /// System services the package may have started.
    services: &'static [&'static str],
}

const PACKAGES: &[Package] = &[
    // Probed by `shared::db::server_bin_dir` (any installed major version; 15 preferred) and
    // installed as postgresql-15 where the distribution has it, else its default `postgresql`.
    Package {
        name: "postgresql-15",
        probes: &[],
        services: &["postgresql"],
    },
    Package {
        name: "postgresql-client-15",
        probes: &["/usr/bin/psql"],
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
        .filter(|p| {
            if p.name == "postgresql-15" {
                return shared::db::server_bin_dir().is_none();
            }
            !p.probes.iter().any(|f| Path::new(f).exists())
        })
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
    // PostgreSQL 15 where the distribution has it (Debian 12); elsewhere (Ubuntu ships 14 or
    // 16) its default version, which the code finds the same way.
    let has_15 = cmd!(sh, "apt-cache show postgresql-15")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    let pkgs: Vec<&str> = names
        .iter()
        .map(|n| match (*n, has_15) {
            ("postgresql-15", false) => "postgresql",
            ("postgresql-client-15", false) => "postgresql-client",
            (other, _) => other,
        })
        .collect();
    if !has_15 && pkgs.contains(&"postgresql") {
        println!("postgresql-15 is not in this distribution's archive: installing its default `postgresql`");
    }
    // `env` sets the variable for apt-get itself, also through sudo (which resets the env).
    cmd!(
        sh,
        "{sudo} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q {pkgs...}"
    )
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

/// Full path of a PostgreSQL server tool (15 preferred, see `shared::db::server_bin_dir`),
/// falling back to `$PATH`.
pub fn pg_tool(name: &str) -> String {
    match shared::db::server_bin_dir() {
        Some(dir) if dir.join(name).exists() => dir.join(name).display().to_string(),
        _ => name.to_string(),
    }
}
