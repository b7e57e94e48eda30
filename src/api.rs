//! The `ScalingPolicy` custom resource (`drainscaler.io/v1alpha1`): spec and status as users
//! write and read them. Serde and schema only; meaning is given by `policy::validate`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Go-style duration as Kubernetes writes them: `15s`, `30m`, `1h30m`, `500ms`, `0s`.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$";

/// Metric names become label values and status keys: lower-case DNS-label style.
pub const METRIC_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$";

/// A policy that scales one workload between `minReplicas` and `maxReplicas`, draining
/// instances that hold sessions before it removes them.
// The printer columns repeat `type_ = "integer"` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "drainscaler.io",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    plural = "scalingpolicies",
    shortname = "scp",
    category = "drainscaler",
    namespaced,
    status = "ScalingPolicyStatus",
    doc = "Scales a Deployment or StatefulSet from Prometheus metrics and instance heartbeats, draining instances that hold sessions before removing them.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.minReplicas"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxReplicas"),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.currentReplicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "integer",
        json_path = ".status.instances.sessions"
    ),
    printcolumn(
        name = "Draining",
        type_ = "integer",
        json_path = ".status.instances.draining"
    ),
    printcolumn(
        name = "Held",
        type_ = "integer",
        json_path = ".status.instances.heldBack",
        description = "Pods held back by spec.drain.holdBack: they keep their sessions and take no new ones",
        priority = "1"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))").message("metric names must be unique").field_path(".metrics"),
    validation = Rule::new("!has(self.fallback) || (self.fallback.replicas >= self.minReplicas && self.fallback.replicas <= self.maxReplicas)").message("fallback.replicas must lie within [minReplicas, maxReplicas]").field_path(".fallback.replicas"),
    validation = Rule::new("!self.metrics.exists(m, has(m.sessions)) || has(self.heartbeat)").message("a sessions metric needs a heartbeat source: add spec.heartbeat").field_path(".metrics"),
    validation = Rule::new("!has(self.drain) || !has(self.drain.holdBack) || has(self.heartbeat)").message("drain.holdBack decides from heartbeated session counts: add spec.heartbeat").field_path(".drain.holdBack"),
    validation = Rule::new("!has(self.drain) || !has(self.drain.holdBack) || self.drain.holdBack.maxPods < self.maxReplicas").message("drain.holdBack.maxPods must be less than maxReplicas: at least one pod must serve").field_path(".drain.holdBack.maxPods"),
)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicySpec {
    /// The workload to scale, through its `/scale` subresource.
    pub target_ref: TargetRef,
    /// The fewest replicas; 0 allows scaling to zero when every metric is idle.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// The most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// How often metrics are read and a decision is made.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("interval must be at least 1s"))]
    pub interval: String,
    /// Ratio around the current count within which no change is made (HPA semantics).
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
    /// What to scale on. The largest replica count any metric asks for wins.
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<MetricSpec>,
    /// Where instances report their session counts. Without it no sessions are known and a
    /// draining instance becomes removable when `drain.timeout` expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSpec>,
    /// How instances are drained before removal.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Scale-up and scale-down rate rules, as in HPA `autoscaling/v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Behavior>,
    /// What to do when metrics keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    /// The Prometheus server for `prometheus` metrics and the Prometheus heartbeat source;
    /// the controller's `--prometheus-url` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusServer>,
    /// Stop deciding and acting; status still reports. The target keeps its replica count, and
    /// drains in progress are cancelled: their pods serve again, as with no autoscaler at all.
    #[serde(default)]
    pub paused: bool,
    /// Decide and report, change no replica count and start no drain. As with `paused`, drains
    /// in progress are cancelled and their pods serve again.
    #[serde(default)]
    pub dry_run: bool,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_min_replicas() -> i32 {
    1
}
fn default_interval() -> String {
    "15s".to_owned()
}
fn default_tolerance() -> f64 {
    0.1
}

/// The scaled workload, referenced like the HPA's `scaleTargetRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `apps/v1`.
    #[serde(default = "default_target_api_version")]
    #[x_kube(validation = Rule::new("self == 'apps/v1'").message("targetRef.apiVersion must be apps/v1"))]
    pub api_version: String,
    pub kind: TargetKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_target_api_version() -> String {
    "apps/v1".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
}

/// One metric: a name, exactly one source, and a target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.prometheus), has(self.sessions)].filter(x, x).size() == 1").message("a metric has exactly one source: set either prometheus or sessions")
)]
pub struct MetricSpec {
    #[schemars(regex(pattern = METRIC_NAME_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// A PromQL instant query that returns a single sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// The total number of sessions reported by heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsMetric>,
    pub target: MetricTarget,
    /// Below or at this value the metric counts as idle, for scaling from and to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_threshold: Option<Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct PrometheusMetric {
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Sessions summed over the instances' heartbeats. Has no fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct SessionsMetric {}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'AverageValue' || has(self.averageValue)").message("target type AverageValue needs averageValue"),
    validation = Rule::new("self.type != 'Value' || has(self.value)").message("target type Value needs value")
)]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub type_: TargetType,
    /// The value the whole workload should hold (`type: Value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    /// The value each replica should hold (`type: AverageValue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetType {
    Value,
    AverageValue,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.source != 'Prometheus' || has(self.query)").message("heartbeat source Prometheus needs a query, such as sum by (pod) (app_active_sessions)")
)]
pub struct HeartbeatSpec {
    #[serde(default)]
    pub source: HeartbeatSource,
    /// With `source: Prometheus`: per-pod session counts, labelled `pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// No heartbeat for this long and the instance is Lost.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("heartbeat.timeout must be at least 1s"))]
    pub timeout: String,
    #[serde(default)]
    pub on_lost: OnLost,
    /// The most Lost instances replaced at once.
    #[serde(default = "default_max_replacements")]
    #[schemars(range(min = 1))]
    pub max_concurrent_replacements: i32,
}

