//! Validation: turns a raw `ScalingPolicySpec` into a typed `Policy` or a list of errors that
//! each name a field and say how to fix it. Pure, no I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::api::{
    self, HeartbeatSource as ApiHeartbeatSource, OnLost, OnTimeout, RuleType, ScalingPolicySpec,
    ScalingRules as ApiRules, SelectPolicy, TargetKind, TargetType,
};

/// The shortest and longest `spec.prometheus.timeout`: the time budget of all of a policy's
/// queries together, so that a slow server holds a reconcile slot no longer than this.
pub const MIN_PROMETHEUS_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

/// A policy that passed validation: durations and quantities parsed, HPA defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub target: Target,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub interval: Duration,
    pub tolerance: f64,
    pub metrics: Vec<Metric>,
    pub heartbeat: Option<Heartbeat>,
    pub drain: Drain,
    pub behavior: Behavior,
    pub fallback: Option<Fallback>,
    pub prometheus: Option<PrometheusServer>,
    pub paused: bool,
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub source: Source,
    pub target: MetricTarget,
    /// At or below this the metric is idle (for scaling from and to zero).
    pub activation: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Prometheus { query: String },
    Sessions,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricTarget {
    /// The whole workload should hold this value.
    Value(f64),
    /// Each replica should hold this value.
    AverageValue(f64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub source: HeartbeatSource,
    pub timeout: Duration,
    pub on_lost: OnLost,
    pub max_concurrent_replacements: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatSource {
    Push,
    Prometheus { query: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Holding back the likely next victims; `None` when off.
    pub hold_back: Option<HoldBack>,
}

/// `spec.drain.holdBack`, validated: only with a heartbeat source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldBack {
    /// At least 1, less than `maxReplicas`.
    pub max_pods: u32,
    /// At least 1.
    pub session_ceiling: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub select: SelectPolicy,
    pub policies: Vec<RatePolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    pub kind: RuleType,
    pub value: u32,
    pub period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub failure_threshold: u32,
    pub replicas: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusServer {
    pub address: String,
    pub auth: PrometheusAuth,
    pub ca_secret: Option<api::SecretKeyRef>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrometheusAuth {
    None,
    BearerToken(api::SecretKeyRef),
    Basic(api::SecretRef),
}

impl Policy {
    /// Whether instances must be drained before removal. Without heartbeats and with a zero
    /// drain timeout there is nothing to wait for, and scale-in is the HPA's.
    pub fn drains(&self) -> bool {
        self.heartbeat.is_some() || !self.drain.timeout.is_zero()
    }

    /// The longest window the history must keep.
    pub fn history_horizon(&self) -> Duration {
        let periods = self
            .behavior
            .scale_up
            .policies
            .iter()
            .chain(&self.behavior.scale_down.policies)
            .map(|p| p.period);
        periods
            .chain([
                self.behavior.scale_up.stabilization_window,
                self.behavior.scale_down.stabilization_window,
            ])
            .max()
            .unwrap_or_default()
    }

    /// One line saying what this policy will do, for `drainscaler check`.
    pub fn summary(&self) -> String {
        let kind = match self.target.kind {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        };
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|m| match m.target {
                MetricTarget::AverageValue(v) => format!("{} {}/replica", m.name, fmt_number(v)),
                MetricTarget::Value(v) => format!("{} {} total", m.name, fmt_number(v)),
            })
            .collect();
        let drain = if !self.drains() {
            "removes instances without draining".to_owned()
        } else {
            let keep = match self.drain.on_timeout {
                OnTimeout::Remove => "then removes",
                OnTimeout::Keep => "never removes one with sessions",
            };
            let hold = match self.drain.hold_back {
                Some(h) => format!(
                    ", holding back up to {} likely victims while the others stay under {} sessions each",
                    h.max_pods, h.session_ceiling
                ),
                None => String::new(),
            };
            format!(
                "drains instances for up to {}, {keep}{hold}",
                fmt_duration(self.drain.timeout)
            )
        };
        let heartbeat = match &self.heartbeat {
            None => "no heartbeats".to_owned(),
            Some(h) => {
                let src = match h.source {
                    HeartbeatSource::Push => "pushed",
                    HeartbeatSource::Prometheus { .. } => "Prometheus",
                };
                format!("{src} heartbeats, lost after {}", fmt_duration(h.timeout))
            }
        };
        format!(
            "scales {kind} {} between {} and {} replicas every {} on {}; {drain}; {heartbeat}",
            self.target.name,
            self.min_replicas,
            self.max_replicas,
            fmt_duration(self.interval),
            metrics.join(", "),
        )
    }
}

/// One problem with a spec: where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec, in field order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

/// Collects errors while a spec is walked, so that one run reports all of them.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, raw: &str) -> Duration {
        parse_duration(raw).unwrap_or_else(|why| {
            self.fail(
                path,
                format!("{why}; write a duration such as 15s, 5m or 1h30m (units: ms, s, m, h)"),
            );
            Duration::ZERO
        })
    }

    fn quantity(&mut self, path: &str, raw: &api::Quantity) -> f64 {
        parse_quantity(&raw.0).unwrap_or_else(|why| {
            self.fail(
                path,
                format!("{why}; write a number or a Kubernetes quantity such as 100, 0.5 or 250m"),
            );
            0.0
        })
    }

    fn non_negative(&mut self, path: &str, value: i32) -> u32 {
        u32::try_from(value).unwrap_or_else(|_| {
            self.fail(path, format!("must be 0 or more, got {value}"));
            0
        })
    }
}

/// Checks a spec and builds the typed policy, or says everything that is wrong with it.
pub fn validate(spec: &ScalingPolicySpec) -> Result<Policy, PolicyError> {
    let mut c = Checker { errors: Vec::new() };

    if spec.target_ref.api_version != "apps/v1" {
        c.fail(
            "spec.targetRef.apiVersion",
            format!("must be apps/v1, got {:?}", spec.target_ref.api_version),
        );
    }
    if spec.target_ref.name.is_empty() {
        c.fail(
            "spec.targetRef.name",
            "must name the Deployment or StatefulSet to scale",
        );
    }

    let min_replicas = c.non_negative("spec.minReplicas", spec.min_replicas);
    let max_replicas = c.non_negative("spec.maxReplicas", spec.max_replicas);
    if spec.max_replicas < 1 {
        c.fail(
            "spec.maxReplicas",
            format!("must be at least 1, got {}", spec.max_replicas),
        );
    }
    if spec.min_replicas > spec.max_replicas {
        c.fail(
            "spec.minReplicas",
            format!(
                "minReplicas ({}) is greater than maxReplicas ({}); lower minReplicas or raise maxReplicas",
                spec.min_replicas, spec.max_replicas
            ),
        );
    }

    let interval = c.duration("spec.interval", &spec.interval);
    if !spec.interval.is_empty()
        && parse_duration(&spec.interval).is_ok()
        && interval < Duration::from_secs(1)
    {
        c.fail(
            "spec.interval",
            format!("must be at least 1s, got {}", spec.interval),
        );
    }
    if !(0.0..=1.0).contains(&spec.tolerance) {
        c.fail(
            "spec.tolerance",
            format!("must be between 0 and 1, got {}", spec.tolerance),
        );
    }

    let metrics = validate_metrics(&mut c, spec);
    let heartbeat = spec
        .heartbeat
        .as_ref()
        .map(|h| validate_heartbeat(&mut c, h));
    if heartbeat.is_none() {
        for (i, m) in spec.metrics.iter().enumerate() {
            if m.sessions.is_some() {
                c.fail(
                    format!("spec.metrics[{i}].sessions"),
                    "a sessions metric needs heartbeats: add spec.heartbeat (for example {source: Push})",
                );
            }
        }
    }

    let drain = Drain {
        timeout: c.duration("spec.drain.timeout", &spec.drain.timeout),
        on_timeout: spec.drain.on_timeout,
        hold_back: spec
            .drain
            .hold_back
            .map(|h| validate_hold_back(&mut c, spec, h)),
    };
    let behavior = validate_behavior(&mut c, spec.behavior.as_ref());

    let fallback = spec.fallback.as_ref().map(|f| {
        if f.failure_threshold < 1 {
            c.fail("spec.fallback.failureThreshold", format!("must be at least 1, got {}", f.failure_threshold));
        }
        if f.replicas < spec.min_replicas || f.replicas > spec.max_replicas {
            c.fail(
                "spec.fallback.replicas",
                format!(
                    "{} is outside [minReplicas, maxReplicas] = [{}, {}]; choose a count within them",
                    f.replicas, spec.min_replicas, spec.max_replicas
                ),
            );
        }
        Fallback {
            failure_threshold: u32::try_from(f.failure_threshold).unwrap_or(1),
            replicas: c.non_negative("spec.fallback.replicas", f.replicas),
        }
    });

    let prometheus = spec
        .prometheus
        .as_ref()
        .map(|p| validate_prometheus(&mut c, p));

    if !c.errors.is_empty() {
        return Err(PolicyError { errors: c.errors });
    }
    Ok(Policy {
        target: Target {
            kind: spec.target_ref.kind,
            name: spec.target_ref.name.clone(),
        },
        min_replicas,
        max_replicas,
        interval,
        tolerance: spec.tolerance,
        metrics,
        heartbeat,
        drain,
        behavior,
        fallback,
        prometheus,
        paused: spec.paused,
        dry_run: spec.dry_run,
    })
}

/// The most pods `spec.drain.holdBack.maxPods` may name.
pub const MAX_HOLD_BACK_PODS: i32 = 100;

fn validate_hold_back(c: &mut Checker, spec: &ScalingPolicySpec, h: api::HoldBackSpec) -> HoldBack {
    if spec.heartbeat.is_none() {
        c.fail(
            "spec.drain.holdBack",
            "holding back decides from the session counts instances report: add spec.heartbeat (for example {source: Push}), or remove holdBack",
        );
    }
    if !(1..=MAX_HOLD_BACK_PODS).contains(&h.max_pods) {
        c.fail(
            "spec.drain.holdBack.maxPods",
            format!(
                "must be between 1 and {MAX_HOLD_BACK_PODS}, got {}",
                h.max_pods
            ),
        );
    } else if h.max_pods >= spec.max_replicas {
        c.fail(
            "spec.drain.holdBack.maxPods",
            format!(
                "{} is not less than maxReplicas ({}): at least one instance must serve; lower maxPods",
                h.max_pods, spec.max_replicas
            ),
        );
    }
    if h.session_ceiling < 1 {
        c.fail(
            "spec.drain.holdBack.sessionCeiling",
            format!(
                "must be at least 1 session per serving instance, got {}",
                h.session_ceiling
            ),
        );
    }
    HoldBack {
        max_pods: u32::try_from(h.max_pods).unwrap_or(1),
        session_ceiling: u64::try_from(h.session_ceiling).unwrap_or(1),
    }
}

fn validate_prometheus(c: &mut Checker, p: &api::PrometheusServer) -> PrometheusServer {
    let https = p.address.starts_with("https://");
    if !(https || p.address.starts_with("http://")) || p.address.len() < 9 {
        c.fail(
            "spec.prometheus.address",
            format!(
                "{:?} is not an http(s) URL; write one such as https://prometheus.monitoring:9090",
                p.address
            ),
        );
    }
    let authority = p.address.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if authority.contains('@') {
        c.fail(
            "spec.prometheus.address",
            "must not hold credentials (user:password@); put them in a Secret and name it in basicAuthSecret",
        );
    }
    let auth = match (&p.bearer_token_secret, &p.basic_auth_secret) {
        (Some(_), Some(_)) => {
            c.fail(
                "spec.prometheus",
                "set at most one of bearerTokenSecret and basicAuthSecret",
            );
            PrometheusAuth::None
        }
        (Some(token), None) => PrometheusAuth::BearerToken(token.clone()),
        (None, Some(basic)) => PrometheusAuth::Basic(basic.clone()),
        (None, None) => PrometheusAuth::None,
    };
    if auth != PrometheusAuth::None && !https && !p.allow_insecure_credentials {
        c.fail(
            "spec.prometheus.address",
            "credentials would be sent over plain http, readable by anyone on the path: use an https \
             address, or set spec.prometheus.allowInsecureCredentials: true if that path is trusted",
        );
    }
    let timeout = c.duration("spec.prometheus.timeout", &p.timeout);
    if parse_duration(&p.timeout).is_ok()
        && !(MIN_PROMETHEUS_TIMEOUT..=MAX_PROMETHEUS_TIMEOUT).contains(&timeout)
    {
        c.fail(
            "spec.prometheus.timeout",
            format!(
                "must be between {} and {}, got {}: it bounds how long a reconcile waits for \
                 Prometheus, all of a policy's queries together",
                fmt_duration(MIN_PROMETHEUS_TIMEOUT),
                fmt_duration(MAX_PROMETHEUS_TIMEOUT),
                p.timeout
            ),
        );
    }
    PrometheusServer {
        address: p.address.trim_end_matches('/').to_owned(),
        auth,
        ca_secret: p.ca_secret.clone(),
        timeout,
    }
}

fn validate_metrics(c: &mut Checker, spec: &ScalingPolicySpec) -> Vec<Metric> {
    if spec.metrics.is_empty() {
        c.fail("spec.metrics", "needs at least one metric to scale on");
    }
    let mut seen = BTreeSet::new();
    let mut metrics = Vec::with_capacity(spec.metrics.len());
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        if !valid_metric_name(&m.name) {
            c.fail(
                format!("{at}.name"),
                format!("{:?} is not a valid metric name; use lower-case letters, digits, '-' and '_' (at most 63)", m.name),
            );
        }
        if !seen.insert(m.name.as_str()) {
            c.fail(
                format!("{at}.name"),
                format!(
                    "metric name {:?} is used twice; give each metric its own name",
                    m.name
                ),
            );
        }
        let source = match (&m.prometheus, &m.sessions) {
            (Some(p), None) => {
                if p.query.trim().is_empty() {
                    c.fail(
                        format!("{at}.prometheus.query"),
                        "is empty; write a PromQL query that returns one sample",
                    );
                }
                Source::Prometheus {
                    query: p.query.clone(),
                }
            }
            (None, Some(_)) => Source::Sessions,
            (Some(_), Some(_)) => {
                c.fail(
                    at.clone(),
                    "has two sources; set either prometheus or sessions, not both",
                );
                Source::Sessions
            }
            (None, None) => {
                c.fail(
                    at.clone(),
                    "has no source; set prometheus: {query: ...} or sessions: {}",
                );
                Source::Sessions
            }
        };
        let target = match m.target.type_ {
            TargetType::AverageValue => match &m.target.average_value {
                Some(q) => {
                    MetricTarget::AverageValue(positive(c, &format!("{at}.target.averageValue"), q))
                }
                None => {
                    c.fail(
                        format!("{at}.target.averageValue"),
                        "is required when target.type is AverageValue",
                    );
                    MetricTarget::AverageValue(1.0)
                }
            },
            TargetType::Value => match &m.target.value {
                Some(q) => MetricTarget::Value(positive(c, &format!("{at}.target.value"), q)),
                None => {
                    c.fail(
                        format!("{at}.target.value"),
                        "is required when target.type is Value",
                    );
                    MetricTarget::Value(1.0)
                }
            },
        };
        let activation = match &m.activation_threshold {
            Some(q) => {
                let path = format!("{at}.activationThreshold");
                let v = c.quantity(&path, q);
                if v < 0.0 {
                    c.fail(path, format!("must be 0 or more, got {}", q.0));
                }
                v
            }
            None => 0.0,
        };
        metrics.push(Metric {
            name: m.name.clone(),
            source,
            target,
            activation,
        });
    }
    metrics
}

