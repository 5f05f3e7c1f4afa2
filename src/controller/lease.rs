//! Leader election with a `coordination.k8s.io/v1` Lease, so that only one replica runs the
//! controllers while every replica serves the webhook.
//!
//! The decision ("should I take over this lease now?") is the pure [`decide`]; [`LeaderElector`]
//! does the I/O: get, then create or replace guarded by `resourceVersion`, so two replicas can
//! never both believe they won the same round.
//!
//! The holder also advertises where its report endpoint is (the annotation
//! [`REPORT_ADDRESS_ANNOTATION`]); the other replicas read it in their rounds and forward the
//! agents' reports there (see [`crate::webhook::reports::forward`]).
//!
//! # Why not a library
//!
//! Hand-written on purpose; re-check when kube or these crates move. Checked on 2026-12-06
//! against our kube 5.0 / k8s-openapi 0.29, by reading their sources:
//!
//! - **kubert 0.25.0** (`lease` feature; newest on crates.io, and its repository's main as of
//!   2026-04) depends on `kube-client >=1.1, <1.2` and k8s-openapi 0.25: its `Api<Lease>` and
//!   `Client` are other types than ours, so it cannot share our client. Does not fit.
//! - **kube-lease-manager 0.13.1** (kube 5.0, k8s-openapi 0.29, maintained: it follows kube
//!   releases) fits the versions but not the guarantees the controllers rely on:
//!   1. *No step-down.* When a renewal fails (API server unreachable, timeouts), `watch()`
//!      logs, backs off (1 s .. 30 s) and keeps the published state `true`; the lease
//!      expires for the others, a follower takes over, and two replicas restart workloads at
//!      once. Here a holder that could not renew for [`RENEW_DEADLINE`] stops leading before
//!      the lease ([`LEASE_DURATION`]) can expire for anyone else.
//!   2. *Expiry on the wall clock.* A follower compares the holder's `renewTime` with its own
//!      clock (skew tolerated only up to the `grace` setting) and then releases the "expired"
//!      lease with a strategic-merge patch that carries no `resourceVersion`. Here a follower
//!      takes over only after seeing the same record unchanged for a lease duration on its
//!      monotonic clock, and every write is a `replace` guarded by `resourceVersion`.
//!   3. *Slower handover.* A follower sleeps until the record's expiry before it reads again,
//!      so a released lease is taken up to a lease duration later (here within
//!      [`RENEW_PERIOD`]: a rolling restart leaves the controllers idle for longer).
//!   4. It never exposes the Lease it reads, so the followers would still need their own read
//!      of it for [`REPORT_ADDRESS_ANNOTATION`] each round, and the holder its own write of it.
//!
//!   Wrapping it to add (1) would mean tracking renewals it does not report (its `changed()`
//!   returns only on a change of its own cached state), i.e. keeping most of this module.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::webhook::reports::forward::REPORT_ADDRESS_ANNOTATION;

/// The report address the holder of `lease` advertises, unless `me` holds it (or nobody does).
pub fn advertised_leader(lease: Option<&Lease>, me: &str) -> Option<String> {
    let lease = lease?;
    let holder = lease.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == me {
        return None;
    }
    lease.metadata.annotations.as_ref()?.get(REPORT_ADDRESS_ANNOTATION).filter(|a| !a.is_empty()).cloned()
}

/// Sets (or, without an address, removes) the report address annotation on a Lease we write.
pub fn advertise(metadata: &mut ObjectMeta, address: Option<&str>) {
    let annotations = metadata.annotations.get_or_insert_with(Default::default);
    match address {
        Some(address) => {
            annotations.insert(REPORT_ADDRESS_ANNOTATION.to_string(), address.to_string());
        }
        None => {
            annotations.remove(REPORT_ADDRESS_ANNOTATION);
        }
    }
}

