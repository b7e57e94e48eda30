//! drainscaler: a Kubernetes autoscaler that drains session-holding instances before removing them.

pub mod act;
pub mod api;
pub mod check;
pub mod controller;
pub mod engine;
pub mod error;
pub mod fence;
pub mod health;
pub mod index;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod plugin;
pub mod policy;
pub mod restore;
pub mod server;
pub mod simulate;
pub mod status;
pub mod testing;
pub mod tokens;
