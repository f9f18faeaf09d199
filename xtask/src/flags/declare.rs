//! The whole `cargo xtask` command line, declared once: every command, flag, value kind,
//! default and one-line doc. The parser ([`super::args`]) and the help ([`super::help`]) are
//! both read from [`COMMANDS`], so the help cannot drift from what is accepted.

use super::args::{Command, Flag, Kind, AMOUNT, COUNT, NUMBER};
use super::build;

/// Requests per second of one side of the open-loop bench: 0 switches that side off; the
/// ceiling keeps a typo (an extra zero or three) from being taken literally.
const RATE: Kind = Kind::Decimal {
    min: 0.0,
    max: 1_000_000.0,
    above_min: false,
    unit: "requests per second",
};

/// A bench run of up to a day: longer is a typo, and 0 s measures nothing.
const RUN_SECONDS: Kind = Kind::Decimal {
    min: 0.0,
    max: 86_400.0,
    above_min: true,
    unit: "seconds",
};

/// `check-sync --wait`: up to an hour for the projection to catch up; longer means it is stuck.
const WAIT_SECONDS: Kind = Kind::Decimal {
    min: 0.0,
    max: 3_600.0,
    above_min: false,
    unit: "seconds",
};

const UP_FLAGS: &[Flag] = &[
    Flag::new("commands", COUNT, "N", "command instances").required(),
    Flag::new("queries", COUNT, "M", "query instances").required(),
    Flag::new(
        "replicas",
        NUMBER,
        "R",
        "streaming replicas of the query DB (the original deployment has two)",
    )
    .default("2"),
    Flag::switch(
        "detach",
        "return once the cluster is healthy; a `supervise` process keeps it running",
    )
    .short('d'),
    Flag::switch(
        "docker",
        "run it with Docker Compose (images as `cargo xtask images` builds them)",
    ),
    Flag::switch(
        "auth",
        "writes need a bearer token, generated and given to every command instance",
    ),
    Flag::new(
        "base-port",
        Kind::Port,
        "P",
        "shift every default port by P-8080 (a second cluster beside the first)",
    ),
    Flag::switch(
        "no-rate-limit",
        "no nginx limit_req, for capacity benchmarks (one client is all the traffic)",
    ),
    Flag::switch(
        "no-build",
        "use the binaries already built (no cargo build --release)",
    ),
    Flag::switch(
        "no-install",
        "do not install missing PostgreSQL/Redis/nginx/PgBouncer packages",
    ),
    // The defaults shown are `Ports::default()` (a test keeps them equal); they are not filled
    // in by the parser because --base-port moves them.
    Flag::new("write-port", Kind::Port, "PORT", "nginx for writes")
        .otherwise("8080, moved by --base-port"),
    Flag::new("read-port", Kind::Port, "PORT", "nginx for reads")
        .otherwise("8090, moved by --base-port"),
    Flag::new(
        "command-port-base",
        Kind::Port,
        "PORT",
        "command-k listens on PORT+k",
    )
    .otherwise("8100, moved by --base-port"),
    Flag::new(
        "query-port-base",
        Kind::Port,
        "PORT",
        "query-k listens on PORT+k",
    )
    .otherwise("8200, moved by --base-port"),
    Flag::new(
        "projection-port",
        Kind::Port,
        "PORT",
        "the projection's health and metrics",
    )
    .otherwise("8070, moved by --base-port"),
    Flag::new("command-db-port", Kind::Port, "PORT", "the command DB")
        .otherwise("5440, moved by --base-port"),
    Flag::new(
        "query-db-port",
        Kind::Port,
        "PORT",
        "query-db-primary; replica r on PORT+r",
    )
    .otherwise("5441, moved by --base-port"),
    Flag::new("redis-port", Kind::Port, "PORT", "Redis").otherwise("6390, moved by --base-port"),
    Flag::new(
        "pgbouncer-port",
        Kind::Port,
        "PORT",
        "PgBouncer in front of the command DB",
    )
    .otherwise("6440, moved by --base-port"),
];

