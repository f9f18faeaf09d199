//! The open-loop schedule of `bench`: every request has an intended send time fixed before the
//! run starts (`start + i / rate`, one stream for writes and one for reads), and which endpoint
//! it hits follows the configured mix exactly (smooth weighted round-robin, not dice, so a
//! 3-second run still has the documented proportions).
//!
//! Latency is measured from these intended times, so a stalled server cannot hide the requests
//! that should have been sent while it stalled (no coordinated omission).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The two independent request streams, each with its own fixed rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Write,
    Read,
}

/// What one request does. Writes go to the write URL, reads to the read URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Create,
    Update,
    Delete,
    List,
    ById,
    ByCategory,
    Stats,
    Health,
    /// SPEC §7.1 reads, only in a mix that asks for them (`--mix extended`).
    Near,
    Search,
    History,
}

impl Endpoint {
    pub const ALL: [Endpoint; 11] = [
        Endpoint::Create,
        Endpoint::Update,
        Endpoint::Delete,
        Endpoint::List,
        Endpoint::ById,
        Endpoint::ByCategory,
        Endpoint::Stats,
        Endpoint::Health,
        Endpoint::Near,
        Endpoint::Search,
        Endpoint::History,
    ];

    /// The row label in the table and the `name` in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Create => "POST /reports",
            Endpoint::Update => "PUT /reports/{id}",
            Endpoint::Delete => "DELETE /reports/{id}",
            Endpoint::List => "GET /reports?page=N",
            Endpoint::ById => "GET /reports/{id}",
            Endpoint::ByCategory => "GET /reports?category=X",
            Endpoint::Stats => "GET /statistics",
            Endpoint::Health => "GET /health",
            Endpoint::Near => "GET /reports?near=LAT,LNG",
            Endpoint::Search => "GET /reports?q=WORDS",
            Endpoint::History => "GET /reports/{id}/history",
        }
    }

    pub fn side(self) -> Side {
        match self {
            Endpoint::Create | Endpoint::Update | Endpoint::Delete => Side::Write,
            _ => Side::Read,
        }
    }
}

/// Writes: create 60 %, status/category change 30 %, delete 10 %. Updates and deletes only
/// touch reports this run created, so the bench never damages data it did not make.
pub const WRITE_MIX: [(Endpoint, u32); 3] = [
    (Endpoint::Create, 60),
    (Endpoint::Update, 30),
    (Endpoint::Delete, 10),
];

/// The read mix in percent. The default is SPEC §6's exactly (list 40, by id 20, by category
/// 25, statistics 10, health 5) and leaves the second edition's reads out, so the original
/// levels keep measuring what they always measured; [`Mix::EXTENDED`] adds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    pub list: u32,
    pub id: u32,
    pub category: u32,
    pub stats: u32,
    pub health: u32,
    pub near: u32,
    pub q: u32,
    pub history: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix::ORIGINAL
    }
}

impl Mix {
    /// SPEC §6's read mix.
    pub const ORIGINAL: Mix = Mix {
        list: 40,
        id: 20,
        category: 25,
        stats: 10,
        health: 5,
        near: 0,
        q: 0,
        history: 0,
    };

    /// `--mix extended`: SPEC §6's mix scaled to 80 %, plus near 8, q 7, history 5 — about
    /// the share a civic app's map, search box and report page would add.
    pub const EXTENDED: Mix = Mix {
        list: 32,
        id: 16,
        category: 20,
        stats: 8,
        health: 4,
        near: 8,
        q: 7,
        history: 5,
    };

    /// The valid keys, for messages and the help.
    pub const KEYS: &'static str = "list, id, category, stats, health, near, q, history";

    /// Parses `original`, `extended` or `list=40,id=20,…,near=8,q=7,history=5`; keys left
    /// out weigh 0.
    pub fn parse(text: &str) -> Result<Mix> {
        match text.trim() {
            "original" => return Ok(Mix::ORIGINAL),
            "extended" => return Ok(Mix::EXTENDED),
            _ => {}
        }
        let mut mix = Mix {
            list: 0,
            id: 0,
            category: 0,
            stats: 0,
            health: 0,
            near: 0,
            q: 0,
            history: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("--mix: `{part}` is not key=weight"))?;
            let value: u32 = value
                .trim()
                .parse()
                .with_context(|| format!("--mix: weight of `{key}` is not a number"))?;
            let slot = match key.trim() {
                "list" => &mut mix.list,
                "id" => &mut mix.id,
                "category" => &mut mix.category,
                "stats" | "statistics" => &mut mix.stats,
                "health" => &mut mix.health,
                "near" => &mut mix.near,
                "q" | "search" => &mut mix.q,
                "history" => &mut mix.history,
                other => {
                    bail!(
                        "--mix: unknown key `{other}`; valid keys: {} (or `original`, `extended`)",
                        Mix::KEYS
                    )
                }
            };
            *slot = value;
        }
        if mix.weights().iter().all(|(_, w)| *w == 0) {
            bail!("--mix: all weights are 0");
        }
        Ok(mix)
    }

    pub fn weights(&self) -> [(Endpoint, u32); 8] {
        [
            (Endpoint::List, self.list),
            (Endpoint::ById, self.id),
            (Endpoint::ByCategory, self.category),
            (Endpoint::Stats, self.stats),
            (Endpoint::Health, self.health),
            (Endpoint::Near, self.near),
            (Endpoint::Search, self.q),
            (Endpoint::History, self.history),
        ]
    }

    /// The weights by key for the JSON report; the second edition's keys only when used, so
    /// an original-mix report reads exactly as before.
    pub fn to_map(&self) -> BTreeMap<String, u32> {
        [
            ("list", self.list),
            ("id", self.id),
            ("category", self.category),
            ("stats", self.stats),
            ("health", self.health),
            ("near", self.near),
            ("q", self.q),
            ("history", self.history),
        ]
        .into_iter()
        .filter(|(k, v)| *v > 0 || !matches!(*k, "near" | "q" | "history"))
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Smooth weighted round-robin (as nginx balances upstreams): over any window of `sum(weights)`
/// picks each endpoint exactly its weight times, evenly interleaved.
#[derive(Clone, Debug)]
pub struct Wrr {
    items: Vec<(Endpoint, i64, i64)>,
    total: i64,
}

impl Wrr {
    pub fn new(weights: &[(Endpoint, u32)]) -> Wrr {
        let items: Vec<_> = weights
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(e, w)| (*e, i64::from(*w), 0))
            .collect();
        let total = items.iter().map(|i| i.1).sum();
        Wrr { items, total }
    }

    pub fn next(&mut self) -> Option<Endpoint> {
        let mut best: Option<usize> = None;
        for i in 0..self.items.len() {
            self.items[i].2 += self.items[i].1;
            if best.is_none_or(|b| self.items[i].2 > self.items[b].2) {
                best = Some(i);
            }
        }
        let b = best?;
        self.items[b].2 -= self.total;
        Some(self.items[b].0)
    }
}

