//! One `decide` over a realistic large workload: 1,000 instances (some draining, some lost,
//! some not ready, deletion costs, heartbeats before and after drain starts), three metrics
//! and 20 history entries. Target: a median under 50 µs.
//!
//! `cargo bench --bench decide -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use drainscaler::api::OnTimeout;
use drainscaler::engine::{History, Observation, decide};
use drainscaler::policy::Policy;
use drainscaler::testing::{NOW, PodBuilder, ago, history, observation, pod, policy, rules, secs};

const PODS: u32 = 1000;

fn chat_policy() -> Policy {
    policy()
        .min(10)
        .max(2000)
        .average("rps", 100.0)
        .value("latency", 0.2)
        .sessions_metric(80.0)
        .heartbeat(secs(30))
        .max_replacements(3)
        .drain(secs(30 * 60), OnTimeout::Remove)
        .scale_up(rules().percent(100, 15).pods(4, 15))
        .scale_down(rules().window(300).percent(10, 60))
        .fallback(3, 500)
        .build()
}

/// Pod `i` of 1,000: every 20th draining (half of those drained empty), every 100th lost,
/// every 50th not ready, a few with deletion costs.
fn instance(i: u32) -> PodBuilder {
    let mut p = pod(&format!("chat-{i:04}"))
        .ordinal(i)
        .created(ago(7200 - u64::from(i)))
        .started(ago(7100 - u64::from(i)))
        .ready()
        .sessions(u64::from(i % 60))
        .heartbeat_at(ago(u64::from(i % 10)));
    if i.is_multiple_of(20) {
        p = p.draining_since(ago(120));
        if i.is_multiple_of(40) {
            p = p.sessions(0);
        }
    }
    if i % 100 == 7 {
        p = p.heartbeat_at(ago(90));
    }
    if i % 50 == 3 {
        p = p.not_ready();
    }
    if i.is_multiple_of(97) {
        p = p.cost(-10);
    }
    p
}

/// 1,000 pods, 50 draining, with readings that ask for `serving` replicas.
fn seen(serving: u32) -> Observation {
    observation()
        .pods((0..PODS).map(instance))
        .reading("rps", f64::from(serving) * 100.0)
        .reading("latency", 0.2 * f64::from(serving) / 950.0)
        .build()
}

fn twenty_entries() -> History {
    (0..10u64)
        .fold(history(), |h, i| {
            h.rec(ago(280 - 25 * i), 950 - 5 * i as u32)
                .event(ago(290 - 25 * i), 940, 950)
        })
        .build()
}

fn bench(c: &mut Criterion) {
    let p = chat_policy();
    let h = twenty_entries();

    // 950 serve and 950 are wanted: drains progress, nothing new starts.
    let steady = seen(950);
    let d = decide(&p, &steady, &h, NOW);
    assert_eq!(d.desired, 950);
    c.bench_function("decide 1000 pods steady", |b| {
        b.iter(|| decide(black_box(&p), black_box(&steady), black_box(&h), NOW))
    });

    // Load fell: 95 victims to choose and drain (10% per minute), removals behind them.
    let quiet = seen(500);
    let d = decide(&p, &quiet, &History::default(), NOW);
    assert!(d.plan.start.len() >= 90, "{} victims", d.plan.start.len());
    c.bench_function("decide 1000 pods scale-in", |b| {
        b.iter(|| {
            decide(
                black_box(&p),
                black_box(&quiet),
                black_box(&History::default()),
                NOW,
            )
        })
    });

    // Load came back: every drain is cancelled, then the count rises.
    let busy = seen(1100);
    c.bench_function("decide 1000 pods scale-up", |b| {
        b.iter(|| decide(black_box(&p), black_box(&busy), black_box(&h), NOW))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