fn default_heartbeat_timeout() -> String {
    "30s".to_owned()
}
fn default_max_replacements() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum HeartbeatSource {
    #[default]
    Push,
    Prometheus,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum OnLost {
    /// Delete the pod so that its workload recreates it.
    #[default]
    Replace,
    /// Report it and leave it.
    Keep,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// The longest wait for a draining instance's sessions to reach zero.
    #[serde(default = "default_drain_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: String,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Stop sending new sessions to the instances most likely to be drained next while the
    /// others have room, so that they empty before a scale-in picks them and their drains are
    /// short. Off when absent. Needs a heartbeat source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_back: Option<HoldBackSpec>,
}

impl Default for DrainSpec {
    fn default() -> Self {
        DrainSpec {
            timeout: default_drain_timeout(),
            on_timeout: OnTimeout::default(),
            hold_back: None,
        }
    }
}

/// Holding back the likely next victims of a scale-in: up to `maxPods` of the emptiest
/// instances (a StatefulSet's highest ordinals) are taken out of the serving Service
/// (`drainscaler.io/serving: "false"`) but not drained: they keep their sessions, count as
/// replicas, and serve again at once when the others would hold more than `sessionCeiling`
/// sessions each, or before any scale-up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldBackSpec {
    /// The most instances held back at once.
    #[schemars(range(min = 1, max = 100))]
    pub max_pods: i32,
    /// The most sessions per serving instance, on average, while some are held back: a pod is
    /// held back only while the reporting instances that still serve could hold every session
    /// 5% under it, and held-back pods serve again once they would not hold them under it.
    /// Set it below what an instance can hold: at that limit the serving instances would turn
    /// new sessions away, which no heartbeat reports.
    #[schemars(range(min = 1))]
    pub session_ceiling: i64,
}

