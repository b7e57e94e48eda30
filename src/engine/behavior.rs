//! HPA behavior: stabilization windows and rate policies, as free functions of the history
//! and `now`. Every limit carries the reason that becomes the `ScalingLimited` condition.
//! Pure, no I/O.

use crate::api::{RuleType, SelectPolicy};
use crate::engine::{Recommendation, ScaleEvent, Time};
use crate::policy::{Behavior, Policy, Rules};

/// Why the desired count is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
    DesiredWithinRange,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::ScaleUpLimit => "ScaleUpLimit",
            LimitKind::ScaleDownLimit => "ScaleDownLimit",
            LimitKind::TooManyReplicas => "TooManyReplicas",
            LimitKind::TooFewReplicas => "TooFewReplicas",
            LimitKind::DesiredWithinRange => "DesiredWithinRange",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub kind: LimitKind,
    /// The limit changed the count (the `ScalingLimited` condition is true).
    pub applied: bool,
    pub message: String,
    /// `ScaleUpStabilized` or `ScaleDownStabilized` when a window changed the recommendation.
    pub stabilization: Option<&'static str>,
}

impl Limit {
    pub fn within_range() -> Limit {
        Limit {
            kind: LimitKind::DesiredWithinRange,
            applied: false,
            message: "the desired count is within the acceptable range".to_owned(),
            stabilization: None,
        }
    }
    pub fn too_many(max: u32) -> Limit {
        Limit {
            kind: LimitKind::TooManyReplicas,
            applied: true,
            message: format!("the current count is above maxReplicas; moving to {max}"),
            stabilization: None,
        }
    }
    pub fn too_few(min: u32) -> Limit {
        Limit {
            kind: LimitKind::TooFewReplicas,
            applied: true,
            message: format!("the current count is below minReplicas; moving to {min}"),
            stabilization: None,
        }
    }
    pub fn fallback(replicas: u32) -> Limit {
        Limit {
            kind: LimitKind::DesiredWithinRange,
            applied: false,
            message: format!("metrics are failing; the fallback count is {replicas}"),
            stabilization: None,
        }
    }
    pub fn with_stabilization(mut self, reason: Option<&'static str>) -> Limit {
        self.stabilization = reason;
        self
    }
}

/// The outcome of the stabilization windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stabilized {
    pub replicas: u32,
    /// Set when the windows changed the recommendation.
    pub reason: Option<&'static str>,
}

/// Applies the stabilization windows: scaling up goes no higher than the lowest
/// recommendation in the up window, scaling down no lower than the highest in the down window
/// (both windows include `recommendation`).
pub fn stabilize(
    behavior: &Behavior,
    history: &[Recommendation],
    recommendation: u32,
    current: u32,
    now: Time,
) -> Stabilized {
    let up_cutoff = now.minus(behavior.scale_up.stabilization_window);
    let down_cutoff = now.minus(behavior.scale_down.stabilization_window);
    let mut up = recommendation;
    let mut down = recommendation;
    for rec in history {
        if rec.time > up_cutoff {
            up = up.min(rec.replicas);
        }
        if rec.time > down_cutoff {
            down = down.max(rec.replicas);
        }
    }
    let replicas = current.max(up).min(down);
    let direction = if recommendation >= current {
        "ScaleUpStabilized"
    } else {
        "ScaleDownStabilized"
    };
    let reason = (replicas != recommendation).then_some(direction);
    Stabilized { replicas, reason }
}

/// The outcome of the rate policies and the min/max clamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub replicas: u32,
    pub limit: Limit,
}

/// Applies the rate policies of the direction being scaled in, then `[min, max]`.
pub fn limit_rate(
    policy: &Policy,
    events: &[ScaleEvent],
    current: u32,
    desired: u32,
    now: Time,
) -> RateLimited {
    let rules = &policy.behavior;
    let (kind, bound, message) = if desired > current {
        let rate = scale_up_limit(&rules.scale_up, events, current, now).max(current);
        if policy.max_replicas > rate {
            (
                LimitKind::ScaleUpLimit,
                rate,
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                LimitKind::TooManyReplicas,
                policy.max_replicas,
                "the desired replica count is more than the maximum replica count",
            )
        }
    } else if desired < current {
        let rate = scale_down_limit(&rules.scale_down, events, current, now).min(current);
        if policy.min_replicas < rate {
            (
                LimitKind::ScaleDownLimit,
                rate,
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                LimitKind::TooFewReplicas,
                policy.min_replicas,
                "the desired replica count is less than the minimum replica count",
            )
        }
    } else {
        return RateLimited {
            replicas: desired,
            limit: Limit::within_range(),
        };
    };
    let replicas = if desired > current {
        desired.min(bound)
    } else {
        desired.max(bound)
    };
    if replicas == desired {
        return RateLimited {
            replicas,
            limit: Limit::within_range(),
        };
    }
    RateLimited {
        replicas,
        limit: Limit {
            kind,
            applied: true,
            message: format!("{message} ({desired} wanted, {replicas} allowed)"),
            stabilization: None,
        },
    }
}

/// Replicas added and removed within `period` before `now`.
fn changes_in_period(events: &[ScaleEvent], period: std::time::Duration, now: Time) -> (u32, u32) {
    let cutoff = now.minus(period);
    events
        .iter()
        .filter(|e| e.time > cutoff)
        .fold((0u32, 0u32), |(added, removed), e| {
            if e.to > e.from {
                (added.saturating_add(e.to - e.from), removed)
            } else {
                (added, removed.saturating_add(e.from - e.to))
            }
        })
}

fn scale_up_limit(rules: &Rules, events: &[ScaleEvent], current: u32, now: Time) -> u32 {
    if rules.select == SelectPolicy::Disabled {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let (added, removed) = changes_in_period(events, p.period, now);
        let start = i64::from(current) - i64::from(added) + i64::from(removed);
        let proposed = match p.kind {
            RuleType::Pods => start + i64::from(p.value),
            // Percent rounds up when scaling up. Integer arithmetic: the HPA's floating point
            // lets 50 pods +10% become 56 (50 * 1.1 = 55.00000000000001).
            RuleType::Percent => div_ceil(start * (100 + i64::from(p.value)), 100),
        };
        clamp_u32(proposed)
    });
    select(rules.select == SelectPolicy::Max, proposals, current)
}

fn scale_down_limit(rules: &Rules, events: &[ScaleEvent], current: u32, now: Time) -> u32 {
    if rules.select == SelectPolicy::Disabled {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let (added, removed) = changes_in_period(events, p.period, now);
        let start = i64::from(current) + i64::from(removed) - i64::from(added);
        let proposed = match p.kind {
            RuleType::Pods => start - i64::from(p.value),
            // Percent truncates when scaling down. Integer arithmetic: in floating point
            // 10 pods -90% is 0.9999999999999998 and truncates to 0 instead of 1.
            RuleType::Percent => start * (100 - i64::from(p.value)) / 100,
        };
        clamp_u32(proposed)
    });
    // For scale-down, "Max" selects the policy that allows the most change: the lowest count.
    select(rules.select == SelectPolicy::Min, proposals, current)
}

fn select(highest: bool, proposals: impl Iterator<Item = u32>, fallback: u32) -> u32 {
    let chosen = if highest {
        proposals.max()
    } else {
        proposals.min()
    };
    chosen.unwrap_or(fallback)
}

/// `a / b` rounded towards positive infinity, for `b > 0`.
fn div_ceil(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

fn clamp_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}
