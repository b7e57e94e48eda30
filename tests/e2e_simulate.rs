//! `drainscaler simulate --prometheus` against the local plane's Prometheus: a wave of
//! sessions is sent to the demo app, and simulate reads back what Prometheus scraped of it (a
//! policy metric and the arrivals), saves it, and replays the saved file offline to the same
//! report. Also the errors a user meets with a real server: several series, an empty range, an
//! unreachable address. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{
    Controller, Namespace, apply, enabled, http, install_crd, ready_replicas, session_app, traffic,
    traffic_summary, wait_for,
};

fn prometheus_url() -> String {
    std::env::var("PROMETHEUS_URL")
        .expect("PROMETHEUS_URL is not set: run `eval \"$(scripts/cluster env)\"` first")
}

/// Percent-encodes a query parameter.
fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query's single value from the plane's Prometheus.
fn instant(query: &str) -> Option<f64> {
    let url = prometheus_url();
    let addr = url.trim_start_matches("http://");
    let (status, body) = http(
        "GET",
        addr,
        &format!("/api/v1/query?query={}", encode(query)),
        &[],
        "",
    );
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Now, in whole seconds, as RFC 3339.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).expect("fits"))
        .expect("a time")
        .to_string()
}

/// The policy simulate tries: the active sessions as read by Prometheus, 10 per replica.
fn policy_file(dir: &Path, ns: &str, query: &str) -> String {
    let path = dir.join(format!("policy-{}.yaml", query.len()));
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: {ns}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: chat}}
  minReplicas: 1
  maxReplicas: 20
  interval: 2s
  metrics:
    - name: active
      prometheus: {{query: '{query}'}}
      target: {{type: AverageValue, averageValue: "10"}}
  drain: {{timeout: 1m, onTimeout: Keep}}
"#
        ),
    )
    .expect("write the policy");
    path.display().to_string()
}

