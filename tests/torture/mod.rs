//! Shared helpers of the torture tests (`tests/torture_*.rs`): the short mode CI runs and the long
//! mode (`HONE_TORTURE=long`) whose figures README's "Reliability" section quotes, and the line each
//! test prints with its figures.
#![allow(dead_code)]

pub mod pipeline;

/// Whether `HONE_TORTURE=long` asks for the long mode.
pub fn long() -> bool {
    std::env::var("HONE_TORTURE").is_ok_and(|v| v == "long")
}

/// `short` in CI, `long` under `HONE_TORTURE=long`; `HONE_TORTURE_N=<n>` overrides both (to size a
/// run by hand).
pub fn scale(short: usize, long_n: usize) -> usize {
    if let Some(n) = std::env::var("HONE_TORTURE_N").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    if long() {
        long_n
    } else {
        short
    }
}

/// Prints one figures line (`torture <what>: k=v ...`) on stderr; `--nocapture` shows it.
pub fn figures(what: &str, pairs: &[(&str, String)]) {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("torture {what} [{}]: {}", if long() { "long" } else { "short" }, body.join(" "));
}

/// Deterministic pseudo-random numbers (splitmix64) for schedules that must be reproducible from
/// a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from `HONE_TORTURE_SEED`, or the clock (printed by the caller so a failure can be
    /// replayed).
    pub fn seed_from_env() -> u64 {
        std::env::var("HONE_TORTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}
