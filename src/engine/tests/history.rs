//! `next_history`: what the engine remembers between decisions.

use crate::engine::history::MAX_ENTRIES;
use crate::engine::{History, Recommendation, ScaleEvent, Time, decide, next_history, stabilize};
use crate::testing::{NOW, PolicyBuilder, ago, history, observation, policy, rules};

fn rps() -> PolicyBuilder {
    policy().max(20).average("rps", 100.0)
}

/// Decides at `NOW` and returns the history that follows.
fn after(p: PolicyBuilder, rps: Option<f64>, replicas: u32, h: History) -> History {
    let p = p.build();
    let mut seen = observation().replicas(replicas);
    if let Some(v) = rps {
        seen = seen.reading("rps", v);
    }
    let d = decide(&p, &seen.build(), &h, NOW);
    next_history(&p, &h, &d, NOW)
}

#[test]
fn the_raw_recommendation_is_recorded_at_now() {
    let h = after(rps(), Some(700.0), 4, History::default());
    assert_eq!(
        h.recommendations,
        [Recommendation {
            time: NOW,
            replicas: 7
        }]
    );
}

#[test]
fn a_change_of_the_serving_count_is_recorded_as_a_scale_event() {
    let h = after(rps(), Some(700.0), 4, History::default());
    assert_eq!(
        h.scale_events,
        [ScaleEvent {
            time: NOW,
            from: 4,
            to: 7
        }]
    );
    let h = after(rps(), Some(400.0), 4, History::default());
    assert!(h.scale_events.is_empty(), "no change, no event");
}

#[test]
fn scale_events_are_recorded_only_when_the_decision_is_carried_out() {
    let h = after(rps().dry_run(), Some(700.0), 4, History::default());
    assert!(h.scale_events.is_empty());
    assert_eq!(h.recommendations.len(), 1, "dry runs still stabilize");

    let h = after(rps().paused(), Some(700.0), 4, History::default());
    assert!(h.scale_events.is_empty());
    assert!(h.recommendations.is_empty(), "paused decides nothing");
}

#[test]
fn entries_older_than_the_longest_window_or_period_are_pruned() {
    // The default horizon is the 300s scale-down window.
    let old = history()
        .rec(ago(301), 9)
        .rec(ago(300), 8)
        .rec(ago(299), 9)
        .event(ago(300), 2, 3)
        .event(ago(10), 3, 4)
        .build();
    let h = after(rps(), Some(400.0), 4, old);
    let times: Vec<Time> = h.recommendations.iter().map(|r| r.time).collect();
    assert_eq!(times, [ago(299), NOW]);
    let times: Vec<Time> = h.scale_events.iter().map(|e| e.time).collect();
    assert_eq!(times, [ago(10)]);

    // A longer rate period lengthens the horizon.
    let long = rps().scale_up(rules().pods(4, 900));
    let h = after(
        long,
        Some(400.0),
        4,
        history().event(ago(600), 2, 4).build(),
    );
    assert_eq!(h.scale_events.len(), 1);
}

#[test]
fn consecutive_failures_count_up_and_reset_when_every_metric_reads() {
    let h = after(rps(), None, 4, History::default());
    assert_eq!(h.consecutive_failures, 1);
    let h = after(rps(), None, 4, h);
    assert_eq!(h.consecutive_failures, 2);
    let h = after(rps(), Some(400.0), 4, h);
    assert_eq!(h.consecutive_failures, 0);
}

