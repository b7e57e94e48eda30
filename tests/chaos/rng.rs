//! The soak's schedule draws from the simulator's seeded generator (SplitMix64), so that a seed
//! replays the same faults in the same order with the same durations.

use std::time::Duration;

use drainscaler::simulate::sessions::SplitMix64;

pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n
    }

    /// Uniform in `[lo, hi]` whole seconds.
    pub fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_secs(lo + self.below(hi - lo + 1))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
