//! Benchmark of `drainscaler simulate`: one day at 1 s steps, a daily cycle that peaks at 200
//! instances, sessions on, all three runs. The target is under 2 s.

use criterion::{Criterion, criterion_group, criterion_main};

use drainscaler::simulate::trace::Trace;
use drainscaler::simulate::{self, Options};

/// The chat policy with room for 200 instances, never cutting a session.
const POLICY: &str = r#"
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: bench}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: chat}
  minReplicas: 2
  maxReplicas: 200
  interval: 15s
  metrics:
    - name: rps
      prometheus: {query: "sum(rate(app_requests_total[1m]))"}
      target: {type: AverageValue, averageValue: "100"}
    - name: sessions
      sessions: {}
      target: {type: AverageValue, averageValue: 80}
  heartbeat: {source: Push, timeout: 30s}
  drain: {timeout: 30m, onTimeout: Keep}
"#;

/// A day of minute rows: load follows a daily sine from 2% to 100% of the peak, where the
/// sessions alone (27 arrivals/s for 10 minutes each) need 200 instances.
fn day() -> String {
    let mut csv = String::from("time,rps,arrivals\n");
    for minute in 0..=24 * 60 {
        let phase = f64::from(minute) / (24.0 * 60.0) * std::f64::consts::TAU;
        let load = 0.51 - 0.49 * phase.cos();
        csv.push_str(&format!(
            "{},{:.2},{:.4}\n",
            minute * 60,
            15_000.0 * load,
            26.7 * load
        ));
    }
    csv
}

fn one_day_at_one_second_steps(c: &mut Criterion) {
    let (name, policy) = simulate::load_policy("bench.yaml", POLICY).expect("valid policy");
    let trace = Trace::parse("day.csv", &day()).expect("valid trace");
    let options = Options::default();
    let sim = simulate::simulate(&name, &policy, &trace, &options).expect("simulates");
    let peak = sim.outcomes.drainscaler.peak_replicas;
    assert!((190..=200).contains(&peak), "peak {peak}");
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    group.bench_function("one day, 1s steps, 200 instances", |b| {
        b.iter(|| simulate::simulate(&name, &policy, &trace, &options).expect("simulates"))
    });
    group.finish();
}

criterion_group!(benches, one_day_at_one_second_steps);
criterion_main!(benches);
