//! Leader election over a `coordination.k8s.io/v1` Lease with client-go's timing model, and the
//! leadership handle that fences every write. The rules (`Observed`, `step`, `Leadership`) are
//! pure and take the time as an argument; `Elector` needs a client.
//!
//! The fence, in numbers. A replica takes a lease from another holder only once the lease
//! record has stayed unchanged for `LEASE_DURATION` on its own monotonic clock, counted from
//! when it first read that record; it cannot read a renewal before the holder sent it. The
//! holder starts a write only within `WRITE_WINDOW` of sending its last successful renewal, and
//! every API call is given up after `API_DEADLINE`. So the holder's last write is given up by
//! `WRITE_WINDOW + API_DEADLINE` (12 s) after a renewal that the next leader waits at least
//! `LEASE_DURATION` (15 s) past; 3 s are left for the two clocks' rates and for scheduling.
//!
//! What the fence cannot cover: a write already handed to the connection (sent, or in the
//! socket's buffer) when the process froze. The kernel delivers it while the process is
//! stopped, and the API server may take a slow write longer than our deadline to commit. A
//! process frozen between the freshness check and handing its request to the connection (a
//! window of microseconds) sends that one request when it wakes. The clock is the monotonic
//! one, which runs while a process is stopped but not while the whole machine is suspended.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// How long a lease holds without renewal, as this replica writes it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long stops leading (and exits).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and how often the others try to take the lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Longest a request to the API server may take, watches excepted.
pub const API_DEADLINE: Duration = Duration::from_secs(4);
/// A write may start only this long after the last successful renewal was sent.
pub const WRITE_WINDOW: Duration = Duration::from_secs(8);

const _: () = assert!(
    WRITE_WINDOW.as_secs() + API_DEADLINE.as_secs() + 2 < LEASE_DURATION.as_secs(),
    "a write could still be under way when another replica may take the lease"
);
const _: () = assert!(
    WRITE_WINDOW.as_secs() < RENEW_DEADLINE.as_secs()
        && RENEW_DEADLINE.as_secs() < LEASE_DURATION.as_secs()
        && 2 * RETRY_PERIOD.as_secs() < RENEW_DEADLINE.as_secs(),
    "the leader must renew several times within the renew deadline, inside the lease"
);

/// The monotonic time source; tests inject their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// `Instant::now()`: CLOCK_MONOTONIC, which keeps running while the process is stopped.
pub struct Monotonic;

impl Clock for Monotonic {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Why this replica may not write now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotLeading {
    #[error("this replica does not hold the lease")]
    NotElected,
    #[error("this replica lost the lease")]
    Lost,
    #[error(
        "the lease was last renewed {:.1}s ago, more than the {}s a write may follow a renewal: another replica may lead by now",
        age.as_secs_f64(),
        window.as_secs()
    )]
    Stale { age: Duration, window: Duration },
}

#[derive(Debug, Default)]
struct Held {
    /// When the last successful renewal (or the acquisition) was sent.
    renewed: Option<Instant>,
    lost: bool,
}

/// Whether this replica may write: shared by the elector, which records renewals, and every
/// writer, which checks it right before writing.
#[derive(Clone)]
pub struct Leadership {
    held: Arc<Mutex<Held>>,
    clock: Arc<dyn Clock>,
}

impl Leadership {
    pub fn new(clock: Arc<dyn Clock>) -> Leadership {
        Leadership {
            held: Arc::default(),
            clock,
        }
    }

    /// On the monotonic clock.
    pub fn monotonic() -> Leadership {
        Leadership::new(Arc::new(Monotonic))
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.lost {
            held.renewed = Some(held.renewed.map_or(sent, |r| r.max(sent)));
        }
    }

    /// Leadership is over for good: nothing is written from now on.
    pub fn lose(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost = true;
    }

