use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::plugin::objects::{Objects, parse};
use crate::plugin::render::{Paint, age, render_all};
use crate::plugin::view::PodState;
use crate::plugin::{PluginError, Scope, to_json, views};

const FIXTURE: &str = include_str!("../../tests/fixtures/plugin/chat.yaml");

fn fixture() -> Objects {
    parse(FIXTURE).expect("the fixture parses")
}

fn at(t: &str) -> Timestamp {
    t.parse().expect("a timestamp")
}

fn screen(objects: &Objects) -> String {
    let shown = views(objects, &Scope::All, None).expect("views");
    render_all(&shown, at("2026-11-29T08:00:00Z"), Paint { on: false })
}

#[test]
fn a_policy_is_one_screen_of_replicas_metrics_unhealthy_conditions_pods_and_decisions() {
    let expected = "\
ScalingPolicy prod/chat  ->  Deployment/chat  (min 2, max 10)
Replicas:   current 4, desired 3; 26 sessions
Metrics:
  sessions  26           / 10 per replica  wants 3
  rps       unavailable  / 300             Prometheus at http://prometheus.monitoring:9090 did not answer: connection refused
Conditions (not healthy):
  ScalingLimited=True ScaleDownLimit (10m ago): the desired replica count is decreasing faster than the maximum scale rate
  Draining=True DrainInProgress (10m ago): 2 instances draining
Pods:
  NAME              STATE           SESSIONS  HEARTBEAT  AGE
  chat-5d8f7-aaaaa  serving         12        <30s       1h
  chat-5d8f7-bbbbb  draining 2m30s  3         <30s       50m
  chat-5d8f7-ccccc  removable       0         <30s       1d2h
  chat-5d8f7-ddddd  silent          7         1m50s ago  40m
  chat-5d8f7-eeeee  lost            4         5m ago     40m
  chat-5d8f7-fffff  not ready       ?         awaited    10s
Last decisions:
  AGE  REASON             MESSAGE
  30s  MetricUnavailable  metric rps could not be read: Prometheus at http://prometheus.monitoring:9090 did not answer: connection refused; holding 4 replicas (x2)
  10m  DrainStarted       started draining pod chat-5d8f7-ccccc (0 sessions): sessions asks for 4
  20m  ScaledUp           scaled up from 3 to 5 replicas: sessions asks for 5
";
    let got = screen(&fixture());
    assert_eq!(got, expected, "got:\n{got}");
}

#[test]
fn pods_of_other_workloads_and_events_of_other_policies_are_left_out() {
    let got = screen(&fixture());
    assert!(!got.contains("other-7c9d-zzzzz"), "{got}");
    assert!(!got.contains("about another policy"), "{got}");
}

#[test]
fn conditions_at_their_healthy_value_are_not_shown_whatever_their_reason() {
    let got = screen(&fixture());
    for healthy in ["Ready=", "ScalingActive=", "Fallback=", "Heartbeats="] {
        assert!(!got.contains(healthy), "{healthy} shown:\n{got}");
    }
    let mut objects = fixture();
    let status = objects.policies[0].status.as_mut().expect("status");
    status.conditions.retain(|c| c.type_ == "Ready");
    let got = screen(&objects);
    assert!(got.contains("Conditions: all healthy"), "{got}");
}

#[test]
fn a_draining_pod_shows_the_sessions_it_reported_since_its_drain_began() {
    let mut objects = fixture();
    let status = objects.policies[0].status.as_mut().expect("status");
    status.draining[0].sessions = None;
    let shown = views(&objects, &Scope::All, None).expect("views");
    let pod = shown[0]
        .pods
        .iter()
        .find(|p| p.name == "chat-5d8f7-bbbbb")
        .expect("the draining pod");
    assert_eq!((pod.state, pod.sessions), (PodState::Draining, None));
}

