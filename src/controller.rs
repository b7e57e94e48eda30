//! kube-rs `Controller` wiring: the pod cache shared by reconciles and the heartbeat server,
//! reconcile as the pipeline `validate -> observe -> decide -> act -> report`, the finalizer
//! that restores a deleted policy's pods, the error policy, and the leader's life cycle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::core::Selector;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizing};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::Predicate;
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::act::{self, Basis, Writer};
use crate::api::ScalingPolicy;
use crate::engine::{self, Decision, Mode, Time};
use crate::error::Error;
use crate::index::pods::PodIndex;
use crate::index::targets::{Scales, TargetIndex};
use crate::index::{Cadence, LatestMade, ReadingCache, Reused, SelectorIndex};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::names::{CONTROLLER_NAME, FINALIZER, ShellReason};
use crate::observe::pods::{self, CachedPod};
use crate::observe::scales::{self, ScaleCache};
use crate::observe::{self, Blocked, Sources};
use crate::policy::{self, Policy};
use crate::restore;
use crate::status::{self, Ready};

/// Where `kubectl apply` (client-side) keeps the spec it applied last.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// How often a policy that cannot act is looked at again (spec changes trigger at once).
const BLOCKED_REQUEUE: Duration = Duration::from_secs(30);
const INVALID_REQUEUE: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How soon a policy whose count changed under its decision decides again.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(1);
/// How long the controller waits for more triggers of a policy before it runs; every requeue
/// is run this much later than asked.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// The shortest requeue of a policy that read its metrics earlier in the interval.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// Everything a reconcile needs.
pub struct Context {
    pub sources: Sources,
    pub policies: Store<ScalingPolicy>,
    /// Who scales each target, for conflicts.
    pub policy_targets: Arc<TargetIndex<ScalingPolicy>>,
    /// HorizontalPodAutoscalers: the cache, to wait for its first list, and who scales what.
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub autoscaler_targets: Arc<TargetIndex<HorizontalPodAutoscaler>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Checked right before every write.
    pub leadership: Leadership,
    /// Each policy's pod selector, so that pod changes trigger their policy.
    selectors: SelectorIndex,
    /// The last Prometheus readings, reused between intervals.
    readings: ReadingCache,
    /// When each policy's newest recommendation was last made.
    latest_made: LatestMade,
    /// Consecutive failures per policy, for the backoff.
    failures: RwLock<HashMap<ObjectRef<ScalingPolicy>, u32>>,
    /// The targets as watched, read instead of `/scale`.
    scales: ScaleCache,
    /// Policies whose last write of the count conflicted: their next reconcile reads the
    /// target through `/scale`, in case the cache lags behind it.
    read_through: RwLock<HashSet<ObjectRef<ScalingPolicy>>>,
}

impl Context {
    fn remember_selector(&self, sp: &ScalingPolicy, selector: Option<Selector>) {
        self.selectors.set(ObjectRef::from_obj(sp), selector);
    }

    /// Whether this reconcile must read the target through `/scale`; asked once per conflict.
    fn reads_through(&self, key: &ObjectRef<ScalingPolicy>) -> bool {
        self.read_through
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
    }

    fn conflicted(&self, sp: &ScalingPolicy) {
        self.read_through
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ObjectRef::from_obj(sp));
    }

    fn succeeded(&self, sp: &ScalingPolicy) {
        self.failures
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ObjectRef::from_obj(sp));
    }

    fn failed(&self, sp: &ScalingPolicy) -> u32 {
        let mut map = self
            .failures
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ObjectRef::from_obj(sp)).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Drops what the indexes keep for policies that no longer exist.
    fn forget_deleted_policies(&self) {
        let live: HashSet<ObjectRef<ScalingPolicy>> = self
            .policies
            .state()
            .iter()
            .map(|sp| ObjectRef::from_obj(&**sp))
            .collect();
        let is_live = |policy: &ObjectRef<ScalingPolicy>| live.contains(policy);
        self.selectors.retain(is_live);
        self.readings.retain(is_live);
        self.latest_made.retain(is_live);
        self.metrics.retain_policies(|namespace, name| {
            live.contains(&ObjectRef::new(name).within(namespace))
        });
        self.failures
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|policy, _| is_live(policy));
        self.read_through
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|policy| is_live(policy));
    }

    async fn publish(&self, sp: &ScalingPolicy, warning: bool, reason: &str, note: String) {
        // The recorder folds events with the same reason and action into one series that shows
        // the first note; an action that follows the note keeps "scaled up from 2 to 3" and
        // "from 3 to 5" apart while exact repeats still fold. The API allows 128 characters.
        if let Err(why) = self.leadership.check() {
            tracing::warn!(%why, reason, "not publishing an event");
            return;
        }
        let action: String = note.chars().take(128).collect();
        let event = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action,
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &sp.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }
}