    /// Time since the last successful renewal was sent.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.renewed.map(|r| now.saturating_duration_since(r))
    }

    /// Whether a write may start now.
    pub fn check(&self) -> Result<(), NotLeading> {
        self.check_at(self.clock.now())
    }

    /// Whether a write may start at `now`.
    pub fn check_at(&self, now: Instant) -> Result<(), NotLeading> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.lost {
            return Err(NotLeading::Lost);
        }
        let renewed = held.renewed.ok_or(NotLeading::NotElected)?;
        let age = now.saturating_duration_since(renewed);
        if age < WRITE_WINDOW {
            Ok(())
        } else {
            Err(NotLeading::Stale {
                age,
                window: WRITE_WINDOW,
            })
        }
    }
}

/// Another holder's lease record as this replica has seen it: the record and when this replica
/// first read it. Expiry is judged on this replica's clock alone, never from the holder's
/// `renewTime`, which another machine's clock wrote.
#[derive(Debug, Default)]
pub struct Observed {
    seen: Option<(LeaseSpec, Instant)>,
}

impl Observed {
    /// Notes `record` as read at `now`; the count restarts whenever the record changes.
    pub fn see(&mut self, record: &LeaseSpec, now: Instant) {
        match &self.seen {
            Some((same, _)) if same == record => {}
            _ => self.seen = Some((record.clone(), now)),
        }
    }

    /// How long the holder's lease still runs at `now`; zero once it has expired.
    pub fn left(&self, now: Instant) -> Duration {
        let Some((record, since)) = &self.seen else {
            return Duration::ZERO;
        };
        held_for(record).saturating_sub(now.saturating_duration_since(*since))
    }
}

/// How long a lease holds, as its holder declared it.
fn held_for(record: &LeaseSpec) -> Duration {
    record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(LEASE_DURATION, Duration::from_secs)
}

/// What to do with the lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, held by this replica.
    Create,
    /// This replica holds it: renew it.
    Renew,
    /// Free, or its holder's lease ran out: take it.
    Take,
    /// Another replica holds it for `left` at least.
    Wait { holder: String, left: Duration },
}

/// Decides what this replica does with `lease` (`None`: it does not exist), read at `now`.
pub fn step(
    lease: Option<&LeaseSpec>,
    identity: &str,
    observed: &mut Observed,
    now: Instant,
) -> Step {
    let Some(record) = lease else {
        *observed = Observed::default();
        return Step::Create;
    };
    observed.see(record, now);
    match record.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        None => Step::Take,
        Some(holder) if holder == identity => Step::Renew,
        Some(holder) => {
            let left = observed.left(now);
            if left.is_zero() {
                Step::Take
            } else {
                Step::Wait {
                    holder: holder.to_owned(),
                    left,
                }
            }
        }
    }
}

/// The shortest pause between two attempts to take the lease.
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// The outcome of one look at the lease.
enum Attempt {
    /// This replica holds it, renewed by a write sent then.
    Held(Instant),
    /// Another replica holds it for this long at least.
    Waiting(Duration),
    /// This replica does not hold it (a conflicting write, or it was lost while held).
    NotHeld,
}

/// Takes part in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    leadership: Leadership,
    observed: Mutex<Observed>,
    /// `RETRY_PERIOD`, and the shortest pause between two attempts; shorter in tests.
    retry: Duration,
    min_pause: Duration,
}

