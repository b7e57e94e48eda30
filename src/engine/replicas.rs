//! Replica math per metric, with the HPA's tolerance. Pure, no I/O.

use crate::policy::MetricTarget;

/// The replica count one metric asks for, given the serving count now.
///
/// `AverageValue`: `ceil(value / averageValue)`; `Value`: `ceil(current * value / target)`.
/// Within `tolerance` of the current usage ratio the current count is kept. From zero there
/// is no ratio to keep, and a `Value` target counts as if one replica were running.
pub fn metric_replicas(target: MetricTarget, value: f64, current: u32, tolerance: f64) -> u32 {
    let value = value.max(0.0);
    let current_f = f64::from(current);
    let (ratio, wanted) = match target {
        MetricTarget::AverageValue(per_replica) => {
            let ratio = if current == 0 {
                f64::INFINITY
            } else {
                value / (per_replica * current_f)
            };
            (ratio, value / per_replica)
        }
        MetricTarget::Value(total) => {
            let ratio = value / total;
            (ratio, ratio * current_f.max(1.0))
        }
    };
    if current > 0 && (1.0 - ratio).abs() <= tolerance {
        return current;
    }
    ceil_u32(wanted)
}

/// Rounds up, with a little slack for floating-point noise (`3.0000000001` is 3).
fn ceil_u32(v: f64) -> u32 {
    let rounded = (v - 1e-9).ceil();
    if rounded <= 0.0 {
        0
    } else if rounded >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        rounded as u32
    }
}

#[cfg(test)]
mod tests {
    use super::metric_replicas;
    use crate::policy::MetricTarget::{AverageValue, Value};

    #[test]
    fn average_value_divides_the_total_by_the_per_replica_target() {
        assert_eq!(metric_replicas(AverageValue(100.0), 950.0, 5, 0.1), 10);
        assert_eq!(metric_replicas(AverageValue(100.0), 1000.0, 5, 0.1), 10);
        assert_eq!(metric_replicas(AverageValue(100.0), 0.0, 5, 0.1), 0);
    }

    #[test]
    fn within_tolerance_the_current_count_is_kept() {
        // 5 replicas at 105 each is a ratio of 1.05: inside 0.1.
        assert_eq!(metric_replicas(AverageValue(100.0), 525.0, 5, 0.1), 5);
        // 1.11 is outside: ceil(555 / 100) = 6.
        assert_eq!(metric_replicas(AverageValue(100.0), 555.0, 5, 0.1), 6);
        // 0.89 is outside on the way down: ceil(445 / 100) = 5, and so 5.
        assert_eq!(metric_replicas(AverageValue(100.0), 445.0, 5, 0.1), 5);
        assert_eq!(metric_replicas(AverageValue(100.0), 390.0, 5, 0.1), 4);
    }

    #[test]
    fn value_targets_scale_the_current_count_by_the_usage_ratio() {
        assert_eq!(metric_replicas(Value(50.0), 100.0, 4, 0.1), 8);
        assert_eq!(metric_replicas(Value(50.0), 52.0, 4, 0.1), 4);
        assert_eq!(metric_replicas(Value(50.0), 20.0, 4, 0.1), 2);
    }

    #[test]
    fn from_zero_the_tolerance_does_not_apply() {
        assert_eq!(metric_replicas(AverageValue(100.0), 50.0, 0, 0.1), 1);
        assert_eq!(metric_replicas(Value(50.0), 100.0, 0, 0.1), 2);
        assert_eq!(metric_replicas(AverageValue(100.0), 0.0, 0, 0.1), 0);
    }

    #[test]
    fn exact_multiples_do_not_round_up_from_float_noise() {
        assert_eq!(metric_replicas(AverageValue(0.1), 0.3, 1, 0.0), 3);
    }
}