/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a follower retries).
pub const RENEW_PERIOD: Duration = Duration::from_secs(5);
/// A holder that could not renew for this long stops acting as leader, before the lease expires
/// for the others.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// What to do with the lease, seen from one candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds a valid lease: wait.
    Follow { holder: String },
}

/// How the current lease record has been observed locally.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    /// Time since this replica first saw the record's current (holder, renewTime). Measured with
    /// the local monotonic clock, so clock skew between replicas cannot shorten a lease.
    pub unchanged_for: Duration,
    /// Wall-clock now, used only to recognise leases that expired long ago (e.g. after a crash)
    /// without waiting a full lease duration.
    pub now: Timestamp,
}

/// Whether `me` should create, renew, take over or follow `lease`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, observed: Observed) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = lease_duration(spec);
    // A generous margin (two more lease durations) for skew before trusting the wall clock.
    let long_expired = spec.renew_time.as_ref().is_none_or(|t| {
        let margin = SignedDuration::try_from(duration * 3).unwrap_or(SignedDuration::MAX);
        t.0.checked_add(margin).is_ok_and(|deadline| deadline < observed.now)
    });
    if observed.unchanged_for >= duration || long_expired {
        Decision::TakeOver
    } else {
        Decision::Follow { holder: holder.to_string() }
    }
}

fn lease_duration(spec: &LeaseSpec) -> Duration {
    spec.lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(LEASE_DURATION, Duration::from_secs)
}

/// The spec after `me` acquires or renews `previous` at `now`.
pub fn held_spec(previous: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
    // Taking over an existing lease (held, released or expired) is a transition; creating one is not.
    let existed = previous.is_some();
    let previous = previous.cloned().unwrap_or_default();
    let changed_hands = previous.holder_identity.as_deref() != Some(me);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15)),
        acquire_time: if changed_hands { Some(MicroTime(now)) } else { previous.acquire_time.clone() },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if changed_hands && existed { transitions + 1 } else { transitions }),
        ..previous
    }
}

/// The spec after the holder releases it: no holder, so the next candidate takes over at once.
pub fn released_spec(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

/// An identity unique to this process: the pod name (or host name) and a random suffix.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tracelight".to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{host}_{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Errors talking to the API server about the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("reading lease {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("writing lease {name}: {source}")]
    Write { name: String, source: kube::Error },
}

