//! The tuner on synthetic traces: it finds a policy at least as good as a known better one,
//! the same one for the same seed, and writes it as a policy `check` accepts.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Knobs, Score, Tried, TuneOptions, pareto, policy_yaml, table, tune};
use crate::check::{check, single_resource};
use crate::simulate::trace::Trace;
use crate::simulate::{Options, prepare};

/// Sessions scale on a target of 40 per replica (wasteful at a capacity of 100), and a drain
/// gives up after 5 minutes and removes the pod with its sessions (which last 10 minutes on
/// average): it both costs and drops.
const GIVEN: &str = r#"
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: demo}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: chat}
  minReplicas: 1
  maxReplicas: 40
  interval: 15s
  metrics:
    - name: sessions
      sessions: {}
      target: {type: AverageValue, averageValue: "40"}
  heartbeat: {source: Push, timeout: 30s}
  drain: {timeout: 5m, onTimeout: Remove}
"#;

/// Three hours of arrivals that rise from 0.2/s to 1.6/s and fall back, a row a minute.
fn wave() -> Trace {
    let mut csv = String::from("time,arrivals\n");
    for minute in 0..=180 {
        let phase = f64::from(minute) / 180.0 * std::f64::consts::PI;
        let rate = 0.2 + 1.4 * phase.sin();
        let _ = writeln!(csv, "{},{rate:.4}", minute * 60);
    }
    Trace::parse("wave.csv", &csv).expect("the wave parses")
}

fn options() -> Options {
    Options {
        seed: 7,
        step: Duration::from_secs(5),
        ..Options::default()
    }
}

fn tune_options(max_rejected: u64) -> TuneOptions {
    TuneOptions {
        seed: 3,
        max_rejected,
        sampled: 8,
        budget: 60,
        rows: 5,
        threads: 2,
    }
}

/// Runs `yaml` as `simulate` does and returns its score.
fn score_of(yaml: &str, trace: &Trace) -> Score {
    let (_, policy) = single_resource(yaml).expect("valid");
    let prepared = prepare(&policy, trace, &options()).expect("prepared");
    let o = crate::simulate::runs::run_drainscaler(&prepared.setup(&prepared.policy, trace));
    Score {
        replica_ms: o.replica_ms,
        rejected: o.tally.rejected,
        dropped: o.tally.dropped,
        peak: o.peak_replicas,
    }
}

#[test]
fn the_tuner_finds_a_policy_no_worse_than_a_known_better_one_on_a_wave() {
    let trace = wave();
    let given = score_of(GIVEN, &trace);
    assert!(
        given.dropped > 0,
        "the given policy must drop sessions: {given:?}"
    );
    // Known better: twice the target per replica, and a drain that never cuts a session.
    let better_yaml = GIVEN
        .replace(r#"averageValue: "40""#, r#"averageValue: "80""#)
        .replace("onTimeout: Remove", "onTimeout: Keep");
    let better = score_of(&better_yaml, &trace);
    assert_eq!(better.dropped, 0, "{better:?}");
    assert!(
        better.replica_ms < given.replica_ms,
        "{better:?} vs {given:?}"
    );

    let (resource, policy) = single_resource(GIVEN).expect("valid");
    let prepared = prepare(&policy, &trace, &options()).expect("prepared");
    let tuned = tune(
        &resource,
        &policy,
        &prepared,
        &trace,
        &tune_options(better.rejected),
    )
    .expect("tuned");
    let best = tuned.best().expect("an acceptable policy");
    let score = best.score.as_ref().expect("runs");
    assert_eq!(score.dropped, 0, "{}", table(&tuned));
    assert!(score.rejected <= better.rejected, "{}", table(&tuned));
    assert!(
        score.replica_ms <= better.replica_ms,
        "the tuner's best costs more than the known better policy ({} replica-seconds):\n{}",
        better.replica_ms / 1000,
        table(&tuned)
    );
    assert_eq!(tuned.tried[tuned.given].score.as_ref().ok(), Some(&given));
}

#[test]
fn the_same_seed_gives_the_same_search_and_table() {
    let trace = wave();
    let (resource, policy) = single_resource(GIVEN).expect("valid");
    let prepared = prepare(&policy, &trace, &options()).expect("prepared");
    let run = |threads: usize| {
        let options = TuneOptions {
            budget: 24,
            threads,
            ..tune_options(0)
        };
        tune(&resource, &policy, &prepared, &trace, &options).expect("tuned")
    };
    let (a, b) = (run(2), run(1));
    assert_eq!(a.tried, b.tried);
    assert_eq!(table(&a), table(&b));
}

#[test]
fn the_chosen_policy_is_written_as_a_scaling_policy_that_check_accepts() {
    let trace = wave();
    let (resource, policy) = single_resource(GIVEN).expect("valid");
    let prepared = prepare(&policy, &trace, &options()).expect("prepared");
    let options = TuneOptions {
        budget: 24,
        ..tune_options(u64::MAX)
    };
    let tuned = tune(&resource, &policy, &prepared, &trace, &options).expect("tuned");
    let best = tuned.best().expect("an acceptable policy");
    let yaml = policy_yaml(&tuned, best, "wave.csv").expect("yaml");
    let report = check(&yaml).expect("parses");
    assert!(
        report.ok(),
        "{}\n{yaml}",
        report.lines("tuned.yaml").join("\n")
    );
    // It is the candidate the table shows first: written back, it scores the same.
    assert_eq!(&score_of(&yaml, &trace), best.score.as_ref().expect("runs"));
    assert!(
        yaml.starts_with("# Tuned by drainscaler simulate --tune on wave.csv: "),
        "{yaml}"
    );
}

fn tried(cost: i64, rejected: u64, dropped: u64) -> Tried {
    Tried {
        knobs: Knobs(vec![usize::try_from(cost).unwrap_or(0)]),
        score: Ok(Score {
            replica_ms: cost,
            rejected,
            dropped,
            peak: 1,
        }),
    }
}

#[test]
fn the_front_keeps_the_cheapest_for_each_fewer_rejections_and_drops_nothing() {
    let all = vec![
        tried(100, 9, 0), // over the bound
        tried(120, 5, 0), // front
        tried(130, 5, 0), // dominated
        tried(90, 0, 3),  // drops
        tried(150, 2, 0), // front
        tried(160, 3, 0), // dominated
        tried(200, 0, 0), // front
        tried(210, 0, 0), // dominated
    ];
    let given = Knobs(vec![0]);
    assert_eq!(pareto(&all, 5, 10, &given), vec![1, 4, 6]);
    assert_eq!(pareto(&all, 0, 10, &given), vec![6]);
    assert_eq!(pareto(&all, 5, 2, &given), vec![1, 4]);
}

#[test]
fn of_two_equally_good_candidates_the_front_keeps_the_one_closer_to_the_given_policy() {
    let same = |knobs: Vec<usize>| Tried {
        knobs: Knobs(knobs),
        score: Ok(Score {
            replica_ms: 100,
            rejected: 0,
            dropped: 0,
            peak: 1,
        }),
    };
    let all = vec![same(vec![0, 0, 3]), same(vec![2, 1, 3])];
    assert_eq!(pareto(&all, 0, 10, &Knobs(vec![2, 1, 3])), vec![1]);
    assert_eq!(pareto(&all, 0, 10, &Knobs(vec![0, 1, 3])), vec![0]);
}