impl Elector {
    /// `client` must not be fenced by `leadership`: the elector writes the lease to gain it.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        leadership: Leadership,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            leadership,
            observed: Mutex::default(),
            retry: RETRY_PERIOD,
            min_pause: MIN_PAUSE,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            let mut pause = self.retry;
            match self.attempt(false).await {
                Ok(Attempt::Held(sent)) => {
                    self.leadership.renewed(sent);
                    return;
                }
                // Try again as the lease runs out rather than up to a retry period later.
                Ok(Attempt::Waiting(left)) => pause = left.clamp(self.min_pause, self.retry),
                Ok(Attempt::NotHeld) => {}
                Err(e) => tracing::warn!(error = %e, lease = self.name, "lease not acquired"),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews the lease every `RETRY_PERIOD`; returns once it is lost, or not renewed within
    /// `RENEW_DEADLINE` (a process woken after a freeze returns at once, before it renews).
    /// Leadership is lost for good then.
    pub async fn hold(&self) {
        loop {
            tokio::time::sleep(self.retry).await;
            if self.overdue() {
                return;
            }
            match self.attempt(true).await {
                Ok(Attempt::Held(sent)) => self.leadership.renewed(sent),
                Ok(Attempt::Waiting(_) | Attempt::NotHeld) => {
                    tracing::warn!(lease = self.name, "another replica holds the lease");
                    self.leadership.lose();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, lease = self.name, "lease renewal failed"),
            }
            if self.overdue() {
                return;
            }
        }
    }

    /// Whether the last renewal is older than the renew deadline; gives leadership up if so.
    fn overdue(&self) -> bool {
        let age = self.leadership.age(self.leadership.now());
        if age.is_some_and(|a| a < RENEW_DEADLINE) {
            return false;
        }
        tracing::warn!(
            lease = self.name,
            since_renewal_secs = age.map(|a| a.as_secs_f64()),
            deadline_secs = RENEW_DEADLINE.as_secs(),
            "the lease was not renewed within the renew deadline"
        );
        self.leadership.lose();
        true
    }

    /// Gives the lease up so that another replica takes over at once.
    pub async fn release(&self) {
        self.leadership.lose();
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, lease = self.name, "could not release the lease");
        }
    }

    /// Reads the lease and creates, renews or takes it when `step` says so. With `renew_only`,
    /// only a lease this replica holds is written.
    async fn attempt(&self, renew_only: bool) -> Result<Attempt, kube::Error> {
        let lease = match self.api.get(&self.name).await {
            Ok(l) => Some(l),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let read_at = self.leadership.now();
        let step = {
            let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
            step(
                lease.as_ref().and_then(|l| l.spec.as_ref()),
                &self.identity,
                &mut observed,
                read_at,
            )
        };
        let wall = Timestamp::now();
        let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
        match (step, lease) {
            (Step::Wait { holder, left }, _) => {
                tracing::debug!(holder, left_secs = left.as_secs_f64(), "lease held");
                Ok(Attempt::Waiting(left))
            }
            (Step::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(MicroTime(wall));
                self.write(lease, false).await
            }
            (Step::Take, Some(mut lease)) if !renew_only => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(MicroTime(wall));
                spec.renew_time = Some(MicroTime(wall));
                spec.lease_duration_seconds = Some(duration);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                self.write(lease, false).await
            }
            (Step::Create, _) if !renew_only => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(MicroTime(wall)),
                        renew_time: Some(MicroTime(wall)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.write(lease, true).await
            }
            // Holding, this replica found the lease gone, free or taken: it lost it.
            _ => Ok(Attempt::NotHeld),
        }
    }

    /// Creates `lease`, or replaces it as read: its resourceVersion makes that a
    /// compare-and-swap, so a concurrent change wins and this one gets a conflict.
    async fn write(&self, lease: Lease, create: bool) -> Result<Attempt, kube::Error> {
        let sent = self.leadership.now();
        let result = if create {
            self.api.create(&PostParams::default(), &lease).await
        } else {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        };
        match result {
            Ok(_) => Ok(Attempt::Held(sent)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::NotHeld),
            Err(e) => Err(e),
        }
    }
}

/// A clock that moves only when told, for tests.
#[cfg(test)]
pub struct ManualClock(Mutex<Instant>);