/// Runs `drainscaler simulate` with `args`; (success, stdout, stderr).
fn simulate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drainscaler"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("drainscaler runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn simulate_reads_back_a_wave_prometheus_scraped_and_replays_it_offline_the_same() {
    if !enabled("simulate_reads_back_a_wave_prometheus_scraped_and_replays_it_offline_the_same") {
        return;
    }
    install_crd();
    let ns = Namespace::new("simulate-history");
    let controller = Controller::start(&ns.0, &[]);
    apply(&session_app(
        &ns.0,
        "chat",
        3,
        &format!("http://{}", controller.addr),
    ));
    wait_for(Duration::from_secs(120), "3 ready replicas", || {
        ready_replicas(&ns.0, "chat") == 3
    });
    let started_query = format!(r#"sum(app_sessions_started_total{{namespace="{}"}})"#, ns.0);
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the app",
        || instant(&started_query).is_some(),
    );
    // A wave: 6 sessions a second give or take 4, over a 40 s period, each 6 s long.
    let wave = traffic(
        &ns.0,
        "chat",
        &[
            "-shape",
            "wave:6:4:40s",
            "-duration",
            "60s",
            "-fixed-length",
            "6s",
            "-seed",
            "3",
        ],
    );
    let summary = traffic_summary(wave);
    let opened = summary["opened"].as_f64().expect("the generator's summary");
    assert!(opened > 200.0, "the wave opened sessions: {summary}");
    wait_for(
        Duration::from_secs(60),
        "Prometheus to see every session",
        || instant(&started_query).is_some_and(|n| n >= opened),
    );
    // Until Prometheus has scraped every session's end, so that the trace ends at rest.
    let active = format!(r#"sum(app_active_sessions{{namespace="{}"}})"#, ns.0);
    wait_for(
        Duration::from_secs(60),
        "Prometheus to see the sessions end",
        || instant(&active) == Some(0.0),
    );
    let until = now_rfc3339();

    let dir = std::env::temp_dir().join(&ns.0);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let policy = policy_file(&dir, &ns.0, &active);
    let saved = dir.join("trace.csv").display().to_string();
    let arrivals = format!(
        r#"sum(rate(app_sessions_started_total{{namespace="{}"}}[10s]))"#,
        ns.0
    );
    let url = prometheus_url();
    let common = [
        "--policy",
        &policy,
        "--session-length",
        "6s",
        "--output",
        "json",
    ];
    let (ok, live, err) = simulate(
        &[
            &common[..],
            &[
                "--prometheus",
                &url,
                "--since",
                "2m",
                "--until",
                &until,
                "--step",
                "2s",
                "--arrivals-query",
                &arrivals,
                "--save-trace",
                &saved,
            ],
        ]
        .concat(),
    );
    assert!(ok, "simulate --prometheus failed: {err}");
    assert!(
        err.contains(&format!("saved the trace to {saved}")),
        "{err}"
    );
    assert!(
        !err.contains("page "),
        "progress is for terminals only: {err}"
    );

    let csv = std::fs::read_to_string(&saved).expect("the saved trace");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("time,active,arrivals"));
    let rows: Vec<(String, f64, f64)> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (
                cells[0].to_owned(),
                cells[1].parse().expect("a number"),
                cells[2].parse().expect("a number"),
            )
        })
        .collect();
    assert!(
        rows.len() >= 30,
        "the wave and after, at 2 s: {} rows\n{csv}",
        rows.len()
    );
    // The trace starts where both series first have a sample, at most 2 minutes back.
    assert!(rows[0].0.ends_with('Z'), "{csv}");
    // The wave is there: sessions rise well above the idle level and fall back at the end.
    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    assert!(peak >= 20.0, "peak of {peak} active sessions\n{csv}");
    // The range ends on a step boundary at or just before the moment Prometheus showed none.
    let last = rows.last().map_or(f64::MAX, |r| r.1);
    assert!(
        last <= peak / 4.0,
        "the wave has ended: {last} of {peak}\n{csv}"
    );
    // The arrivals add up to the sessions the generator opened (a rate over 10 s windows,
    // sampled every 2 s).
    let arrived: f64 = rows.iter().map(|r| r.2 * 2.0).sum();
    assert!(
        (0.7 * opened..=1.3 * opened).contains(&arrived),
        "{arrived} arrivals read back for {opened} sessions opened\n{csv}"
    );

    // Offline, from the saved file: the same report.
    let (ok, offline, err) = simulate(&[&common[..], &["--trace", &saved]].concat());
    assert!(ok, "simulate --trace failed: {err}");
    assert_eq!(offline, live, "the saved trace replays to another report");
    let report: serde_json::Value = serde_json::from_str(&live).expect("JSON");
    assert!(
        report["runs"]["drainscaler"]["sessions_started"].as_u64() > Some(100),
        "{report}"
    );

    // Per pod, the active sessions are several series: the error names the label.
    let per_pod = format!(r#"app_active_sessions{{namespace="{}"}}"#, ns.0);
    let policy = policy_file(&dir, &ns.0, &per_pod);
    let read_range = |policy: &str, since: &str, until: &str, step: &str| {
        simulate(&[
            "--policy",
            policy,
            "--prometheus",
            &url,
            "--since",
            since,
            "--until",
            until,
            "--step",
            step,
        ])
    };
    let (ok, _, err) = read_range(&policy, "2m", &until, "2s");
    assert!(!ok);
    assert!(
        err.contains("series that differ in") && err.contains("pod ("),
        "{err}"
    );
    assert!(err.contains("sum without ("), "{err}");

    // A range before the app existed is empty.
    let policy = policy_file(&dir, &ns.0, &active);
    let (ok, _, err) = read_range(&policy, "5m", "2020-01-01T00:00:00Z", "15s");
    assert!(!ok);
    assert!(
        err.contains("has no samples from 2019-12-31T23:55:00Z to 2020-01-01T00:00:00Z"),
        "{err}"
    );

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let dead = format!("http://{}", closed.local_addr().expect("an address"));
    drop(closed);
    let (ok, _, err) = simulate(&["--policy", &policy, "--prometheus", &dead, "--since", "5m"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot reach Prometheus at {dead}")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