/// One policy, once. Through the finalizer: a policy first gets it (`FINALIZER`), then is
/// reconciled (`apply`) until it is deleted, and then its pods are restored (`clean_up`) before
/// the finalizer lets it go. A policy being deleted is never acted on.
pub async fn reconcile(sp: Arc<ScalingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let _timer = ctx.metrics.timer(Instant::now());
    let namespace = sp.namespace().ok_or(Error::NoNamespace)?;
    let policies: Api<ScalingPolicy> = Api::namespaced(ctx.sources.client.clone(), &namespace);
    finalizer::finalizer(&policies, FINALIZER, sp, |event| async {
        match event {
            Finalizing::Apply(sp) => apply(sp, &ctx, &namespace).await,
            Finalizing::Cleanup(sp) => clean_up(&sp, &ctx, &namespace).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(source) => Error::AddFinalizer {
            finalizer: FINALIZER,
            source,
        },
        finalizer::Error::RemoveFinalizer(source) => Error::RemoveFinalizer {
            finalizer: FINALIZER,
            source,
        },
        finalizer::Error::UnnamedObject => Error::NoName,
        finalizer::Error::InvalidFinalizer => Error::InvalidFinalizer,
    })
}

/// A deleted policy: puts the pods it marked back into service, so that none is left out of
/// its Service with the lowest deletion cost. Nothing to restore (the target is gone, or the
/// policy never drained) lets it go at once. Another live policy on the same target (the
/// younger one a conflict held back) inherits the drains instead: it carries them on or
/// cancels them. Needs a client.
async fn clean_up(sp: &ScalingPolicy, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    ctx.remember_selector(sp, None);
    let target = &sp.spec.target_ref;
    let kind = observe::kind_name(target.kind);
    if let Some(heir) = heir(&ctx.policies, sp, namespace) {
        tracing::info!(
            namespace,
            policy = sp.name_any(),
            heir,
            "deleted; its drains stay with the other policy on {kind} {}",
            target.name
        );
        return Ok(Action::await_change());
    }
    let client = &ctx.sources.client;
    let Ok(found) = observe::target_named(client, namespace, target.kind, &target.name).await?
    else {
        // No target, no pods of it to restore.
        return Ok(Action::await_change());
    };
    let now = pods::time(Timestamp::now());
    let marks = restore::marked_pods(client, namespace, &found.selector, now).await?;
    let restore = restore::to_restore(&marks, found.replicas);
    let writer = Writer {
        client,
        namespace,
        leadership: &ctx.leadership,
    };
    restore::restore(&writer, &restore).await?;
    if !restore.is_empty() {
        let note = format!("the policy is being deleted: {}", restored(&restore));
        tracing::info!(namespace, policy = sp.name_any(), note, "restored");
        ctx.publish(sp, false, ShellReason::DrainCancelled.as_str(), note)
            .await;
    }
    Ok(Action::await_change())
}

/// Another policy in `namespace`, not being deleted, that scales the same target as `sp`.
fn heir(policies: &Store<ScalingPolicy>, sp: &ScalingPolicy, namespace: &str) -> Option<String> {
    let target = &sp.spec.target_ref;
    policies
        .state()
        .iter()
        .find(|other| {
            other.namespace().as_deref() == Some(namespace)
                && other.name_any() != sp.name_any()
                && other.metadata.deletion_timestamp.is_none()
                && other.spec.target_ref.kind == target.kind
                && other.spec.target_ref.name == target.name
        })
        .map(|other| other.name_any())
}

fn pod_list(pods: &[&restore::Restore]) -> String {
    let names: Vec<&str> = pods.iter().map(|r| r.pod.as_str()).collect();
    format!(
        "pod{} {}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}

/// What letting go of a target did to its pods: drains cancelled, held-back pods released.
fn restored(pods: &[restore::Restore]) -> String {
    let (held, drained): (Vec<&restore::Restore>, Vec<&restore::Restore>) =
        pods.iter().partition(|r| r.held_only);
    let mut parts = Vec::new();
    if !drained.is_empty() {
        parts.push(format!("cancelled the drains of {}", pod_list(&drained)));
    }
    if !held.is_empty() {
        parts.push(format!("released the held-back {}", pod_list(&held)));
    }
    format!("{}; they serve again", parts.join(" and "))
}

/// What a policy that lets go of its target (paused, dry run) is called in messages.
fn letting_go(policy: &Policy) -> Option<&'static str> {
    if policy.paused {
        Some("spec.paused")
    } else if policy.dry_run {
        Some("spec.dryRun")
    } else {
        None
    }
}

/// A live policy: `validate -> observe -> decide -> act -> report`.
async fn apply(sp: Arc<ScalingPolicy>, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let namespace = namespace.to_owned();
    let now = pods::time(Timestamp::now());
    let client = &ctx.sources.client;

    // validate (pure)
    let policy = match policy::validate(&sp.spec) {
        Ok(p) => p,
        Err(why) => {
            let message = format!("the policy is invalid: {why}");
            return block(
                ctx,
                &sp,
                &namespace,
                ShellReason::InvalidPolicy,
                message,
                now,
            )
            .await
            .map(|()| Action::requeue(INVALID_REQUEUE));
        }
    };

    // observe (needs a client): the target's scale and the metrics at once
    let generation = sp.meta().generation;
    let key = ObjectRef::from_obj(&*sp);
    let cadence = Cadence::of(&sp, policy.interval);
    let reuse = ctx.readings.fresh(&key, generation, &cadence, now);
    let through = ctx.reads_through(&key);
    let (target, readings) = tokio::join!(
        observe::target(client, &ctx.scales, through, &namespace, &policy),
        observe::readings(
            &ctx.sources,
            &namespace,
            &policy,
            reuse.as_ref().map(|r| &r.readings),
            now,
        ),
    );
    let target = match target? {
        Ok(target) => target,
        Err(b) => return blocked(ctx, &sp, &namespace, b, now).await,
    };
    let readings = match readings {
        Ok(readings) => readings,
        Err(b) => return blocked(ctx, &sp, &namespace, b, now).await,
    };
    ctx.autoscalers
        .wait_until_ready()
        .await
        .map_err(|_| Error::AutoscalerCache)?;
    if let Some(b) = observe::conflicts(&ctx.policy_targets, &ctx.autoscaler_targets, &sp) {
        return blocked(ctx, &sp, &namespace, b, now).await;
    }
    ctx.remember_selector(&sp, Some(target.selector.clone()));
    let (mut seen, uids) = observe::observe(&ctx.sources, &namespace, &target, readings, now);
    // act (needs a client): paused or in dry run, drainscaler lets go of the target, and the
    // drains in progress are cancelled so that no pod stays out of service with nobody to
    // finish its drain. The decision sees them serving.
    if let Some(field) = letting_go(&policy) {
        let marks = restore::Marks::of_observed(&seen.instances, &uids, now);
        let restore = restore::to_restore(&marks, seen.replicas);
        if !restore.is_empty() {
            let writer = Writer {
                client,
                namespace: &namespace,
                leadership: &ctx.leadership,
            };
            restore::restore(&writer, &restore).await?;
            restore::forget_marks(&mut seen.instances, &restore);
            let note = format!("{field}: {}", restored(&restore));
            tracing::info!(namespace, policy = sp.name_any(), note, "restored");
            ctx.publish(&sp, false, ShellReason::DrainCancelled.as_str(), note)
                .await;
        }
    }
    let mut history = status::history(sp.status.as_ref());
    ctx.latest_made.fill(&key, &mut history);
    // Reused readings were counted when they were taken: decide on the count from before
    // them, or every reconcile between two readings counts a failure again and brings the
    // fallback forward.
    let mut before = history.clone();
    match &reuse {
        Some(r) => before.consecutive_failures = r.failures_before,
        None => {
            if let Some(last) = ctx.readings.taken_at(&key) {
                ctx.metrics
                    .read_lateness
                    .observe(now.since(cadence.due(last)).as_secs_f64());
            }
            ctx.readings.keep(
                key.clone(),
                generation,
                Reused {
                    at: now,
                    readings: seen.readings.clone(),
                    failures_before: history.consecutive_failures,
                },
            );
        }
    }

    // decide (pure)
    let decision = engine::decide(&policy, &seen, &before, now);

    // act (needs a client)
    let writer = Writer {
        client,
        namespace: &namespace,
        leadership: &ctx.leadership,
    };
    let basis = Basis {
        target: &target,
        uids: &uids,
    };
    let applied = act::act(&writer, &policy, &seen, &basis, &decision, now).await?;
    if applied != act::Applied::default() {
        tracing::info!(
            namespace,
            policy = sp.name_any(),
            from = seen.replicas,
            to = decision.replicas,
            drains = decision.plan.start.len(),
            cancelled = decision.plan.cancel.len(),
            replaced = decision.plan.replace.len(),
            reason = decision.limit.message,
            "acted"
        );
    }

    // report (needs a client)
    let mut next = engine::next_history(&policy, &history, &decision, now);
    if reuse.is_some() {
        // Nothing was read: this decision does not recommend anew.
        next.recommendations = history.recommendations.clone();
        next.latest_made = history.latest_made;
    }
    let ready = Ready {
        status: true,
        reason: ShellReason::Reconciled,
        message: ready_message(&policy, &decision),
    };
    let new_status = status::render(
        sp.status.as_ref(),
        sp.meta().generation,
        seen.replicas,
        &decision,
        &next,
        &ready,
        now,
    );
    writer.may_write(|| "patch the policy status".to_owned())?;
    status::patch(client, &sp, &new_status).await?;
    ctx.latest_made.keep(key.clone(), &next);
    for e in &decision.events {
        let note = match decision.mode {
            Mode::Act => e.message.clone(),
            Mode::DryRun => format!("dry run, nothing changed: {}", e.message),
            Mode::Paused => format!("paused, nothing changed: {}", e.message),
        };
        ctx.publish(&sp, e.reason.is_warning(), e.reason.as_str(), note)
            .await;
    }
    ctx.metrics
        .observe_decision(&namespace, &sp.name_any(), policy.drain.timeout, &decision);
    ctx.succeeded(&sp);
    // Next read when the last one is due again (at the policy's phase, at most one interval
    // later), whatever triggered this reconcile and however long it took: the requeue is run
    // `DEBOUNCE` late, so it asks for that much less.
    let read_at = reuse.as_ref().map_or(now, |r| r.at);
    let done = pods::time(Timestamp::now());
    Ok(Action::requeue(next_read(cadence.due(read_at), done)))
}

/// The requeue, asked for at `done`, that reads again at `due`.
fn next_read(due: Time, done: Time) -> Duration {
    due.since(done).saturating_sub(DEBOUNCE).max(MIN_REQUEUE)
}

async fn blocked(
    ctx: &Context,
    sp: &ScalingPolicy,
    namespace: &str,
    why: Blocked,
    now: Time,
) -> Result<Action, Error> {
    let (reason, message) = match why {
        Blocked::TargetNotFound(m) => (ShellReason::TargetNotFound, m),
        Blocked::Conflict(m) => (ShellReason::Conflict, m),
        Blocked::PrometheusAuth(m) => (ShellReason::PrometheusAuth, m),
        Blocked::InvalidQuery(m) => (ShellReason::InvalidPolicy, m),
    };
    block(ctx, sp, namespace, reason, message, now)
        .await
        .map(|()| Action::requeue(BLOCKED_REQUEUE))
}

fn ready_message(policy: &Policy, decision: &Decision) -> String {
    match decision.mode {
        Mode::Act => policy.summary(),
        Mode::DryRun => format!(
            "spec.dryRun: deciding and reporting only; {}",
            policy.summary()
        ),
        Mode::Paused => "spec.paused: reporting only".to_owned(),
    }
}

/// Reports why a policy does not act, changes nothing else.
async fn block(
    ctx: &Context,
    sp: &ScalingPolicy,
    namespace: &str,
    reason: ShellReason,
    message: String,
    now: Time,
) -> Result<(), Error> {
    // The reasons quote the policy's own values: one bounded line in the status and the event.
    let message = crate::check::one_line(&message);
    ctx.remember_selector(sp, None);
    tracing::warn!(
        namespace,
        policy = sp.name_any(),
        reason = reason.as_str(),
        message,
        "not acting"
    );
    let ready = Ready {
        status: false,
        reason,
        message: message.clone(),
    };
    let new_status = status::render_blocked(sp.status.as_ref(), sp.meta().generation, &ready, now);
    ctx.leadership.check().map_err(|source| Error::NotLeading {
        write: "patch the policy status".to_owned(),
        source,
    })?;
    let changed = status::patch(&ctx.sources.client, sp, &new_status).await?;
    ctx.metrics.blocked(namespace, &sp.name_any());
    if changed {
        ctx.publish(sp, true, reason.as_str(), message).await;
    }
    ctx.succeeded(sp);
    Ok(())
}

/// Retries a failed reconcile with exponential backoff.
pub fn error_policy(sp: Arc<ScalingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.label());
    if matches!(error, Error::ScaleChanged { .. }) {
        // Not a failure: someone else changed the count; decide again on what is there now,
        // read through `/scale` (the watch may not have seen the change yet).
        ctx.conflicted(&sp);
        tracing::info!(
            namespace = sp.namespace(),
            policy = sp.name_any(),
            %error,
            "the count changed under the decision"
        );
        return Action::requeue(CONFLICT_REQUEUE);
    }
    let n = ctx.failed(&sp);
    let backoff = Duration::from_secs(1u64 << n.min(9)).min(MAX_BACKOFF);
    tracing::warn!(
        namespace = sp.namespace(),
        policy = sp.name_any(),
        step = error.label(),
        %error,
        retry_in_secs = backoff.as_secs(),
        "reconcile failed"
    );
    Action::requeue(backoff)
}

/// What `run` is started with.
pub struct RunConfig {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    pub concurrency: u16,
    pub prometheus: Option<observe::prometheus::Prometheus>,
    /// `--prometheus-namespace-label`: restrict each policy's queries to its own namespace.
    pub prometheus_namespace_label: Option<String>,
    pub reporter_instance: Option<String>,
    /// Told that the reconcile loop runs, for `/healthz`.
    pub health: Arc<crate::health::Health>,
    /// This replica's leadership, checked before every write.
    pub leadership: Leadership,
}

/// Runs the controller as leader until `shutdown` resolves. `on_ready` receives the pod cache
/// once it is filled, for the heartbeat server.
pub async fn run(
    client: Client,
    config: RunConfig,
    heartbeats: observe::heartbeats::Heartbeats,
    metrics: Arc<Metrics>,
    on_ready: impl FnOnce(Store<CachedPod>),
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), String> {
    let (pod_store, writer) = reflector::store_shared::<CachedPod>(4096);
    // Changed right before the cache by the same events: a reconcile reads its target's pods
    // through it rather than scanning every cached pod.
    let pod_index = Arc::new(PodIndex::default());
    let indexing = Arc::clone(&pod_index);
    let subscriber = writer.subscribe().ok_or("the pod cache cannot be shared")?;
    let (pods_api, policies_api): (Api<CachedPod>, Api<ScalingPolicy>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let pod_stream = watcher(pods_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(pods::prune)
        .inspect_ok(move |event| indexing.apply(event))
        .reflect_shared(writer)
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "pod watch failed");
            }
            std::future::ready(())
        });
    let pods_task = tokio::spawn(pod_stream);
    pod_store
        .wait_until_ready()
        .await
        .map_err(|e| format!("pod cache: {e}"))?;
    tracing::info!(pods = pod_store.state().len(), "pod cache ready");
    // The targets, watched so that a reconcile reads its count without a request. Not waited
    // for: a reconcile asks `/scale` for a target the cache does not hold yet.
    let (scales, scale_tasks) = scales::watch(&client, config.namespace.as_deref());
    // Heartbeats are answered, and so collected, only from now on: the wait before anything
    // counts as Silent starts here, not when the cache began to fill.
    on_ready(pod_store.clone());
    let heartbeats_since = pods::time(Timestamp::now());

    // HorizontalPodAutoscalers, watched rather than listed per reconcile; one that appears or
    // goes away triggers the policies of its target at once. The controller drives this
    // stream, so reconciles wait for its first list before looking for conflicts.
    let (hpa_store, hpa_writer) = reflector::store::<HorizontalPodAutoscaler>();
    let autoscaler_targets = Arc::new(TargetIndex::<HorizontalPodAutoscaler>::default());
    let indexing = Arc::clone(&autoscaler_targets);
    let hpas_api: Api<HorizontalPodAutoscaler> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let hpa_stream = watcher(hpas_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(observe::prune_hpa)
        .inspect_ok(move |event| indexing.apply(event))
        .reflect(hpa_writer)
        .touched_objects()
        .inspect_err(|e| tracing::warn!(error = %e, "HorizontalPodAutoscaler watch failed"));

    // Only spec changes (a new generation), deletion and finalizers trigger a policy: its own
    // status writes do not.
    let (policy_store, policy_writer) = reflector::store::<ScalingPolicy>();
    let policy_targets = Arc::new(TargetIndex::<ScalingPolicy>::default());
    let indexing = Arc::clone(&policy_targets);
    let policy_stream = watcher(policies_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(prune_policy)
        .inspect_ok(move |event| indexing.apply(event))
        .reflect(policy_writer)
        .applied_objects()
        // Adding the finalizer leaves the generation as it is; a deletion bumps it.
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    let controller = Controller::for_stream(policy_stream, policy_store).with_config(
        ControllerConfig::default()
            .concurrency(config.concurrency)
            .debounce(DEBOUNCE),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.to_owned(),
            instance: config.reporter_instance.clone(),
        },
    );
    let ctx = Arc::new(Context {
        sources: Sources {
            client: client.clone(),
            pods: pod_store,
            pod_index,
            heartbeats: heartbeats.clone(),
            prometheus: config.prometheus,
            heartbeats_since,
            namespace_label: config.prometheus_namespace_label,
        },
        policies: controller.store(),
        policy_targets,
        autoscalers: hpa_store,
        autoscaler_targets,
        recorder,
        metrics,
        leadership: config.leadership,
        selectors: SelectorIndex::default(),
        readings: ReadingCache::default(),
        latest_made: LatestMade::default(),
        failures: RwLock::new(HashMap::new()),
        scales,
        read_through: RwLock::new(HashSet::new()),
    });
    let mapper = Arc::clone(&ctx);
    let policies = Arc::clone(&ctx.policy_targets);
    let kept = Arc::clone(&ctx);
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let hour_ago = pods::time(Timestamp::now()).minus(Duration::from_secs(3600));
            heartbeats.forget_before(hour_ago);
            kept.forget_deleted_policies();
        }
    });
    let health = Arc::clone(&config.health);
    let beating = Arc::clone(&health);
    let beat = async move {
        let mut tick = tokio::time::interval(crate::health::LOOP_BEAT);
        loop {
            tick.tick().await;
            beating.beat(std::time::Instant::now());
        }
    };
    let reconciling = controller
        .watches_shared_stream(subscriber, move |pod: Arc<CachedPod>| {
            mapper.selectors.policies_for(&pod)
        })
        .watches_stream(hpa_stream, move |hpa: HorizontalPodAutoscaler| {
            policies_scaling(&policies, &hpa)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            health.beat(std::time::Instant::now());
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile not run");
            }
            std::future::ready(())
        });
    // The beat runs in the loop's own task: it stops when the loop is stuck on this thread.
    tokio::select! {
        () = reconciling => {},
        () = beat => {},
    }
    pods_task.abort();
    for task in scale_tasks {
        task.abort();
    }
    pruner.abort();
    Ok(())
}