/// Runs the acquire/renew loop for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// (holder, renewTime) last seen, and when it was first seen.
    last_record: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// Our report endpoint (`host:port`), advertised on the Lease while we hold it.
    report_address: Option<String>,
    /// The leader's report endpoint while another replica leads, as last read.
    leader_address: watch::Sender<Option<String>>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: String) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity,
            last_record: None,
            report_address: None,
            leader_address: watch::channel(None).0,
        }
    }

    /// Advertises `address` as our report endpoint while we lead, and publishes the leader's on
    /// `leader_address` while another replica leads.
    pub fn with_report_address(
        mut self,
        address: Option<String>,
        leader_address: watch::Sender<Option<String>>,
    ) -> Self {
        self.report_address = address;
        self.leader_address = leader_address;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: returns whether this replica holds the lease afterwards. A lost race (409) is
    /// not an error: someone else won this round.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let current =
            self.api.get_opt(&self.name).await.map_err(|source| LeaseError::Get { name: self.name.clone(), source })?;
        // A Lease without spec is treated as held by nobody.
        let leader = advertised_leader(current.as_ref(), &self.identity);
        self.leader_address.send_if_modified(|known| {
            let changed = *known != leader;
            *known = leader.clone();
            changed
        });
        let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let observed = Observed { unchanged_for: self.unchanged_for(spec.as_ref()), now: Timestamp::now() };
        let decision = decide(spec.as_ref(), &self.identity, observed);
        let now = Timestamp::now();
        let result = match (&decision, current) {
            (Decision::Follow { .. }, _) => return Ok(false),
            (Decision::Create, _) | (_, None) => {
                let mut lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(held_spec(None, &self.identity, now)),
                };
                advertise(&mut lease.metadata, self.report_address.as_deref());
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                // `replace` sends the resourceVersion we read: a concurrent writer makes it fail with 409.
                lease.spec = Some(held_spec(lease.spec.as_ref(), &self.identity, now));
                advertise(&mut lease.metadata, self.report_address.as_deref());
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => {
                if decision == Decision::TakeOver || decision == Decision::Create {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => Ok(false),
            Err(source) => Err(LeaseError::Write { name: self.name.clone(), source }),
        }
    }

    fn unchanged_for(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renew = spec.and_then(|s| s.renew_time.clone());
        match &self.last_record {
            Some((h, r, since)) if *h == holder && *r == renew => since.elapsed(),
            _ => {
                self.last_record = Some((holder, renew, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Gives the lease up if this replica holds it, so another takes over without waiting.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let current =
            self.api.get_opt(&self.name).await.map_err(|source| LeaseError::Get { name: self.name.clone(), source })?;
        let Some(mut lease) = current else { return Ok(()) };
        let Some(spec) = lease.spec.as_ref().filter(|s| s.holder_identity.as_deref() == Some(&self.identity)) else {
            return Ok(());
        };
        lease.spec = Some(released_spec(spec, Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(source) => Err(LeaseError::Write { name: self.name.clone(), source }),
        }
    }

    /// Campaigns until `shutdown` resolves, publishing leadership on `leader`. Steps down when it
    /// could not renew within [`RENEW_DEADLINE`]; releases the lease on shutdown.
    pub async fn run(mut self, leader: watch::Sender<bool>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Some(Instant::now()),
                Ok(false) => last_renewal = None,
                Err(e) => tracing::warn!(error = %e, "leader election round failed"),
            }
            let is_leader = last_renewal.is_some_and(|t| t.elapsed() < RENEW_DEADLINE);
            if *leader.borrow() != is_leader {
                if !is_leader {
                    tracing::warn!(lease = %self.name, "lost leadership");
                }
                leader.send_replace(is_leader);
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(RENEW_PERIOD) => {}
            }
        }
        leader.send_replace(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease on shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(ts(renewed))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    fn seen(unchanged_secs: u64, now: i64) -> Observed {
        Observed { unchanged_for: Duration::from_secs(unchanged_secs), now: ts(now) }
    }

    #[test]
    fn no_lease_means_create() {
        assert_eq!(decide(None, "me", seen(0, 1000)), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(decide(Some(&held_by("me", 990)), "me", seen(0, 1000)), Decision::Renew);
    }

    #[test]
    fn released_lease_is_taken_over_at_once() {
        let released = released_spec(&held_by("other", 990), ts(1000));
        assert_eq!(decide(Some(&released), "me", seen(0, 1000)), Decision::TakeOver);
    }

    #[test]
    fn valid_lease_of_another_is_followed() {
        let d = decide(Some(&held_by("other", 995)), "me", seen(5, 1000));
        assert_eq!(d, Decision::Follow { holder: "other".into() });
    }

    #[test]
    fn lease_unrenewed_for_its_duration_is_taken_over_despite_skew() {
        // The holder's clock runs ahead (renewTime in our future), but nobody renewed for 15s.
        assert_eq!(decide(Some(&held_by("other", 2000)), "me", seen(15, 1000)), Decision::TakeOver);
        assert_eq!(
            decide(Some(&held_by("other", 2000)), "me", seen(14, 1000)),
            Decision::Follow { holder: "other".into() }
        );
    }

    #[test]
    fn long_expired_lease_is_taken_over_without_waiting() {
        assert_eq!(decide(Some(&held_by("other", 900)), "me", seen(0, 1000)), Decision::TakeOver);
        // Recently expired (within the skew margin): wait for local evidence.
        assert_eq!(
            decide(Some(&held_by("other", 980)), "me", seen(0, 1000)),
            Decision::Follow { holder: "other".into() }
        );
    }

    #[test]
    fn followers_read_the_leaders_report_address_and_the_leader_its_own_is_none() {
        let mut lease = Lease { spec: Some(held_by("a", 1000)), ..Default::default() };
        assert_eq!(advertised_leader(Some(&lease), "b"), None, "not advertised");
        advertise(&mut lease.metadata, Some("10.0.0.7:8443"));
        assert_eq!(advertised_leader(Some(&lease), "b").as_deref(), Some("10.0.0.7:8443"));
        assert_eq!(advertised_leader(Some(&lease), "a"), None, "the leader keeps its reports");
        lease.spec = Some(released_spec(lease.spec.as_ref().unwrap(), ts(1001)));
        assert_eq!(advertised_leader(Some(&lease), "b"), None, "released: nobody to forward to");
        assert_eq!(advertised_leader(None, "b"), None);
        advertise(&mut lease.metadata, None);
        assert!(!lease.metadata.annotations.unwrap().contains_key(REPORT_ADDRESS_ANNOTATION));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let taken = held_spec(Some(&held_by("other", 900)), "me", ts(1000));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(ts(1000))));
        let renewed = held_spec(Some(&taken), "me", ts(1005));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(1000))));
        assert_eq!(renewed.renew_time, Some(MicroTime(ts(1005))));
        assert_eq!(held_spec(None, "me", ts(1)).lease_transitions, Some(0));
        let after_release = held_spec(Some(&released_spec(&renewed, ts(1010))), "next", ts(1011));
        assert_eq!(after_release.lease_transitions, Some(2));
        assert_eq!(after_release.lease_duration_seconds, Some(15));
    }

    /// [`LeaderElector::run`] against a stand-in API server that keeps one Lease in memory, with
    /// paused time: the guarantees the module docs give as the reason to keep this module.
    mod run {
        use super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use kube::Client;
        use serde_json::{json, Value};
        use std::sync::{Arc, Mutex};

        /// Answers get, create and replace of one Lease as the API server does (a replace with a
        /// stale resourceVersion is a 409); every request fails with 500 while `down`.
        #[derive(Clone, Default)]
        struct LeaseServer {
            lease: Arc<Mutex<Option<Value>>>,
            version: Arc<Mutex<u64>>,
            down: Arc<Mutex<bool>>,
        }

        impl LeaseServer {
            fn api(&self) -> Api<Lease> {
                let server = self.clone();
                let service = tower::service_fn(move |request: Request<Body>| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.answer(request).await) }
                });
                Api::namespaced(Client::new(service, "default"), "ops")
            }

            async fn answer(&self, request: Request<Body>) -> Response<Body> {
                use http_body_util::BodyExt as _;
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                if *self.down.lock().unwrap() {
                    return respond(StatusCode::INTERNAL_SERVER_ERROR, status(500, "InternalError"));
                }
                let mut stored = self.lease.lock().unwrap();
                let mut version = self.version.lock().unwrap();
                match parts.method {
                    Method::GET => match stored.as_ref() {
                        Some(lease) => respond(StatusCode::OK, lease.clone()),
                        None => respond(StatusCode::NOT_FOUND, status(404, "NotFound")),
                    },
                    Method::POST if stored.is_some() => respond(StatusCode::CONFLICT, status(409, "AlreadyExists")),
                    Method::POST | Method::PUT => {
                        let mut lease: Value = serde_json::from_slice(&bytes).unwrap();
                        let sent = lease["metadata"]["resourceVersion"].as_str().map(str::to_string);
                        if parts.method == Method::PUT && sent != Some(version.to_string()) {
                            return respond(StatusCode::CONFLICT, status(409, "Conflict"));
                        }
                        *version += 1;
                        lease["metadata"]["resourceVersion"] = json!(version.to_string());
                        *stored = Some(lease.clone());
                        respond(StatusCode::OK, lease)
                    }
                    _ => respond(StatusCode::METHOD_NOT_ALLOWED, status(405, "MethodNotAllowed")),
                }
            }

            fn holder(&self) -> Option<String> {
                let lease = self.lease.lock().unwrap();
                lease.as_ref()?["spec"]["holderIdentity"].as_str().map(str::to_string)
            }

            fn set_down(&self, down: bool) {
                *self.down.lock().unwrap() = down;
            }
        }

        fn respond(code: StatusCode, body: Value) -> Response<Body> {
            Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
        }

        fn status(code: u16, reason: &str) -> Value {
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": reason})
        }

        /// A running candidate; it stops (releasing the lease) when `stop` is dropped.
        struct Candidate {
            leads: watch::Receiver<bool>,
            stop: tokio::sync::oneshot::Sender<()>,
            task: tokio::task::JoinHandle<()>,
        }

        fn candidate(server: &LeaseServer, identity: &str) -> Candidate {
            let (leader, leads) = watch::channel(false);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let elector = LeaderElector::new(server.api(), "tracelight-controller", identity.to_string());
            let task = tokio::spawn(elector.run(leader, async move {
                let _ = stopped.await;
            }));
            Candidate { leads, stop, task }
        }

        /// `a` leads, then `b` starts and follows.
        async fn leader_and_follower(server: &LeaseServer) -> (Candidate, Candidate) {
            let mut a = candidate(server, "a");
            until(&mut a.leads, true).await;
            (a, candidate(server, "b"))
        }

        /// How long until the candidate's leadership is `value`; fails after two minutes.
        async fn until(leads: &mut watch::Receiver<bool>, value: bool) -> Duration {
            let start = Instant::now();
            tokio::time::timeout(Duration::from_secs(120), leads.wait_for(|l| *l == value))
                .await
                .unwrap_or_else(|_| panic!("leadership not {value} within 120 s"))
                .unwrap();
            start.elapsed()
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_that_cannot_renew_steps_down_before_the_lease_expires_for_the_others() {
            let server = LeaseServer::default();
            let mut a = candidate(&server, "a");
            until(&mut a.leads, true).await;
            let renewed = Instant::now();
            server.set_down(true);
            until(&mut a.leads, false).await;
            let stepped_down_after = renewed.elapsed();
            assert!(
                stepped_down_after <= RENEW_DEADLINE,
                "still leading {stepped_down_after:?} after its last renewal"
            );
            assert!(stepped_down_after < LEASE_DURATION);
            // Back up: it renews its own (still held) lease and leads again.
            server.set_down(false);
            until(&mut a.leads, true).await;
            assert_eq!(server.holder().as_deref(), Some("a"));
            a.task.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_released_lease_is_taken_within_one_renew_period() {
            let server = LeaseServer::default();
            let (a, mut b) = leader_and_follower(&server).await;
            tokio::time::sleep(LEASE_DURATION * 2).await;
            assert!(!*b.leads.borrow(), "b took a lease that a kept renewing");
            drop(a.stop);
            a.task.await.unwrap();
            assert_eq!(server.holder(), None, "a released it on shutdown");
            let took = until(&mut b.leads, true).await;
            assert!(took <= RENEW_PERIOD, "b took over {took:?} after the release");
            assert_eq!(server.holder().as_deref(), Some("b"));
            b.task.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_killed_leaders_lease_is_taken_once_unrenewed_for_its_duration() {
            let server = LeaseServer::default();
            let (a, mut b) = leader_and_follower(&server).await;
            tokio::time::sleep(RENEW_PERIOD).await;
            a.task.abort(); // killed: no release
            let _ = a.task.await;
            let took = until(&mut b.leads, true).await;
            assert!(took >= LEASE_DURATION - RENEW_PERIOD, "b took a lease renewed {took:?} ago");
            assert!(took <= LEASE_DURATION + RENEW_PERIOD, "b waited {took:?}");
            assert_eq!(server.holder().as_deref(), Some("b"));
            b.task.abort();
        }
    }
}