#[cfg(test)]
impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(Instant::now())))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod elector_tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use axum::http::{Method, Request, Response};
    use bytes::Bytes;
    use http_body_util::Full;
    use serde_json::{Value, json};

    use super::{Clock, Elector, LEASE_DURATION, Leadership, ManualClock, NotLeading};

    /// The lease as the fake API server keeps it, and the writes it was sent.
    #[derive(Default)]
    struct Leases {
        lease: Option<Value>,
        version: u64,
        gets: usize,
        writes: Vec<Value>,
    }

    type Shared = Arc<Mutex<Leases>>;

    fn lock(leases: &Shared) -> std::sync::MutexGuard<'_, Leases> {
        leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease_held_by(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "lease", "namespace": "ns"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": "2000-01-01T00:00:00.000000Z", "leaseTransitions": 3}})
    }

    /// A fake API server for one Lease: GET answers it, PUT replaces it if its
    /// resourceVersion is current (409 otherwise), POST creates it. `after` runs after each
    /// request, with the state.
    fn fake_leases(
        lease: Option<Value>,
        after: impl Fn(&mut Leases) + Send + Sync + 'static,
    ) -> (kube::Client, Shared) {
        let shared: Shared = Arc::new(Mutex::new(Leases {
            version: 1,
            ..Leases::default()
        }));
        if let Some(mut l) = lease {
            l["metadata"]["resourceVersion"] = json!("1");
            lock(&shared).lease = Some(l);
        }
        let (state, after) = (Arc::clone(&shared), Arc::new(after));
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let (state, after) = (Arc::clone(&state), Arc::clone(&after));
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("a request body");
                let sent: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut leases = lock(&state);
                let current = leases.version.to_string();
                let (code, answer) = match parts.method {
                    Method::GET => {
                        leases.gets += 1;
                        match &leases.lease {
                            Some(l) => (200, l.clone()),
                            None => (
                                404,
                                json!({"kind": "Status", "apiVersion": "v1",
                                "status": "Failure", "reason": "NotFound", "code": 404}),
                            ),
                        }
                    }
                    Method::PUT | Method::POST => {
                        leases.writes.push(sent.clone());
                        let fits = if parts.method == Method::PUT {
                            sent["metadata"]["resourceVersion"] == json!(current)
                        } else {
                            leases.lease.is_none()
                        };
                        if fits {
                            leases.version += 1;
                            let mut stored = sent;
                            stored["metadata"]["resourceVersion"] =
                                json!(leases.version.to_string());
                            leases.lease = Some(stored.clone());
                            (200, stored)
                        } else {
                            (
                                409,
                                json!({"kind": "Status", "apiVersion": "v1",
                                "status": "Failure", "reason": "Conflict", "code": 409}),
                            )
                        }
                    }
                    _ => (405, json!({})),
                };
                after(&mut leases);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        });
        (kube::Client::new(service, "ns"), shared)
    }

    /// Runs `f` to its end; a loop that never ends fails the test instead of hanging it.
    async fn ends(f: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("the elector kept going");
    }

    fn elector(client: kube::Client, leadership: &Leadership) -> Elector {
        let mut e = Elector::new(client, "ns", "lease", "me", leadership.clone());
        e.retry = Duration::from_millis(1);
        e.min_pause = Duration::from_millis(1);
        e
    }

    #[tokio::test]
    async fn a_leader_woken_after_a_freeze_stops_before_it_renews() {
        let (client, leases) = fake_leases(Some(lease_held_by("me")), |_| {});
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        leadership.renewed(clock.now());
        clock.advance(LEASE_DURATION + Duration::from_secs(5));
        ends(elector(client, &leadership).hold()).await;
        let leases = lock(&leases);
        assert_eq!(
            (leases.gets, leases.writes.len()),
            (0, 0),
            "it went on to renew"
        );
        assert_eq!(leadership.check(), Err(NotLeading::Lost));
    }

    #[tokio::test]
    async fn a_leader_renews_its_lease_as_read_and_stops_once_another_holds_it() {
        // After three renewals, another replica takes the lease.
        let (client, leases) = fake_leases(Some(lease_held_by("me")), |leases| {
            if leases.writes.len() == 3
                && let Some(l) = leases.lease.as_mut()
            {
                l["spec"]["holderIdentity"] = json!("other");
            }
        });
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        leadership.renewed(clock.now());
        ends(elector(client, &leadership).hold()).await;
        let leases = lock(&leases);
        assert_eq!(leases.writes.len(), 3, "{:#?}", leases.writes);
        for (i, write) in leases.writes.iter().enumerate() {
            assert_eq!(write["spec"]["holderIdentity"], "me");
            assert_eq!(
                write["metadata"]["resourceVersion"],
                json!((i + 1).to_string()),
                "a renewal that is not a compare-and-swap"
            );
        }
        assert_eq!(leadership.check(), Err(NotLeading::Lost));
    }

    #[tokio::test]
    async fn a_waiting_replica_takes_a_lease_only_once_unchanged_for_its_duration_on_its_own_clock()
    {
        let clock = ManualClock::new();
        // Each read of the lease takes a second on this replica's clock; the holder's
        // renewTime is decades old, which must not matter.
        let ticking = Arc::clone(&clock);
        let (client, leases) = fake_leases(Some(lease_held_by("other")), move |_| {
            ticking.advance(Duration::from_secs(1));
        });
        let leadership = Leadership::new(clock.clone());
        ends(elector(client, &leadership).acquire()).await;
        let leases = lock(&leases);
        // Read first at t, and again every second until t + 15s.
        assert_eq!(leases.gets, 16);
        let [taken] = leases.writes.as_slice() else {
            panic!("one write expected: {:#?}", leases.writes);
        };
        assert_eq!(taken["spec"]["holderIdentity"], "me");
        assert_eq!(taken["spec"]["leaseTransitions"], 4);
        assert_eq!(taken["metadata"]["resourceVersion"], "1");
        assert_eq!(leadership.check(), Ok(()));
    }

    #[tokio::test]
    async fn a_replica_that_loses_the_race_for_a_free_lease_does_not_lead() {
        // Free, but someone else writes it first: this replica's write conflicts.
        let mut free = lease_held_by("");
        free["spec"]["holderIdentity"] = Value::Null;
        let (client, leases) = fake_leases(Some(free), |leases| {
            if leases.gets == 1 {
                leases.version += 1;
                if let Some(l) = leases.lease.as_mut() {
                    l["spec"]["holderIdentity"] = json!("other");
                    l["metadata"]["resourceVersion"] = json!(leases.version.to_string());
                }
            }
        });
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        let e = elector(client, &leadership);
        let attempt = e.attempt(false).await.expect("an answer");
        assert!(matches!(attempt, super::Attempt::NotHeld));
        assert_eq!(lock(&leases).writes.len(), 1);
        assert_eq!(leadership.check(), Err(NotLeading::NotElected));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;

    use super::{
        Clock, LEASE_DURATION, Leadership, ManualClock, NotLeading, Observed, Step, WRITE_WINDOW,
        step,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn held_by(holder: &str, renewed_at_unix: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(renewed_at_unix).expect("a timestamp"),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn another_holders_lease_expires_a_lease_duration_after_this_replica_first_saw_it() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let record = held_by("other", 1_700_000_000);
        assert_eq!(
            step(Some(&record), "me", &mut seen, t0),
            Step::Wait {
                holder: "other".to_owned(),
                left: LEASE_DURATION
            }
        );
        assert!(matches!(
            step(Some(&record), "me", &mut seen, t0 + secs(14)),
            Step::Wait { left, .. } if left == secs(1)
        ));
        assert_eq!(
            step(Some(&record), "me", &mut seen, t0 + LEASE_DURATION),
            Step::Take
        );
    }

    #[test]
    fn a_renewtime_far_in_the_past_does_not_make_a_lease_expire_sooner() {
        // The holder's clock is an hour behind ours: its renewTime says nothing about expiry.
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let record = held_by("other", 1_000);
        assert!(matches!(
            step(Some(&record), "me", &mut seen, t0),
            Step::Wait { .. }
        ));
        assert!(matches!(
            step(Some(&record), "me", &mut seen, t0 + secs(10)),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn any_change_to_the_record_restarts_the_count() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        step(Some(&held_by("other", 100)), "me", &mut seen, t0);
        // Renewed 10s later: a lease duration counts from when this replica saw that.
        let renewed = held_by("other", 110);
        step(Some(&renewed), "me", &mut seen, t0 + secs(10));
        assert!(matches!(
            step(Some(&renewed), "me", &mut seen, t0 + secs(24)),
            Step::Wait { left, .. } if left == secs(1)
        ));
        assert_eq!(
            step(Some(&renewed), "me", &mut seen, t0 + secs(25)),
            Step::Take
        );
    }

    #[test]
    fn the_holders_declared_duration_is_the_one_waited_for() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let mut record = held_by("other", 100);
        record.lease_duration_seconds = Some(40);
        step(Some(&record), "me", &mut seen, t0);
        assert!(matches!(
            step(Some(&record), "me", &mut seen, t0 + secs(39)),
            Step::Wait { .. }
        ));
        // A missing or nonsensical duration falls back to ours.
        record.lease_duration_seconds = Some(-5);
        step(Some(&record), "me", &mut seen, t0 + secs(40));
        assert!(matches!(
            step(Some(&record), "me", &mut seen, t0 + secs(54)),
            Step::Wait { .. }
        ));
        assert_eq!(
            step(Some(&record), "me", &mut seen, t0 + secs(55)),
            Step::Take
        );
    }

    #[test]
    fn a_missing_free_or_own_lease_needs_no_wait() {
        let mut seen = Observed::default();
        let now = Instant::now();
        assert_eq!(step(None, "me", &mut seen, now), Step::Create);
        let free = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("", 100)
        };
        assert_eq!(step(Some(&free), "me", &mut seen, now), Step::Take);
        assert_eq!(
            step(Some(&held_by("me", 100)), "me", &mut seen, now),
            Step::Renew
        );
    }

    #[test]
    fn writes_are_allowed_only_within_the_write_window_after_a_renewal() {
        let clock = ManualClock::new();
        let lead = Leadership::new(clock.clone());
        assert_eq!(lead.check(), Err(NotLeading::NotElected));
        lead.renewed(clock.now());
        assert_eq!(lead.check(), Ok(()));
        clock.advance(WRITE_WINDOW - Duration::from_millis(1));
        assert_eq!(lead.check(), Ok(()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            lead.check(),
            Err(NotLeading::Stale {
                age: WRITE_WINDOW,
                window: WRITE_WINDOW
            })
        );
        // A renewal counts from when it was sent, not from when its answer came.
        let sent = clock.now();
        clock.advance(secs(3));
        lead.renewed(sent);
        clock.advance(WRITE_WINDOW - secs(3));
        assert!(matches!(lead.check(), Err(NotLeading::Stale { .. })));
    }

    #[test]
    fn a_process_woken_after_a_freeze_may_not_write() {
        let clock = ManualClock::new();
        let lead = Leadership::new(clock.clone());
        lead.renewed(clock.now());
        // SIGSTOP past the lease, then SIGCONT: the monotonic clock ran on.
        clock.advance(LEASE_DURATION + secs(5));
        let refused = lead.check();
        assert!(
            matches!(refused, Err(NotLeading::Stale { age, .. }) if age == secs(20)),
            "{refused:?}"
        );
    }

    #[test]
    fn a_lost_lease_stays_lost_whatever_renewal_comes_late() {
        let clock = ManualClock::new();
        let lead = Leadership::new(clock.clone());
        lead.renewed(clock.now());
        lead.lose();
        lead.renewed(clock.now());
        assert_eq!(lead.check(), Err(NotLeading::Lost));
    }

    #[test]
    fn an_older_renewal_answered_late_does_not_move_the_last_renewal_back() {
        let clock = ManualClock::new();
        let lead = Leadership::new(clock.clone());
        let early = clock.now();
        clock.advance(secs(5));
        lead.renewed(clock.now());
        lead.renewed(early);
        assert_eq!(lead.age(clock.now()), Some(Duration::ZERO));
    }
}

/// The fence as a property: replicas on clocks of their own rates take turns at the lease at
/// random moments, each frozen now and then for longer than the lease, and whenever one takes
/// the lease, every other replica's last write (started while its `Leadership` allowed it, and
/// given up after `API_DEADLINE`) has ended in real time.
#[cfg(test)]
mod fence_properties {
    use std::time::{Duration, Instant};

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;
    use proptest::collection::vec;
    use proptest::test_runner::{Config, FileFailurePersistence};
    use proptest::{prop_assert, prop_oneof, proptest};

    use super::{API_DEADLINE, LEASE_DURATION, Leadership, Observed, Step, step};

    /// One replica: its clock runs at `rate` real seconds per second of its own, and it looks
    /// at the lease after each of its `gaps` (ms of its own clock; long ones are freezes).
    struct Replica {
        id: String,
        rate: f64,
        gaps: Vec<u64>,
        next: usize,
        at: f64,
        observed: Observed,
        leadership: Leadership,
    }

    impl Replica {
        /// Its own clock's reading at real time `real` (seconds).
        fn instant(&self, base: Instant, real: f64) -> Instant {
            base + Duration::from_secs_f64(real * self.rate)
        }

        /// The real time `d` of its own clock takes.
        fn real(&self, d: Duration) -> f64 {
            d.as_secs_f64() / self.rate
        }
    }

    fn record(holder: &str, writes: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
            renew_time: Some(MicroTime(
                Timestamp::from_second(1_700_000_000 + writes).expect("a timestamp"),
            )),
            ..LeaseSpec::default()
        }
    }

    fn gap() -> impl proptest::strategy::Strategy<Value = u64> {
        // Mostly the retry period with jitter; sometimes a freeze past the lease.
        prop_oneof![8 => 100u64..2_500, 2 => 9_000u64..30_000]
    }

    proptest! {
        #![proptest_config(Config {
            cases: 512,
            failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
                "proptest-regressions",
            ))),
            ..Config::default()
        })]

        #[test]
        fn no_replica_takes_the_lease_while_another_may_still_be_writing(
            // Clock rates within 5% of real time.
            specs in vec((950u32..=1_050, vec(gap(), 20..60)), 2..4),
        ) {
            let base = Instant::now();
            let mut replicas: Vec<Replica> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (rate, gaps))| Replica {
                    id: format!("replica-{i}"),
                    rate: f64::from(rate) / 1_000.0,
                    gaps,
                    next: 0,
                    at: 0.0,
                    observed: Observed::default(),
                    leadership: Leadership::monotonic(),
                })
                .collect();
            let mut lease: Option<LeaseSpec> = None;
            let mut writes = 0i64;
            let mut takes = 0u32;
            // The replica due first acts: it reads the lease and writes it at once (the API
            // server orders writes by resourceVersion; a read-then-write is one step here).
            while let Some(x) = (0..replicas.len())
                .filter(|&i| replicas[i].next < replicas[i].gaps.len())
                .min_by(|&a, &b| replicas[a].at.total_cmp(&replicas[b].at))
            {
                let now_real = replicas[x].at;
                let now = replicas[x].instant(base, now_real);
                let id = replicas[x].id.clone();
                let previous = lease.as_ref().and_then(|l| l.holder_identity.clone());
                match step(lease.as_ref(), &id, &mut replicas[x].observed, now) {
                    Step::Create | Step::Renew | Step::Take => {
                        writes += 1;
                        lease = Some(record(&id, writes));
                        replicas[x].leadership.renewed(now);
                        if previous.as_deref() != Some(id.as_str()) {
                            takes += 1;
                            // Every other replica: a write it starts from here on, less one API
                            // deadline of its own clock, would be under way now. Its
                            // Leadership must refuse it.
                            for other in replicas.iter().filter(|r| r.id != id) {
                                let since = now_real - other.real(API_DEADLINE);
                                let at = other.instant(base, since.max(0.0));
                                prop_assert!(
                                    since < 0.0 || other.leadership.check_at(at).is_err(),
                                    "{id} took the lease at {now_real:.2}s while {} could still \
                                     write (its check at {since:.2}s passed)",
                                    other.id
                                );
                            }
                        }
                    }
                    Step::Wait { .. } => {
                        // Another holds it: a replica that led has lost it, for good (it exits
                        // and comes back as a new replica).
                        if replicas[x].leadership.age(now).is_some() {
                            replicas[x].leadership.lose();
                            replicas[x].leadership = Leadership::monotonic();
                            replicas[x].observed = Observed::default();
                            let _ = step(lease.as_ref(), &id, &mut replicas[x].observed, now);
                        }
                    }
                }
                let r = &mut replicas[x];
                let gap = Duration::from_millis(r.gaps[r.next]);
                r.at += r.real(gap);
                r.next += 1;
            }
            prop_assert!(takes >= 1, "nobody ever led");
        }
    }
}
