//! ReplicaSet controller: every ReplicaSet keeps `spec.replicas` active pods made from its
//! template, claims the pods its selector picks, and reports their counts in its status. The
//! same controller runs ReplicationControllers, each seen as the ReplicaSet it stands for
//! ([`Replicated`]), as upstream's replication controller does.
//!
//! Invariants: level-triggered — events only name ReplicaSets, and each sync recomputes from
//! the stores; nothing syncs before the ReplicaSet and Pod watches have listed once; one
//! ReplicaSet is synced by one task at a time; pods are created or deleted only when the
//! store shows every create and delete of the previous sync ([`Expectations`], or 5 minutes
//! passed), at most [`BURST`] per sync, creates in slow-start batches of 1, 2, 4, … that stop
//! at the first failure (a quota refusal costs one request, not hundreds); a ReplicaSet being
//! deleted adopts and creates nothing; a malformed selector skips that ReplicaSet alone, said
//! once; status is written through the status subresource only when it changed, conditional
//! on the resourceVersion read. Upstream: `pkg/controller/replicaset/replica_set.go`
//! (`syncReplicaSet`, `manageReplicas`, `slowStartBatch`) and
//! `pkg/controller/controller_utils.go`.
//!
//! ```text
//!  ReplicaSet watch ─┐                         ┌─ claim: adopt orphans, release strays
//!  Pod watch ────────┴─► queue of ReplicaSets ─┤  manage: create / delete (expectations)
//!     (non-terminal pods)  dedup, backoff      └─ status: counts, ReplicaFailure
//! ```

#[cfg(test)]
pub(crate) mod api_double;
pub mod expectations;
pub mod pods;
pub mod replicated;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::expectations::{Expectations, Seen};
use self::pods::{is_active, is_terminating};
pub use self::replicated::Replicated;
use super::owner::{self, ClaimError, ObjectKey, claim_all, controlled_by, controller_of, selects};
use super::queue::{Backoff, Queue};
use super::{chain, namespace_terminating};

/// Upstream's `BurstReplicas`: at most this many creates or deletes per sync.
pub const BURST: usize = 500;
/// Upstream's `SlowStartInitialBatchSize`.
pub const SLOW_START_INITIAL: usize = 1;
/// ReplicaSets synced at once (upstream's `--concurrent-replicaset-syncs` is 5).
const WORKERS: usize = 4;
/// How soon a ReplicaSet that changed under a write is looked at again (its watch event
/// usually brings it back sooner).
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// A replicated object as errors and logs name it: `ReplicaSet shop/web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: &'static str,
    pub key: ObjectKey,
}

impl Owner {
    fn of<K: Replicated>(object: &K) -> Self {
        Owner {
            kind: K::KIND,
            key: ObjectKey::of(object),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("claiming pods for {rs}")]
    Claim {
        rs: Owner,
        #[source]
        source: ClaimError,
    },
    #[error("{rs} has no pod template")]
    NoTemplate { rs: Owner },
    #[error("creating a pod for {rs}")]
    Create {
        rs: Owner,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod} of {rs}")]
    Delete {
        rs: Owner,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {rs}")]
    Status {
        rs: Owner,
        #[source]
        source: kube::Error,
    },
    /// The ReplicaSet changed or went since the store showed it: its watch event brings the
    /// news, and it is synced again without backing off.
    #[error("{rs} changed since it was read")]
    Stale { rs: Owner },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. })
    }

    /// What the ReplicaFailure condition says: the API server's own words for a refused
    /// write (upstream's `err.Error()` of a StatusError is its message).
    fn condition_message(&self) -> String {
        match self {
            Error::Create { source, .. } | Error::Delete { source, .. } => api_message(source),
            other => chain(other),
        }
    }
}

pub(crate) fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => chain(other),
    }
}

/// Upstream's `slowStartBatch` sizes for `count` calls: `initial`, then doubling, the last
/// batch taking what is left.
pub fn slow_start(count: usize, initial: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut batch = initial.max(1).min(remaining);
    while batch > 0 {
        batches.push(batch);
        remaining -= batch;
        batch = batch.saturating_mul(2).min(remaining);
    }
    batches
}

