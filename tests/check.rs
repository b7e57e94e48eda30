//! `drainscaler check` on files: good ones print one summary line per policy and exit 0, bad
//! ones say exactly what is wrong and where, and exit 1.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `drainscaler check -f FILE...` from the crate root, so that paths print as given.
fn check(files: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drainscaler"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).arg("check");
    for f in files {
        cmd.args(["-f", f]);
    }
    cmd.output().expect("run drainscaler check")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// Checks one file: its exit code and its exact output, line by line.
fn assert_check(file: &str, code: i32, lines: &[&str]) {
    let out = check(&[file]);
    let expected: Vec<String> = lines.iter().map(|l| format!("{file}: {l}")).collect();
    let printed = stdout(&out);
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(printed, expected, "output of check -f {file}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code of check -f {file}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_policy_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("read examples/policies")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            format!(
                "examples/policies/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples: {files:?}");
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = check(&names);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    for line in stdout(&out).lines() {
        assert!(line.contains(": ok: scales "), "{line}");
    }
}

#[test]
fn a_good_policy_prints_a_one_line_summary() {
    assert_check(
        "examples/policies/chat.yaml",
        0,
        &[
            "document 1: ScalingPolicy chat: ok: scales Deployment chat between 2 and 50 replicas every 15s on rps 100/replica, sessions 80/replica; drains instances for up to 30m, then removes; pushed heartbeats, lost after 30s",
        ],
    );
    assert_check(
        "examples/policies/game-servers.yaml",
        0,
        &[
            "document 1: ScalingPolicy arena: ok: scales StatefulSet arena between 3 and 40 replicas every 30s on players 64/replica; drains instances for up to 2h, never removes one with sessions; Prometheus heartbeats, lost after 1m",
        ],
    );
    assert_check(
        "examples/policies/queue-workers.yaml",
        0,
        &[
            "document 1: ScalingPolicy mailer: ok: scales Deployment mailer between 0 and 20 replicas every 15s on backlog 500/replica; removes instances without draining; no heartbeats",
        ],
    );
}

#[test]
fn policies_among_other_kinds_are_checked_and_the_rest_skipped() {
    assert_check(
        "tests/fixtures/good/bundle.yaml",
        0,
        &[
            "document 1: skipped: a Service, not a ScalingPolicy",
            "document 2: ScalingPolicy chat: ok: scales Deployment chat between 2 and 30 replicas every 15s on sessions 100/replica; drains instances for up to 30m, then removes; pushed heartbeats, lost after 30s",
            "document 3: ScalingPolicy chat-eu: ok: scales Deployment chat-eu between 1 and 8 replicas every 1m on rps 2000 total; drains instances for up to 45m, never removes one with sessions; no heartbeats",
            "document 4: skipped: a ConfigMap, not a ScalingPolicy",
        ],
    );
}

#[test]
fn bad_policies_say_what_is_wrong_and_how_to_fix_it() {
    let cases: [(&str, &[&str]); 16] = [
        (
            "min-above-max",
            &[
                "spec.minReplicas: minReplicas (12) is greater than maxReplicas (10); lower minReplicas or raise maxReplicas",
            ],
        ),
        (
            "duplicate-metrics",
            &[
                r#"spec.metrics[1].name: metric name "rps" is used twice; give each metric its own name"#,
            ],
        ),
        (
            "metric-sources",
            &[
                "spec.metrics[0]: has no source; set prometheus: {query: ...} or sessions: {}",
                "spec.metrics[1]: has two sources; set either prometheus or sessions, not both",
            ],
        ),
        (
            "durations",
            &[
                "spec.interval: must be at least 1s, got 0s",
                r#"spec.heartbeat.timeout: "1d" has unknown unit "d"; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)"#,
                r#"spec.drain.timeout: "30x" has unknown unit "x"; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)"#,
                r#"spec.prometheus.timeout: "5" has a number without a unit; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)"#,
            ],
        ),
        (
            "interval-number",
            &[
                "spec.interval: 15 has no unit; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)",
            ],
        ),
        (
            "quantities",
            &[
                r#"spec.metrics[0].target.averageValue: "lots" is not a quantity; write a number or a Kubernetes quantity such as 100, 0.5 or 250m"#,
                r#"spec.metrics[0].activationThreshold: "10x" has unknown suffix "x"; write a number or a Kubernetes quantity such as 100, 0.5 or 250m"#,
                "spec.metrics[1].target.value: must be greater than 0, got -5",
            ],
        ),
        (
            "sessions-without-heartbeat",
            &[
                "spec.metrics[0].sessions: a sessions metric needs heartbeats: add spec.heartbeat (for example {source: Push})",
            ],
        ),
        (
            "fallback",
            &[
                "spec.fallback.failureThreshold: must be at least 1, got 0",
                "spec.fallback.replicas: 20 is outside [minReplicas, maxReplicas] = [2, 10]; choose a count within them",
            ],
        ),
        (
            "hold-back",
            &[
                "spec.drain.holdBack.maxPods: must be between 1 and 100, got 0",
                "spec.drain.holdBack.sessionCeiling: must be at least 1 session per serving instance, got 0",
            ],
        ),
        (
            "hold-back-without-heartbeat",
            &[
                "spec.drain.holdBack: holding back decides from the session counts instances report: add spec.heartbeat (for example {source: Push}), or remove holdBack",
                "spec.drain.holdBack.maxPods: 10 is not less than maxReplicas (10): at least one instance must serve; lower maxPods",
            ],
        ),
        (
            "prometheus-server",
            &[
                "spec.prometheus.address: credentials would be sent over plain http, readable by anyone on the path: use an https address, or set spec.prometheus.allowInsecureCredentials: true if that path is trusted",
                "spec.prometheus.timeout: must be between 100ms and 30s, got 2m: it bounds how long a reconcile waits for Prometheus, all of a policy's queries together",
            ],
        ),
        (
            "prometheus-heartbeat",
            &[
                "spec.heartbeat.query: is required when heartbeat.source is Prometheus; write a per-pod query such as sum by (pod) (app_active_sessions)",
            ],
        ),
        (
            "unknown-fields",
            &[
                "spec.heartbeat.timout: unknown field; did you mean timeout?",
                "spec.metrics[0].treshold: unknown field; the fields here are activationThreshold, name, prometheus, sessions, target",
                "spec.minReplica: unknown field; did you mean minReplicas?",
            ],
        ),
        (
            "identity",
            &[
                r#"apiVersion: must be drainscaler.io/v1alpha1, got "drainscaler.io/v1""#,
                "metadata.name: is required",
            ],
        ),
        ("missing-fields", &["spec.targetRef: is required"]),
        (
            "wrong-types",
            &[r#"spec.maxReplicas: must be a whole number, got "ten""#],
        ),
    ];
    for (name, errors) in cases {
        let file = format!("tests/fixtures/bad/{name}.yaml");
        let policy = if name == "identity" {
            "(no name)"
        } else {
            name
        };
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("document 1: ScalingPolicy {policy}: {e}"))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_check(&file, 1, &lines);
    }
}

#[test]
fn unknown_enum_values_list_the_allowed_ones() {
    assert_check(
        "tests/fixtures/bad/enums.yaml",
        1,
        &[
            r#"document 1: ScalingPolicy on-timeout: spec.drain.onTimeout: must be Remove or Keep, got "Delete""#,
            r#"document 2: ScalingPolicy target-type: spec.metrics[0].target.type: must be Value or AverageValue, got "Average""#,
            r#"document 3: ScalingPolicy select-policy: spec.behavior.scaleDown.selectPolicy: must be one of Max, Min, Disabled, got "Maximum""#,
        ],
    );
}

#[test]
fn yaml_syntax_errors_give_the_position() {
    assert_check(
        "tests/fixtures/bad/yaml-syntax.yaml",
        1,
        &[
            "not valid YAML: while parsing a flow mapping, did not find expected ',' or '}' at line 4, column 5",
        ],
    );
}

#[test]
fn a_file_without_any_policy_fails() {
    assert_check(
        "tests/fixtures/bad/no-policy.yaml",
        1,
        &[
            "document 1: skipped: a ConfigMap, not a ScalingPolicy",
            "no ScalingPolicy found; expected kind: ScalingPolicy, apiVersion: drainscaler.io/v1alpha1",
        ],
    );
}

#[test]
fn one_bad_file_among_good_ones_fails_the_run() {
    let out = check(&[
        "examples/policies/chat.yaml",
        "tests/fixtures/bad/fallback.yaml",
        "tests/fixtures/good/bundle.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let printed = stdout(&out);
    assert!(
        printed.starts_with("examples/policies/chat.yaml: document 1: ScalingPolicy chat: ok:")
    );
    assert!(printed.contains("tests/fixtures/bad/fallback.yaml: document 1: ScalingPolicy fallback: spec.fallback.failureThreshold"));
    assert!(
        printed.contains("tests/fixtures/good/bundle.yaml: document 3: ScalingPolicy chat-eu: ok:")
    );
}

#[test]
fn a_dash_reads_the_policy_from_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drainscaler"))
        .args(["check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run drainscaler check -f -");
    let policy = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bad/interval-number.yaml"
    ))
    .expect("read fixture");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&policy)
        .expect("write policy");
    let out = child.wait_with_output().expect("wait for check");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "-: document 1: ScalingPolicy interval-number: spec.interval: 15 has no unit; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)\n"
    );
}

#[test]
fn a_missing_file_is_an_error_of_its_own() {
    let out = check(&["tests/fixtures/no-such-file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: reading tests/fixtures/no-such-file.yaml: "),
        "{err}"
    );
}