#[test]
fn without_events_the_decisions_are_the_replica_changes_in_status() {
    let mut objects = fixture();
    objects.events.clear();
    let got = screen(&objects);
    assert!(
        got.contains(
            "10m  ScaledDown  from 5 to 4 serving replicas (from status.scaleEvents; the reason is in the events)"
        ),
        "{got}"
    );
    assert!(got.contains("20m  ScaledUp    from 3 to 5"), "{got}");
}

#[test]
fn colour_is_added_only_when_asked_for() {
    let shown = views(&fixture(), &Scope::All, None).expect("views");
    let now = at("2026-11-29T08:00:00Z");
    let plain = render_all(&shown, now, Paint { on: false });
    let coloured = render_all(&shown, now, Paint { on: true });
    assert!(!plain.contains('\x1b'));
    assert!(coloured.contains("\x1b[31mlost"), "{coloured}");
    let stripped = strip_ansi(&coloured);
    assert_eq!(stripped, plain, "colour shifts nothing");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn an_unknown_policy_is_an_error_that_names_the_ones_there_are() {
    let err = views(
        &fixture(),
        &Scope::Namespace("prod".to_owned()),
        Some("chta"),
    )
    .expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "no ScalingPolicy \"chta\" in namespace prod; there are: chat"
    );
    assert_eq!(err.label(), "unknown_policy");
    let none = views(
        &fixture(),
        &Scope::Namespace("dev".to_owned()),
        Some("chat"),
    )
    .expect_err("not in dev");
    assert!(
        none.to_string()
            .ends_with("in namespace dev; there are none")
    );
}

#[test]
fn a_namespace_shows_only_its_own_policies() {
    let shown = views(&fixture(), &Scope::Namespace("dev".to_owned()), None).expect("views");
    assert!(shown.is_empty());
    let shown = views(&fixture(), &Scope::Namespace("prod".to_owned()), None).expect("views");
    assert_eq!(shown.len(), 1);
}

#[test]
fn json_keeps_times_not_ages_and_names_the_states() {
    let shown = views(&fixture(), &Scope::All, None).expect("views");
    let json: serde_json::Value =
        serde_json::from_str(&to_json(&shown).expect("json")).expect("valid JSON");
    let pods = &json["policies"][0]["pods"];
    assert_eq!(pods[4]["state"], "Lost");
    assert_eq!(pods[4]["lastHeartbeat"], "2026-11-29T07:55:00Z");
    assert_eq!(pods[1]["drainingSince"], "2026-11-29T07:57:30Z");
    assert_eq!(json["policies"][0]["decisions"][0]["type"], "Warning");
}

