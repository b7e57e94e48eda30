//! Whether this replica is alive and ready, for `/healthz` and `/readyz`: fed by the daemon
//! (leadership, the pod cache, the reconcile loop), judged at a time passed in. No I/O.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long ago, at the given time, the leader last renewed its lease (`None`: not yet).
/// Provided by the leader election (`Leadership::age` fits).
pub type LastRenewal = Box<dyn Fn(Instant) -> Option<Duration> + Send + Sync>;

/// How stale a signal may be before the replica counts as unhealthy.
#[derive(Clone, Debug)]
pub struct HealthLimits {
    /// The reconcile loop beats at least this often while it runs (see `LOOP_BEAT`).
    pub loop_stall: Duration,
    /// A leader whose last renewal is older than this should have stepped down already.
    pub renewal_stale: Duration,
}

/// How often a running reconcile loop reports that it runs.
pub const LOOP_BEAT: Duration = Duration::from_secs(5);

impl Default for HealthLimits {
    fn default() -> HealthLimits {
        HealthLimits {
            loop_stall: Duration::from_secs(60),
            renewal_stale: crate::leader::LEASE_DURATION,
        }
    }
}

pub struct Health {
    limits: HealthLimits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    leader: Option<Leader>,
}

struct Leader {
    since: Instant,
    last_renewal: Option<LastRenewal>,
    synced: bool,
    loop_beat: Option<Instant>,
}

impl Health {
    pub fn new(limits: HealthLimits) -> Health {
        Health {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This replica took the lease at `now`; `last_renewal` reads its renewals, when the
    /// leader election offers them.
    pub fn leading(&self, now: Instant, last_renewal: Option<LastRenewal>) {
        self.lock().leader = Some(Leader {
            since: now,
            last_renewal,
            synced: false,
            loop_beat: None,
        });
    }

    /// This replica no longer leads (or never did): it stands by.
    pub fn standing_by(&self) {
        self.lock().leader = None;
    }

    /// The leader's caches have synced.
    pub fn synced(&self) {
        if let Some(leader) = &mut self.lock().leader {
            leader.synced = true;
        }
    }

    /// The leader's reconcile loop ran at `now`.
    pub fn beat(&self, now: Instant) {
        if let Some(leader) = &mut self.lock().leader {
            leader.loop_beat = Some(now);
        }
    }

    pub fn live(&self) -> Result<(), Vec<String>> {
        self.live_at(Instant::now())
    }

    pub fn ready(&self) -> Result<(), Vec<String>> {
        self.ready_at(Instant::now())
    }

    /// Alive unless a leader's reconcile loop stalled or its lease went unrenewed: a restart
    /// is the cure for both. A standby, or a leader still filling its caches, is alive.
    pub fn live_at(&self, now: Instant) -> Result<(), Vec<String>> {
        let state = self.lock();
        let Some(leader) = &state.leader else {
            return Ok(());
        };
        let mut why = Vec::new();
        if leader.synced {
            let beat = leader.loop_beat.unwrap_or(leader.since);
            let quiet = now.saturating_duration_since(beat);
            if quiet > self.limits.loop_stall {
                why.push(format!(
                    "the reconcile loop has not run for {}s (limit {}s)",
                    quiet.as_secs(),
                    self.limits.loop_stall.as_secs()
                ));
            }
        }
        why.extend(self.stale_renewal(leader, now));
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    /// Ready when alive and, as leader, its caches have synced: until then it cannot answer
    /// heartbeats. A standby is ready: it takes over when the leader goes.
    pub fn ready_at(&self, now: Instant) -> Result<(), Vec<String>> {
        let mut why = self.live_at(now).err().unwrap_or_default();
        if let Some(leader) = &self.lock().leader
            && !leader.synced
        {
            why.push("leading, but the pod cache has not synced yet".to_owned());
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn stale_renewal(&self, leader: &Leader, now: Instant) -> Option<String> {
        let renewal_age = leader.last_renewal.as_ref()?;
        let age = renewal_age(now).unwrap_or_else(|| now.saturating_duration_since(leader.since));
        (age > self.limits.renewal_stale).then(|| {
            format!(
                "leading, but the lease was last renewed {}s ago (limit {}s)",
                age.as_secs(),
                self.limits.renewal_stale.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::{Health, HealthLimits};

    fn health() -> Health {
        Health::new(HealthLimits {
            loop_stall: Duration::from_secs(60),
            renewal_stale: Duration::from_secs(15),
        })
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_standby_is_alive_and_ready() {
        let h = health();
        let t0 = Instant::now();
        assert_eq!(h.live_at(t0 + 3600 * S), Ok(()));
        assert_eq!(h.ready_at(t0 + 3600 * S), Ok(()));
    }

    #[test]
    fn a_leader_is_ready_only_once_its_pod_cache_synced() {
        let h = health();
        let t0 = Instant::now();
        h.leading(t0, None);
        assert_eq!(h.live_at(t0 + S), Ok(()));
        let why = h.ready_at(t0 + S).expect_err("not ready");
        assert!(why[0].contains("pod cache"), "{why:?}");
        h.synced();
        assert_eq!(h.ready_at(t0 + S), Ok(()));
    }

    #[test]
    fn a_leader_whose_reconcile_loop_stopped_is_not_alive() {
        let h = health();
        let t0 = Instant::now();
        h.leading(t0, None);
        h.synced();
        h.beat(t0 + 10 * S);
        assert_eq!(h.live_at(t0 + 70 * S), Ok(()));
        let why = h.live_at(t0 + 71 * S).expect_err("stalled");
        assert!(
            why[0].contains("reconcile loop has not run for 61s"),
            "{why:?}"
        );
        assert!(h.ready_at(t0 + 71 * S).is_err());
        h.beat(t0 + 71 * S);
        assert_eq!(h.live_at(t0 + 72 * S), Ok(()));
    }

    #[test]
    fn a_leader_that_stopped_renewing_its_lease_is_neither_alive_nor_ready() {
        let h = health();
        let t0 = Instant::now();
        let renewed_secs = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&renewed_secs);
        h.leading(
            t0,
            Some(Box::new(move |now: Instant| {
                let renewed = t0 + Duration::from_secs(read.load(Ordering::SeqCst));
                Some(now.saturating_duration_since(renewed))
            })),
        );
        h.synced();
        h.beat(t0 + 20 * S);
        renewed_secs.store(5, Ordering::SeqCst);
        assert_eq!(h.ready_at(t0 + 20 * S), Ok(()));
        let why = h.ready_at(t0 + 21 * S).expect_err("stale lease");
        assert!(why[0].contains("last renewed 16s ago"), "{why:?}");
        assert!(h.live_at(t0 + 21 * S).is_err());
        h.standing_by();
        assert_eq!(h.live_at(t0 + 21 * S), Ok(()));
    }
}