/// Runs the controller of `K` until cancelled; a watch that ends stops it, logged here.
pub async fn run<K: Replicated>(client: Client, cancel: CancellationToken) {
    info!(kind = K::KIND, "replica controller starting");
    match run_until::<K>(client, cancel).await {
        Ok(()) => info!(kind = K::KIND, "replica controller stopped"),
        Err(err) => error!(kind = K::KIND, error = %chain(&err), "the replica controller stopped"),
    }
}

async fn run_until<K: Replicated>(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (replicasets, rs_writer) = reflector::store::<K>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let rs_events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(rs_writer);
    // Terminal pods count for nothing here: not holding them saves memory, and a pod that
    // finishes arrives as a deletion.
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
    )
    .default_backoff()
    .reflect(pod_writer);
    let mut rs_events = pin!(rs_events);
    let mut pod_events = pin!(pod_events);

    let mut c = Controller {
        ctx: Arc::new(Ctx {
            client,
            reporter: Reporter::from(K::REPORTER),
        }),
        replicasets,
        pods,
        listed: (false, false),
        queue: Queue::new(BACKOFF),
        expectations: Expectations::default(),
        pod_owners: HashMap::new(),
        bad_selectors: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.0 && c.listed.1;
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = rs_events.next() => match event {
                Some(Ok(event)) => c.on_replicaset(event),
                Some(Err(err)) => warn!(kind = K::KIND, error = %chain(&err), "watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: K::KIND }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "replica syncs").await;
    result
}

/// What every sync task shares.
struct Ctx {
    client: Client,
    reporter: Reporter,
}

impl Ctx {
    /// Records an event on `rs`; a failure is logged, never retried.
    async fn event<K: Replicated>(
        &self,
        rs: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = Note {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A recorder per event: kube's folds events of one reason and action on one object
        // into a series that keeps the first note, so "Scaled up replica set x from 1 to 2"
        // then "from 2 to 3" would show as the first message twice; upstream shows each.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(err) = recorder.publish(&note, &rs.object_ref(&())).await {
            debug!(replicaset = %ObjectKey::of(rs), error = %chain(&err), "recording an event failed");
        }
    }
}

/// One sync, with everything it reads taken from the stores when it started.
struct Job<K> {
    key: ObjectKey,
    /// The object synced, and the ReplicaSet it stands for.
    owner: Arc<K>,
    rs: Arc<ReplicaSet>,
    selector: Selector,
    /// The non-terminal pods of the namespace.
    pods: Vec<Arc<Pod>>,
    /// The pods of every ReplicaSet with the same controller, for the deletion ranking.
    related: Vec<Arc<Pod>>,
    /// The previous sync's writes are all seen: pods may be created and deleted.
    manage: bool,
}

/// What one sync's task reports.
#[derive(Debug)]
struct Outcome {
    key: ObjectKey,
    /// Pods created (by name) and deleted (name, uid) that the store must show.
    created: Vec<String>,
    deleted: Vec<(String, String)>,
    /// When a pod waiting out minReadySeconds becomes available.
    recheck_at: Option<Timestamp>,
    result: Result<(), Error>,
}

impl Outcome {
    fn new(key: ObjectKey) -> Self {
        Outcome {
            key,
            created: Vec::new(),
            deleted: Vec::new(),
            recheck_at: None,
            result: Ok(()),
        }
    }
}

struct Controller<K: Replicated> {
    ctx: Arc<Ctx>,
    replicasets: Store<K>,
    pods: Store<Pod>,
    /// Whether the ReplicaSet and Pod watches have listed once.
    listed: (bool, bool),
    queue: Queue<ObjectKey>,
    expectations: Expectations<ObjectKey>,
    /// The ReplicaSet controlling each pod when last seen: a pod that loses or changes its
    /// controller must reach the old one too.
    pod_owners: HashMap<ObjectKey, ObjectKey>,
    /// ReplicaSets skipped for their selector, with the generation said so about.
    bad_selectors: HashMap<ObjectKey, Option<i64>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ObjectKey>,
}

/// The `K` controlling the pod, if its controller is one.
fn rs_of<K: Replicated>(pod: &Pod) -> Option<ObjectKey> {
    let reference = controller_of(&pod.metadata)?;
    let api_version = K::api_version(&());
    (reference.kind == K::KIND && reference.api_version == api_version).then(|| {
        ObjectKey::new(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

/// What the pod store shows under a name, for the expectations.
pub(crate) fn seen(pods: &Store<Pod>, namespace: &str, name: &str) -> Seen {
    match pods.get(&ObjectRef::new(name).within(namespace)) {
        None => Seen::Absent,
        Some(pod) => Seen::Present {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        },
    }
}

impl<K: Replicated> Controller<K> {
    fn mark_all(&mut self) {
        for rs in self.replicasets.state() {
            self.queue.add(ObjectKey::of(rs.as_ref()));
        }
    }

    fn on_replicaset(&mut self, event: Event<K>) {
        match event {
            Event::Apply(rs) | Event::InitApply(rs) => self.queue.add(ObjectKey::of(&rs)),
            Event::Delete(rs) => {
                let key = ObjectKey::of(&rs);
                self.expectations.forget(&key);
                self.queue.add(key);
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.0 = true;
                self.mark_all();
            }
        }
    }

    /// ReplicaSets of the pod's namespace whose selector picks it: those that may adopt it.
    fn adopters(&self, pod: &Pod) -> Vec<ObjectKey> {
        let namespace = pod.metadata.namespace.as_deref();
        self.replicasets
            .state()
            .iter()
            .filter(|rs| rs.meta().namespace.as_deref() == namespace)
            .filter(|rs| {
                owner::selector(&rs.replica_set().spec.selector)
                    .is_ok_and(|s| !s.selects_all() && selects(&s, pod.metadata.labels.as_ref()))
            })
            .map(|rs| ObjectKey::of(rs.as_ref()))
            .collect()
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let pod_key = ObjectKey::of(&pod);
                let owner = rs_of::<K>(&pod);
                let before = match &owner {
                    Some(owner) => self.pod_owners.insert(pod_key, owner.clone()),
                    None => self.pod_owners.remove(&pod_key),
                };
                if let Some(before) = before.filter(|b| Some(b) != owner.as_ref()) {
                    self.queue.add(before);
                }
                match owner {
                    Some(owner) => self.queue.add(owner),
                    None if is_active(&pod) => {
                        for key in self.adopters(&pod) {
                            self.queue.add(key);
                        }
                    }
                    None => {}
                }
            }
            Event::Delete(pod) => {
                let pod_key = ObjectKey::of(&pod);
                let before = self.pod_owners.remove(&pod_key);
                for owner in before.into_iter().chain(rs_of::<K>(&pod)) {
                    self.expectations.observe_gone(&owner, &pod_key.name);
                    self.queue.add(owner);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.1 = true;
                self.pod_owners = self
                    .pods
                    .state()
                    .iter()
                    .filter_map(|p| Some((ObjectKey::of(p.as_ref()), rs_of::<K>(p)?)))
                    .collect();
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(owner) = self
            .replicasets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            // Gone: its pods are the garbage collector's.
            self.expectations.forget(&key);
            self.bad_selectors.remove(&key);
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let rs = Arc::new(owner.replica_set());
        let selector = match owner::selector(&rs.spec.selector) {
            // The API server refuses an empty selector for apps/v1; one that slipped through
            // would adopt every pod of the namespace.
            Ok(s) if s.selects_all() => Err("it selects every pod".to_owned()),
            Ok(s) => Ok(s),
            Err(err) => Err(err.to_string()),
        };
        let selector = match selector {
            Ok(s) => {
                self.bad_selectors.remove(&key);
                s
            }
            Err(why) => {
                self.skip(key, owner, why);
                return;
            }
        };
        let store = &self.pods;
        let manage = self
            .expectations
            .satisfied(&key, now, |name| seen(store, &key.namespace, name));
        if !manage {
            debug!(replicaset = %key, "waiting for the pod watch to show the last sync's writes");
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
            .collect();
        let related = self.related(&rs, &pods);
        let job = Job {
            key: key.clone(),
            owner,
            rs,
            selector,
            pods,
            related,
            manage,
        };
        let handle = self.tasks.spawn(sync(self.ctx.clone(), job));
        self.running.insert(handle.id(), key);
    }

    /// Pods of the ReplicaSets that share `rs`'s controller (a Deployment's old and new ones),
    /// or of `rs` alone.
    fn related(&self, rs: &ReplicaSet, pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
        let mut uids: HashSet<String> = rs.metadata.uid.iter().cloned().collect();
        if let Some(controller) = controller_of(&rs.metadata) {
            uids.extend(
                self.replicasets
                    .state()
                    .iter()
                    .filter(|s| s.meta().namespace == rs.metadata.namespace)
                    .filter(|s| controlled_by(s.meta(), Some(&controller.uid)))
                    .filter_map(|s| s.meta().uid.clone()),
            );
        }
        pods.iter()
            .filter(|p| controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid)))
            .cloned()
            .collect()
    }

    /// A ReplicaSet whose selector cannot be used: said once per generation, then left alone
    /// until it changes.
    fn skip(&mut self, key: ObjectKey, rs: Arc<K>, why: String) {
        self.queue.done(&key);
        self.queue.forget(&key);
        let generation = rs.meta().generation;
        if self.bad_selectors.insert(key.clone(), generation) == Some(generation) {
            return;
        }
        warn!(kind = K::KIND, replicaset = %key, "skipping it: its selector is invalid: {why}");
        // Not in `running`: the event task holds no claim on the ReplicaSet.
        let ctx = self.ctx.clone();
        let _ = self.tasks.spawn(async move {
            let note = format!("invalid selector, no pods are managed: {why}");
            ctx.event(
                rs.as_ref(),
                EventType::Warning,
                "InvalidSelector",
                "Sync",
                note,
            )
            .await;
            Outcome::new(key)
        });
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let outcome = match done {
            Ok((id, outcome)) => {
                if self.running.remove(&id).is_none() {
                    // An event task, not a sync.
                    return;
                }
                outcome
            }
            Err(err) => {
                let Some(key) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(kind = K::KIND, replicaset = %key, error = %err, "sync task failed");
                self.queue.done(&key);
                let delay = self.queue.backoff(&key);
                self.queue.add_after(key, now + delay);
                return;
            }
        };
        let Outcome {
            key,
            created,
            deleted,
            recheck_at,
            result,
        } = outcome;
        self.expectations.expect(key.clone(), created, deleted, now);
        self.queue.done(&key);
        if self.expectations.is_pending(&key) {
            // Pod events bring it back as the writes show; should the watch never show some
            // (a relist can miss a pod that came and went), once they are given up on.
            self.queue.add_after(
                key.clone(),
                now + expectations::TTL + Duration::from_secs(1),
            );
        }
        match result {
            Ok(()) => {
                self.queue.forget(&key);
                if let Some(at) = recheck_at {
                    // Upstream's check is strict (`Before(now)`): a second later it holds.
                    let left = Duration::try_from(at.duration_since(Timestamp::now()));
                    let wait = left.unwrap_or(Duration::ZERO) + Duration::from_secs(1);
                    self.queue.add_after(key, now + wait);
                }
            }
            Err(err) if !err.backs_off() => {
                debug!(replicaset = %key, error = %chain(&err), "retrying");
                self.queue.add_after(key, now + STALE_RETRY);
            }
            Err(err) => {
                let delay = self.queue.backoff(&key);
                warn!(kind = K::KIND, replicaset = %key, error = %chain(&err), retry_in = ?delay, "syncing failed");
                self.queue.add_after(key, now + delay);
            }
        }
    }
}

async fn sync<K: Replicated>(ctx: Arc<Ctx>, job: Job<K>) -> Outcome {
    let mut outcome = Outcome::new(job.key.clone());
    outcome.result = reconcile(&ctx, job, &mut outcome).await;
    outcome
}

/// One sync of one ReplicaSet: claim its pods, create or delete the difference if allowed,
/// write its status.
async fn reconcile<K: Replicated>(ctx: &Ctx, job: Job<K>, out: &mut Outcome) -> Result<(), Error> {
    let Job {
        key,
        owner,
        rs,
        selector,
        pods,
        related,
        manage,
    } = job;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let owner_api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let uid = rs.metadata.uid.as_deref();
    let candidates: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let claimed = claim_all(&pods_api, &owner_api, owner.as_ref(), &selector, candidates)
        .await
        .map_err(|source| Error::Claim {
            rs: Owner::of(owner.as_ref()),
            source,
        })?;
    // Upstream's FilterClaimedPods: terminating pods it controls that still match.
    let terminating = pods
        .iter()
        .filter(|p| is_terminating(p) && controlled_by(&p.metadata, uid))
        .filter(|p| selects(&selector, p.metadata.labels.as_ref()))
        .count();

    let failure = if manage && rs.metadata.deletion_timestamp.is_none() {
        manage_replicas(ctx, &pods_api, owner.as_ref(), &rs, &claimed, &related, out)
            .await
            .err()
    } else {
        None
    };

    let now = Timestamp::now();
    let active: Vec<&Pod> = claimed.iter().map(AsRef::as_ref).collect();
    let message = failure.as_ref().map(Error::condition_message);
    let new_status = status::calculate(&rs, &active, terminating, message.as_deref(), now);
    let updated = owner.with_status(new_status);
    // Compared as its kind keeps it: a field it lacks is not a change.
    let shown = updated.replica_set().status.unwrap_or_default();
    if !status::unchanged(&rs, &shown) {
        // The resourceVersion read makes the write conditional: a status computed from a
        // stale ReplicaSet never lands.
        let rs = Owner::of(owner.as_ref());
        match owner_api
            .replace_status(&key.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                return Err(Error::Stale { rs });
            }
            Err(source) => return Err(Error::Status { rs, source }),
        }
    }
    out.recheck_at = status::next_available(&rs, &active, now);
    failure.map_or(Ok(()), Err)
}

/// Upstream's `manageReplicas`: creates or deletes the difference between the active pods
/// and `spec.replicas`, up to [`BURST`], recording in `out` what the API server accepted.
async fn manage_replicas<K: Replicated>(
    ctx: &Ctx,
    api: &Api<Pod>,
    owner: &K,
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    related: &[Arc<Pod>],
    out: &mut Outcome,
) -> Result<(), Error> {
    let key = ObjectKey::of(rs);
    let want = usize::try_from(status::spec_replicas(rs)).unwrap_or(0);
    let have = active.len();
    if have < want {
        let diff = (want - have).min(BURST);
        info!(replicaset = %key, want, have, creating = diff, "too few replicas");
        let template = owner::controller_ref(owner)
            .and_then(|reference| pods::from_template(rs, reference))
            .ok_or_else(|| Error::NoTemplate {
                rs: Owner::of(owner),
            })?;
        for batch in slow_start(diff, SLOW_START_INITIAL) {
            let results = join_all((0..batch).map(|_| create(ctx, api, owner, &template))).await;
            let mut first_error = None;
            for result in results {
                match result {
                    Ok(Some(name)) => out.created.push(name),
                    Ok(None) => {}
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            // The rest are not tried: they would most likely fail the same way.
            if let Some(err) = first_error {
                return Err(err);
            }
        }
    } else if have > want {
        let diff = (have - want).min(BURST);
        info!(replicaset = %key, want, have, deleting = diff, "too many replicas");
        let candidates: Vec<&Pod> = active.iter().map(AsRef::as_ref).collect();
        let related: Vec<&Pod> = related.iter().map(AsRef::as_ref).collect();
        let doomed = pods::to_delete(&candidates, &related, diff, Timestamp::now());
        let results = join_all(doomed.iter().map(|pod| delete(ctx, api, owner, pod))).await;
        let mut first_error = None;
        for (pod, result) in doomed.iter().zip(results) {
            match result {
                Ok(()) => out
                    .deleted
                    .push((pod.name_any(), pod.metadata.uid.clone().unwrap_or_default())),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
    }
    Ok(())
}

/// Creates one pod from the template; None when the namespace is being deleted (every create
/// would fail, and the pods would go with it anyway).
async fn create<K: Replicated>(
    ctx: &Ctx,
    api: &Api<Pod>,
    rs: &K,
    template: &Pod,
) -> Result<Option<String>, Error> {
    match api.create(&PostParams::default(), template).await {
        Ok(made) => {
            let name = made.name_any();
            let note = format!("Created pod: {name}");
            ctx.event(rs, EventType::Normal, "SuccessfulCreate", "Create", note)
                .await;
            Ok(Some(name))
        }
        Err(err) if namespace_terminating(&err) => Ok(None),
        Err(source) => {
            let note = format!("Error creating: {}", api_message(&source));
            ctx.event(rs, EventType::Warning, "FailedCreate", "Create", note)
                .await;
            Err(Error::Create {
                rs: Owner::of(rs),
                source,
            })
        }
    }
}

/// Deletes one pod, that very one (its uid): one already gone, or replaced, needs nothing.
async fn delete<K: Replicated>(ctx: &Ctx, api: &Api<Pod>, rs: &K, pod: &Pod) -> Result<(), Error> {
    let name = pod.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            let note = format!("Deleted pod: {name}");
            ctx.event(rs, EventType::Normal, "SuccessfulDelete", "Delete", note)
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(source) => {
            let note = format!("Error deleting: {}", api_message(&source));
            ctx.event(rs, EventType::Warning, "FailedDelete", "Delete", note)
                .await;
            Err(Error::Delete {
                rs: Owner::of(rs),
                pod: name,
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
    use kube::api::ObjectMeta;
    use kube::core::Status;
    use serde_json::{Value, json};

    use super::api_double::{Double, failure};
    use super::*;

    const PODS: &str = "/api/v1/namespaces/shop/pods";
    const RS: &str = "/apis/apps/v1/namespaces/shop/replicasets/web";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn app() -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]))
    }

    fn replicaset(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-web".into()),
                generation: Some(2),
                resource_version: Some("5".into()),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: app(),
                    ..LabelSelector::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: app(),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
                            image: Some("nginx".into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                }),
                ..ReplicaSetSpec::default()
            },
            status: None,
        }
    }

    fn owned(mut pod: Pod) -> Pod {
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        pod
    }

    /// Echoes writes back as the server would store them (pods get a name and a uid).
    fn echo(method: &str, path: &str, body: &Value, n: usize) -> (u16, Value) {
        let mut reply = body.clone();
        if method == "POST" && path == PODS {
            reply["metadata"]["name"] = json!(format!("web-{n}"));
            reply["metadata"]["uid"] = json!(format!("uid-web-{n}"));
        }
        if method == "DELETE" {
            let name = path.rsplit('/').next().unwrap_or_default();
            reply = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}});
        }
        if method == "PATCH" {
            let name = path.rsplit('/').next().unwrap_or_default();
            reply = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}});
        }
        if method == "GET" && path == RS {
            reply = serde_json::to_value(replicaset(1)).expect("json");
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    fn context(double: &Double) -> Ctx {
        let client = Client::new(double.clone(), "shop");
        Ctx {
            client,
            reporter: Reporter::from(ReplicaSet::REPORTER),
        }
    }

    fn job(rs: ReplicaSet, pods: Vec<Pod>) -> Job<ReplicaSet> {
        let selector = owner::selector(&rs.spec.selector).expect("valid");
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
        Job {
            key: ObjectKey::new("shop", "web"),
            owner: Arc::new(rs.clone()),
            rs: Arc::new(rs),
            selector,
            related: pods.clone(),
            pods,
            manage: true,
        }
    }

    #[tokio::test]
    async fn a_quota_refusal_stops_the_slow_start_and_shows_in_the_status() {
        let quota = "pods \"web-\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2";
        let double = Double::new(move |method, path, body, n| match (method, path) {
            ("POST", PODS) if n >= 2 => failure(403, "Forbidden", quota),
            _ => echo(method, path, body, n),
        });
        let ctx = context(&double);
        let mut out = Outcome::new(ObjectKey::new("shop", "web"));
        let result = reconcile(&ctx, job(replicaset(10), Vec::new()), &mut out).await;

        assert!(matches!(result, Err(Error::Create { .. })), "{result:?}");
        // Batches of 1 then 2; the refusal in the second ends it: 3 tries, not 10.
        let creates = double.sent("POST", PODS);
        assert_eq!(creates.len(), 3);
        let pod = &creates[0].2;
        assert_eq!(pod["metadata"]["generateName"], "web-");
        assert_eq!(pod["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-web");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(out.created, vec!["web-0".to_owned(), "web-1".to_owned()]);

        let notes: Vec<(String, String)> = double
            .sent("POST", EVENTS)
            .iter()
            .map(|(_, _, e)| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert!(
            notes.contains(&("SuccessfulCreate".into(), "Created pod: web-0".into())),
            "{notes:?}"
        );
        assert!(
            notes.contains(&("FailedCreate".into(), format!("Error creating: {quota}"))),
            "{notes:?}"
        );

        let statuses = double.sent("PUT", &format!("{RS}/status"));
        assert_eq!(statuses.len(), 1);
        let status = &statuses[0].2["status"];
        assert_eq!(
            statuses[0].2["metadata"]["resourceVersion"], "5",
            "conditional on the version read"
        );
        assert_eq!(status["replicas"], 0);
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(status["conditions"][0]["reason"], "FailedCreate");
        assert_eq!(status["conditions"][0]["message"], quota);
    }

    #[tokio::test]
    async fn orphans_are_adopted_strays_released_and_the_surplus_deleted() {
        let double = Double::new(echo);
        let ctx = context(&double);
        let orphan = pods::tests::pod("orphan", "n1", "Running", Some(100), 50);
        let older = owned(pods::tests::pod("older", "n1", "Running", Some(100), 10));
        let mut stray = owned(pods::tests::pod("stray", "n1", "Running", Some(100), 10));
        stray.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "db".to_owned())]));
        let mut out = Outcome::new(ObjectKey::new("shop", "web"));
        let result = reconcile(
            &ctx,
            job(replicaset(1), vec![orphan, older, stray]),
            &mut out,
        )
        .await;
        assert!(result.is_ok(), "{result:?}");

        // The owner is reread before adopting; patches carry the object's uid.
        assert_eq!(double.sent("GET", RS).len(), 1);
        let patches = double.sent("PATCH", PODS);
        let patched: Vec<&str> = patches.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(
            patched,
            vec![format!("{PODS}/orphan"), format!("{PODS}/stray")]
        );
        assert_eq!(patches[0].2["metadata"]["uid"], "uid-orphan");
        assert_eq!(
            patches[0].2["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
        assert_eq!(
            patches[1].2["metadata"]["ownerReferences"][0]["$patch"],
            "delete"
        );

        // Two claimed for one replica: the adopted pod (as the double returns it, without a
        // node) goes first; the delete is conditional on its uid.
        let deletes = double.sent("DELETE", PODS);
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].1, format!("{PODS}/orphan"));
        assert_eq!(out.deleted.len(), 1);
        let statuses = double.sent("PUT", &format!("{RS}/status"));
        assert_eq!(
            statuses[0].2["status"]["replicas"], 2,
            "counted before the delete shows"
        );
    }

    #[tokio::test]
    async fn unmet_expectations_leave_the_pods_alone() {
        let double = Double::new(echo);
        let ctx = context(&double);
        let mut waiting = job(replicaset(3), Vec::new());
        waiting.manage = false;
        let mut out = Outcome::new(ObjectKey::new("shop", "web"));
        assert!(reconcile(&ctx, waiting, &mut out).await.is_ok());
        assert!(double.sent("POST", PODS).is_empty());
        assert_eq!(
            double.sent("PUT", &format!("{RS}/status")).len(),
            1,
            "the status is still kept"
        );
    }

    #[test]
    fn slow_start_doubles_and_the_last_batch_takes_the_rest() {
        let cases: [(usize, Vec<usize>); 6] = [
            (0, vec![]),
            (1, vec![1]),
            (3, vec![1, 2]),
            (10, vec![1, 2, 4, 3]),
            (15, vec![1, 2, 4, 8]),
            (BURST, vec![1, 2, 4, 8, 16, 32, 64, 128, 245]),
        ];
        for (count, want) in cases {
            assert_eq!(slow_start(count, SLOW_START_INITIAL), want, "{count} pods");
            assert_eq!(
                slow_start(count, SLOW_START_INITIAL).iter().sum::<usize>(),
                count
            );
        }
    }

    #[test]
    fn conditions_carry_the_api_servers_words_and_only_stale_skips_backoff() {
        let quota = Status::failure(
            "pods \"web-\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2",
            "Forbidden",
        )
        .with_code(403);
        let err = Error::Create {
            rs: Owner {
                kind: "ReplicaSet",
                key: ObjectKey::new("shop", "web"),
            },
            source: kube::Error::Api(quota.boxed()),
        };
        assert_eq!(
            err.condition_message(),
            "pods \"web-\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
        );
        assert_eq!(err.to_string(), "creating a pod for ReplicaSet shop/web");
        assert!(err.backs_off());
        assert!(
            !Error::Stale {
                rs: Owner {
                    kind: "ReplicaSet",
                    key: ObjectKey::new("shop", "web"),
                }
            }
            .backs_off()
        );
    }

    #[test]
    fn pods_name_their_replicaset_only_through_an_apps_v1_controller_ref() {
        let mut pod = pods::tests::pod("web-a", "n1", "Running", None, 0);
        assert_eq!(rs_of::<ReplicaSet>(&pod), None);
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "uid-web".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        assert_eq!(
            rs_of::<ReplicaSet>(&pod),
            Some(ObjectKey::new("shop", "web"))
        );
    }
}
