//! The one description of the deployment topology: which services exist for N command
//! instances, M query instances and R query-DB replicas, their ports, addresses, environment
//! and the nginx / PgBouncer configuration between them.
//!
//! `up` (local processes) and `render` (Docker Compose, Kubernetes) both read from here, so a
//! service, upstream or environment variable cannot exist in one deployment and be missing
//! from another. The only difference between targets is how a service is addressed
//! ([`Target`]): `127.0.0.1:<own port>` locally, `<service name>:<standard port>` in containers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The PostgreSQL role every service uses; the local clusters use `trust` auth on 127.0.0.1.
pub const PG_USER: &str = "postgres";
/// Database on `command-db`: reports plus the event log (outbox).
pub const COMMAND_DB: &str = "reports";
/// Database on every query DB: the read model and its checkpoint.
pub const QUERY_DB: &str = "reports_read";
/// Names of the query DBs as the projection and the query service see them (`name=url`).
pub const QUERY_PRIMARY: &str = "query-db-primary";
/// The Kubernetes Secret (and Compose env file stem) holding [`Topology::secret_env`].
pub const COMMAND_SECRET: &str = "command-api-tokens";

/// Where the generated files are used; decides how one service addresses another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Plain processes on this machine: every service on 127.0.0.1 with its own port.
    Local,
    /// Docker Compose: one container per service, addressed by service name.
    Compose,
    /// Kubernetes: command and query instances behind one Service each.
    Kube,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Postgres,
    Redis,
    Pgbouncer,
    Projection,
    Command,
    Query,
    Nginx,
}

impl Kind {
    /// Port inside a container (Compose/Kubernetes), where each service has its own host name.
    pub fn container_port(self) -> u16 {
        match self {
            Kind::Postgres => 5432,
            Kind::Redis => 6379,
            Kind::Pgbouncer => 6432,
            Kind::Projection => 8070,
            Kind::Command => 8081,
            Kind::Query => 8091,
            Kind::Nginx => 8080,
        }
    }

    /// The binary of one of our services (the projection's for third-party kinds, which have
    /// none): the same name locally, in the image and in the rendered files.
    pub fn bin_name(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Query => "query",
            _ => "projection",
        }
    }

    /// Start order: databases and Redis, then PgBouncer, then our services, then nginx.
    pub fn tier(self) -> u8 {
        match self {
            Kind::Postgres | Kind::Redis => 0,
            Kind::Pgbouncer => 1,
            Kind::Projection | Kind::Command | Kind::Query => 2,
            Kind::Nginx => 3,
        }
    }
}

/// Local ports. `--base-port P` shifts all of them by `P - 8080`; each also has its own flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub write: u16,
    pub read: u16,
    /// command-k listens on `command_base + k`.
    pub command_base: u16,
    /// query-k listens on `query_base + k`.
    pub query_base: u16,
    pub projection: u16,
    pub command_db: u16,
    /// query-db-primary; replica r listens on `query_db + r`.
    pub query_db: u16,
    pub redis: u16,
    pub pgbouncer: u16,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            write: 8080,
            read: 8090,
            command_base: 8100,
            query_base: 8200,
            projection: 8070,
            command_db: 5440,
            query_db: 5441,
            redis: 6390,
            pgbouncer: 6440,
        }
    }
}

