//! Tests of the engine: HPA semantics (`hpa`), metrics, fallback and modes (`scaling`), the
//! scale-in plan (`scale_in`), history (`history`) and the invariants of DESIGN.md §7 as
//! property tests (`properties`). Fixtures come from `crate::testing`.

mod history;
mod hold_back;
mod hpa;
mod properties;
mod scale_in;
mod scaling;

use crate::engine::{Condition, ConditionType, Decision, EventReason, decide};
use crate::testing::{HistoryBuilder, NOW, ObservationBuilder, PodBuilder, PolicyBuilder};

/// Decides at `NOW`.
fn run(policy: PolicyBuilder, seen: ObservationBuilder, history: HistoryBuilder) -> Decision {
    decide(&policy.build(), &seen.build(), &history.build(), NOW)
}

fn condition(d: &Decision, type_: ConditionType) -> &Condition {
    d.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {} condition in {:?}", type_.as_str(), d.conditions))
}

/// The observation with pods and an rps reading that asks for `serving` replicas (of the
/// `sessions` policy: 100 per replica).
fn wanting(serving: u32, pods: impl IntoIterator<Item = PodBuilder>) -> ObservationBuilder {
    crate::testing::observation()
        .reading("rps", f64::from(serving) * 100.0)
        .pods(pods)
}

fn names(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

fn events(d: &Decision, reason: EventReason) -> Vec<&str> {
    d.events
        .iter()
        .filter(|e| e.reason == reason)
        .map(|e| e.message.as_str())
        .collect()
}

/// Pushed heartbeats with a 30s timeout, a 30m drain, one rps metric at 100 per replica and
/// no stabilization, so that `rps` alone sets the desired serving count.
fn sessions() -> PolicyBuilder {
    crate::testing::policy()
        .max(20)
        .average("rps", 100.0)
        .heartbeat(crate::testing::secs(30))
        .scale_up(crate::testing::rules().percent(1000, 15))
        .scale_down(crate::testing::rules().percent(100, 15))
}