/// The intended send times of both streams, merged in time order.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    duration: Duration,
    write_rps: f64,
    read_rps: f64,
    next_write: u64,
    next_read: u64,
}

impl Schedule {
    pub fn new(start: Instant, duration: Duration, write_rps: f64, read_rps: f64) -> Schedule {
        Schedule {
            start,
            duration,
            write_rps,
            read_rps,
            next_write: 0,
            next_read: 0,
        }
    }

    fn offset(i: u64, rps: f64) -> Option<Duration> {
        (rps > 0.0).then(|| Duration::from_secs_f64(i as f64 / rps))
    }
}

impl Iterator for Schedule {
    type Item = (Side, Instant);

    fn next(&mut self) -> Option<(Side, Instant)> {
        let w = Schedule::offset(self.next_write, self.write_rps).filter(|d| *d < self.duration);
        let r = Schedule::offset(self.next_read, self.read_rps).filter(|d| *d < self.duration);
        let (side, at) = match (w, r) {
            (Some(w), Some(r)) if w <= r => (Side::Write, w),
            (Some(_), Some(r)) => (Side::Read, r),
            (Some(w), None) => (Side::Write, w),
            (None, Some(r)) => (Side::Read, r),
            (None, None) => return None,
        };
        match side {
            Side::Write => self.next_write += 1,
            Side::Read => self.next_read += 1,
        }
        Some((side, self.start + at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_fixed_and_merged() {
        let t0 = Instant::now();
        let s: Vec<_> = Schedule::new(t0, Duration::from_secs(1), 2.0, 4.0).collect();
        assert_eq!(s.len(), 6);
        assert_eq!(s.iter().filter(|(side, _)| *side == Side::Write).count(), 2);
        assert!(s.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(s[s.len() - 1].1 - t0, Duration::from_millis(750));
        assert_eq!(
            Schedule::new(t0, Duration::from_secs(1), 0.0, 0.0).count(),
            0
        );
    }

    #[test]
    fn wrr_keeps_exact_proportions() {
        let check = |weights: &[(Endpoint, u32)], n: usize| {
            let mut wrr = Wrr::new(weights);
            let mut counts = BTreeMap::new();
            for _ in 0..n {
                *counts.entry(wrr.next().unwrap()).or_insert(0u32) += 1;
            }
            for (e, w) in weights.iter().filter(|(_, w)| *w > 0) {
                assert_eq!(counts[e] as usize, *w as usize * n / 100, "{e:?}");
            }
        };
        check(&Mix::ORIGINAL.weights(), 100);
        check(&Mix::ORIGINAL.weights(), 1000);
        check(&Mix::EXTENDED.weights(), 100);
        check(&WRITE_MIX, 100);
        check(&Mix::parse("list=100").unwrap().weights(), 100);
    }

    /// Both mixes are percentages, and the original one is SPEC §6's without the new reads.
    #[test]
    fn mixes_sum_to_100_and_the_original_has_no_new_reads() {
        for mix in [Mix::ORIGINAL, Mix::EXTENDED] {
            assert_eq!(mix.weights().iter().map(|(_, w)| w).sum::<u32>(), 100);
        }
        assert_eq!(
            Mix::ORIGINAL.near + Mix::ORIGINAL.q + Mix::ORIGINAL.history,
            0
        );
        assert!(Mix::EXTENDED.weights().iter().all(|(_, w)| *w > 0));
        assert_eq!(
            Mix::ORIGINAL.to_map().keys().collect::<Vec<_>>(),
            ["category", "health", "id", "list", "stats"]
        );
    }

    #[test]
    fn mix_parses_and_names_bad_keys() {
        assert_eq!(
            Mix::parse("list=40,id=20,category=25,stats=10,health=5").unwrap(),
            Mix::ORIGINAL
        );
        assert_eq!(Mix::parse("original").unwrap(), Mix::ORIGINAL);
        assert_eq!(Mix::parse("extended").unwrap(), Mix::EXTENDED);
        assert_eq!(
            Mix::parse("near=1,q=2,history=3").unwrap().weights()[5..],
            [
                (Endpoint::Near, 1),
                (Endpoint::Search, 2),
                (Endpoint::History, 3)
            ]
        );
        let err = format!("{:#}", Mix::parse("lists=3").unwrap_err());
        assert!(err.contains("unknown key `lists`"), "{err}");
        assert!(Mix::parse("list=x").is_err());
        assert!(Mix::parse("list=0").is_err());
    }
}