#[test]
fn pruning_dominated_recommendations_never_changes_what_the_windows_decide() {
    let p = rps()
        .scale_up(rules().window(120).percent(100, 15))
        .scale_down(rules().window(300).percent(100, 15))
        .build();
    let values = [5, 9, 3, 3, 7, 2, 8, 8, 8, 4, 6, 1, 5, 5];
    let mut pruned = History::default();
    let mut full: Vec<Recommendation> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let now = Time::from_secs(1000 + 30 * i as i64);
        let d = {
            let seen = observation()
                .replicas(5)
                .reading("rps", f64::from(*v) * 100.0);
            decide(&p, &seen.build(), &pruned, now)
        };
        full.push(Recommendation {
            time: now,
            replicas: d.recommendation,
        });
        pruned = next_history(&p, &pruned, &d, now);
        for later in [now, now.plus(crate::testing::secs(100))] {
            for (rec, current) in [(1, 5), (9, 5), (5, 5), (2, 8)] {
                assert_eq!(
                    stabilize(&p.behavior, &pruned.in_force(later), rec, current, later),
                    stabilize(&p.behavior, &full, rec, current, later),
                    "after {} decisions",
                    i + 1
                );
            }
        }
    }
    assert!(pruned.recommendations.len() < full.len());
}

/// Decides with `rps` at `now` on `h` and returns the history that follows.
fn step(p: &crate::policy::Policy, h: &History, rps: f64, now: Time) -> History {
    let seen = observation().replicas(5).reading("rps", rps).build();
    let d = decide(p, &seen, h, now);
    next_history(p, h, &d, now)
}

#[test]
fn a_steady_recommendation_leaves_the_recorded_history_unchanged() {
    let p = rps().build();
    let first = step(&p, &History::default(), 500.0, NOW);
    let mut h = first.clone();
    for i in 1..40 {
        h = step(&p, &h, 500.0, NOW.plus(crate::testing::secs(15 * i)));
    }
    // Longer than the 300s window: the run is still in force, and nothing is rewritten.
    assert_eq!(h.recommendations, first.recommendations);
    assert_eq!(h.latest_made, Some(NOW.plus(crate::testing::secs(15 * 39))));
}

#[test]
fn a_run_that_ends_is_recorded_at_its_last_decision() {
    let p = rps().build();
    let at = |s: u64| NOW.plus(crate::testing::secs(s));
    let mut h = History::default();
    for (t, v) in [(0, 900.0), (15, 900.0), (30, 900.0), (45, 500.0)] {
        h = step(&p, &h, v, at(t));
    }
    assert_eq!(
        h.recommendations,
        [
            Recommendation {
                time: at(30),
                replicas: 9
            },
            Recommendation {
                time: at(45),
                replicas: 5
            }
        ]
    );
    // The 9 holds the scale-down for the 300s window after it was last made, not first.
    let seen = observation().replicas(9).reading("rps", 500.0).build();
    assert_eq!(decide(&p, &seen, &h, at(329)).desired, 9);
    assert_eq!(decide(&p, &seen, &h, at(330)).desired, 5);
}

#[test]
fn after_a_restart_the_newest_recommendation_counts_as_made_just_now() {
    // Read back from status, 9 was first made 400s ago and may have been made until now.
    let seen = observation().replicas(9).reading("rps", 500.0).build();
    let p = rps().build();
    let known = history().rec(ago(400), 9).build();
    assert_eq!(decide(&p, &seen, &known, NOW).desired, 5);
    let restarted = history().rec(ago(400), 9).restarted().build();
    assert_eq!(decide(&p, &seen, &restarted, NOW).desired, 9);
    // Once this controller recommends 5, the 9 counts as last made now and ages out normally.
    let h = next_history(&p, &restarted, &decide(&p, &seen, &restarted, NOW), NOW);
    assert_eq!(h.recommendations[0].time, NOW);
    assert_eq!(
        decide(&p, &seen, &h, NOW.plus(crate::testing::secs(300))).desired,
        5
    );
}

#[test]
fn history_stays_bounded() {
    let p = rps()
        .scale_down(rules().window(3600).percent(100, 15))
        .build();
    let mut h = History::default();
    for i in 0..(MAX_ENTRIES as i64 + 50) {
        let now = NOW.plus(crate::testing::secs(i as u64));
        // Rising recommendations are never dominated for the scale-up minimum.
        let seen = observation()
            .replicas(1)
            .reading("rps", 100.0 * (i + 1) as f64);
        let d = decide(&p, &seen.build(), &h, now);
        h = next_history(&p, &h, &d, now);
    }
    assert_eq!(h.recommendations.len(), MAX_ENTRIES);
}
