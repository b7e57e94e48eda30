//! Where simulated sessions come from: a seeded, platform-independent random generator and the
//! arrivals of each step with their lengths. Pure, no I/O.

/// SplitMix64: tiny, fast and the same on every platform, so a seed gives the same run
/// everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean, in whole milliseconds, at least 1.
    pub fn exponential_ms(&mut self, mean_ms: f64) -> i64 {
        ((-mean_ms * self.unit().ln()).round() as i64).max(1)
    }
}

/// New sessions step by step: the trace's `arrivals` rate times the step, with the fraction
/// carried to the next step (so a rate of 0.25/s gives one session every 4 s), each with a
/// seeded exponential length. Every run of one simulation sees the same arrivals and lengths.
#[derive(Clone, Debug)]
pub struct Arrivals {
    rng: SplitMix64,
    mean_ms: f64,
    carry: f64,
}

impl Arrivals {
    pub fn new(seed: u64, mean_ms: i64) -> Arrivals {
        Arrivals {
            rng: SplitMix64::new(seed),
            mean_ms: mean_ms as f64,
            carry: 0.0,
        }
    }

    /// Fills `lengths` with the lengths of the sessions arriving in one step of `step_ms` at
    /// `rate` sessions per second.
    pub fn step(&mut self, rate: f64, step_ms: i64, lengths: &mut Vec<i64>) {
        lengths.clear();
        let expected = rate.max(0.0) * step_ms as f64 / 1000.0 + self.carry;
        let count = expected.floor();
        self.carry = expected - count;
        for _ in 0..count as u64 {
            lengths.push(self.rng.exponential_ms(self.mean_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arrivals, SplitMix64};

    #[test]
    fn the_generator_matches_the_reference_splitmix64_sequence() {
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
    }

    #[test]
    fn fractional_rates_carry_over_between_steps() {
        let mut arrivals = Arrivals::new(1, 600_000);
        let mut lengths = Vec::new();
        let mut total = 0;
        for _ in 0..8 {
            arrivals.step(0.25, 1000, &mut lengths);
            total += lengths.len();
        }
        assert_eq!(total, 2);
    }

    #[test]
    fn session_lengths_average_close_to_the_mean() {
        let mut rng = SplitMix64::new(7);
        let n = 20_000;
        let sum: i64 = (0..n).map(|_| rng.exponential_ms(600_000.0)).sum();
        let mean = sum as f64 / f64::from(n);
        assert!((mean - 600_000.0).abs() < 15_000.0, "mean {mean}");
    }
}
