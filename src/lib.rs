//! drainscaler: a Kubernetes autoscaler that drains session-holding instances before removing them.

pub mod api;
pub mod check;
pub mod engine;
pub mod policy;
pub mod simulate;
pub mod testing;
