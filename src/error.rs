//! Reconcile errors, one variant per step that can fail, with a stable label for metrics.

/// A reconcile step that failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the target's scale subresource: {source}")]
    ReadScale {
        #[source]
        source: kube::Error,
    },
    #[error("the HorizontalPodAutoscaler cache stopped before it was filled")]
    AutoscalerCache,
    #[error("patching pod {pod}: {source}")]
    PatchPod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the target's scale subresource: {source}")]
    PatchScale {
        #[source]
        source: kube::Error,
    },
    #[error("deleting lost pod {pod}: {source}")]
    DeletePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the policy status: {source}")]
    PatchStatus {
        #[source]
        source: kube::Error,
    },
    #[error("listing the target's pods: {source}")]
    ListPods {
        #[source]
        source: kube::Error,
    },
    #[error("adding the finalizer {finalizer} to the policy: {source}")]
    AddFinalizer {
        finalizer: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("removing the finalizer {finalizer} from the policy: {source}")]
    RemoveFinalizer {
        finalizer: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the policy has no name")]
    NoName,
    #[error("the finalizer's JSON patch path is invalid")]
    InvalidFinalizer,
    #[error("the policy has no namespace")]
    NoNamespace,
    #[error("not writing ({write}): {source}")]
    NotLeading {
        /// The write that was held back.
        write: String,
        #[source]
        source: crate::leader::NotLeading,
    },
    #[error(
        "the target's replicas changed after they were read (its scale subresource answered 409 Conflict to a write of the resourceVersion read); deciding again: {source}"
    )]
    ScaleChanged {
        #[source]
        source: kube::Error,
    },
    #[error(
        "the target's scale subresource has no resourceVersion; not writing a count that could overwrite someone else's change"
    )]
    UnversionedScale,
    #[error(
        "pod {pod} has no UID in the pod cache; not writing to a pod that cannot be named exactly"
    )]
    PodWithoutUid { pod: String },
}

impl Error {
    /// The step that failed, as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Error::ReadScale { .. } => "read_scale",
            Error::AutoscalerCache => "autoscaler_cache",
            Error::PatchPod { .. } => "patch_pod",
            Error::PatchScale { .. } => "patch_scale",
            Error::DeletePod { .. } => "delete_pod",
            Error::PatchStatus { .. } => "patch_status",
            Error::ListPods { .. } => "list_pods",
            Error::AddFinalizer { .. } => "add_finalizer",
            Error::RemoveFinalizer { .. } => "remove_finalizer",
            Error::NoName => "no_name",
            Error::InvalidFinalizer => "invalid_finalizer",
            Error::NoNamespace => "no_namespace",
            Error::NotLeading { .. } => "not_leading",
            Error::ScaleChanged { .. } => "scale_changed",
            Error::UnversionedScale => "unversioned_scale",
            Error::PodWithoutUid { .. } => "pod_without_uid",
        }
    }
}