/// Drops from a cached policy what no reconcile reads: its managed fields (two field managers
/// at least, each a copy of the fields it set) and the copy of the spec `kubectl apply` keeps.
fn prune_policy(sp: &mut ScalingPolicy) {
    sp.metadata.managed_fields = None;
    if let Some(annotations) = sp.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// The policies in `hpa`'s namespace whose target it scales too.
fn policies_scaling(
    policies: &TargetIndex<ScalingPolicy>,
    hpa: &HorizontalPodAutoscaler,
) -> Vec<ObjectRef<ScalingPolicy>> {
    let Some(target) = hpa.target() else {
        return Vec::new();
    };
    policies
        .scalers(&target)
        .into_iter()
        .map(|sp| ObjectRef::new(&sp.name).within(&target.namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::{
        DEBOUNCE, LAST_APPLIED_ANNOTATION, MIN_REQUEUE, next_read, prune_policy, restored,
    };
    use crate::api::ScalingPolicy;
    use crate::engine::{CancelledDrain, Time};
    use crate::index::Cadence;
    use crate::restore::Restore;

    #[test]
    fn letting_go_says_which_pods_had_a_drain_cancelled_and_which_were_only_held_back() {
        let pod = |name: &str, held_only: bool| Restore {
            pod: name.to_owned(),
            uid: None,
            drop_cost: false,
            cancelled: CancelledDrain {
                from: Time(0),
                at: Time(0),
            },
            held_only,
        };
        assert_eq!(
            restored(&[pod("a", false), pod("b", true), pod("c", false)]),
            "cancelled the drains of pods a, c and released the held-back pod b; they serve again"
        );
        assert_eq!(
            restored(&[pod("b", true)]),
            "released the held-back pod b; they serve again"
        );
        assert_eq!(
            restored(&[pod("a", false)]),
            "cancelled the drains of pod a; they serve again"
        );
    }

    #[test]
    fn a_cached_policy_keeps_its_spec_status_and_finalizers_but_not_its_managed_fields() {
        let mut sp: ScalingPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "drainscaler.io/v1alpha1",
            "kind": "ScalingPolicy",
            "metadata": {"name": "chat", "namespace": "demo", "finalizers": ["f"]},
            "spec": {
                    "targetRef": {"kind": "Deployment", "name": "chat"},
                    "maxReplicas": 5,
                    "metrics": [],
                },
        }))
        .expect("a policy");
        sp.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        sp.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED_ANNOTATION.to_owned(), "{...}".to_owned()),
            ("team".to_owned(), "chat".to_owned()),
        ]));
        let before = sp.clone();
        prune_policy(&mut sp);
        assert_eq!(sp.metadata.managed_fields, None);
        assert_eq!(
            sp.metadata.annotations,
            Some(BTreeMap::from([("team".to_owned(), "chat".to_owned())]))
        );
        assert_eq!(sp.spec, before.spec);
        assert_eq!(sp.metadata.finalizers, before.metadata.finalizers);
    }

    #[test]
    fn the_next_read_comes_when_due_whatever_the_reconcile_took() {
        let cadence = Cadence::new(Duration::from_secs(15), "uid-1");
        let read_at = Time::from_secs(100);
        let due = cadence.due(read_at);
        // Asked for at the end of a 40 ms reconcile, run `DEBOUNCE` later: when due exactly.
        let done = read_at.plus(Duration::from_millis(40));
        assert_eq!(done.plus(next_read(due, done)).plus(DEBOUNCE), due);
        // A reconcile between two reads (a pod changed) keeps the cadence.
        let done = due.minus(Duration::from_secs(2));
        assert_eq!(done.plus(next_read(due, done)).plus(DEBOUNCE), due);
        // Run when due, it reads, and the next is one interval later.
        assert!(!cadence.stands(read_at, due));
        assert_eq!(cadence.due(due), due.plus(Duration::from_secs(15)));
    }

    #[test]
    fn a_read_already_due_is_requeued_soon_but_not_at_once() {
        let due = Time::from_secs(100);
        let done = due.minus(Duration::from_millis(100));
        assert_eq!(next_read(due, done), MIN_REQUEUE);
        assert_eq!(
            next_read(due, due.plus(Duration::from_secs(3))),
            MIN_REQUEUE
        );
    }
}