fn positive(c: &mut Checker, path: &str, q: &api::Quantity) -> f64 {
    let v = c.quantity(path, q);
    if parse_quantity(&q.0).is_ok() && v <= 0.0 {
        c.fail(path, format!("must be greater than 0, got {}", q.0));
    }
    v
}

fn valid_metric_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(inner)
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
}

fn validate_heartbeat(c: &mut Checker, h: &api::HeartbeatSpec) -> Heartbeat {
    let source = match h.source {
        ApiHeartbeatSource::Push => HeartbeatSource::Push,
        ApiHeartbeatSource::Prometheus => match h.query.as_deref().map(str::trim) {
            Some(q) if !q.is_empty() => HeartbeatSource::Prometheus {
                query: q.to_owned(),
            },
            _ => {
                c.fail(
                    "spec.heartbeat.query",
                    "is required when heartbeat.source is Prometheus; write a per-pod query such as sum by (pod) (app_active_sessions)",
                );
                HeartbeatSource::Push
            }
        },
    };
    let timeout = c.duration("spec.heartbeat.timeout", &h.timeout);
    if parse_duration(&h.timeout).is_ok() && timeout < Duration::from_secs(1) {
        c.fail(
            "spec.heartbeat.timeout",
            format!("must be at least 1s, got {}", h.timeout),
        );
    }
    if h.max_concurrent_replacements < 1 {
        c.fail(
            "spec.heartbeat.maxConcurrentReplacements",
            format!("must be at least 1, got {}", h.max_concurrent_replacements),
        );
    }
    Heartbeat {
        source,
        timeout,
        on_lost: h.on_lost,
        max_concurrent_replacements: u32::try_from(h.max_concurrent_replacements).unwrap_or(1),
    }
}

