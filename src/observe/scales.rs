//! The targets as watched: Deployments and StatefulSets cached with the fields `/scale` shows,
//! so that a reconcile reads its target's count without a request. The count is still written
//! through `/scale`, with the cached resourceVersion (the one `/scale` shows, the workload's
//! own): a count that changed since the cache saw it fails the write with 409 Conflict, exactly
//! as after a read through `/scale`. `observe::target` asks the API server when the cache cannot
//! answer.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet, StatefulSetOrdinals};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::{NamespaceResourceScope, Selector};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::api::TargetKind;
use crate::observe::{Blocked, Target, kind_name};

/// A Deployment as cached: its name and resourceVersion, and the count and selector `/scale`
/// shows. The rest of the object is skipped while parsing, never held.
#[derive(Resource, Deserialize, Clone, Debug, Default, PartialEq)]
#[resource(inherit = Deployment)]
pub struct CachedDeployment {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ScaleSpec>,
}

/// A StatefulSet as cached: as a Deployment, and where its ordinals begin.
#[derive(Resource, Deserialize, Clone, Debug, Default, PartialEq)]
#[resource(inherit = StatefulSet)]
pub struct CachedStatefulSet {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ScaleSpec>,
}

/// The fields of a Deployment's or StatefulSet's spec a reconcile reads.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ScaleSpec {
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    /// StatefulSets only.
    #[serde(default)]
    pub ordinals: Option<StatefulSetOrdinals>,
}

/// Keeps of a watched target's metadata only what a reconcile reads: its name, namespace,
/// UID and resourceVersion (the annotations alone hold `kubectl apply`'s copy of the object).
pub fn prune(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
}

/// Both caches, filled by the controller's watches.
#[derive(Clone)]
pub struct ScaleCache {
    pub deployments: Store<CachedDeployment>,
    pub statefulsets: Store<CachedStatefulSet>,
}

impl ScaleCache {
    /// The target as last watched, or `None` when the cache does not hold it: not listed yet,
    /// a watch the controller may not open, or a target that does not exist. Only the API
    /// server can tell those apart.
    pub fn target(
        &self,
        kind: TargetKind,
        namespace: &str,
        name: &str,
    ) -> Option<Result<Target, Blocked>> {
        let (meta, spec) = match kind {
            TargetKind::Deployment => {
                let d = self
                    .deployments
                    .get(&ObjectRef::new(name).within(namespace))?;
                (d.metadata.clone(), d.spec.clone())
            }
            TargetKind::StatefulSet => {
                let s = self
                    .statefulsets
                    .get(&ObjectRef::new(name).within(namespace))?;
                (s.metadata.clone(), s.spec.clone())
            }
        };
        let spec = spec.unwrap_or_default();
        let selector = match spec.selector {
            Some(s) => Selector::try_from(s).map_err(|e| e.to_string()),
            None => Err("it has none".to_owned()),
        };
        let start = spec.ordinals.and_then(|o| o.start);
        Some(target_of(
            kind,
            namespace,
            name,
            Scale {
                // The API server defaults the count to 1; one not yet defaulted is read so.
                replicas: spec.replicas.unwrap_or(1),
                selector,
                ordinals_start: start,
                resource_version: meta.resource_version,
            },
        ))
    }
}

/// Watches Deployments and StatefulSets (in `namespace`, or all) into the cache reconciles read
/// their targets from; the tasks run until aborted. A watch that fails (one the controller's
/// role does not allow, for example) leaves its cache empty, and reconciles read through
/// `/scale` as before.
pub fn watch(client: &Client, namespace: Option<&str>) -> (ScaleCache, [JoinHandle<()>; 2]) {
    fn watch<K>(api: Api<K>, what: &'static str) -> (Store<K>, JoinHandle<()>)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store::<K>();
        let mut failing = false;
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|k: &mut K| prune(k.meta_mut()))
            .reflect(writer)
            .for_each(move |event| {
                // Said once per outage: the watch retries about once a second, and each retry
                // begins with `Init` before its list fails, so only an object or the end of a
                // list says that it works again.
                match event {
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            error = %e,
                            "{what} watch failed: reconciles read their {what} through /scale until it works"
                        );
                    }
                    Err(e) => tracing::debug!(error = %e, "{what} watch failed again"),
                    Ok(watcher::Event::Init) => {}
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("{what} watch works again");
                    }
                    Ok(_) => {}
                }
                std::future::ready(())
            });
        (store, tokio::spawn(stream))
    }
    fn api<K: Resource<Scope = NamespaceResourceScope>>(
        client: &Client,
        namespace: Option<&str>,
    ) -> Api<K>
    where
        K::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let (deployments, d) = watch(api::<CachedDeployment>(client, namespace), "Deployment");
    let (statefulsets, s) = watch(api::<CachedStatefulSet>(client, namespace), "StatefulSet");
    (
        ScaleCache {
            deployments,
            statefulsets,
        },
        [d, s],
    )
}