fn default_drain_timeout() -> String {
    "30m".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum OnTimeout {
    /// Remove the instance even though it still holds sessions.
    #[default]
    Remove,
    /// Never remove an instance that holds sessions.
    Keep,
}

/// HPA `autoscaling/v2` behavior; absent parts take the HPA's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub policies: Option<Vec<ScalingRule>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRule {
    #[serde(rename = "type")]
    pub type_: RuleType,
    #[schemars(range(min = 1))]
    pub value: i32,
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RuleType {
    Pods,
    Percent,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackSpec {
    /// Consecutive failed readings before the fallback count applies.
    #[schemars(range(min = 1))]
    pub failure_threshold: i32,
    #[schemars(range(min = 0))]
    pub replicas: i32,
}

/// How to reach Prometheus. Secrets are read from the policy's namespace, and only those
/// labelled `drainscaler.io/prometheus-auth: "true"` are used: that label is the Secret
/// owner's consent to have it sent to this address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.bearerTokenSecret) && has(self.basicAuthSecret))").message("set at most one of bearerTokenSecret and basicAuthSecret"),
    validation = Rule::new("self.address.startsWith('https://') || !(has(self.bearerTokenSecret) || has(self.basicAuthSecret)) || (has(self.allowInsecureCredentials) && self.allowInsecureCredentials)").message("credentials would be sent over plain http: use an https address, or set allowInsecureCredentials: true if the path to Prometheus is trusted"),
)]
pub struct PrometheusServer {
    /// Base URL, such as `https://prometheus.monitoring:9090`. No credentials in it: use
    /// bearerTokenSecret or basicAuthSecret.
    #[schemars(regex(pattern = r"^https?://.+"), length(max = 2048))]
    pub address: String,
    /// A bearer token, from a Secret labelled `drainscaler.io/prometheus-auth: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// A Secret with `username` and `password` keys, labelled
    /// `drainscaler.io/prometheus-auth: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret: Option<SecretRef>,
    /// A PEM CA bundle to verify the server with, from a Secret labelled
    /// `drainscaler.io/prometheus-auth: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Send credentials over plain `http://`, where anyone on the path can read them. Off by
    /// default: an http address with credentials is refused unless this is true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_credentials: bool,
    /// How long all of this policy's queries together may take, each reading: at most 30s.
    #[serde(default = "default_query_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('30s')").message("prometheus.timeout must be between 100ms and 30s"))]
    pub timeout: String,
}

fn default_query_timeout() -> String {
    "5s".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A Kubernetes quantity (`100`, `0.5`, `250m`, `2k`), accepted as a number or a string,
/// as the HPA accepts its targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity(pub String);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Str(String),
        }
        Ok(Quantity(match Raw::deserialize(deserializer)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Str(s) => s,
        }))
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // maxLength bounds the CEL cost estimate; without it the API server rejects the CRD.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "type(self) == int || isQuantity(self)",
                "message": "must be a Kubernetes quantity, such as 100, 0.5 or 250m"
            }]
        })
    }
}

/// What the controller saw and decided, and the history it needs across restarts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancesStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingStatus>,
    /// The target's pods as the heartbeats show them, with a heartbeat source only: Lost and
    /// Silent first, then by name. At most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodStatus>,
    /// Recent recommendations, for the stabilization windows: one entry per run of equal
    /// recommendations, timed when it was last made; the newest, still in force, keeps the time
    /// its run began. Bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<RecommendationStatus>,
    /// Recent replica changes, for the rate policies. Bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale_events: Vec<ScaleEventStatus>,
    /// Consecutive decisions in which a metric could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    pub name: String,
    /// The value read, as a quantity; absent when the reading failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The replica count this metric asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Why there is no value: the reading failed, or it is pending (a new leader waits for
    /// heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancesStatus {
    pub ready: i32,
    pub draining: i32,
    /// Instances held back (`spec.drain.holdBack`): out of the serving Service but not
    /// draining; they keep their sessions and count as replicas.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_back: i32,
    /// Instances that sent no heartbeat for one heartbeat timeout. They are kept, with their
    /// last count, unless Kubernetes also reports them not Ready for as long (then Lost).
    #[serde(default)]
    pub silent: i32,
    /// Silent instances that Kubernetes has reported not Ready for one heartbeat timeout too.
    pub lost: i32,
    /// Sessions reported by heartbeats; instances that have not reported count as zero here.
    pub sessions: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingStatus {
    pub pod: String,
    pub since: Time,
    /// Absent until the instance reports after its drain began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub name: String,
    /// Sessions in its latest heartbeat; absent until it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    pub heartbeat: HeartbeatState,
    /// When it last reported; given only while it is Silent or Lost, since a reporting pod's
    /// time moves with every heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HeartbeatState {
    /// Reported within the heartbeat timeout.
    Reporting,
    /// Has not reported yet and is not overdue.
    Awaited,
    /// No heartbeat for one timeout; kept, with its last count.
    Silent,
    /// Silent, and not Ready for as long.
    Lost,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecommendationStatus {
    pub time: Time,
    pub replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEventStatus {
    pub time: Time,
    pub from: i32,
    pub to: i32,
}