/// The HPA's defaults: up at most doubling or +4 pods per 15s, down to any count per 15s
/// after a 300s window.
pub fn default_behavior() -> Behavior {
    Behavior {
        scale_up: Rules {
            stabilization_window: Duration::ZERO,
            select: SelectPolicy::Max,
            policies: vec![
                RatePolicy {
                    kind: RuleType::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
                RatePolicy {
                    kind: RuleType::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
            ],
        },
        scale_down: Rules {
            stabilization_window: Duration::from_secs(300),
            select: SelectPolicy::Max,
            policies: vec![RatePolicy {
                kind: RuleType::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        },
    }
}

fn validate_behavior(c: &mut Checker, behavior: Option<&api::Behavior>) -> Behavior {
    let defaults = default_behavior();
    let up = behavior.and_then(|b| b.scale_up.as_ref());
    let down = behavior.and_then(|b| b.scale_down.as_ref());
    Behavior {
        scale_up: validate_rules(c, "spec.behavior.scaleUp", up, defaults.scale_up),
        scale_down: validate_rules(c, "spec.behavior.scaleDown", down, defaults.scale_down),
    }
}

fn validate_rules(c: &mut Checker, at: &str, rules: Option<&ApiRules>, defaults: Rules) -> Rules {
    let Some(rules) = rules else { return defaults };
    let stabilization_window = match rules.stabilization_window_seconds {
        None => defaults.stabilization_window,
        Some(s @ 0..=3600) => Duration::from_secs(u64::from(s.unsigned_abs())),
        Some(s) => {
            c.fail(
                format!("{at}.stabilizationWindowSeconds"),
                format!("must be between 0 and 3600, got {s}"),
            );
            defaults.stabilization_window
        }
    };
    let policies = match &rules.policies {
        None => defaults.policies,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.value < 1 {
                    c.fail(
                        format!("{at}.policies[{i}].value"),
                        format!("must be at least 1, got {}", p.value),
                    );
                }
                if !(1..=1800).contains(&p.period_seconds) {
                    c.fail(
                        format!("{at}.policies[{i}].periodSeconds"),
                        format!("must be between 1 and 1800, got {}", p.period_seconds),
                    );
                }
                RatePolicy {
                    kind: p.type_,
                    value: p.value.unsigned_abs(),
                    period: Duration::from_secs(u64::from(p.period_seconds.unsigned_abs())),
                }
            })
            .collect(),
    };
    if policies.is_empty() && rules.select_policy != Some(SelectPolicy::Disabled) {
        c.fail(
            format!("{at}.policies"),
            "is empty; add a policy, or set selectPolicy: Disabled to forbid this direction",
        );
    }
    Rules {
        stabilization_window,
        select: rules.select_policy.unwrap_or(defaults.select),
        policies,
    }
}

/// Parses a Go-style duration: `0`, `500ms`, `15s`, `30m`, `1h30m`, `1.5h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    if raw.is_empty() {
        return Err("is empty".to_owned());
    }
    let mut total = 0f64;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest
            .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|ch: char| ch.is_ascii_digit() || ch == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{raw:?} is not a duration"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{raw:?} has a number without a unit")),
            other => {
                return Err(format!("{raw:?} has unknown unit {other:?}"));
            }
        };
        total += value * scale;
        rest = next;
    }
    // A cast would panic on a total past u64 seconds, and the schema's pattern admits one.
    Duration::try_from_secs_f64(total).map_err(|_| format!("{raw:?} is too long"))
}