/// A target's count, selector and version as read, from the cache or through `/scale`.
pub(super) struct Scale {
    pub replicas: i32,
    pub selector: Result<Selector, String>,
    pub ordinals_start: Option<i32>,
    pub resource_version: Option<String>,
}

/// The `Target` a reconcile decides on, or why it cannot: a selector that would select every
/// pod or cannot be read.
pub(super) fn target_of(
    kind: TargetKind,
    namespace: &str,
    name: &str,
    scale: Scale,
) -> Result<Target, Blocked> {
    let selector = scale
        .selector
        .and_then(|s| {
            if s.selects_all() {
                Err("it is empty: it would select every pod".to_owned())
            } else {
                Ok(s)
            }
        })
        .map_err(|why| {
            Blocked::TargetNotFound(format!(
                "{} {namespace}/{name} has no usable pod selector yet: {why}",
                kind_name(kind)
            ))
        })?;
    Ok(Target {
        replicas: u32::try_from(scale.replicas).unwrap_or(0),
        selector,
        ordinals_start: scale
            .ordinals_start
            .map_or(0, |s| u32::try_from(s).unwrap_or(0)),
        resource_version: scale.resource_version,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex, PoisonError};

    use axum::http::{Request, Response};
    use bytes::Bytes;
    use http_body_util::Full;
    use kube::core::{Selector, SelectorExt};
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use serde_json::{Value, json};

    use super::{CachedDeployment, CachedStatefulSet, ScaleCache, prune};
    use crate::api::TargetKind;
    use crate::observe::pods::parse_selector;
    use crate::observe::{Blocked, target};
    use crate::testing::policy;

    /// A Deployment as the API server sends it, with what the cache skips.
    fn deployment(name: &str, selector: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name, "namespace": "demo", "uid": "uid-1", "resourceVersion": "77",
                "generation": 3,
                "labels": {"app": "chat"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "replicas": 4,
                "selector": selector,
                "template": {
                    "metadata": {"labels": {"app": "chat", "tier": "a", "track": "x"}},
                    "spec": {"containers": [{"name": "app", "image": "chat:1"}]},
                },
                "strategy": {"type": "RollingUpdate"},
            },
            "status": {"replicas": 4, "readyReplicas": 4, "observedGeneration": 3},
        })
    }

    fn cache(deployments: Vec<Value>, statefulsets: Vec<Value>) -> ScaleCache {
        let (d, mut dw) = reflector::store::<CachedDeployment>();
        for v in deployments {
            let mut d: CachedDeployment = serde_json::from_value(v).expect("a Deployment");
            prune(&mut d.metadata);
            dw.apply_watcher_event(&watcher::Event::Apply(d));
        }
        let (s, mut sw) = reflector::store::<CachedStatefulSet>();
        for v in statefulsets {
            let s: CachedStatefulSet = serde_json::from_value(v).expect("a StatefulSet");
            sw.apply_watcher_event(&watcher::Event::Apply(s));
        }
        ScaleCache {
            deployments: d,
            statefulsets: s,
        }
    }

    fn empty() -> ScaleCache {
        cache(vec![], vec![])
    }

    /// Every map of the labels `app`, `tier`, `legacy` and `track` over a few values (or unset):
    /// two selectors that agree on all 625 select the same pods of these labels.
    fn label_sets() -> Vec<BTreeMap<String, String>> {
        let keys = ["app", "tier", "legacy", "track"];
        let values = [None, Some("chat"), Some("a"), Some("b"), Some("x")];
        let mut sets = vec![BTreeMap::new()];
        for key in keys {
            sets = sets
                .into_iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut set = set.clone();
                        if let Some(v) = v {
                            set.insert(key.to_owned(), (*v).to_owned());
                        }
                        set
                    })
                })
                .collect();
        }
        sets
    }

    fn selects_alike(a: &Selector, b: &Selector) -> bool {
        label_sets().iter().all(|l| a.matches(l) == b.matches(l))
    }

    #[test]
    fn a_watched_deployment_reads_as_its_scale_subresource_shows_it() {
        let selector = json!({
            "matchLabels": {"app": "chat"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "track", "operator": "Exists"},
                {"key": "track", "operator": "NotIn", "values": ["b"]},
            ],
        });
        let cache = cache(vec![deployment("chat", selector)], vec![]);
        let target = cache
            .target(TargetKind::Deployment, "demo", "chat")
            .expect("cached")
            .expect("usable");
        assert_eq!(target.replicas, 4);
        assert_eq!(target.resource_version.as_deref(), Some("77"));
        assert_eq!(target.ordinals_start, 0);
        // What the API server's /scale shows for it (requirements sorted by key).
        let scale = parse_selector("app=chat,!legacy,tier in (a,b),track,track notin (b)")
            .expect("a selector");
        assert!(selects_alike(&target.selector, &scale));
        // And the comparison can tell selectors apart.
        let other = parse_selector("app=chat,tier in (a,b),!legacy,track").expect("a selector");
        assert!(!selects_alike(&target.selector, &other));
    }

    #[test]
    fn a_watched_statefulset_says_where_its_ordinals_begin() {
        let set = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "game", "namespace": "demo", "resourceVersion": "9"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "game"}},
                "ordinals": {"start": 5}, "serviceName": "game",
                "template": {"metadata": {"labels": {"app": "game"}}, "spec": {"containers": []}}},
        });
        let target = cache(vec![], vec![set])
            .target(TargetKind::StatefulSet, "demo", "game")
            .expect("cached")
            .expect("usable");
        assert_eq!(
            (target.replicas, target.ordinals_start),
            (2, 5),
            "{target:?}"
        );
        assert_eq!(target.resource_version.as_deref(), Some("9"));
    }

    #[test]
    fn a_target_the_cache_does_not_hold_is_not_guessed() {
        let cache = cache(
            vec![deployment("chat", json!({"matchLabels": {"app": "chat"}}))],
            vec![],
        );
        assert!(
            cache
                .target(TargetKind::Deployment, "other", "chat")
                .is_none()
        );
        assert!(
            cache
                .target(TargetKind::Deployment, "demo", "mail")
                .is_none()
        );
        // Same name, the other kind.
        assert!(
            cache
                .target(TargetKind::StatefulSet, "demo", "chat")
                .is_none()
        );
    }

    #[test]
    fn a_watched_target_that_would_select_every_pod_blocks_its_policy() {
        let cache = cache(
            vec![
                deployment("everything", json!({})),
                deployment(
                    "bad",
                    json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                ),
            ],
            vec![],
        );
        for name in ["everything", "bad"] {
            let read = cache.target(TargetKind::Deployment, "demo", name);
            assert!(
                matches!(&read, Some(Err(Blocked::TargetNotFound(m))) if m.contains("no usable pod selector")),
                "{name}: {read:?}"
            );
        }
    }

    #[test]
    fn a_cached_target_keeps_its_name_version_and_spec_but_not_the_rest() {
        let mut d: CachedDeployment =
            serde_json::from_value(deployment("chat", json!({"matchLabels": {"app": "chat"}})))
                .expect("a Deployment");
        prune(&mut d.metadata);
        let m = &d.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("chat"), Some("demo"), Some("uid-1"))
        );
        assert_eq!(m.resource_version.as_deref(), Some("77"));
        assert_eq!(
            (&m.annotations, &m.labels, &m.managed_fields),
            (&None, &None, &None)
        );
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(4));
    }

    /// A client whose API server answers `GET .../deployments/app/scale` (version 80, 6
    /// replicas) and nothing else (404), and the paths it was asked.
    fn api() -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&asked);
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let path = request.uri().path().to_owned();
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(path.clone());
            async move {
                let (code, body) = if path == "/apis/apps/v1/namespaces/demo/deployments/app/scale"
                {
                    (
                        200,
                        json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                        "metadata": {"name": "app", "namespace": "demo", "resourceVersion": "80"},
                        "spec": {"replicas": 6}, "status": {"replicas": 6, "selector": "app=app"}}),
                    )
                } else {
                    (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": "not found"}),
                    )
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .expect("a response"),
                )
            }
        });
        (kube::Client::new(service, "demo"), asked)
    }

    fn asked(log: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    #[tokio::test]
    async fn the_count_comes_from_the_cache_and_from_scale_only_when_the_cache_cannot_be_trusted() {
        let (client, log) = api();
        let app = policy().build();
        assert_eq!(
            (app.target.kind, app.target.name.as_str()),
            (TargetKind::Deployment, "app")
        );
        let scale = "/apis/apps/v1/namespaces/demo/deployments/app/scale".to_owned();
        let cached = cache(
            vec![deployment("app", json!({"matchLabels": {"app": "app"}}))],
            vec![],
        );

        // Cached: no request, the cached version.
        let read = target(&client, &cached, false, "demo", &app).await;
        let read = read.expect("no error").expect("a target");
        assert_eq!(
            (read.replicas, read.resource_version.as_deref()),
            (4, Some("77"))
        );
        assert_eq!(asked(&log), Vec::<String>::new());

        // After a conflict: through /scale, whatever the cache holds.
        let read = target(&client, &cached, true, "demo", &app).await;
        let read = read.expect("no error").expect("a target");
        assert_eq!(
            (read.replicas, read.resource_version.as_deref()),
            (6, Some("80"))
        );
        assert_eq!(asked(&log), vec![scale.clone()]);

        // Not cached (not listed yet, or a watch the controller may not open): through /scale.
        let read = target(&client, &empty(), false, "demo", &app).await;
        assert_eq!(read.expect("no error").expect("a target").replicas, 6);
        assert_eq!(asked(&log), vec![scale]);

        // Neither cached nor there: the API server says so.
        let mut mail = policy().build();
        mail.target.name = "mail".to_owned();
        let read = target(&client, &empty(), false, "demo", &mail).await;
        assert!(
            matches!(&read, Ok(Err(Blocked::TargetNotFound(m))) if m.contains("does not exist")),
            "{read:?}"
        );
    }
}