#[test]
fn a_file_that_is_not_saved_objects_is_refused_with_the_reason() {
    let err = parse("just: a map\n").expect_err("no kind");
    assert_eq!(err, "a document without a kind");
    let err =
        parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: 3\n").expect_err("bad pod");
    assert!(err.starts_with("Pod p: "), "{err}");
    let err = crate::plugin::from_text("saved.yaml", "kind: [").expect_err("not YAML");
    assert!(matches!(err, PluginError::ParseFile { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("saved.yaml is not a saved list"),
        "{err}"
    );
}

#[test]
fn ages_read_like_kubectl() {
    let now = at("2026-11-29T08:00:00Z");
    for (then, want) in [
        ("2026-11-29T08:00:00Z", "0s"),
        ("2026-11-29T07:59:15Z", "45s"),
        ("2026-11-29T07:57:00Z", "3m"),
        ("2026-11-29T07:56:50Z", "3m10s"),
        ("2026-11-29T06:00:00Z", "2h"),
        ("2026-11-29T05:55:00Z", "2h5m"),
        ("2026-11-26T08:00:00Z", "3d"),
        ("2026-11-26T04:00:00Z", "3d4h"),
        ("2026-11-29T08:00:05Z", "0s"),
    ] {
        assert_eq!(age(&Time(at(then)), now), want, "{then}");
    }
}

/// The fixture and more saved objects after it.
fn fixture_with(extra: &str) -> Objects {
    parse(&format!("{FIXTURE}\n---\n{extra}")).expect("the objects parse")
}

#[test]
fn the_targets_pods_are_those_its_selector_matches_as_the_controller_counts_them() {
    // One pod matches the Deployment's selector (app: chat) but has no owner, as after
    // `kubectl run` or an orphaning delete; another is owned by the Deployment's ReplicaSet
    // but was relabelled out of the selector to debug it. The controller counts the first and
    // not the second; so does the view.
    let objects = fixture_with(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: chat-by-hand
    namespace: prod
    creationTimestamp: "2026-11-29T07:00:00Z"
    labels: {app: chat}
  spec: {containers: [{name: app, image: chat}]}
  status: {phase: Running, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata:
    name: chat-5d8f7-debug
    namespace: prod
    creationTimestamp: "2026-11-29T07:00:00Z"
    labels: {app: chat-debug, pod-template-hash: 5d8f7}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: chat-5d8f7, uid: rs-1, controller: true}]
  spec: {containers: [{name: app, image: chat}]}
  status: {phase: Running, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata:
    name: chat-elsewhere
    namespace: dev
    creationTimestamp: "2026-11-29T07:00:00Z"
    labels: {app: chat}
  spec: {containers: [{name: app, image: chat}]}
"#,
    );
    let shown = views(&objects, &Scope::All, None).expect("views");
    let names: Vec<&str> = shown[0].pods.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"chat-by-hand"), "{names:?}");
    assert!(!names.contains(&"chat-5d8f7-debug"), "{names:?}");
    assert!(!names.contains(&"chat-elsewhere"), "{names:?}");
    assert_eq!(
        shown[0].pods.len(),
        7,
        "the fixture's six and the one by hand: {names:?}"
    );
    assert_eq!(shown[0].pods_unknown, None);
}

#[test]
fn without_its_target_a_policys_pods_are_unknown_and_the_view_says_what_to_save() {
    let mut objects = fixture();
    objects.workloads.clear();
    let shown = views(&objects, &Scope::All, None).expect("views");
    assert!(shown[0].pods.is_empty());
    let text = render_all(&shown, at("2026-11-29T08:00:00Z"), Paint { on: false });
    assert!(
        text.contains(
            "Pods:       unknown: deployment chat is not among the objects read, so its pod selector is unknown; save it too (kubectl get scalingpolicy,deployment,pods,events -o yaml)\n"
        ),
        "{text}"
    );
}

#[test]
fn a_target_with_an_empty_selector_shows_no_pods_rather_than_every_pod() {
    let text = FIXTURE.replace("selector: {matchLabels: {app: chat}}", "selector: {}");
    assert_ne!(
        text, FIXTURE,
        "the fixture's Deployment selector is where this test expects it"
    );
    let objects = parse(&text).expect("parses");
    let shown = views(&objects, &Scope::All, None).expect("views");
    assert!(shown[0].pods.is_empty());
    assert_eq!(
        shown[0].pods_unknown.as_deref(),
        Some("Deployment prod/chat: its selector is empty: it would select every pod")
    );
}

#[test]
fn a_held_back_pod_is_shown_as_such_and_counted_beside_the_sessions() {
    let mut objects = fixture();
    let status = objects.policies[0].status.as_mut().expect("status");
    status
        .instances
        .as_mut()
        .expect("the fixture's instances")
        .held_back = 1;
    let pod = objects
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("chat-5d8f7-aaaaa"))
        .expect("the serving pod");
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert("drainscaler.io/held-back".to_owned(), "true".to_owned());
    let got = screen(&objects);
    assert!(
        got.contains(
            "Replicas:   current 4, desired 3; 26 sessions; 1 held back (no new sessions)"
        ),
        "{got}"
    );
    assert!(
        got.contains("  chat-5d8f7-aaaaa  held back       12        <30s       1h"),
        "{got}"
    );
    // Without any held back, the line says nothing of it.
    assert!(!screen(&fixture()).contains("held back"));
}
