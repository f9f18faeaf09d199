//! A small time-boxed mutation fuzzer for property tests that must run on the stable
//! toolchain in CI (cargo-fuzz needs nightly, which this project cannot fetch). Deterministic
//! per seed, so a failure prints the seed and the input that broke it.

use std::time::{Duration, Instant};

/// xorshift64*: tiny, fast, good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that tend to matter to JSON, HTTP and our validators.
const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\u001b",
    b"\\u0085",
    b"\x00",
    b"\x1b",
    b"\x7f",
    b"\xc2\x85",
    b"%1b",
    b"%7f",
    b"+5",
    b"\\ud800",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"99999999999999999999",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xae",
    b"%",
    b"%zz",
    b"%00",
    b"=",
    b"&",
    b"+",
    b"title",
    b"status",
    b"category",
    b"description",
    b"kebersihan",
    b"in_progress",
    b"ReportCreated",
    b"ReportDeleted",
];

/// Returns a mutated copy of `input`: a handful of byte flips, insertions of interesting
/// tokens, deletions, duplications and splices.
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let token = rng.pick(INTERESTING);
                out.splice(i..i, token.iter().copied());
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                out.drain(i..i + n);
            }
            3 if len > 0 && len < 70_000 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk: Vec<u8> = out[i..i + n].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            4 => {
                let i = rng.below(len + 1);
                let b = (rng.next_u64() & 0xff) as u8;
                out.insert(i, b);
            }
            _ => {
                let n = rng.below(len + 1);
                out.truncate(n);
            }
        }
    }
    out
}

/// Runs `target` on mutations of `corpus` for `budget`, starting from a fixed seed.
/// Returns how many inputs ran. A panic inside `target` fails the test with the input shown.
pub fn run(name: &str, budget: Duration, corpus: &[Vec<u8>], mut target: impl FnMut(&[u8])) -> u64 {
    let seed = 0x5eed_0000_0000_0001u64 ^ name.len() as u64;
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let base = if corpus.is_empty() {
            &[][..]
        } else {
            &rng.pick(corpus)[..]
        };
        let input = mutate(&mut rng, base);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if result.is_err() {
            panic!(
                "fuzz target {name} panicked after {runs} runs (seed {seed:#x}) on input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        runs += 1;
    }
    runs
}

/// The per-target budget: `FUZZ_SECONDS` (CI sets 60), default 5 for a quick local run.
pub fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}
