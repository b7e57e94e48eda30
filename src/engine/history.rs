//! The history the engine needs across decisions (and controller restarts): recent
//! recommendations and scale events, pruned to the longest window. Pure, no I/O.

use crate::engine::{Decision, History, Mode, Recommendation, ScaleEvent, Time};
use crate::policy::Policy;

/// Recommendations and events kept at most, whatever the windows: status stays small.
pub const MAX_ENTRIES: usize = 256;

/// The history after `decision` at `now`. Scale events are recorded only when the decision
/// was carried out. A recommendation equal to the newest one extends that one's run instead of
/// adding an entry, so in a steady state the recorded history does not change.
pub fn next_history(policy: &Policy, history: &History, decision: &Decision, now: Time) -> History {
    let cutoff = now.minus(policy.history_horizon());
    let mut recommendations: Vec<Recommendation> = history.recommendations.clone();
    let mut latest_made = history.latest_made;
    if decision.mode != Mode::Paused {
        match recommendations.last_mut() {
            Some(newest) if newest.replicas == decision.recommendation => {}
            Some(newest) => {
                // The run ends: it was last made at the previous decision.
                newest.time = newest.time.max(history.latest_made.unwrap_or(now));
                recommendations.push(Recommendation {
                    time: now,
                    replicas: decision.recommendation,
                });
            }
            None => recommendations.push(Recommendation {
                time: now,
                replicas: decision.recommendation,
            }),
        }
        latest_made = Some(now);
    }
    // The newest is still in force whatever its time says.
    let newest = recommendations.len().saturating_sub(1);
    let recommendations = recommendations
        .into_iter()
        .enumerate()
        .filter(|(i, r)| *i == newest || r.time > cutoff)
        .map(|(_, r)| r)
        .collect();
    let mut scale_events: Vec<ScaleEvent> = history
        .scale_events
        .iter()
        .copied()
        .filter(|e| e.time > cutoff)
        .collect();
    if decision.mode == Mode::Act && decision.desired != decision.current {
        scale_events.push(ScaleEvent {
            time: now,
            from: decision.current,
            to: decision.desired,
        });
    }
    History {
        recommendations: keep_last(prune_dominated(recommendations)),
        latest_made,
        scale_events: keep_last(scale_events),
        consecutive_failures: decision.failures,
    }
}

/// Drops recommendations that can no longer decide either window: one followed by a later
/// one at least as high (for the highest-in-window) and a later one at least as low (for the
/// lowest-in-window) is never the extreme of any window that still contains it.
fn prune_dominated(recs: Vec<Recommendation>) -> Vec<Recommendation> {
    let mut kept = Vec::with_capacity(recs.len());
    let (mut max_after, mut min_after) = (None::<u32>, None::<u32>);
    for r in recs.into_iter().rev() {
        let needed_for_max = max_after.is_none_or(|m| m < r.replicas);
        let needed_for_min = min_after.is_none_or(|m| m > r.replicas);
        if needed_for_max || needed_for_min {
            kept.push(r);
        }
        max_after = Some(max_after.map_or(r.replicas, |m| m.max(r.replicas)));
        min_after = Some(min_after.map_or(r.replicas, |m| m.min(r.replicas)));
    }
    kept.reverse();
    kept
}

fn keep_last<T>(mut items: Vec<T>) -> Vec<T> {
    if items.len() > MAX_ENTRIES {
        items.drain(..items.len() - MAX_ENTRIES);
    }
    items
}
