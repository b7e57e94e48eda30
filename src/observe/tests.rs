//! Observing Prometheus for a policy: one time budget for all of its queries, and heartbeat
//! samples recorded only for the pod they belong to.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as KubeTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use super::prometheus::decode::{PerPod, PodSample};
use super::prometheus::fake::{Answer, Server};
use super::{Sources, readings, record_heartbeats};
use crate::api::OnLost;
use crate::engine::{Reading, Time};
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::pods::CachedPod;
use crate::policy::{Heartbeat, HeartbeatSource, PrometheusAuth, PrometheusServer};
use crate::testing::policy;

fn pod(name: &str, uid: &str, created: Time) -> CachedPod {
    CachedPod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("demo".to_owned()),
            uid: Some(uid.to_owned()),
            creation_timestamp: Some(KubeTime(
                Timestamp::from_millisecond(created.millis()).expect("a time"),
            )),
            ..ObjectMeta::default()
        },
        ..CachedPod::default()
    }
}

fn store(pods: Vec<CachedPod>) -> Store<CachedPod> {
    let (store, mut writer) = reflector::store::<CachedPod>();
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    store
}

fn sources(pods: Store<CachedPod>) -> Sources {
    let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
    Sources {
        client: kube::Client::try_from(config).expect("a client that is never called"),
        pods,
        pod_index: std::sync::Arc::default(),
        heartbeats: Heartbeats::default(),
        prometheus: None,
        heartbeats_since: Time(0),
        namespace_label: None,
    }
}

fn sample(sessions: u64, at: Time, uid: Option<&str>) -> PodSample {
    PodSample {
        sessions,
        at,
        uid: uid.map(str::to_owned),
    }
}

fn per_pod(samples: &[(&str, PodSample)]) -> PerPod {
    PerPod {
        samples: samples
            .iter()
            .map(|(p, s)| ((*p).to_owned(), s.clone()))
            .collect(),
        unusable: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn all_of_a_policys_queries_share_one_time_budget() {
    let silent = Server::start(Answer::Silent);
    let mut p = policy()
        .average("a", 1.0)
        .average("b", 1.0)
        .average("c", 1.0)
        .build();
    let budget = Duration::from_secs(2);
    p.prometheus = Some(PrometheusServer {
        address: silent.url(),
        auth: PrometheusAuth::None,
        ca_secret: None,
        timeout: budget,
    });
    p.heartbeat = Some(Heartbeat {
        source: HeartbeatSource::Prometheus {
            query: "sum by (pod) (sessions)".to_owned(),
        },
        timeout: Duration::from_secs(30),
        on_lost: OnLost::Keep,
        max_concurrent_replacements: 1,
    });
    let s = sources(store(Vec::new()));
    let started = tokio::time::Instant::now();
    let got = readings(&s, "demo", &p, None, Time(1_700_000_000_000))
        .await
        .expect("not blocked");
    // The clock is paused: this is the budget's arithmetic, not a measured speed. Four queries
    // with a budget each would take four budgets.
    assert_eq!(started.elapsed(), budget);
    assert_eq!(got.len(), 3);
    for (name, r) in &got {
        assert!(
            matches!(r, Reading::Unavailable { reason } if reason.contains("time budget of 2s")),
            "{name}: {r:?}"
        );
    }
    assert!(s.heartbeats.is_empty());
}

#[tokio::test]
async fn reused_readings_query_nothing() {
    let server = Server::start(Answer::Silent);
    let mut p = policy().average("a", 1.0).build();
    p.prometheus = Some(PrometheusServer {
        address: server.url(),
        auth: PrometheusAuth::None,
        ca_secret: None,
        timeout: Duration::from_secs(2),
    });
    let kept = [("a".to_owned(), Reading::Value(4.0))]
        .into_iter()
        .collect();
    let s = sources(store(Vec::new()));
    let got = readings(&s, "demo", &p, Some(&kept), Time(0))
        .await
        .expect("not blocked");
    assert_eq!(got, kept);
    assert_eq!(server.seen.requests(), 0);
}

#[tokio::test]
async fn a_sample_is_recorded_for_its_pod_at_its_own_time_and_uid() {
    let s = sources(store(vec![pod("chat-0", "uid-1", Time(1_000))]));
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(3, Time(5_000), None))]),
    );
    let key = PodKey::new("demo", "chat-0");
    let beat = s.heartbeats.latest(&key, Some("uid-1")).expect("recorded");
    assert_eq!((beat.sessions, beat.at), (3, Time(5_000)));
}

#[tokio::test]
async fn a_recreated_pod_does_not_inherit_its_predecessors_sample() {
    let s = sources(store(vec![pod("chat-0", "uid-1", Time(1_000))]));
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(0, Time(5_000), None))]),
    );
    // chat-0 is deleted and recreated with a new UID: the old reading is not its own.
    let key = PodKey::new("demo", "chat-0");
    assert_eq!(s.heartbeats.latest(&key, Some("uid-2")), None);
}

#[tokio::test]
async fn a_sample_from_before_the_pod_existed_is_not_its_heartbeat() {
    // The predecessor's series, still in Prometheus when its successor of the same name starts.
    let s = sources(store(vec![pod("chat-0", "uid-2", Time(10_000))]));
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(0, Time(9_000), None))]),
    );
    assert!(s.heartbeats.is_empty());
}

