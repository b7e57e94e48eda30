//! `kubectl drainscaler`: what drainscaler sees of one policy, or of all in a namespace, in one
//! screen. Reads from the cluster (the user's kubeconfig and context) or from saved objects
//! (`--from-file`); `load` needs a client, everything after it is pure.

pub mod objects;
pub mod render;
pub mod view;

#[cfg(test)]
mod tests;

use std::path::Path;

use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::api::ScalingPolicy;
use crate::observe::{Blocked, target_named};
use crate::plugin::objects::{Objects, PolicyEvent, Workload, belongs_to, events_of, target_of};
use crate::plugin::view::{PolicyView, view};

/// Which policies to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    /// `-A`, or a file read without `-n`.
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("reading {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a saved list of objects (kubectl get scalingpolicy,pods,events -o yaml): {reason}"
    )]
    ParseFile { path: String, reason: String },
    #[error(
        "no cluster to talk to: {reason}; point KUBECONFIG or --kubeconfig at a kubeconfig, or read saved objects with --from-file"
    )]
    Kubeconfig { reason: String },
    #[error("cannot reach the cluster at {url}: {source}")]
    Unreachable { url: String, source: kube::Error },
    #[error("listing ScalingPolicies: {source}")]
    ListPolicies { source: kube::Error },
    #[error("listing the pods in {namespace}: {source}")]
    ListPods {
        namespace: String,
        source: kube::Error,
    },
    #[error("listing the events in {namespace}: {source}")]
    ListEvents {
        namespace: String,
        source: kube::Error,
    },
    #[error("reading the scale subresource of {target}: {source}")]
    ReadTarget { target: String, source: kube::Error },
    #[error("no ScalingPolicy {name:?} {where_}{}", known_list(.known))]
    UnknownPolicy {
        name: String,
        where_: String,
        known: Vec<String>,
    },
}

impl PluginError {
    /// A stable name for the step that failed.
    pub fn label(&self) -> &'static str {
        match self {
            PluginError::ReadFile { .. } => "read_file",
            PluginError::ParseFile { .. } => "parse_file",
            PluginError::Kubeconfig { .. } => "kubeconfig",
            PluginError::Unreachable { .. } => "unreachable",
            PluginError::ListPolicies { .. } => "list_policies",
            PluginError::ListPods { .. } => "list_pods",
            PluginError::ListEvents { .. } => "list_events",
            PluginError::ReadTarget { .. } => "read_target",
            PluginError::UnknownPolicy { .. } => "unknown_policy",
        }
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; there are none".to_owned()
    } else {
        format!("; there are: {}", known.join(", "))
    }
}

fn scope_words(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("in namespace {ns}"),
        Scope::All => "in any namespace".to_owned(),
    }
}

/// Objects saved to `path` (`-` is standard input, read by the caller into `text`).
pub fn from_text(path: &str, text: &str) -> Result<Objects, PluginError> {
    objects::parse(text).map_err(|reason| PluginError::ParseFile {
        path: path.to_owned(),
        reason,
    })
}

/// The policies in `scope` (the one named `name`, if given), each with its view.
pub fn views(
    objects: &Objects,
    scope: &Scope,
    name: Option<&str>,
) -> Result<Vec<PolicyView>, PluginError> {
    let in_scope: Vec<&ScalingPolicy> = objects
        .policies
        .iter()
        .filter(|p| match scope {
            Scope::Namespace(ns) => p.namespace().as_deref() == Some(ns.as_str()),
            Scope::All => true,
        })
        .collect();
    let chosen: Vec<&ScalingPolicy> = match name {
        Some(n) => in_scope
            .iter()
            .copied()
            .filter(|p| p.name_any() == n)
            .collect(),
        None => in_scope.clone(),
    };
    if let (Some(n), true) = (name, chosen.is_empty()) {
        let mut known: Vec<String> = in_scope.iter().map(|p| p.name_any()).collect();
        known.sort();
        return Err(PluginError::UnknownPolicy {
            name: n.to_owned(),
            where_: scope_words(scope),
            known,
        });
    }
    let mut views: Vec<PolicyView> = chosen
        .into_iter()
        .map(|p| {
            let (pods, unknown) = match target_of(p, &objects.workloads) {
                Some(w) => match &w.selector {
                    Ok(selector) => (
                        objects
                            .pods
                            .iter()
                            .filter(|pod| belongs_to(w, selector, pod))
                            .collect(),
                        None,
                    ),
                    Err(why) => (Vec::new(), Some(why.clone())),
                },
                None => (Vec::new(), Some(no_target(p))),
            };
            let mut v = view(p, &pods, &events_of(p, &objects.events));
            v.pods_unknown = unknown;
            v
        })
        .collect();
    views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(views)
}