const RENDER_FLAGS: &[Flag] = &[
    Flag::new("commands", COUNT, "N", "command instances").default("3"),
    Flag::new("queries", COUNT, "M", "query instances").default("3"),
    Flag::new(
        "replicas",
        NUMBER,
        "R",
        "streaming replicas of the query DB",
    )
    .default("2"),
    Flag::new(
        "out",
        Kind::Text,
        "DIR",
        "where the files go (committed there)",
    )
    .default(crate::deploy::render::DEFAULT_OUT),
    Flag::switch(
        "check",
        "write nothing; fail if a file in DIR differs from a fresh rendering",
    ),
];

const SERVICE: Flag = Flag::new(
    "service",
    Kind::Text,
    "SERVICE",
    "the service's name, e.g. query-db-replica1",
)
.required();

const BENCH_FLAGS: &[Flag] = &[
    Flag::new(
        "level",
        Kind::Text,
        "LEVEL",
        "light|medium|heavy|extreme|stress (SPEC §6 rates) or max (steps until p99 > 50 ms)",
    )
    .otherwise("light, unless --write-rps/--read-rps"),
    Flag::new(
        "write-rps",
        RATE,
        "W",
        "writes per second instead of a level",
    ),
    Flag::new("read-rps", RATE, "R", "reads per second instead of a level"),
    Flag::new("duration", RUN_SECONDS, "S", "seconds per run")
        .otherwise("10; 5 per step of max and per figure of --throughput"),
    Flag::new(
        "mix",
        Kind::Text,
        "MIX",
        "read weights: original, extended (adds near, q, history) or key=weight,… \
         (keys list id category stats health near q history)",
    )
    .otherwise("original: list=40,id=20,category=25,stats=10,health=5"),
    Flag::new("write-url", Kind::Text, "URL", "where writes go")
        .otherwise("the local cluster's nginx"),
    Flag::new("read-url", Kind::Text, "URL", "where reads go")
        .otherwise("the local cluster's nginx"),
    Flag::new(
        "query-db",
        Kind::NamedUrl,
        "NAME=URL",
        "a query DB to measure propagation lag on",
    )
    .otherwise("the local cluster's, when it is the target")
    .many(),
    Flag::switch("no-lag", "do not measure propagation lag"),
    Flag::new("out", Kind::Text, "FILE", "the JSON report")
        .otherwise("target/bench/<time>-<level>.json"),
    Flag::new(
        "compare",
        Kind::Text,
        "OLD.json",
        "print the change against an earlier report",
    ),
    Flag::new("token", Kind::Text, "T", "bearer token for writes").otherwise("$XTASK_TOKEN"),
    Flag::new(
        "connections",
        COUNT,
        "N",
        "keep-alive connections per side (writes, reads), fixed for the run",
    )
    .otherwise("64"),
    Flag::new(
        "burst",
        RUN_SECONDS,
        "S",
        "first a closed-loop POST burst of S seconds, then wait until the projection drained it",
    ),
    Flag::new(
        "runs",
        COUNT,
        "N",
        "N runs of the level back to back, each reported, then a summary",
    )
    .otherwise("1"),
    Flag::switch(
        "throughput",
        "closed loop instead (wrk -t1 -c64): pgbench -S ceiling, reads, POST, projection, RSS",
    ),
    Flag::new(
        "scale",
        AMOUNT,
        "N",
        "the query service's statements at N reports in a scratch DB: EXPLAIN and latency",
    ),
];

