//! `drainscaler simulate` end to end: the engine matches the HPA when nothing drains, on the
//! real traces in examples/traces; output is deterministic; draining drops no session; bad
//! input fails with messages that name the file, line and column.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drainscaler::simulate::trace::Trace;
use drainscaler::simulate::{self, Options, Simulation};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Simulates through the library, with the trace cut to its first `rows` rows if given.
fn run(policy: &str, trace: &str, rows: Option<usize>, options: &Options) -> Simulation {
    let (name, policy) = simulate::load_policy(policy, &read(policy)).expect("valid policy");
    let text = read(trace);
    let text = match rows {
        Some(n) => text.lines().take(n + 1).collect::<Vec<_>>().join("\n"),
        None => text,
    };
    let trace = Trace::parse(trace, &text).expect("valid trace");
    simulate::simulate(&name, &policy, &trace, options).expect("simulates")
}

fn instant_start() -> Options {
    Options {
        startup: std::time::Duration::ZERO,
        ..Options::default()
    }
}

/// A scratch directory for one test, emptied first.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("simulate")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drainscaler"))
        .current_dir(dir)
        .arg("simulate")
        .args(args)
        .output()
        .expect("run drainscaler simulate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The HorizontalPodAutoscaler's algorithm, written here from its documented rules and
/// independent of drainscaler's engine: the Kubernetes docs ("Horizontal Pod Autoscaling",
/// "Configurable scaling behavior") and `pkg/controller/podautoscaler/horizontal.go`
/// (`GetExternalPerPodMetricReplicas`, `stabilizeRecommendationWithBehaviors`,
/// `convertDesiredReplicasWithBehaviorRate`, `calculateScaleUpLimitWithScalingRules`,
/// `calculateScaleDownLimitWithBehaviors`, `getReplicasChangePerPeriod`). One external metric
/// with an `AverageValue` target, times in milliseconds.
mod hpa {
    #[derive(Clone, Copy, Debug)]
    pub enum Policy {
        /// At most this many pods per period.
        Pods { value: i64, period_s: i64 },
        /// At most this percentage of the count at the period's start per period.
        Percent { value: i64, period_s: i64 },
    }

    #[derive(Clone, Copy, Debug)]
    pub enum Select {
        /// The policy that allows the largest change (the default).
        Max,
        /// The policy that allows the smallest change.
        Min,
    }

    #[derive(Clone, Debug)]
    pub struct Rules {
        pub window_s: i64,
        pub select: Select,
        pub policies: Vec<Policy>,
    }

    impl Rules {
        /// `behavior.scaleUp` when not given: no window; 4 pods or 100% per 15s, the larger.
        pub fn default_up() -> Rules {
            Rules {
                window_s: 0,
                select: Select::Max,
                policies: vec![
                    Policy::Pods {
                        value: 4,
                        period_s: 15,
                    },
                    Policy::Percent {
                        value: 100,
                        period_s: 15,
                    },
                ],
            }
        }

        /// `behavior.scaleDown` when not given: a 300s window; 100% per 15s.
        pub fn default_down() -> Rules {
            Rules {
                window_s: 300,
                select: Select::Max,
                policies: vec![Policy::Percent {
                    value: 100,
                    period_s: 15,
                }],
            }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Spec {
        pub min: i64,
        pub max: i64,
        /// `--horizontal-pod-autoscaler-tolerance` (0.1 unless set).
        pub tolerance: f64,
        /// The target's `averageValue`.
        pub average_value: f64,
        pub up: Rules,
        pub down: Rules,
    }

    pub struct Hpa {
        spec: Spec,
        replicas: i64,
        /// (time, raw recommendation)
        recommendations: Vec<(i64, i64)>,
        /// (time, pods added) and (time, pods removed)
        up_events: Vec<(i64, i64)>,
        down_events: Vec<(i64, i64)>,
    }

    impl Hpa {
        pub fn new(spec: Spec, replicas: i64) -> Hpa {
            Hpa {
                spec,
                replicas,
                recommendations: Vec::new(),
                up_events: Vec::new(),
                down_events: Vec::new(),
            }
        }

        /// One sync at `now` with the metric at `usage`: the replica count it sets.
        pub fn sync(&mut self, now: i64, usage: f64) -> i64 {
            let current = self.replicas;
            let desired = if current > self.spec.max {
                self.spec.max
            } else if current < self.spec.min {
                self.spec.min
            } else {
                let raw = self.metric_replicas(usage, current);
                let stable = self.stabilize(now, raw, current);
                self.limit_rate(now, stable, current)
            };
            if desired > current {
                self.up_events.push((now, desired - current));
            } else if desired < current {
                self.down_events.push((now, current - desired));
            }
            self.replicas = desired;
            desired
        }

        /// Usage and target in milli-units, as the metrics API gives them: the count moves to
        /// `ceil(usage / target)` only when the usage ratio is off by more than the tolerance.
        fn metric_replicas(&self, usage: f64, current: i64) -> i64 {
            let usage = (usage * 1000.0).round() as i64;
            let target = (self.spec.average_value * 1000.0).round() as i64;
            let ratio = usage as f64 / (target as f64 * current as f64);
            if (1.0 - ratio).abs() > self.spec.tolerance {
                (usage as f64 / target as f64).ceil() as i64
            } else {
                current
            }
        }

        /// The lowest recommendation in the scale-up window and the highest in the scale-down
        /// window bound the count; samples strictly after each cutoff count.
        fn stabilize(&mut self, now: i64, raw: i64, current: i64) -> i64 {
            let up_cutoff = now - self.spec.up.window_s * 1000;
            let down_cutoff = now - self.spec.down.window_s * 1000;
            let (mut up, mut down) = (raw, raw);
            for &(t, r) in &self.recommendations {
                if t > up_cutoff {
                    up = up.min(r);
                }
                if t > down_cutoff {
                    down = down.max(r);
                }
            }
            self.recommendations
                .retain(|&(t, _)| t > up_cutoff || t > down_cutoff);
            self.recommendations.push((now, raw));
            current.max(up).min(down)
        }

        fn change_in_period(events: &[(i64, i64)], now: i64, period_s: i64) -> i64 {
            let cutoff = now - period_s * 1000;
            events
                .iter()
                .filter(|&&(t, _)| t > cutoff)
                .map(|&(_, n)| n)
                .sum()
        }

        fn period_start(&self, now: i64, current: i64, period_s: i64) -> i64 {
            current - Hpa::change_in_period(&self.up_events, now, period_s)
                + Hpa::change_in_period(&self.down_events, now, period_s)
        }

        fn limit_rate(&self, now: i64, desired: i64, current: i64) -> i64 {
            if desired > current {
                let proposals = self.spec.up.policies.iter().map(|p| match *p {
                    Policy::Pods { value, period_s } => {
                        self.period_start(now, current, period_s) + value
                    }
                    Policy::Percent { value, period_s } => {
                        let start = self.period_start(now, current, period_s) as f64;
                        (start * (1.0 + value as f64 / 100.0)).ceil() as i64
                    }
                });
                let limit = match self.spec.up.select {
                    Select::Max => proposals.max(),
                    Select::Min => proposals.min(),
                }
                .expect("scale-up policies")
                .max(current);
                desired.min(self.spec.max.min(limit))
            } else if desired < current {
                let proposals = self.spec.down.policies.iter().map(|p| match *p {
                    Policy::Pods { value, period_s } => {
                        self.period_start(now, current, period_s) - value
                    }
                    Policy::Percent { value, period_s } => {
                        let start = self.period_start(now, current, period_s) as f64;
                        // Truncated, as int32(...) does.
                        (start * (1.0 - value as f64 / 100.0)) as i64
                    }
                });
                // For scale-down the largest change is the lowest count.
                let limit = match self.spec.down.select {
                    Select::Max => proposals.min(),
                    Select::Min => proposals.max(),
                }
                .expect("scale-down policies")
                .min(current);
                desired.max(self.spec.min.max(limit))
            } else {
                desired
            }
        }
    }
}

/// The undrained policy on `trace` decides exactly as the independent HPA of `spec` would,
/// decision by decision; so does the simulator's own `hpa` baseline.
fn assert_hpa_compatible(policy: &str, trace: &str, spec: hpa::Spec) {
    let sim = run(policy, trace, None, &instant_start());
    let (ours, baseline) = (&sim.outcomes.drainscaler, &sim.outcomes.hpa);
    assert!(
        ours.scale_events > 1_000,
        "{trace}: the trace should move the count a lot, moved {} times",
        ours.scale_events
    );
    let parsed = Trace::parse(trace, &read(trace)).expect("valid trace");
    let column = parsed.column("value").expect("a value column");
    let interval = ours.timeline[1].t_ms - ours.timeline[0].t_ms;
    let mut reference = hpa::Hpa::new(spec.clone(), spec.min);
    let mut decided: i64 = 0;
    for (i, (point, base)) in ours.timeline.iter().zip(&baseline.timeline).enumerate() {
        let t = point.t_ms;
        assert_eq!(
            t,
            i as i64 * interval,
            "{trace}: decisions every {interval}ms"
        );
        let row = parsed.times.partition_point(|&at| at <= t) - 1;
        let usage = parsed.value(column, row);
        let want = reference.sync(t, usage);
        assert!(
            i64::from(point.replicas) == want && i64::from(base.replicas) == want,
            "{trace}: at t={}s (row {row}, value {usage}) the HPA sets {want} replicas; drainscaler has {} (desired {}), the simulator's hpa {}",
            t / 1000,
            point.replicas,
            point.desired,
            base.replicas
        );
        decided += 1;
    }
    assert_eq!(ours.timeline.len(), baseline.timeline.len());
    let (last_row, last_decision) = (
        parsed.times[parsed.times.len() - 1],
        (decided - 1) * interval,
    );
    assert!(
        last_decision <= last_row && last_row < last_decision + interval,
        "{trace}: the decisions end at {last_decision}ms, the trace at {last_row}ms"
    );
    assert!(ours.timeline.iter().all(|p| p.draining == 0));
}

#[test]
fn an_undrained_policy_scales_exactly_like_the_hpa_on_the_nyc_taxi_trace() {
    // tests/fixtures/taxi-undrained.yaml, as the HPA reads it.
    let spec = hpa::Spec {
        min: 2,
        max: 40,
        tolerance: 0.05,
        average_value: 1000.0,
        up: hpa::Rules {
            window_s: 600,
            select: hpa::Select::Max,
            policies: vec![hpa::Policy::Pods {
                value: 4,
                period_s: 900,
            }],
        },
        down: hpa::Rules {
            window_s: 3600,
            select: hpa::Select::Min,
            policies: vec![
                hpa::Policy::Percent {
                    value: 20,
                    period_s: 1800,
                },
                hpa::Policy::Pods {
                    value: 3,
                    period_s: 600,
                },
            ],
        },
    };
    assert_hpa_compatible(
        "tests/fixtures/taxi-undrained.yaml",
        "examples/traces/nyc_taxi.csv",
        spec,
    );
}

#[test]
fn an_undrained_policy_scales_exactly_like_the_hpa_on_the_twitter_trace() {
    // tests/fixtures/tweets-undrained.yaml: the HPA's default behavior and tolerance.
    let spec = hpa::Spec {
        min: 1,
        max: 60,
        tolerance: 0.1,
        average_value: 20.0,
        up: hpa::Rules::default_up(),
        down: hpa::Rules::default_down(),
    };
    assert_hpa_compatible(
        "tests/fixtures/tweets-undrained.yaml",
        "examples/traces/Twitter_volume_AMZN.csv",
        spec,
    );
}

#[test]
fn draining_drops_no_session_where_the_hpa_drops_some() {
    // Two days of the bursty trace, with sessions.
    let sim = run(
        "examples/policies/chat-keep.yaml",
        "examples/traces/twitter_amzn_sessions.csv",
        Some(576),
        &Options::default(),
    );
    let (ours, hpa) = (&sim.outcomes.drainscaler, &sim.outcomes.hpa);
    assert!(ours.tally.started > 100_000, "{:?}", ours.tally);
    assert_eq!(ours.tally.dropped, 0);
    assert!(hpa.tally.dropped > 1_000, "{:?}", hpa.tally);
    assert!(!ours.drains_ms.is_empty(), "instances were drained");
    let ratio = ours.replica_ms as f64 / hpa.replica_ms as f64;
    assert!(
        (1.0..1.20).contains(&ratio),
        "drainscaler costs {ratio:.3}x the hpa"
    );
    assert_eq!(sim.outcomes.oracle.tally.dropped, 0);
}

/// Issue 11's bar for `chat-keep.yaml` (with `drain.holdBack`) on both whole session traces:
/// within 10% of the oracle's replica-seconds, no session dropped, and no more sessions
/// rejected than the HPA's algorithm rejects on the same arrivals.
#[test]
fn both_session_traces_stay_within_ten_percent_of_the_oracle_without_a_drop() {
    for trace in [
        "examples/traces/nyc_taxi_sessions.csv",
        "examples/traces/twitter_amzn_sessions.csv",
    ] {
        let sim = run(
            "examples/policies/chat-keep.yaml",
            trace,
            None,
            &Options::default(),
        );
        let (ours, hpa, oracle) = (
            &sim.outcomes.drainscaler,
            &sim.outcomes.hpa,
            &sim.outcomes.oracle,
        );
        let ratio = ours.replica_ms as f64 / oracle.replica_ms as f64;
        assert!(
            ratio <= 1.10,
            "{trace}: drainscaler costs {ratio:.3}x the oracle"
        );
        assert_eq!(ours.tally.dropped, 0, "{trace}: {:?}", ours.tally);
        assert!(
            ours.tally.rejected <= hpa.tally.rejected,
            "{trace}: drainscaler rejects {} sessions, the hpa {}",
            ours.tally.rejected,
            hpa.tally.rejected
        );
    }
}

/// `n` with a comma between thousands, as the READMEs write counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// `text` with every run of white space (line breaks included) made one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_readmes_quote_what_simulate_prints_on_the_taxi_sessions() {
    let sim = run(
        "examples/policies/chat-keep.yaml",
        "examples/traces/nyc_taxi_sessions.csv",
        None,
        &Options::default(),
    );
    let table = sim.report().table();
    let shown: String = table.lines().map(|l| format!("    {l}\n")).collect();
    let traces = read("examples/traces/README.md");
    assert!(
        traces.contains(&shown),
        "examples/traces/README.md no longer shows what `drainscaler simulate --policy examples/policies/chat-keep.yaml --trace examples/traces/nyc_taxi_sessions.csv` prints; it prints:\n{table}"
    );
    let (ours, hpa) = (&sim.outcomes.drainscaler, &sim.outcomes.hpa);
    let more = (ours.replica_ms as f64 / hpa.replica_ms as f64 - 1.0) * 100.0;
    let claim = format!(
        "drops {} sessions where the HPA drops {}, for {more:.0}% more replica-seconds",
        thousands(ours.tally.dropped),
        thousands(hpa.tally.dropped),
    );
    for readme in ["README.md", "examples/traces/README.md"] {
        assert!(
            one_line(&read(readme)).contains(&claim),
            "{readme} should say \"{claim}\""
        );
    }
}

#[test]
fn without_arrivals_every_session_field_is_zero() {
    let dir = scratch("no_arrivals");
    let trace: String = read("examples/traces/nyc_taxi_sessions.csv")
        .lines()
        .take(49)
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_owned() + "\n")
        .collect();
    std::fs::write(dir.join("rps.csv"), trace).expect("write trace");
    let out = cli(
        &dir,
        &[
            "--policy",
            &repo("examples/policies/chat.yaml").display().to_string(),
            "--trace",
            "rps.csv",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("note: the trace has no \"arrivals\" column"),
        "{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for run in ["drainscaler", "hpa", "oracle"] {
        let r = &json["runs"][run];
        for field in ["sessions_started", "sessions_rejected", "sessions_dropped"] {
            assert_eq!(r[field], 0, "{run}.{field}");
        }
        let timeline = r["timeline"].as_array().expect("timeline");
        assert!(timeline.iter().all(|p| p["sessions"] == 0));
    }
}

#[test]
fn the_same_seed_gives_byte_identical_output_and_another_seed_does_not() {
    let dir = scratch("seed");
    let day: String = read("examples/traces/twitter_amzn_sessions.csv")
        .lines()
        .take(289)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("day.csv"), day).expect("write trace");
    let policy = repo("examples/policies/chat-keep.yaml")
        .display()
        .to_string();
    let args = |seed: &'static str| {
        vec![
            "--policy", &policy, "--trace", "day.csv", "--seed", seed, "--output", "json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let go = |seed| {
        let a = args(seed);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = cli(&dir, &refs);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let first = go("7");
    assert_eq!(first, go("7"));
    assert_ne!(first, go("8"));
}

#[test]
fn json_output_keeps_its_field_names() {
    let dir = scratch("json");
    let two_days: String = read("examples/traces/nyc_taxi_sessions.csv")
        .lines()
        .take(97)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("two-days.csv"), two_days).expect("write trace");
    let out = cli(
        &dir,
        &[
            "--policy",
            &repo("examples/policies/chat-keep.yaml")
                .display()
                .to_string(),
            "--trace",
            "two-days.csv",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&json), ["runs"]);
    assert_eq!(keys(&json["runs"]), ["drainscaler", "hpa", "oracle"]);
    for run in ["drainscaler", "hpa", "oracle"] {
        let r = &json["runs"][run];
        assert_eq!(
            keys(r),
            [
                "drain_p95_seconds",
                "peak_replicas",
                "replica_seconds",
                "scale_events",
                "sessions_dropped",
                "sessions_rejected",
                "sessions_started",
                "timeline"
            ]
        );
        let timeline = r["timeline"].as_array().expect("timeline");
        // Two days of half-hour rows at a 15s interval, t = 0 included.
        assert_eq!(timeline.len(), (2 * 86_400 - 1_800) / 15 + 1);
        assert_eq!(
            keys(&timeline[0]),
            ["desired", "draining", "replicas", "sessions", "t"]
        );
        assert_eq!(timeline[1]["t"], 15);
    }
}

#[test]
fn the_table_has_one_row_per_run() {
    let dir = scratch("table");
    let out = cli(
        &dir,
        &[
            "--policy",
            &repo("tests/fixtures/taxi-undrained.yaml")
                .display()
                .to_string(),
            "--trace",
            &repo("examples/traces/nyc_taxi.csv").display().to_string(),
            "--startup",
            "0s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("run  "), "{text}");
    for (line, run) in lines[1..].iter().zip(["drainscaler", "hpa", "oracle"]) {
        assert!(line.starts_with(run), "{text}");
    }
    assert!(lines[3].contains("1.000x"), "{text}");
}

#[test]
fn the_plot_is_written_as_svg_or_png_by_extension() {
    let dir = scratch("plot");
    let policy = repo("examples/policies/chat-keep.yaml")
        .display()
        .to_string();
    let day: String = read("examples/traces/nyc_taxi_sessions.csv")
        .lines()
        .take(49)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("day.csv"), day).expect("write trace");
    for (file, magic) in [("out.svg", &b"<svg"[..]), ("out.png", &b"\x89PNG"[..])] {
        let out = cli(
            &dir,
            &["--policy", &policy, "--trace", "day.csv", "--plot", file],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let bytes = std::fs::read(dir.join(file)).expect("plot written");
        assert!(bytes.starts_with(magic), "{file} starts with {magic:?}");
        assert!(bytes.len() > 10_000, "{file} is {} bytes", bytes.len());
    }
    let out = cli(
        &dir,
        &[
            "--policy", &policy, "--trace", "day.csv", "--plot", "out.pdf",
        ],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "error: --plot: out.pdf must end in .svg or .png to say which picture to write\n"
    );
}

#[test]
fn bad_traces_fail_with_file_line_and_column_and_print_nothing() {
    let dir = scratch("bad_traces");
    let policy = repo("examples/policies/chat.yaml").display().to_string();
    let cases = [
        (
            "text.csv",
            "time,rps,arrivals\n0,100,1\n15,lots,1\n",
            "text.csv:3:2: \"lots\" in column rps is not a number",
        ),
        (
            "back.csv",
            "time,rps\n0,100\n30,100\n15,100\n",
            "back.csv:4:1: time 15 is before the previous row's; rows must be in time order",
        ),
        (
            "stamps.csv",
            "timestamp,rps\n2014-07-01 00:30:00,1\n2014-07-01 00:00:00,1\n",
            "stamps.csv:3:1: time 2014-07-01 00:00:00 is before the previous row's; rows must be in time order",
        ),
        (
            "column.csv",
            "timestamp,value\n2014-07-01 00:00:00,10844\n",
            "column.csv:1: no column \"rps\" for metric rps; a metric reads the column with its name, and the trace has: value",
        ),
        (
            "short.csv",
            "time,rps,arrivals\n0,100,1\n15,100\n",
            "short.csv:3:3: this row has 2 fields but the header has 3",
        ),
        (
            "when.csv",
            "time,rps\nyesterday,100\n",
            "when.csv:2:1: \"yesterday\" is not a time; write seconds from the start, YYYY-MM-DD HH:MM:SS or RFC 3339",
        ),
        (
            "negative.csv",
            "time,rps,arrivals\n0,100,1\n15,100,-2\n",
            "negative.csv:3:3: arrivals must be 0 or more sessions per second, got -2",
        ),
        (
            "empty.csv",
            "",
            "empty.csv:1: the trace is empty; the first line must be a header such as time,rps",
        ),
        (
            "header.csv",
            "time,rps\n",
            "header.csv:2: the trace has a header but no rows",
        ),
    ];
    for (file, text, message) in cases {
        std::fs::write(dir.join(file), text).expect("write trace");
        let out = cli(&dir, &["--policy", &policy, "--trace", file]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        assert!(out.stdout.is_empty(), "{file} printed a result");
        assert_eq!(stderr(&out), format!("error: {message}\n"), "{file}");
    }
}

#[test]
fn an_invalid_policy_fails_with_every_validation_message() {
    let dir = scratch("bad_policy");
    std::fs::copy(repo("tests/fixtures/invalid.yaml"), dir.join("broken.yaml")).expect("copy");
    let out = cli(
        &dir,
        &[
            "--policy",
            "broken.yaml",
            "--trace",
            &repo("examples/traces/nyc_taxi_sessions.csv")
                .display()
                .to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "error: broken.yaml: ScalingPolicy broken: spec.minReplicas: minReplicas (5) is greater than maxReplicas (2); lower minReplicas or raise maxReplicas\n\
         broken.yaml: ScalingPolicy broken: spec.interval: \"15x\" has unknown unit \"x\"; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)\n"
    );
}

#[test]
fn the_derived_session_traces_are_what_derive_sh_makes() {
    let dir = scratch("derive");
    let out = Command::new("sh")
        .arg(repo("examples/traces/derive.sh"))
        .arg(&dir)
        .output()
        .expect("run derive.sh");
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["nyc_taxi_sessions.csv", "twitter_amzn_sessions.csv"] {
        let made = std::fs::read_to_string(dir.join(file)).expect("derived trace");
        assert!(
            made == read(&format!("examples/traces/{file}")),
            "examples/traces/{file} is stale: regenerate it with examples/traces/derive.sh"
        );
    }
}

/// The notes `simulate` prints for `chat-keep.yaml` on two days of the taxi sessions with
/// instances of `capacity` sessions.
fn notes_at(capacity: u32) -> Vec<String> {
    let options = Options {
        capacity,
        ..Options::default()
    };
    run(
        "examples/policies/chat-keep.yaml",
        "examples/traces/nyc_taxi_sessions.csv",
        Some(2),
        &options,
    )
    .notes
}

#[test]
fn a_sessions_target_the_instances_cannot_reach_is_pointed_out() {
    assert_eq!(
        notes_at(85),
        [
            "metric sessions targets 80 sessions per replica (scaling up only above 88 with the tolerance) but --capacity is 85: instances fill up before the metric asks for more, so expect rejected sessions",
            "drain.holdBack.sessionCeiling is 95 but --capacity is 85: while pods are held back the others fill up and turn sessions away before the ceiling releases them; set the ceiling below the capacity",
        ]
    );
    let fine = notes_at(Options::default().capacity);
    assert!(fine.is_empty(), "{fine:?}");
}

#[test]
fn a_hold_back_ceiling_the_instances_cannot_reach_is_pointed_out() {
    assert_eq!(
        notes_at(95),
        [
            "drain.holdBack.sessionCeiling is 95 but --capacity is 95: while pods are held back the others fill up and turn sessions away before the ceiling releases them; set the ceiling below the capacity"
        ]
    );
}