/// Why a policy's pods cannot be told when its target is not among the objects read.
fn no_target(policy: &ScalingPolicy) -> String {
    let t = &policy.spec.target_ref;
    let kind = match t.kind {
        crate::api::TargetKind::Deployment => "deployment",
        crate::api::TargetKind::StatefulSet => "statefulset",
    };
    format!(
        "{kind} {} is not among the objects read, so its pod selector is unknown; save it too \
         (kubectl get scalingpolicy,{kind},pods,events -o yaml)",
        t.name
    )
}

/// `-o json`: `{"policies": [...]}`, the fields in `PolicyView`'s order.
pub fn to_json(views: &[PolicyView]) -> Result<String, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Views<'a> {
        policies: &'a [PolicyView],
    }
    let mut json = serde_json::to_string_pretty(&Views { policies: views })?;
    json.push('\n');
    Ok(json)
}

/// What to say when there is nothing to show.
pub fn none_found(scope: &Scope) -> String {
    format!("No ScalingPolicies found {}.", scope_words(scope))
}

/// A cluster connection as kubectl makes it: `kubeconfig` (else KUBECONFIG or
/// `~/.kube/config`, else in-cluster) and its `context` (else the current one).
pub struct Connection {
    pub client: Client,
    /// The API server, for messages.
    pub url: String,
    /// The context's namespace, `default` when it names none.
    pub namespace: String,
}

/// Connects as kubectl would. Nothing is sent yet: an unreachable server shows on the first
/// request.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Connection, PluginError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let reason = |e: &dyn std::fmt::Display| PluginError::Kubeconfig {
        reason: e.to_string(),
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| reason(&e))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| reason(&e))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| reason(&e))?,
        None => Config::infer().await.map_err(|e| reason(&e))?,
    };
    let url = config.cluster_url.to_string();
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| reason(&e))?;
    Ok(Connection {
        client,
        url,
        namespace,
    })
}

/// The policies in `scope` (or the one named), their namespaces' pods and the events about
/// policies there. Needs a client.
pub async fn load(
    client: &Client,
    url: &str,
    scope: &Scope,
    name: Option<&str>,
) -> Result<Objects, PluginError> {
    let policies: Api<ScalingPolicy> = match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    };
    let listed = policies
        .list(&ListParams::default())
        .await
        .map_err(|source| {
            if matches!(source, kube::Error::Api(_)) {
                PluginError::ListPolicies { source }
            } else {
                PluginError::Unreachable {
                    url: url.to_owned(),
                    source,
                }
            }
        })?;
    let mut known: Vec<String> = listed.items.iter().map(ResourceExt::name_any).collect();
    known.sort();
    let mut objects = Objects {
        policies: listed
            .items
            .into_iter()
            .filter(|p| name.is_none_or(|n| p.name_any() == n))
            .collect(),
        ..Objects::default()
    };
    if let (Some(n), true) = (name, objects.policies.is_empty()) {
        return Err(PluginError::UnknownPolicy {
            name: n.to_owned(),
            where_: scope_words(scope),
            known,
        });
    }
    for p in &objects.policies {
        let namespace = p.namespace().unwrap_or_default();
        let target = &p.spec.target_ref;
        // The target's pod selector from its scale subresource, as the controller reads it.
        let selector = match target_named(client, &namespace, target.kind, &target.name).await {
            Ok(Ok(found)) => Ok(found.selector),
            Ok(Err(Blocked::TargetNotFound(why) | Blocked::Conflict(why))) => Err(why),
            Ok(Err(Blocked::PrometheusAuth(why) | Blocked::InvalidQuery(why))) => Err(why),
            Err(crate::error::Error::ReadScale { source }) => {
                return Err(PluginError::ReadTarget {
                    target: format!("{namespace}/{}", target.name),
                    source,
                });
            }
            Err(other) => Err(other.to_string()),
        };
        objects.workloads.push(Workload {
            namespace,
            kind: target.kind,
            name: target.name.clone(),
            selector,
        });
    }
    let mut namespaces: Vec<String> = objects
        .policies
        .iter()
        .filter_map(ResourceExt::namespace)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let listed =
            pods.list(&ListParams::default())
                .await
                .map_err(|source| PluginError::ListPods {
                    namespace: ns.clone(),
                    source,
                })?;
        objects.pods.extend(listed.items);
        let events: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
        let about_policies = ListParams::default().fields("involvedObject.kind=ScalingPolicy");
        let listed =
            events
                .list(&about_policies)
                .await
                .map_err(|source| PluginError::ListEvents {
                    namespace: ns.clone(),
                    source,
                })?;
        objects
            .events
            .extend(listed.items.iter().filter_map(PolicyEvent::from_core));
    }
    Ok(objects)
}