/// Every command, in the order the help lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "test",
        doc: "install what is missing, fmt + clippy + cargo test (the whole gate)",
        positional: None,
        flags: &[],
        notes: "",
        hidden: false,
        build: build::test,
    },
    Command {
        name: "up",
        doc: "run the whole topology as local processes (or containers with --docker)",
        positional: None,
        flags: UP_FLAGS,
        notes: "$XTASK_STATE_DIR moves the cluster's data and logs (.cluster) elsewhere.",
        hidden: false,
        build: build::up,
    },
    Command {
        name: "supervise",
        doc: "the detached supervisor that `up --detach` starts",
        positional: None,
        flags: &[],
        notes: "",
        hidden: true,
        build: build::supervise,
    },
    Command {
        name: "down",
        doc: "stop everything",
        positional: None,
        flags: &[Flag::switch("volumes", "also delete the cluster's data").short('v')],
        notes: "",
        hidden: false,
        build: build::down,
    },
    Command {
        name: "status",
        doc: "pid, address, health, checkpoints and lag of every service",
        positional: None,
        flags: &[Flag::switch("json", "print JSON instead of the table")],
        notes: "",
        hidden: false,
        build: build::status,
    },
    Command {
        name: "logs",
        doc: "follow the log file(s)",
        positional: Some(
            Flag::new("service", Kind::Text, "SERVICE", "only this service's log").otherwise("all"),
        ),
        flags: &[],
        notes: "",
        hidden: false,
        build: build::logs,
    },
    Command {
        name: "stop",
        doc: "stop one service by its name",
        positional: Some(SERVICE),
        flags: &[],
        notes: "",
        hidden: false,
        build: build::stop,
    },
    Command {
        name: "start",
        doc: "start one stopped service by its name",
        positional: Some(SERVICE),
        flags: &[],
        notes: "",
        hidden: false,
        build: build::start,
    },
    Command {
        name: "restart",
        doc: "restart one service by its name",
        positional: Some(SERVICE),
        flags: &[],
        notes: "",
        hidden: false,
        build: build::restart,
    },
    Command {
        name: "render",
        doc: "docker-compose.yml, nginx.conf, pgbouncer.ini and k8s/ for a topology",
        positional: None,
        flags: RENDER_FLAGS,
        notes: "",
        hidden: false,
        build: build::render,
    },
    Command {
        name: "images",
        doc: "every image of the deployment from one Debian bookworm base",
        positional: None,
        flags: &[Flag::switch(
            "no-build",
            "use the binaries already built (no cargo build --release)",
        )],
        notes: "Services, PostgreSQL 15, Redis 7, nginx, PgBouncer; installs and starts the \
                Docker engine if needed.",
        hidden: false,
        build: build::images,
    },
    Command {
        name: "drill",
        doc: "fault drills under load on a separate cluster; 0 writes lost or it fails",
        positional: None,
        flags: &[
            Flag::switch(
                "short",
                "debug binaries and short phases (what `test` runs)",
            ),
            Flag::switch("keep", "leave the drill's cluster running afterwards"),
            Flag::new(
                "base-port",
                Kind::Port,
                "P",
                "the drill cluster's base port, far from the default cluster's 8080",
            )
            .default("28080"),
        ],
        notes: "Kills, hangs and restarts one service at a time and checks that every \
                acknowledged write arrived everywhere; JSON to target/drill/.",
        hidden: false,
        build: build::drill,
    },
    Command {
        name: "rebuild",
        doc: "rebuild one query DB's read model from the command DB while the system serves",
        positional: Some(Flag::new("db", Kind::Text, "NAME", "the same as --db NAME")),
        flags: &[Flag::new(
            "db",
            Kind::Text,
            "NAME",
            "query-db-primary or query-db-replicaK",
        )
        .required()],
        notes: "",
        hidden: false,
        build: build::rebuild,
    },
    Command {
        name: "seed",
        doc: "create N realistic reports, all categories and statuses",
        positional: Some(Flag::new("count", AMOUNT, "N", "how many reports").default("100")),
        flags: &[
            Flag::new("write-url", Kind::Text, "URL", "where writes go")
                .otherwise("the local cluster's nginx"),
            Flag::new("token", Kind::Text, "T", "bearer token for writes")
                .otherwise("$XTASK_TOKEN"),
        ],
        notes: "",
        hidden: false,
        build: build::seed,
    },
    Command {
        name: "check-sync",
        doc: "compare the command DB with every query DB, statistics included",
        positional: None,
        flags: &[
            Flag::new("command-db", Kind::Text, "URL", "the command DB")
                .otherwise("the local cluster's"),
            Flag::new(
                "query-db",
                Kind::NamedUrl,
                "NAME=URL",
                "a query DB to compare",
            )
            .otherwise("the local cluster's")
            .many(),
            Flag::new(
                "wait",
                WAIT_SECONDS,
                "S",
                "keep checking up to S seconds until in sync",
            ),
        ],
        notes: "",
        hidden: false,
        build: build::check_sync,
    },
    Command {
        name: "bench",
        doc: "open-loop load, latency from intended send time, JSON to target/bench/",
        positional: None,
        flags: BENCH_FLAGS,
        notes: "--throughput takes only --duration, --out and --token (JSON to \
                target/bench/<time>-throughput.json). --level and --write-rps/--read-rps exclude \
                each other.",
        hidden: false,
        build: build::bench,
    },
];