impl Ports {
    /// Flags of `up` that move one port (without the leading `--`).
    pub const FLAGS: &'static [&'static str] = &[
        "write-port",
        "read-port",
        "command-port-base",
        "query-port-base",
        "projection-port",
        "command-db-port",
        "query-db-port",
        "redis-port",
        "pgbouncer-port",
    ];

    /// All default ports shifted so that the write port is `base`.
    pub fn with_base(base: u16) -> Result<Ports> {
        let offset = i32::from(base) - 8080;
        let d = Ports::default();
        let shift = |p: u16| -> Result<u16> {
            let v = i32::from(p) + offset;
            match u16::try_from(v) {
                Ok(v) if v >= 1024 => Ok(v),
                _ => bail!("--base-port {base} moves port {p} to {v}, outside 1024..=65535"),
            }
        };
        Ok(Ports {
            write: shift(d.write)?,
            read: shift(d.read)?,
            command_base: shift(d.command_base)?,
            query_base: shift(d.query_base)?,
            projection: shift(d.projection)?,
            command_db: shift(d.command_db)?,
            query_db: shift(d.query_db)?,
            redis: shift(d.redis)?,
            pgbouncer: shift(d.pgbouncer)?,
        })
    }

    pub fn set(&mut self, flag: &str, value: u16) -> Result<()> {
        let slot = match flag {
            "write-port" => &mut self.write,
            "read-port" => &mut self.read,
            "command-port-base" => &mut self.command_base,
            "query-port-base" => &mut self.query_base,
            "projection-port" => &mut self.projection,
            "command-db-port" => &mut self.command_db,
            "query-db-port" => &mut self.query_db,
            "redis-port" => &mut self.redis,
            "pgbouncer-port" => &mut self.pgbouncer,
            _ => bail!("unknown port flag --{flag}"),
        };
        *slot = value;
        Ok(())
    }
}

/// One process of the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Seed name: `command-db`, `query-db-replica2`, `command-1`, `nginx`, ...
    pub name: String,
    pub kind: Kind,
    /// Local ports with the `up` flag that moves each (nginx has two).
    pub ports: Vec<(u16, &'static str)>,
}

