//! The monitoring manifests (manifests/monitoring/) may name only metrics that drainscaler
//! exports: every PromQL expression in the Grafana dashboard and the PrometheusRule must parse,
//! and each metric its selectors read must be one that a real `Metrics` encodes on `/metrics`.
//! The exported names come from the registry itself, so a renamed or removed metric fails here
//! instead of leaving an empty panel or an alert that can never fire.

use std::collections::BTreeSet;
use std::path::PathBuf;

use std::time::{Duration, Instant};

use drainscaler::metrics::{Metrics, VerbLabels};
use drainscaler::{engine, testing};
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize;
use serde_json::Value;

const DASHBOARD: &str = "manifests/monitoring/drainscaler-dashboard.json";
const RULES: &str = "manifests/monitoring/prometheusrule.yaml";

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// A `Metrics` after one of each thing it records, so that every family has a series: the
/// encoder leaves out families that have none.
fn recorded_metrics() -> Metrics {
    let metrics = Metrics::default();
    let mut decision = engine::decide(
        &testing::policy().build(),
        &testing::observation().build(),
        &testing::history().build(),
        testing::NOW,
    );
    decision.draining.push(engine::Draining {
        pod: "chat-0".to_owned(),
        since: testing::NOW,
        sessions: Some(3),
    });
    metrics.observe_decision("demo", "chat", Duration::from_secs(600), &decision);
    metrics.blocked("demo", "blocked");
    metrics.error("observe");
    metrics.heartbeat("accepted");
    metrics.token_review("hit");
    metrics.refused("connections");
    metrics.fenced_write("sent");
    metrics.api_request("GET");
    metrics
        .api_seconds
        .get_or_create(&VerbLabels {
            verb: "GET".to_owned(),
        })
        .observe(0.01);
    metrics.reconciles.inc();
    drop(metrics.timer(Instant::now()));
    metrics.leading(true);
    metrics
}

/// The sample names `/metrics` serves: every family from its `# TYPE` line, with the suffixes
/// its type adds (`_total` for counters; `_bucket`, `_sum`, `_count` for histograms). A family
/// that `recorded_metrics` does not exercise is missing, so the check errs towards failing.
fn exported_samples() -> BTreeSet<String> {
    let page = recorded_metrics().encode().expect("metrics encode");
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("a # TYPE line without a type: {line}"));
        match kind {
            "counter" => {
                names.insert(format!("{family}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
            }
            "gauge" => {
                names.insert(family.to_owned());
            }
            other => panic!("{family} has type {other}, which this test does not map to samples"),
        }
    }
    names
}

/// Grafana's interval macros are not PromQL: give them a duration so the expression parses.
fn expand_grafana_macros(expr: &str) -> String {
    ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_owned(), |e, m| e.replace(m, "5m"))
}

/// The metric names an expression's selectors read, or why it does not parse.
fn selected_metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>, Vec<String>);
    impl Names {
        fn add(&mut self, vs: &VectorSelector) {
            let by_matcher = vs
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone());
            match vs.name.clone().or(by_matcher) {
                Some(name) => {
                    self.0.insert(name);
                }
                None => self
                    .1
                    .push(format!("a selector without a metric name: {vs}")),
            }
        }
    }
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(vs) => self.add(vs),
                Expr::MatrixSelector(ms) => self.add(&ms.vs),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = parser::parse(&expand_grafana_macros(expr))?;
    let mut names = Names(BTreeSet::new(), Vec::new());
    walk_expr(&mut names, &parsed)?;
    if names.1.is_empty() {
        Ok(names.0)
    } else {
        Err(names.1.join("; "))
    }
}

/// Every PromQL expression of the dashboard, named by where it is: panel targets' `expr`, and
/// the selector inside each query variable's `label_values(selector, label)`.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has a panels list");
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("untitled");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr"));
            out.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has a templating list");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("unnamed");
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| {
                panic!("variable {name}: expected label_values(selector, label), got {query}")
            });
        out.push((format!("variable {name}"), inner.to_owned()));
    }
    out
}

#[derive(Deserialize)]
struct PrometheusRule {
    kind: String,
    spec: RuleSpec,
}

#[derive(Deserialize)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
}

fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let rule: PrometheusRule = serde_saphyr::from_str(yaml).expect("the PrometheusRule parses");
    assert_eq!(rule.kind, "PrometheusRule");
    rule.spec
        .groups
        .into_iter()
        .flat_map(|g| g.rules)
        .map(|r| {
            let name = r
                .alert
                .or(r.record)
                .expect("a rule has an alert or record name");
            (format!("rule {name}"), r.expr)
        })
        .collect()
}

/// Every problem with `exprs`: expressions that do not parse, and metrics not exported.
fn problems(exprs: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for (place, expr) in exprs {
        match selected_metrics(expr) {
            Err(e) => found.push(format!("{place}: {expr:?} does not parse: {e}")),
            Ok(names) if names.is_empty() => {
                found.push(format!("{place}: {expr:?} reads no metric"));
            }
            Ok(names) => {
                for name in names.difference(exported) {
                    found.push(format!(
                        "{place}: {name} is not a metric drainscaler exports (in {expr:?})"
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn the_dashboard_queries_parse_and_name_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 12, "only {} expressions found", exprs.len());
    let found = problems(&exprs, &exported_samples());
    assert!(found.is_empty(), "{DASHBOARD}:\n{}", found.join("\n"));
}

#[test]
fn the_alert_expressions_parse_and_name_only_exported_metrics() {
    let exprs = rule_exprs(&read(RULES));
    assert!(exprs.len() >= 4, "only {} rules found", exprs.len());
    let found = problems(&exprs, &exported_samples());
    assert!(found.is_empty(), "{RULES}:\n{}", found.join("\n"));
}

#[test]
fn the_check_itself_rejects_a_misspelt_metric_a_bad_query_and_a_nameless_selector() {
    let exported = exported_samples();
    // The counter's sample, not its family name: Prometheus stores `_total`.
    assert!(exported.contains("drainscaler_reconciles_total"));
    assert!(!exported.contains("drainscaler_reconciles"));
    assert!(exported.contains("drainscaler_reconcile_duration_seconds_bucket"));
    let bad = [
        ("misspelt", "rate(drainscaler_reconcile_total[5m])"),
        ("family name of a counter", "drainscaler_reconciles"),
        (
            "unparsable",
            "sum by (le (rate(drainscaler_reconciles_total[5m]))",
        ),
        ("nameless", r#"{policy="chat"}"#),
    ];
    for (what, expr) in bad {
        let found = problems(&[(what.to_owned(), expr.to_owned())], &exported);
        assert_eq!(found.len(), 1, "{what}: {found:?}");
    }
    let good = "histogram_quantile(0.99, sum by (le) (rate(drainscaler_reconcile_duration_seconds_bucket[$__rate_interval])))";
    assert_eq!(
        problems(&[("good".to_owned(), good.to_owned())], &exported),
        Vec::<String>::new()
    );
}

/// Runs `promtool` with `args` in `dir`; `None` when promtool is not installed.
fn promtool(dir: &std::path::Path, args: &[&str]) -> Option<(bool, String)> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// The alerts fire when they should and not before, with the labels a route needs, by
/// promtool's rule unit tests (tests/fixtures/monitoring-alerts.yaml). The rules are checked
/// whole (annotation templates included), then tested without annotations so that the cases
/// state when and for what an alert fires, not its wording.
#[test]
fn the_alerts_fire_when_and_only_when_they_should() {
    let dir = std::env::temp_dir().join(format!("drainscaler-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let rule: Value = serde_saphyr::from_str(&read(RULES)).expect("the PrometheusRule parses");
    let mut spec = rule["spec"].clone();
    std::fs::write(
        dir.join("full.yaml"),
        serde_json::to_string_pretty(&spec).expect("JSON"),
    )
    .expect("write the rules");
    let Some((ok, out)) = promtool(&dir, &["check", "rules", "full.yaml"]) else {
        eprintln!("skipping: promtool is not installed (it comes with Prometheus)");
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    for group in spec["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            rule.as_object_mut().expect("a rule").remove("annotations");
        }
    }
    std::fs::write(
        dir.join("rules.yaml"),
        serde_json::to_string_pretty(&spec).expect("JSON"),
    )
    .expect("write the rules");
    std::fs::write(
        dir.join("test.yaml"),
        read("tests/fixtures/monitoring-alerts.yaml"),
    )
    .expect("write the rule tests");
    let (ok, out) = promtool(&dir, &["test", "rules", "test.yaml"]).expect("promtool ran once");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "promtool test rules:\n{out}");
}