/// Parses a Kubernetes quantity: a decimal number with an optional SI (`m`, `k`, `M`, `G`, ...),
/// binary (`Ki`, `Mi`, ...) or exponent (`1e3`) suffix.
pub fn parse_quantity(raw: &str) -> Result<f64, String> {
    let s = raw.trim();
    let split = s
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '+' || ch == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a quantity"))?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..]
                .parse()
                .map_err(|_| format!("{raw:?} has a malformed exponent"))?;
            10f64.powi(power)
        }
        other => return Err(format!("{raw:?} has unknown suffix {other:?}")),
    };
    let v = value * scale;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{raw:?} is out of range"))
    }
}

/// Formats a duration the way users write them: `15s`, `5m`, `1h30m`, `250ms`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Formats a reading compactly: integers without decimals, others to three places.
pub fn fmt_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        MAX_PROMETHEUS_TIMEOUT, PrometheusAuth, fmt_duration, parse_duration, parse_quantity,
        validate,
    };
    use crate::api::ScalingPolicySpec;
    use std::time::Duration;

    /// A valid spec with `prometheus` as its `spec.prometheus`.
    fn with_prometheus(prometheus: &str) -> ScalingPolicySpec {
        let yaml = format!(
            "targetRef: {{kind: Deployment, name: chat}}\n\
             maxReplicas: 10\n\
             metrics: [{{name: rps, prometheus: {{query: up}}, target: {{type: Value, value: 1}}}}]\n\
             prometheus: {prometheus}\n"
        );
        serde_saphyr::from_str(&yaml).expect("a spec")
    }

    fn errors(prometheus: &str) -> Vec<String> {
        match validate(&with_prometheus(prometheus)) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn credentials_over_plain_http_are_refused_unless_the_policy_allows_it() {
        let token = "bearerTokenSecret: {name: prom, key: token}";
        let refused = errors(&format!("{{address: 'http://prom:9090', {token}}}"));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0]
                .starts_with("spec.prometheus.address: credentials would be sent over plain http"),
            "{refused:?}"
        );
        assert!(
            refused[0].contains("allowInsecureCredentials: true"),
            "{refused:?}"
        );
        let basic = errors("{address: 'http://prom:9090', basicAuthSecret: {name: prom}}");
        assert_eq!(basic.len(), 1, "{basic:?}");
        assert!(errors(&format!("{{address: 'https://prom:9090', {token}}}")).is_empty());
        assert!(
            errors(&format!(
                "{{address: 'http://prom:9090', allowInsecureCredentials: true, {token}}}"
            ))
            .is_empty()
        );
        assert!(errors("{address: 'http://prom:9090'}").is_empty());
        let policy = validate(&with_prometheus(&format!(
            "{{address: 'https://prom:9090/', {token}}}"
        )))
        .expect("valid");
        let server = policy.prometheus.expect("a server");
        assert_eq!(server.address, "https://prom:9090");
        assert!(matches!(server.auth, PrometheusAuth::BearerToken(_)));
    }

    #[test]
    fn an_address_with_credentials_in_it_is_refused() {
        let got = errors("{address: 'https://user:pass@prom:9090'}");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("basicAuthSecret"), "{got:?}");
        assert!(errors("{address: 'https://prom:9090/x?a=b@c'}").is_empty());
    }

    #[test]
    fn the_prometheus_time_budget_is_bounded() {
        assert_eq!(MAX_PROMETHEUS_TIMEOUT, Duration::from_secs(30));
        for (timeout, ok) in [
            ("30s", true),
            ("100ms", true),
            ("31s", false),
            ("1h", false),
            ("0s", false),
            ("50ms", false),
        ] {
            let got = errors(&format!(
                "{{address: 'https://prom:9090', timeout: {timeout}}}"
            ));
            assert_eq!(got.is_empty(), ok, "{timeout}: {got:?}");
            if !ok {
                assert!(
                    got[0].starts_with("spec.prometheus.timeout: must be between 100ms and 30s"),
                    "{got:?}"
                );
            }
        }
    }

    #[test]
    fn the_schema_bounds_the_prometheus_timeout_as_validation_does() {
        let crd =
            serde_json::to_string(&<crate::api::ScalingPolicy as kube::CustomResourceExt>::crd())
                .expect("the CRD serializes");
        assert!(
            crd.contains(
                "duration(self) >= duration('100ms') && duration(self) <= duration('30s')"
            ),
            "the CEL rule on spec.prometheus.timeout must match MIN/MAX_PROMETHEUS_TIMEOUT"
        );
    }

    #[test]
    fn durations_parse_like_kubernetes_writes_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_duration_too_long_to_hold_is_an_error_not_a_panic() {
        // The CRD's pattern admits these; the controller validates every policy it sees.
        let nines = "9".repeat(400) + "m";
        for raw in ["99999999999999999999s", "5124095576030432h", &nines] {
            let err = parse_duration(raw).expect_err("too long");
            assert!(err.contains("too long"), "{raw}: {err}");
        }
        assert_eq!(
            parse_duration("5000000000000000h"),
            Ok(Duration::from_secs(18_000_000_000_000_000_000))
        );
    }

    #[test]
    fn durations_format_back_to_their_short_form() {
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(fmt_duration(Duration::from_secs(15)), "15s");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn quantities_accept_suffixes() {
        assert_eq!(parse_quantity("100"), Ok(100.0));
        assert_eq!(parse_quantity("250m"), Ok(0.25));
        assert_eq!(parse_quantity("2k"), Ok(2000.0));
        assert_eq!(parse_quantity("1Ki"), Ok(1024.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert!(parse_quantity("ten").is_err());
        assert!(parse_quantity("10x").is_err());
    }
}
