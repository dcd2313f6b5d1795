//! Leader election: only one nodus-control of a cluster works at a time. Replicas compete
//! for a Lease (`kube-system/nodus-control` by default), as client-go's leaderelection does
//! for kube-controller-manager and kube-scheduler: the holder renews it every retry period;
//! a candidate takes it over once it has not been renewed for the lease duration; a holder
//! that cannot renew within the renew deadline stops leading, and nodus-control then exits
//! (as upstream's components do) so that it never acts beside a new leader. A clean stop
//! releases the lease.
//!
//! Invariants: every write is an update conditional on the resourceVersion that was read,
//! so two candidates can never both believe they won; expiry is judged by the candidate's
//! own clock since it last saw the record change (client-go's "observed time"), never by
//! comparing another machine's timestamps with its own.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// client-go's defaults, which kube-controller-manager and kube-scheduler use.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This replica's identity: `<hostname>_<random>` upstream.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    pub fn new(namespace: &str, name: &str, identity: String) -> Self {
        Config {
            namespace: namespace.into(),
            name: name.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate knows of the record: its holder and when it last saw it change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    /// The record's renew time as written (compared for change only, never with our clock).
    pub renew_time: Option<String>,
    pub transitions: i32,
    pub seen_changed_at: Instant,
}

/// A candidate's move, given the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// We hold it: write a new renew time.
    Renew,
    /// Free, expired, or never held: take it (a transition when someone else held it).
    Take { transition: bool },
    /// Someone else holds a live lease.
    Wait,
}

/// The pure rule: what to do with a record held by `holder`, last seen changing at
/// `seen_changed_at`, at `now`.
pub fn decide(observed: &Observed, identity: &str, now: Instant, lease_duration: Duration) -> Move {
    match observed.holder.as_deref() {
        Some(holder) if holder == identity => Move::Renew,
        None | Some("") => Move::Take { transition: false },
        Some(_) if now.duration_since(observed.seen_changed_at) >= lease_duration => {
            Move::Take { transition: true }
        }
        Some(_) => Move::Wait,
    }
}

fn observe(lease: &Lease, previous: Option<&Observed>, now: Instant) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone();
    let renew_time = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let unchanged = previous.is_some_and(|p| p.holder == holder && p.renew_time == renew_time);
    Observed {
        seen_changed_at: match previous {
            Some(p) if unchanged => p.seen_changed_at,
            _ => now,
        },
        holder,
        renew_time,
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

fn record(config: &Config, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.lease_duration.as_secs() as i32),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One try: read the record and act on it. `Ok(true)` when we hold the lease afterwards.
async fn try_once(
    api: &Api<Lease>,
    config: &Config,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = Instant::now();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(record(config, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                *observed = Some(observe(&created, None, now));
                Ok(true)
            }
            // Another candidate created it first: look again next round.
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
            Err(err) => Err(err),
        };
    };
    let seen = observe(&lease, observed.as_ref(), now);
    let step = decide(&seen, &config.identity, now, config.lease_duration);
    *observed = Some(seen.clone());
    let spec = lease.spec.clone().unwrap_or_default();
    let new_spec = match step {
        Move::Wait => return Ok(false),
        Move::Renew => record(config, spec.acquire_time, seen.transitions),
        Move::Take { transition } => record(config, None, seen.transitions + i32::from(transition)),
    };
    lease.spec = Some(new_spec);
    // resourceVersion is kept from the read: the update fails if anyone wrote since.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(updated) => {
            *observed = Some(observe(&updated, None, Instant::now()));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(err) => Err(err),
    }
}

/// Waits until this replica leads (or `cancel`); returns whether it does.
pub async fn acquire(client: &Client, config: &Config, cancel: &CancellationToken) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut observed = None;
    let mut waiting_logged = false;
    loop {
        match try_once(&api, config, &mut observed).await {
            Ok(true) => {
                info!(lease = %format!("{}/{}", config.namespace, config.name), identity = %config.identity, "became the leader");
                return true;
            }
            Ok(false) => {
                if !waiting_logged {
                    let holder = observed.as_ref().and_then(|o| o.holder.clone());
                    info!(holder = ?holder, "another replica leads; waiting for its lease to lapse");
                    waiting_logged = true;
                }
            }
            Err(err) => warn!(error = %err, "reading or writing the leader lease failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
}

/// Renews the lease every retry period until `cancel`; returns when leadership is lost
/// (no successful renewal within the renew deadline), or cancelled.
pub async fn hold(client: &Client, config: &Config, cancel: &CancellationToken) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut observed = None;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
        match try_once(&api, config, &mut observed).await {
            Ok(true) => {
                debug!("leader lease renewed");
                renewed = Instant::now();
            }
            Ok(false) => {
                warn!(holder = ?observed.and_then(|o| o.holder), "the leader lease was taken over");
                return;
            }
            Err(err) => warn!(error = %err, "renewing the leader lease failed"),
        }
        if renewed.elapsed() >= config.renew_deadline {
            warn!(deadline = ?config.renew_deadline, "could not renew the leader lease in time");
            return;
        }
    }
}

/// Gives the lease up on a clean stop (client-go's `ReleaseOnCancel`, which kube-scheduler
/// sets), so that a standby replica takes over at once instead of after the lease duration.
pub async fn release(client: &Client, config: &Config) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => info!("released the leader lease"),
        Err(err) => warn!(error = %err, "releasing the leader lease failed; it lapses on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holder: Option<&str>, at: Instant) -> Observed {
        Observed {
            holder: holder.map(str::to_owned),
            renew_time: Some("t".into()),
            transitions: 0,
            seen_changed_at: at,
        }
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for_and_an_expired_one_taken() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(&seen(Some("me"), t0), "me", t0, d), Move::Renew);
        assert_eq!(
            decide(&seen(None, t0), "me", t0, d),
            Move::Take { transition: false }
        );
        assert_eq!(
            decide(&seen(Some(""), t0), "me", t0, d),
            Move::Take { transition: false }
        );
        assert_eq!(
            decide(
                &seen(Some("other"), t0),
                "me",
                t0 + Duration::from_secs(14),
                d
            ),
            Move::Wait
        );
        assert_eq!(
            decide(&seen(Some("other"), t0), "me", t0 + d, d),
            Move::Take { transition: true }
        );
    }

    #[test]
    fn expiry_counts_from_when_the_record_last_changed_here() {
        let t0 = Instant::now();
        let lease = |holder: &str, renew: &str| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renew.parse().expect("a time"))),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        let first = observe(&lease("other", "2026-01-01T00:00:00Z"), None, t0);
        assert_eq!(first.seen_changed_at, t0);
        // The same record later: still counted from t0, so it expires.
        let later = t0 + Duration::from_secs(20);
        let same = observe(&lease("other", "2026-01-01T00:00:00Z"), Some(&first), later);
        assert_eq!(same.seen_changed_at, t0);
        assert_eq!(
            decide(&same, "me", later, Duration::from_secs(15)),
            Move::Take { transition: true }
        );
        // A renewal restarts the count, whatever the renew time says about clocks.
        let renewed = observe(&lease("other", "2025-01-01T00:00:01Z"), Some(&same), later);
        assert_eq!(renewed.seen_changed_at, later);
        assert_eq!(
            decide(&renewed, "me", later, Duration::from_secs(15)),
            Move::Wait
        );
    }
}