#[tokio::test]
async fn a_sample_from_before_the_pod_started_is_not_its_heartbeat() {
    let mut p = pod("chat-0", "uid-2", Time(1_000));
    p.status = Some(crate::observe::pods::CachedPodStatus {
        start_time: Some(KubeTime(
            Timestamp::from_millisecond(10_000).expect("a time"),
        )),
        ..Default::default()
    });
    let s = sources(store(vec![p]));
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(0, Time(9_000), None))]),
    );
    assert!(s.heartbeats.is_empty());
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(1, Time(10_000), None))]),
    );
    assert_eq!(s.heartbeats.len(), 1);
}

#[tokio::test]
async fn a_sample_whose_series_names_another_uid_is_not_recorded() {
    let s = sources(store(vec![pod("chat-0", "uid-2", Time(1_000))]));
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(0, Time(5_000), Some("uid-1")))]),
    );
    assert!(s.heartbeats.is_empty());
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("chat-0", sample(2, Time(6_000), Some("uid-2")))]),
    );
    let key = PodKey::new("demo", "chat-0");
    assert_eq!(
        s.heartbeats.latest(&key, Some("uid-2")).map(|b| b.sessions),
        Some(2)
    );
}

#[tokio::test]
async fn a_sample_for_a_pod_of_another_namespace_or_none_is_not_recorded() {
    let s = sources(store(vec![pod("chat-0", "uid-1", Time(1_000))]));
    record_heartbeats(
        &s,
        "other",
        &per_pod(&[("chat-0", sample(1, Time(5_000), None))]),
    );
    record_heartbeats(
        &s,
        "demo",
        &per_pod(&[("ghost", sample(1, Time(5_000), None))]),
    );
    assert!(s.heartbeats.is_empty());
}

fn server_policy(url: &str, query: &str) -> crate::policy::Policy {
    let mut p = policy().build();
    p.metrics.push(crate::policy::Metric {
        name: "rps".to_owned(),
        source: crate::policy::Source::Prometheus {
            query: query.to_owned(),
        },
        target: crate::policy::MetricTarget::Value(1.0),
        activation: 0.0,
    });
    p.prometheus = Some(PrometheusServer {
        address: url.to_owned(),
        auth: PrometheusAuth::None,
        ca_secret: None,
        timeout: Duration::from_secs(5),
    });
    p
}

#[tokio::test]
async fn with_a_namespace_label_a_query_is_sent_restricted_to_the_policys_namespace() {
    let server = Server::start(Answer::Full {
        status: 200,
        headers: Vec::new(),
        body: br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}"#
            .to_vec(),
    });
    let mut s = sources(store(Vec::new()));
    s.namespace_label = Some("namespace".to_owned());
    let p = server_policy(&server.url(), "sum(up)");
    let got = readings(&s, "demo", &p, None, Time(0))
        .await
        .expect("not blocked");
    assert_eq!(got["rps"], Reading::Value(1.0));
    let sent = server.seen.raw().join("\n");
    assert!(
        sent.contains("query=sum%28up%7Bnamespace%3D%22demo%22%7D%29"),
        "{sent}"
    );
}

#[tokio::test]
async fn with_a_namespace_label_a_query_of_another_namespace_blocks_the_policy_unsent() {
    let server = Server::start(Answer::Silent);
    let mut s = sources(store(Vec::new()));
    s.namespace_label = Some("namespace".to_owned());
    let p = server_policy(&server.url(), r#"sum(up{namespace="kube-system"})"#);
    let got = readings(&s, "demo", &p, None, Time(0)).await;
    assert!(
        matches!(&got, Err(super::Blocked::InvalidQuery(m)) if m.contains("metric rps") && m.contains("own namespace")),
        "{got:?}"
    );
    assert_eq!(server.seen.requests(), 0);
}

fn scaling_policy(name: &str, target: &str, created: i64) -> crate::api::ScalingPolicy {
    crate::testing::deployment_policy("demo", name, target, created)
}

#[test]
fn of_two_policies_on_one_target_the_younger_is_blocked_and_an_autoscaler_blocks_both() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

    use super::{Blocked, conflicts};
    use crate::index::targets::TargetIndex;

    let policies = TargetIndex::default();
    let autoscalers = TargetIndex::<HorizontalPodAutoscaler>::default();
    let (old, young, other) = (
        scaling_policy("old", "chat", 100),
        scaling_policy("young", "chat", 200),
        scaling_policy("other", "game", 50),
    );
    for sp in [&old, &young, &other] {
        policies.apply(&watcher::Event::Apply(sp.clone()));
    }
    assert_eq!(conflicts(&policies, &autoscalers, &old), None);
    assert_eq!(conflicts(&policies, &autoscalers, &other), None);
    let Some(Blocked::Conflict(why)) = conflicts(&policies, &autoscalers, &young) else {
        panic!("the younger policy is not blocked");
    };
    assert!(
        why.contains("ScalingPolicy old already scales Deployment chat"),
        "{why}"
    );

    let hpa = crate::testing::deployment_hpa("demo", "chat-hpa", "chat");
    autoscalers.apply(&watcher::Event::Apply(hpa));
    let Some(Blocked::Conflict(why)) = conflicts(&policies, &autoscalers, &old) else {
        panic!("the autoscaler does not block the older policy");
    };
    assert!(
        why.contains("HorizontalPodAutoscaler chat-hpa also scales"),
        "{why}"
    );
    assert_eq!(conflicts(&policies, &autoscalers, &other), None);
}
