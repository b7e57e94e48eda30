//! Every name drainscaler writes or reads on the cluster: annotation and label keys, the field
//! manager, condition types and the event reasons the shell adds. No I/O.

/// Set to `"true"` on a pod while it drains; readable through the downward API.
pub const DRAINING_ANNOTATION: &str = "drainscaler.io/draining";
/// RFC 3339 time at which the pod's drain began.
pub const DRAINING_SINCE_ANNOTATION: &str = "drainscaler.io/draining-since";
/// On a pod whose drain was cancelled: when the earliest drain it may still believe in began
/// (RFC 3339). A pod cut off from the controller never hears of the cancel, and may fail
/// readiness for a drain that is over.
pub const CANCELLED_DRAIN_FROM_ANNOTATION: &str = "drainscaler.io/cancelled-drain-from";
/// On a pod whose drain was cancelled: when (RFC 3339).
pub const DRAIN_CANCELLED_AT_ANNOTATION: &str = "drainscaler.io/drain-cancelled-at";
/// `"true"` on a pod held back (`spec.drain.holdBack`): out of the serving Service (its
/// serving label `"false"`) but not draining. Recovers the held-back set after a restart.
pub const HELD_BACK_ANNOTATION: &str = "drainscaler.io/held-back";
/// `"false"` on a draining pod so that a Service selecting `"true"` stops routing to it.
pub const SERVING_LABEL: &str = "drainscaler.io/serving";
/// `"true"` on the controller pod that holds the lease; the heartbeat Service selects it.
pub const LEADER_LABEL: &str = "drainscaler.io/leader";
/// The ReplicaSet's ranking hint; the lowest value goes first on a scale-in.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The deletion cost of removable pods, decided by the engine.
pub use crate::engine::REMOVABLE_DELETION_COST;
/// The StatefulSet controller's ordinal label.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The finalizer on every policy the controller has seen: deleting the policy waits until the
/// pods it marked draining serve again.
pub const FINALIZER: &str = "drainscaler.io/restore-pods";
/// A Secret named in a policy's `spec.prometheus` is used only with this label set to `"true"`:
/// its owner's consent to have it sent to the policy's Prometheus address.
pub const PROMETHEUS_AUTH_LABEL: &str = "drainscaler.io/prometheus-auth";

/// The one field manager for every write.
pub const FIELD_MANAGER: &str = "drainscaler";
/// The controller name on events.
pub const CONTROLLER_NAME: &str = "drainscaler";

/// The audience heartbeat tokens must be issued for.
pub const TOKEN_AUDIENCE: &str = "drainscaler";
/// TokenReview `status.user.extra` keys that name the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The condition the shell adds to the engine's.
pub const READY_CONDITION: &str = "Ready";

/// Why a policy is Ready or not: `Ready` condition reasons and shell event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellReason {
    /// Observed, decided and acted.
    Reconciled,
    InvalidPolicy,
    TargetNotFound,
    Conflict,
    /// Drains put back into service because the policy was deleted, paused or put in dry run.
    DrainCancelled,
    /// The policy's Prometheus credentials cannot be used as they are.
    PrometheusAuth,
}

impl ShellReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShellReason::Reconciled => "Reconciled",
            ShellReason::InvalidPolicy => "InvalidPolicy",
            ShellReason::TargetNotFound => "TargetNotFound",
            ShellReason::Conflict => "Conflict",
            ShellReason::DrainCancelled => "DrainCancelled",
            ShellReason::PrometheusAuth => "PrometheusAuth",
        }
    }
}