impl Service {
    pub fn port(&self) -> u16 {
        self.ports.first().map_or(0, |p| p.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub commands: u32,
    pub queries: u32,
    pub replicas: u32,
    pub ports: Ports,
    /// nginx's per-client `limit_req`. On everywhere by default; `up --no-rate-limit` turns it
    /// off for capacity benchmarks, where one client (the load generator) is all the traffic.
    #[serde(default = "rate_limits_on")]
    pub rate_limits: bool,
}

fn rate_limits_on() -> bool {
    true
}

impl Default for Topology {
    fn default() -> Topology {
        Topology::new(1, 1, 0, Ports::default())
    }
}

impl Topology {
    pub fn new(commands: u32, queries: u32, replicas: u32, ports: Ports) -> Topology {
        Topology {
            commands,
            queries,
            replicas,
            ports,
            rate_limits: true,
        }
    }

    /// Rejects topologies whose ports collide or overflow (e.g. 200 command instances).
    pub fn validate(&self) -> Result<()> {
        if self.commands == 0 || self.queries == 0 {
            bail!("a topology needs at least one command and one query instance");
        }
        let mut seen: Vec<(u16, String)> = Vec::new();
        for svc in self.services() {
            for (port, flag) in &svc.ports {
                if let Some((_, other)) = seen.iter().find(|(p, _)| p == port) {
                    bail!(
                        "port {port} is used by both {other} and {}; move one with --{flag}",
                        svc.name
                    );
                }
                seen.push((*port, svc.name.clone()));
            }
        }
        Ok(())
    }

    pub fn query_db_names(&self) -> Vec<String> {
        let mut names = vec![QUERY_PRIMARY.to_string()];
        names.extend((1..=self.replicas).map(|r| format!("query-db-replica{r}")));
        names
    }

    /// Every service in start order.
    pub fn services(&self) -> Vec<Service> {
        let p = &self.ports;
        let svc = |name: String, kind, ports| Service { name, kind, ports };
        let mut out = vec![svc(
            "command-db".into(),
            Kind::Postgres,
            vec![(p.command_db, "command-db-port")],
        )];
        for (i, name) in self.query_db_names().into_iter().enumerate() {
            out.push(svc(
                name,
                Kind::Postgres,
                vec![(port_add(p.query_db, i), "query-db-port")],
            ));
        }
        out.push(svc(
            "redis".into(),
            Kind::Redis,
            vec![(p.redis, "redis-port")],
        ));
        out.push(svc(
            "pgbouncer".into(),
            Kind::Pgbouncer,
            vec![(p.pgbouncer, "pgbouncer-port")],
        ));
        out.push(svc(
            "projection".into(),
            Kind::Projection,
            vec![(p.projection, "projection-port")],
        ));
        for k in 1..=self.commands {
            let port = port_add(p.command_base, k as usize);
            out.push(svc(
                format!("command-{k}"),
                Kind::Command,
                vec![(port, "command-port-base")],
            ));
        }
        for k in 1..=self.queries {
            let port = port_add(p.query_base, k as usize);
            out.push(svc(
                format!("query-{k}"),
                Kind::Query,
                vec![(port, "query-port-base")],
            ));
        }
        out.push(svc(
            "nginx".into(),
            Kind::Nginx,
            vec![(p.write, "write-port"), (p.read, "read-port")],
        ));
        out
    }

    pub fn service(&self, name: &str) -> Option<Service> {
        self.services().into_iter().find(|s| s.name == name)
    }

    /// `host:port` of a service as seen from another service of the same target.
    pub fn addr(&self, svc: &Service, target: Target) -> String {
        match target {
            Target::Local => format!("127.0.0.1:{}", svc.port()),
            Target::Compose | Target::Kube => format!("{}:{}", svc.name, svc.kind.container_port()),
        }
    }

    fn addr_of(&self, name: &str, target: Target) -> String {
        match self.service(name) {
            Some(svc) => self.addr(&svc, target),
            None => format!("{name}:0"),
        }
    }

    /// What `up` prints once the cluster is ready: every user-facing address on this host
    /// (local processes and `up --docker` publish the same ports).
    pub fn endpoints(&self) -> Vec<(String, String)> {
        let mut e = vec![
            (
                "writes (nginx)".to_string(),
                format!("http://127.0.0.1:{}", self.ports.write),
            ),
            (
                "reads (nginx)".to_string(),
                format!("http://127.0.0.1:{}", self.ports.read),
            ),
            (
                "projection metrics".to_string(),
                format!("http://127.0.0.1:{}/metrics", self.ports.projection),
            ),
            ("command-db".to_string(), self.command_db_url(Target::Local)),
            ("redis".to_string(), self.redis_url(Target::Local)),
            (
                "pgbouncer (primary)".to_string(),
                self.query_primary_pooled_url(Target::Local),
            ),
        ];
        for db in self.query_db_names() {
            e.push((db.clone(), self.query_db_url(&db, Target::Local)));
        }
        e
    }

    pub fn command_db_url(&self, target: Target) -> String {
        format!(
            "postgres://{PG_USER}@{}/{COMMAND_DB}",
            self.addr_of("command-db", target)
        )
    }

    pub fn redis_url(&self, target: Target) -> String {
        format!("redis://{}/", self.addr_of("redis", target))
    }

    /// A query DB reached directly (not through PgBouncer).
    pub fn query_db_url(&self, db: &str, target: Target) -> String {
        format!(
            "postgres://{PG_USER}@{}/{QUERY_DB}",
            self.addr_of(db, target)
        )
    }

    /// The primary query DB through PgBouncer (transaction pooling).
    pub fn query_primary_pooled_url(&self, target: Target) -> String {
        format!(
            "postgres://{PG_USER}@{}/{QUERY_DB}",
            self.addr_of("pgbouncer", target)
        )
    }

    /// `QUERY_DATABASE_URLS` for query instance `k`: replica k first while there is one, else
    /// the primary through PgBouncer; then the rest as fail-over candidates.
    pub fn query_urls_for(&self, k: u32, target: Target) -> String {
        let primary = format!("{QUERY_PRIMARY}={}", self.query_primary_pooled_url(target));
        let replica = |r: u32| {
            let name = format!("query-db-replica{r}");
            format!("{name}={}", self.query_db_url(&name, target))
        };
        let mut urls = Vec::new();
        if k >= 1 && k <= self.replicas {
            urls.push(replica(k));
            urls.push(primary);
            urls.extend((1..=self.replicas).filter(|r| *r != k).map(replica));
        } else {
            urls.push(primary);
            urls.extend((1..=self.replicas).map(replica));
        }
        urls.join(",")
    }

    /// Every query DB directly, by seed name: the projection's `QUERY_DATABASE_URLS` and the
    /// query instances' `QUERY_DIRECT_URLS`.
    pub fn direct_query_urls(&self, target: Target) -> String {
        self.query_db_names()
            .iter()
            .map(|db| format!("{db}={}", self.query_db_url(db, target)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Environment of one of our services (empty for third-party ones).
    pub fn env(&self, svc: &Service, target: Target) -> Vec<(&'static str, String)> {
        let port = match target {
            Target::Local => svc.port(),
            Target::Compose | Target::Kube => svc.kind.container_port(),
        };
        let mut env = vec![
            ("INSTANCE_ID", svc.name.clone()),
            ("PORT", port.to_string()),
        ];
        match svc.kind {
            Kind::Command => {
                env.push(("COMMAND_DATABASE_URL", self.command_db_url(target)));
                env.push(("REDIS_URL", self.redis_url(target)));
            }
            Kind::Query => {
                let k = svc.name.trim_start_matches("query-").parse().unwrap_or(0);
                env.push(("QUERY_DATABASE_URLS", self.query_urls_for(k, target)));
                // The cache fence and the point readers need sessions, which PgBouncer's
                // transaction pooling does not keep: every DB directly.
                env.push(("QUERY_DIRECT_URLS", self.direct_query_urls(target)));
            }
            Kind::Projection => {
                // Its operator subcommands (`projection rebuild`, `check-sync`) read the
                // command DB, so every deployment can run them in the projection's container.
                env.push(("COMMAND_DATABASE_URL", self.command_db_url(target)));
                env.push(("REDIS_URL", self.redis_url(target)));
                env.push(("QUERY_DATABASE_URLS", self.direct_query_urls(target)));
            }
            Kind::Postgres | Kind::Redis | Kind::Pgbouncer | Kind::Nginx => return Vec::new(),
        }
        env
    }

    /// Secret environment of a kind of service: names only, never in `env` nor in any
    /// generated file. The local supervisor fills them from the state directory (`up --auth`),
    /// Compose from `command.env`, Kubernetes from the Secret [`COMMAND_SECRET`].
    pub fn secret_env(kind: Kind) -> &'static [&'static str] {
        match kind {
            // Comma-separated bearer tokens; when set, POST/PUT/DELETE need one of them.
            Kind::Command => &["COMMAND_API_TOKENS"],
            _ => &[],
        }
    }

    /// Kubernetes groups of query instances that share one `QUERY_DATABASE_URLS`: one
    /// Deployment per replica-reading instance, and one for all primary readers.
    /// Returns (deployment name, replicas, instance number whose env the group uses).
    pub fn query_groups(&self) -> Vec<(String, u32, u32)> {
        let on_replicas = self.replicas.min(self.queries);
        let mut groups: Vec<(String, u32, u32)> = (1..=on_replicas)
            .map(|k| (format!("query-replica{k}"), 1, k))
            .collect();
        if self.queries > on_replicas {
            groups.push((
                "query".to_string(),
                self.queries - on_replicas,
                self.queries,
            ));
        }
        groups
    }

    /// nginx.conf: writes on the write port to the command instances (least connections),
    /// reads on the read port to the query instances; passive health checks, keep-alive
    /// upstream connections, and a retry on another instance only for idempotent requests
    /// (nginx never retries POST/PATCH unless `non_idempotent` is set, which it is not).
    /// Hardened: per-client rate limits ([`WRITE_LIMIT`], [`READ_LIMIT`]), a 64 KiB body
    /// limit, upstream timeouts, no version in `Server`, and nginx's own errors (429, 413,
    /// 502/504 → 503) as JSON in the services' envelope.
    ///
    /// `local_dir` is the state directory for pid and temp paths of a local run; containers
    /// keep nginx's defaults.
    pub fn nginx_conf(&self, target: Target, local_dir: Option<&Path>) -> String {
        let (commands, queries): (Vec<String>, Vec<String>) = match target {
            Target::Kube => (
                vec![format!("command:{}", Kind::Command.container_port())],
                vec![format!("query:{}", Kind::Query.container_port())],
            ),
            Target::Local | Target::Compose => {
                let of = |kind| {
                    self.services()
                        .iter()
                        .filter(|s| s.kind == kind)
                        .map(|s| self.addr(s, target))
                        .collect()
                };
                (of(Kind::Command), of(Kind::Query))
            }
        };
        let (write_listen, read_listen) = match target {
            Target::Local => (
                format!("127.0.0.1:{}", self.ports.write),
                format!("127.0.0.1:{}", self.ports.read),
            ),
            Target::Compose | Target::Kube => ("8080".to_string(), "8090".to_string()),
        };
        let mut c = String::new();
        c.push_str("# Generated by `cargo xtask` from xtask/src/topology.rs; do not edit.\n");
        c.push_str("daemon off;\nworker_processes auto;\nerror_log stderr warn;\n");
        match local_dir {
            Some(dir) => {
                let _ = writeln!(c, "pid {};", dir.join("nginx.pid").display());
            }
            None => c.push_str("pid /tmp/nginx.pid;\n"),
        }
        c.push_str("\nevents {\n    worker_connections 4096;\n}\n\nhttp {\n");
        c.push_str("    access_log off;\n");
        if let Some(dir) = local_dir {
            for (directive, sub) in [
                ("client_body_temp_path", "client_body"),
                ("proxy_temp_path", "proxy"),
                ("fastcgi_temp_path", "fastcgi"),
                ("uwsgi_temp_path", "uwsgi"),
                ("scgi_temp_path", "scgi"),
            ] {
                let _ = writeln!(
                    c,
                    "    {directive} {};",
                    dir.join("tmp").join(sub).display()
                );
            }
        }
        c.push_str(
            "    # No version in the Server header or in error pages.\n    server_tokens off;\n",
        );
        c.push_str(
            "    # The services' own limit: a bigger body is refused here (413, JSON) before it\n    \
             # reaches an instance.\n    client_max_body_size 64k;\n",
        );
        let _ = write!(
            c,
            "    # Per-client rate limits, far above one client's `bench --level stress`\n    \
             # ({STRESS_WRITES} writes/s + {STRESS_READS} reads/s), so that only abuse is refused \
             (429, JSON).\n    \
             limit_req_zone $binary_remote_addr zone=writes:10m rate={}r/s;\n    \
             limit_req_zone $binary_remote_addr zone=reads:10m rate={}r/s;\n    \
             limit_req_status 429;\n\n",
            WRITE_LIMIT.rate, READ_LIMIT.rate
        );
        upstream(&mut c, "command_upstream", Some("least_conn"), &commands);
        // Reads spread round-robin so every query instance (and its DB) takes its share.
        upstream(&mut c, "query_upstream", None, &queries);
        let (writes, reads) = if self.rate_limits {
            (Some(WRITE_LIMIT), Some(READ_LIMIT))
        } else {
            c.push_str("    # Rate limits off (`up --no-rate-limit`): capacity benchmarks only.\n");
            (None, None)
        };
        server(&mut c, &write_listen, "command_upstream", "writes", writes);
        server(&mut c, &read_listen, "query_upstream", "reads", reads);
        c.push_str("}\n");
        c
    }

    /// pgbouncer.ini: transaction pooling in front of the query DBs. `reports_read` is the
    /// primary (what query instances use); `reports_read_replicaN` reach the replicas.
    /// `local_dir` holds the auth file of a local run.
    pub fn pgbouncer_ini(&self, target: Target, local_dir: Option<&Path>) -> String {
        let mut c = String::new();
        c.push_str("; Generated by `cargo xtask` from xtask/src/topology.rs; do not edit.\n");
        c.push_str("[databases]\n");
        for db in self.query_db_names() {
            let alias = match db.strip_prefix("query-db-") {
                Some("primary") | None => QUERY_DB.to_string(),
                Some(replica) => format!("{QUERY_DB}_{replica}"),
            };
            let addr = self.addr_of(&db, target);
            let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, "5432"));
            let _ = writeln!(
                c,
                "{alias} = host={host} port={port} dbname={QUERY_DB} user={PG_USER}"
            );
        }
        c.push_str("\n[pgbouncer]\n");
        match target {
            Target::Local => {
                let _ = writeln!(
                    c,
                    "listen_addr = 127.0.0.1\nlisten_port = {}",
                    self.ports.pgbouncer
                );
            }
            Target::Compose | Target::Kube => {
                let _ = writeln!(
                    c,
                    "listen_addr = 0.0.0.0\nlisten_port = {}",
                    Kind::Pgbouncer.container_port()
                );
            }
        }
        // TCP only: no unix socket whose directory would need the right owner.
        c.push_str("unix_socket_dir =\n");
        match local_dir {
            Some(dir) => {
                let _ = writeln!(c, "auth_file = {}", dir.join("userlist.txt").display());
            }
            None => c.push_str("auth_file = /etc/pgbouncer/userlist.txt\n"),
        }
        c.push_str(
            "auth_type = trust\n\
             pool_mode = transaction\n\
             default_pool_size = 5\n\
             max_client_conn = 2000\n\
             ; Clients (the postgres crate, psql) send these; PgBouncer must not reject them.\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             ; Startup options (statement_timeout) are dropped above, so PgBouncer enforces the\n\
             ; timeouts itself: a hung query DB yields an error within seconds, never a pile-up.\n\
             query_timeout = 5\n\
             query_wait_timeout = 5\n\
             server_connect_timeout = 2\n\
             admin_users = postgres\n\
             stats_users = postgres\n",
        );
        c
    }

    /// The PgBouncer auth file: `trust` still requires the user to be listed.
    pub fn pgbouncer_userlist(&self) -> String {
        format!("\"{PG_USER}\" \"\"\n")
    }
}

fn port_add(base: u16, k: usize) -> u16 {
    u16::try_from(usize::from(base) + k).unwrap_or(u16::MAX)
}

fn upstream(c: &mut String, name: &str, balance: Option<&str>, servers: &[String]) {
    let _ = writeln!(c, "    upstream {name} {{");
    if let Some(b) = balance {
        let _ = writeln!(c, "        {b};");
    }
    for s in servers {
        // Passive health check: 3 failures (no answer: `error`/`timeout`; a 503 is an
        // answer and does not count) take an instance out for 10 s.
        let _ = writeln!(c, "        server {s} max_fails=3 fail_timeout=10s;");
    }
    c.push_str("        keepalive 64;\n    }\n\n");
}

/// One client's rate limit on one port: `rate` requests/s sustained, `burst` more at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

/// `bench --level stress` from one client, which the limits must never refuse.
pub const STRESS_WRITES: u32 = 200;
pub const STRESS_READS: u32 = 800;
/// Writes per client: 5x the stress level, so a bench or a busy integration never sees a 429.
pub const WRITE_LIMIT: RateLimit = RateLimit {
    rate: 1000,
    burst: 1000,
};
/// Reads per client: 2.5x the stress level; reads are cheap and come in bursts (page loads).
pub const READ_LIMIT: RateLimit = RateLimit {
    rate: 2000,
    burst: 2000,
};

/// The JSON bodies nginx answers with itself, in the services' envelope.
const NGINX_ERRORS: [(&str, u16, &str); 3] = [
    ("rate_limited", 429, "rate limit exceeded"),
    ("too_large", 413, "request body too large (limit 64 KiB)"),
    ("upstream_unavailable", 503, "upstream unavailable"),
];

fn server(c: &mut String, listen: &str, upstream: &str, zone: &str, limit: Option<RateLimit>) {
    let limit_req = match limit {
        Some(l) => format!("limit_req zone={zone} burst={} nodelay;", l.burst),
        None => "# no limit_req (rate limits off)".to_owned(),
    };
    let _ = write!(
        c,
        "    server {{
        listen {listen};
        {limit_req}
        # nginx's own errors in the services' JSON envelope. An instance's own 4xx/5xx JSON
        # passes through untouched (proxy_intercept_errors off): only what nginx itself
        # answers (429, 413, 502/504 when no instance answers) is replaced.
        proxy_intercept_errors off;
        error_page 429 = @rate_limited;
        error_page 413 = @too_large;
        error_page 502 504 = @upstream_unavailable;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_hide_header X-Powered-By;
            # Another instance only when this one did not answer: `error` (connection refused
            # or reset, nothing or garbage back) and `timeout`, never a POST/PATCH already sent
            # (nginx's default): a retried create could create twice. A 503 with a body is an
            # answer, not a dead upstream: the instance is alive and says the request cannot be
            # served now (a DB down, min_version not reached in its bound). Without `http_503`
            # here nginx passes it on as final and does not count it against `max_fails`, so a
            # healthy instance is never ejected for answering, and a bounded wait is not
            # repeated on every instance.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            # A dead instance is skipped after 1 s; a slow one is cut off after 10 s.
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_send_timeout 10s;
        }}
"
    );
    for (name, status, error) in NGINX_ERRORS {
        let _ = write!(
            c,
            "        location @{name} {{
            default_type application/json;
            add_header X-Instance-ID nginx always;
            return {status} '{{\"success\":false,\"error\":\"{error}\",\"instance\":\"nginx\"}}';
        }}
"
        );
    }
    c.push_str("    }\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(n: u32, m: u32, r: u32) -> Topology {
        Topology::new(n, m, r, Ports::default())
    }

    #[test]
    fn default_ports_match_the_contract() {
        let t = topo(2, 3, 2);
        let port = |name: &str| t.service(name).map(|s| s.ports.clone());
        assert_eq!(port("command-1"), Some(vec![(8101, "command-port-base")]));
        assert_eq!(port("query-3"), Some(vec![(8203, "query-port-base")]));
        assert_eq!(port("query-db-replica2").map(|p| p[0].0), Some(5443));
        assert_eq!(port("nginx").map(|p| (p[0].0, p[1].0)), Some((8080, 8090)));
        assert!(t.validate().is_ok());
    }

    #[test]
    fn query_instance_prefers_its_replica() {
        let t = topo(1, 3, 2);
        let first = |k| {
            t.query_urls_for(k, Target::Local)
                .split(',')
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            first(1),
            [
                "query-db-replica1=postgres://postgres@127.0.0.1:5442/reports_read",
                "query-db-primary=postgres://postgres@127.0.0.1:6440/reports_read",
                "query-db-replica2=postgres://postgres@127.0.0.1:5443/reports_read",
            ]
        );
        assert!(first(2)[0].starts_with("query-db-replica2="));
        assert!(first(3)[0].starts_with("query-db-primary="));
        assert_eq!(first(3).len(), 3);
    }

    #[test]
    fn colliding_ports_are_rejected_with_the_flag() {
        let ports = Ports {
            redis: 5440,
            ..Ports::default()
        };
        let err = Topology::new(1, 1, 0, ports)
            .validate()
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("--redis-port"));
    }

    #[test]
    fn query_groups_cover_every_instance() {
        for (m, r) in [(1, 0), (3, 2), (6, 4), (2, 5)] {
            let t = topo(1, m, r);
            let total: u32 = t.query_groups().iter().map(|g| g.1).sum();
            assert_eq!(total, m, "m={m} r={r}");
        }
    }
}
