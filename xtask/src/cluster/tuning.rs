//! The PostgreSQL and Redis settings every rendering of the cluster runs with — the local
//! processes of `up`, and the Compose and Kubernetes files — so that what the bench measures
//! locally is what gets deployed. Each one removes a stall found right after a burst of writes
//! (`bench --level stress --burst 5 --runs 3`, README "Open loop").

/// Settings of all four PostgreSQL clusters.
///
/// `wal_init_zero=off`: a burst fills the WAL segments there are, and PostgreSQL then creates
/// new ones (pg_wal went from 2–3 to 5 files per DB over one burst and three stress runs). By
/// default each new 16 MiB segment is first written full of zeros, by the backend that needs
/// it, while it holds the WAL write lock — every commit of that DB waits. On a file system
/// that is not copy-on-write (ext4, xfs: what the images and the local cluster run on),
/// creating the file without zeroing is just as safe.
const ALL: &[(&str, &str)] = &[("wal_init_zero", "off")];

/// Settings of the query DBs only (the read model is derived data).
///
/// `synchronous_commit=off`: each projection batch commits rows, statistics and its stream
/// checkpoint in one transaction (`projection/src/writer.rs`), so a crash can only lose the
/// last few hundred milliseconds of batches *together with their checkpoint*, and the
/// projection re-applies them from the stream. Waiting for the WAL flush of every batch
/// bought nothing but latency: after a burst, COMMITs of the projection took 110–580 ms on
/// the shared machine, on each of the three DBs, all on the propagation path. The command
/// DB, the source of truth, keeps synchronous commits.
///
/// `gin_pending_list_limit=256kB`: the full-text index (`read_reports_search_place`, GIN) collects
/// new entries in a pending list and merges it into the index once it exceeds this limit —
/// inside whichever insert crosses it, i.e. inside a projection batch. At the default 4 MB a
/// merge covers ~6 000 reports (a 5 s burst fills it; at stress, every ~30–50 s), which
/// is seconds on a loaded 2-core machine (33 pending pages took 27 ms to merge at load 29;
/// 512 pages would take ~400 ms, on each of the three DBs). 256 kB bounds a merge to 32 pages.
///
/// `max_parallel_workers_per_gather=0`: every read is a small statement among many running
/// at once on two cores, where a parallel plan only adds the start of its workers: `q=` with
/// a `bbox=` at a million reports took 17 ms with a Gather whose workers found their scan
/// gated off, 3.8 ms without (README "At a million reports"). A worker is a process started
/// per statement; the cores are already busy with the other requests.
///
/// `jit=off`: the planner prices each branch of a statement, also one that a one-time filter
/// keeps from running, and a total above `jit_above_cost` is compiled before it starts:
/// `q=` with a common word in a 2° box, whose index branch never ran, spent 17 ms of 19 ms
/// compiling. No statement of the read path runs long enough to win it back.
const QUERY_DB: &[(&str, &str)] = &[
    ("synchronous_commit", "off"),
    ("gin_pending_list_limit", "256kB"),
    ("max_parallel_workers_per_gather", "0"),
    ("jit", "off"),
];

/// The settings of the PostgreSQL service `name` (`command-db`, `query-db-…`).
pub fn postgres(name: &str) -> Vec<(&'static str, &'static str)> {
    let mut all = ALL.to_vec();
    if name != "command-db" {
        all.extend_from_slice(QUERY_DB);
    }
    all
}

/// The same as `postgres` command-line arguments: `-c name=value` each.
pub fn postgres_args(name: &str) -> Vec<String> {
    postgres(name)
        .into_iter()
        .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")])
        .collect()
}

/// Redis runs without RDB snapshots (`save ""`). The stream is already durable through the
/// AOF (`appendfsync everysec`); the default `save` rules on top of it forked a full snapshot
/// whenever 10 000 changes fell within 60 s — i.e. right after every burst ("10000 changes in
/// 60 seconds. Saving..." in the middle of the first run after one).
pub const REDIS_SAVE: &str = "";

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: &[&str]) {
        assert_eq!(postgres_args(name), expect, "{name}");
    }

    #[test]
    fn the_command_db_keeps_synchronous_commits_and_the_query_dbs_do_not() {
        check("command-db", &["-c", "wal_init_zero=off"]);
        for db in ["query-db-primary", "query-db-replica1"] {
            check(
                db,
                &[
                    "-c",
                    "wal_init_zero=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "gin_pending_list_limit=256kB",
                    "-c",
                    "max_parallel_workers_per_gather=0",
                    "-c",
                    "jit=off",
                ],
            );
        }
    }
}
