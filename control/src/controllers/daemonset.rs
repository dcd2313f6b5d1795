//! DaemonSet controller: every DaemonSet runs one pod on each node that should run it
//! ([`placement`]), bound there by the scheduler through a `metadata.name` node affinity;
//! pods on nodes that should not run it, surplus ones, failed and succeeded ones are
//! deleted; a new template rolls out node by node ([`rolling`]) or, with OnDelete, as pods
//! are deleted; each template is recorded in a ControllerRevision ([`history`]); the
//! status counts nodes as upstream's ([`status`]).
//!
//! Invariants: level-triggered — events only name DaemonSets (a node event names those whose
//! placement on it changed), and each sync recomputes from the stores; nothing syncs before
//! the DaemonSet, Pod, Node and ControllerRevision watches have listed once; one DaemonSet is
//! synced by one task at a time; pods are created or deleted only when the store shows the
//! previous sync's writes ([`Expectations`]), at most [`BURST`] of each per sync, creates in
//! slow-start batches; the rolling update acts only in a sync whose manage step wrote
//! nothing (upstream waits for its own expectations the same way); a DaemonSet being deleted
//! is left alone; nodes being deleted count as gone (their pods are the pod GC's); every write
//! is conditional on the resourceVersion or uid read, and a conflict ends the sync to start
//! over; a DaemonSet whose selector is malformed or selects everything is skipped alone, said
//! once per generation. Upstream: `pkg/controller/daemon/` (`daemon_controller.go`,
//! `update.go`, `util/daemonset_util.go`).
//!
//! Not done: upstream's `FailedPlacement` events (scheduling is the scheduler's), and the
//! `daemonset_*` metrics.
//!
//! ```text
//!  DaemonSet, ControllerRevision watch ─┐                          ┌─ claim revisions, pods
//!  Pod watch (all phases) ──────────────┼─► queue of DaemonSets ───┤  history: current revision
//!  Node watch (labels, taints) ─────────┘    dedup, backoff        │  manage: per node create / delete
//!                                                                  │  rolling update, history cleanup
//!                                                                  └─ status
//! ```

pub mod placement;
pub mod rolling;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, NodeSpec, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::placement::{FailedBackoff, Placement, Rollout};
use super::chain;
use super::deployment::arithmetic::ArithmeticError;
use super::history::{self, GENERATION_LABEL, HASH_LABEL};
use super::job::pod_control::{self, Notes};
use super::job::retry;
use super::owner::{self, ClaimError, ObjectKey, claim_all, controller_of, selects};
use super::queue::{Backoff, Queue};
use super::replicaset::expectations::Expectations;
use super::replicaset::seen;

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "daemonset-controller";
/// Upstream's `BurstReplicas`: at most this many creates and deletes per sync.
pub const BURST: usize = 250;
/// DaemonSets synced at once (upstream's `--concurrent-daemonset-syncs` is 2).
const WORKERS: usize = 2;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("claiming pods or revisions for DaemonSet {ds}")]
    Claim {
        ds: ObjectKey,
        #[source]
        source: ClaimError,
    },
    #[error("keeping the ControllerRevisions of DaemonSet {ds}")]
    History {
        ds: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("DaemonSet {ds} has no uid to own revisions and pods")]
    NoUid { ds: ObjectKey },
    #[error("DaemonSet {ds} has an invalid rolling update")]
    Rollout {
        ds: ObjectKey,
        #[source]
        source: ArithmeticError,
    },
    #[error("creating a pod for DaemonSet {ds}")]
    Create {
        ds: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod} of DaemonSet {ds}")]
    Delete {
        ds: ObjectKey,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of DaemonSet {ds}")]
    Status {
        ds: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// A revision of another template holds the current one's name: collisionCount was
    /// raised, and the next sync hashes to another name.
    #[error("revision {name} exists with another template; DaemonSet {ds}'s collisionCount raised")]
    Collision { ds: ObjectKey, name: String },
    /// Something changed since the store showed it: its watch event brings the news, and
    /// the DaemonSet is synced again without backing off.
    #[error("DaemonSet {ds} or one of its revisions changed since it was read")]
    Stale { ds: ObjectKey },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. } | Error::Collision { .. })
    }
}

fn stale(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_conflict() || s.is_not_found())
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("DaemonSet controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("DaemonSet controller stopped"),
        Err(err) => error!(error = %chain(&err), "the DaemonSet controller stopped"),
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (daemonsets, ds_writer) = reflector::store::<DaemonSet>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (revisions, rev_writer) = reflector::store::<ControllerRevision>();
    let config = watcher::Config::default;
    let ds_events = watcher(Api::<DaemonSet>::all(client.clone()), config())
        .default_backoff()
        .reflect(ds_writer);
    // Every phase: failed and succeeded daemon pods are deleted.
    let pod_events = watcher(Api::<Pod>::all(client.clone()), config())
        .default_backoff()
        .reflect(pod_writer);
    let node_events = watcher(Api::<Node>::all(client.clone()), config())
        .default_backoff()
        .reflect(node_writer);
    let rev_events = watcher(Api::<ControllerRevision>::all(client.clone()), config())
        .default_backoff()
        .reflect(rev_writer);
    let mut ds_events = pin!(ds_events);
    let mut pod_events = pin!(pod_events);
    let mut node_events = pin!(node_events);
    let mut rev_events = pin!(rev_events);
    let mut c = Controller {
        notes: Notes::new(client, REPORTER),
        daemonsets,
        pods,
        nodes,
        revisions,
        listed: [false; 4],
        queue: Queue::new(BACKOFF),
        expectations: Expectations::default(),
        failed_backoff: FailedBackoff::default(),
        pod_owners: HashMap::new(),
        node_views: HashMap::new(),
        skipped: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.iter().all(|l| *l);
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = ds_events.next() => match event {
                Some(Ok(event)) => c.on_daemonset(event),
                Some(Err(err)) => warn!(error = %chain(&err), "DaemonSet watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "DaemonSet" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            event = node_events.next() => match event {
                Some(Ok(event)) => c.on_node(event),
                Some(Err(err)) => warn!(error = %chain(&err), "node watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "node" }),
            },
            event = rev_events.next() => match event {
                Some(Ok(event)) => c.on_revision(event),
                Some(Err(err)) => warn!(error = %chain(&err), "ControllerRevision watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "ControllerRevision" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "DaemonSet syncs").await;
    result
}

/// One sync of one DaemonSet, with everything it reads taken from the stores when it
/// started.
struct Work {
    key: ObjectKey,
    ds: Arc<DaemonSet>,
    selector: Selector,
    /// The nodes not being deleted.
    nodes: Vec<Arc<Node>>,
    /// The pods and revisions of the namespace.
    pods: Vec<Arc<Pod>>,
    revisions: Vec<Arc<ControllerRevision>>,
    /// The previous sync's creates and deletes are all seen.
    satisfied: bool,
    backoff: FailedBackoff,
}

/// What one sync's task reports.
#[derive(Debug)]
struct Outcome {
    key: ObjectKey,
    /// Pods created (by name) and deleted (name, uid) that the store must show.
    created: Vec<String>,
    deleted: Vec<(String, String)>,
    backoff: Option<FailedBackoff>,
    /// When to sync again (a pod becoming available, a failed pod's backoff).
    recheck_at: Option<Timestamp>,
    result: Result<(), Error>,
}

impl Outcome {
    fn new(key: ObjectKey) -> Self {
        Outcome {
            key,
            created: Vec::new(),
            deleted: Vec::new(),
            backoff: None,
            recheck_at: None,
            result: Ok(()),
        }
    }

    fn recheck(&mut self, at: Timestamp) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |t| t.min(at)));
    }
}

struct Controller {
    notes: Notes,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    /// Whether the DaemonSet, Pod, Node and ControllerRevision watches have listed once.
    listed: [bool; 4],
    queue: Queue<ObjectKey>,
    expectations: Expectations<ObjectKey>,
    failed_backoff: FailedBackoff,
    /// The DaemonSet controlling each pod when last seen: a pod that loses or changes its
    /// controller must reach the old one too.
    pod_owners: HashMap<ObjectKey, ObjectKey>,
    /// What placement reads of each node (name, labels, taints, deletion) when last seen.
    node_views: HashMap<String, Node>,
    /// DaemonSets skipped for their selector, with the generation said so about.
    skipped: HashMap<ObjectKey, Option<i64>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ObjectKey>,
}

/// The DaemonSet controlling the object, if its controller is one.
fn ds_of(meta: &ObjectMeta) -> Option<ObjectKey> {
    let reference = controller_of(meta)?;
    (reference.kind == "DaemonSet" && reference.api_version == "apps/v1").then(|| {
        ObjectKey::new(
            meta.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

/// The part of a node placement depends on.
fn view(node: &Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            deletion_timestamp: node.metadata.deletion_timestamp.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: node.spec.as_ref().and_then(|s| s.taints.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// Where the DaemonSet stands on the node; None for a node being deleted (it counts as
/// gone).
fn place(ds: &DaemonSet, node: &Node) -> Option<Placement> {
    node.metadata
        .deletion_timestamp
        .is_none()
        .then(|| placement::placement(&placement::daemon_spec(ds), node))
}

impl Controller {
    fn mark_all(&mut self) {
        for ds in self.daemonsets.state() {
            self.queue.add(ObjectKey::of(ds.as_ref()));
        }
    }

    /// DaemonSets of the namespace whose selector picks these labels: those that may adopt.
    fn adopters(&self, meta: &ObjectMeta) -> Vec<ObjectKey> {
        self.daemonsets
            .state()
            .iter()
            .filter(|ds| ds.metadata.namespace == meta.namespace)
            .filter(|ds| {
                owner::selector(&ds.spec.selector)
                    .is_ok_and(|s| !s.selects_all() && selects(&s, meta.labels.as_ref()))
            })
            .map(|ds| ObjectKey::of(ds.as_ref()))
            .collect()
    }

    fn on_daemonset(&mut self, event: Event<DaemonSet>) {
        match event {
            Event::Apply(ds) | Event::InitApply(ds) => self.queue.add(ObjectKey::of(&ds)),
            // Its pods and revisions are the garbage collector's.
            Event::Delete(ds) => {
                let key = ObjectKey::of(&ds);
                self.expectations.forget(&key);
                self.skipped.remove(&key);
                self.queue.remove(&key);
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[0] = true;
                self.mark_all();
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let pod_key = ObjectKey::of(&pod);
                let owner = ds_of(&pod.metadata);
                let before = match &owner {
                    Some(owner) => self.pod_owners.insert(pod_key, owner.clone()),
                    None => self.pod_owners.remove(&pod_key),
                };
                if let Some(before) = before.filter(|b| Some(b) != owner.as_ref()) {
                    self.queue.add(before);
                }
                match owner {
                    Some(owner) => self.queue.add(owner),
                    None if pod.metadata.deletion_timestamp.is_none() => {
                        for key in self.adopters(&pod.metadata) {
                            self.queue.add(key);
                        }
                    }
                    None => {}
                }
            }
            Event::Delete(pod) => {
                let pod_key = ObjectKey::of(&pod);
                let before = self.pod_owners.remove(&pod_key);
                for owner in before.into_iter().chain(ds_of(&pod.metadata)) {
                    self.expectations.observe_gone(&owner, &pod_key.name);
                    self.queue.add(owner);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[1] = true;
                self.pod_owners = self
                    .pods
                    .state()
                    .iter()
                    .filter_map(|p| Some((ObjectKey::of(p.as_ref()), ds_of(&p.metadata)?)))
                    .collect();
                self.mark_all();
            }
        }
    }

    /// Upstream's `addNode` / `updateNode`: only the DaemonSets whose placement on the node
    /// changed (a new node: those that should run there).
    fn on_node(&mut self, event: Event<Node>) {
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let now = view(&node);
                let name = node.name_any();
                let before = self.node_views.insert(name, now.clone());
                if before.as_ref() == Some(&now) {
                    return;
                }
                let keys: Vec<ObjectKey> = self
                    .daemonsets
                    .state()
                    .iter()
                    .filter(|ds| {
                        let after = place(ds, &now);
                        match &before {
                            None => after.is_some_and(|p| p.should_run),
                            Some(before) => place(ds, before) != after,
                        }
                    })
                    .map(|ds| ObjectKey::of(ds.as_ref()))
                    .collect();
                for key in keys {
                    self.queue.add(key);
                }
            }
            Event::Delete(node) => {
                self.node_views.remove(&node.name_any());
                self.mark_all();
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[2] = true;
                self.node_views = self
                    .nodes
                    .state()
                    .iter()
                    .map(|n| (n.name_any(), view(n)))
                    .collect();
                self.mark_all();
            }
        }
    }

    fn on_revision(&mut self, event: Event<ControllerRevision>) {
        match event {
            Event::Apply(rev) | Event::InitApply(rev) | Event::Delete(rev) => {
                match ds_of(&rev.metadata) {
                    Some(owner) => self.queue.add(owner),
                    None => {
                        for key in self.adopters(&rev.metadata) {
                            self.queue.add(key);
                        }
                    }
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[3] = true;
                self.mark_all();
            }
        }
    }

    fn settle(&mut self, key: &ObjectKey) {
        self.queue.done(key);
        self.queue.forget(key);
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(ds) = self
            .daemonsets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.expectations.forget(&key);
            self.skipped.remove(&key);
            self.settle(&key);
            return;
        };
        let selector = match owner::selector(&ds.spec.selector) {
            Ok(s) if s.selects_all() => Err((
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required."
                    .to_owned(),
            )),
            Ok(s) => Ok(s),
            Err(err) => Err((
                "InvalidSelector",
                format!("invalid selector, no pods are managed: {err}"),
            )),
        };
        let selector = match selector {
            Ok(s) => {
                self.skipped.remove(&key);
                s
            }
            Err((reason, why)) => {
                self.skip(key, ds, reason, why);
                return;
            }
        };
        let store = &self.pods;
        let satisfied = self
            .expectations
            .satisfied(&key, now, |name| seen(store, &key.namespace, name));
        if !satisfied {
            debug!(daemonset = %key, "waiting for the pod watch to show the last sync's writes");
        }
        let in_namespace =
            |meta: &ObjectMeta| meta.namespace.as_deref() == Some(key.namespace.as_str());
        let work = Work {
            key: key.clone(),
            selector,
            nodes: self
                .nodes
                .state()
                .into_iter()
                .filter(|n| n.metadata.deletion_timestamp.is_none())
                .collect(),
            pods: self
                .pods
                .state()
                .into_iter()
                .filter(|p| in_namespace(&p.metadata))
                .collect(),
            revisions: self
                .revisions
                .state()
                .into_iter()
                .filter(|r| in_namespace(&r.metadata))
                .collect(),
            satisfied,
            backoff: self
                .failed_backoff
                .of(ds.metadata.uid.as_deref().unwrap_or_default()),
            ds,
        };
        let notes = self.notes.clone();
        let handle = self.tasks.spawn(async move {
            let mut out = Outcome::new(work.key.clone());
            out.result = reconcile(&notes, work, &mut out).await;
            out
        });
        self.running.insert(handle.id(), key);
    }

    /// A DaemonSet whose selector cannot be used: said once per generation, then left
    /// alone until it changes.
    fn skip(&mut self, key: ObjectKey, ds: Arc<DaemonSet>, reason: &'static str, why: String) {
        self.settle(&key);
        let generation = ds.metadata.generation;
        if self.skipped.insert(key.clone(), generation) == Some(generation) {
            return;
        }
        warn!(daemonset = %key, reason, "skipping DaemonSet: {why}");
        // Not in `running`: the event task holds no claim on the DaemonSet.
        let notes = self.notes.clone();
        let _ = self.tasks.spawn(async move {
            notes
                .record(&ds.object_ref(&()), EventType::Warning, reason, "Sync", why)
                .await;
            Outcome::new(key)
        });
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let outcome = match done {
            Ok((id, outcome)) if self.running.remove(&id).is_some() => outcome,
            // An event task, not a sync.
            Ok(_) => return,
            Err(err) => {
                if let Some(key) = self.running.remove(&err.id()) {
                    retry::after_panic(&mut self.queue, key, &err, now);
                }
                return;
            }
        };
        let Outcome {
            key,
            created,
            deleted,
            backoff,
            recheck_at,
            result,
        } = outcome;
        let writes = (created, deleted);
        retry::expect_writes(
            &mut self.queue,
            &mut self.expectations,
            (&key, &key),
            writes,
            now,
        );
        if let Some(backoff) = backoff {
            self.failed_backoff.absorb(backoff, Timestamp::now());
        }
        self.queue.done(&key);
        if let Some(at) = recheck_at {
            // Availability is strictly after minReadySeconds: a second later it holds.
            retry::recheck(&mut self.queue, &key, at, Duration::from_secs(1), now);
        }
        retry::after_sync(
            &mut self.queue,
            key,
            result,
            |e: &Error| !e.backs_off(),
            now,
        );
    }
}

/// The Kubernetes APIs one sync writes through.
struct Apis {
    daemonsets: Api<DaemonSet>,
    pods: Api<Pod>,
    revisions: Api<ControllerRevision>,
}

/// One sync of one DaemonSet: upstream's `syncDaemonSet`.
async fn reconcile(notes: &Notes, work: Work, out: &mut Outcome) -> Result<(), Error> {
    let Work {
        key,
        ds,
        selector,
        nodes,
        pods,
        revisions,
        satisfied,
        backoff,
    } = work;
    // Whether its revisions still exist is unknown (the garbage collector may be deleting
    // them): upstream neither acts on nor reports a DaemonSet being deleted.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let client = notes.client().clone();
    let apis = Apis {
        daemonsets: Api::namespaced(client.clone(), &key.namespace),
        pods: Api::namespaced(client.clone(), &key.namespace),
        revisions: Api::namespaced(client, &key.namespace),
    };
    let claim_error = |source| Error::Claim {
        ds: key.clone(),
        source,
    };
    let revisions = claim_all(
        &apis.revisions,
        &apis.daemonsets,
        ds.as_ref(),
        &selector,
        revisions,
    )
    .await
    .map_err(claim_error)?;
    let claimed = claim_all(&apis.pods, &apis.daemonsets, ds.as_ref(), &selector, pods)
        .await
        .map_err(claim_error)?;
    let (current, old) = construct_history(&apis, &ds, &key, revisions, &claimed).await?;
    let hash = history::hash_of(&current).unwrap_or_default().to_owned();
    let generation = history::template_generation(&ds);
    let now = Timestamp::now();

    let spec = placement::daemon_spec(&ds);
    let placements: HashMap<String, Placement> = nodes
        .iter()
        .map(|n| (n.name_any(), placement::placement(&spec, n)))
        .collect();
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in &claimed {
        let terminal = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        // The kubelet or the pod GC have these now: nothing left to do with them.
        if terminal && pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(node) = placement::target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }

    let mut failure = None;
    if satisfied {
        let owner = ds.object_ref(&());
        let (create, delete) = manage(
            notes,
            &owner,
            &ds,
            &placements,
            &by_node,
            &hash,
            backoff,
            now,
            out,
        )
        .await;
        let wrote = !create.is_empty() || !delete.is_empty();
        failure = sync_nodes(
            notes, &apis.pods, &owner, &ds, &key, &hash, &create, &delete, out,
        )
        .await;
        if !wrote && rolling::is_rolling(&ds) {
            let nodes = rolling::Nodes {
                placements: &placements,
                pods: &by_node,
                hash: &hash,
                generation,
            };
            let step = rolling::step(&ds, &nodes, now).map_err(|source| Error::Rollout {
                ds: key.clone(),
                source,
            })?;
            if !step.create.is_empty() || !step.delete.is_empty() {
                info!(daemonset = %key, creating = step.create.len(), deleting = step.delete.len(), "rolling update");
            }
            failure = sync_nodes(
                notes,
                &apis.pods,
                &owner,
                &ds,
                &key,
                &hash,
                &step.create,
                &step.delete,
                out,
            )
            .await;
        }
        if failure.is_none() {
            clean_history(&apis, &ds, &key, &old, &claimed).await?;
        }
    }

    let counts = status::counts(&ds, &placements, &by_node, &hash, generation, now);
    if !status::unchanged(&ds, &counts) {
        let mut updated = ds.as_ref().clone();
        updated.status = Some(status::status(&ds, &counts, satisfied));
        match apis
            .daemonsets
            .replace_status(&key.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(err) if stale(&err) => return Err(Error::Stale { ds: key }),
            Err(source) => return Err(Error::Status { ds: key, source }),
        }
    }
    if let Some(at) = status::next_available(&ds, &by_node, now) {
        out.recheck(at);
    }
    failure.map_or(Ok(()), Err)
}

/// Upstream's `manage` decision over every node: the nodes that get a pod and the pods
/// that go; failed and succeeded pods are reported as upstream does.
#[allow(clippy::too_many_arguments)]
async fn manage<'a>(
    notes: &Notes,
    owner: &ObjectReference,
    ds: &DaemonSet,
    placements: &HashMap<String, Placement>,
    by_node: &BTreeMap<String, Vec<&'a Pod>>,
    hash: &str,
    mut backoff: FailedBackoff,
    now: Timestamp,
    out: &mut Outcome,
) -> (Vec<String>, Vec<&'a Pod>) {
    let rollout = Rollout {
        surge: rolling::allows_surge(ds),
        hash,
        min_ready: ds.spec.min_ready_seconds.unwrap_or(0),
    };
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut names: Vec<&String> = placements.keys().collect();
    names.sort();
    for name in names {
        let key = FailedBackoff::key(ds, name);
        let pods = by_node.get(name).map(Vec::as_slice).unwrap_or_default();
        let work = placement::on_node(placements[name], pods, rollout, (&mut backoff, &key), now);
        for (pods, type_, reason, verb) in [
            (
                &work.failed,
                EventType::Warning,
                "FailedDaemonPod",
                "failed",
            ),
            (
                &work.succeeded,
                EventType::Normal,
                "SucceededDaemonPod",
                "succeeded",
            ),
        ] {
            for pod in pods {
                let action = if verb == "failed" { "kill" } else { "delete" };
                let note = format!(
                    "Found {verb} daemon pod {}/{} on node {name}, will try to {action} it",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                );
                info!(daemonset = %ObjectKey::of(ds), pod = %pod.name_any(), node = %name, "deleting {verb} daemon pod");
                notes.record(owner, type_, reason, "Delete", note).await;
            }
        }
        if work.create {
            create.push(name.clone());
        }
        delete.extend(work.delete);
        if let Some(wait) = work.wait
            && let Ok(at) = now.checked_add(wait)
        {
            out.recheck(at);
        }
    }
    // Upstream's getUnscheduledPodsWithoutNode: pinned to a node that is gone, never to be
    // scheduled, and not the pod GC's either.
    for (node, pods) in by_node {
        if placements.contains_key(node) {
            continue;
        }
        delete.extend(pods.iter().copied().filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
        }));
    }
    out.backoff = Some(backoff);
    (create, delete)
}

/// The pod template of the current revision: upstream's `CreatePodTemplate` — the
/// DaemonSet's template with the daemon tolerations, the revision hash and the template
/// generation labels.
fn pod_template(ds: &DaemonSet, hash: &str) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let mut template = ds.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    if let Some(generation) = history::template_generation(ds) {
        labels.insert(GENERATION_LABEL.into(), generation.to_string());
    }
    if !hash.is_empty() {
        labels.insert(HASH_LABEL.into(), hash.into());
    }
    placement::add_tolerations(template.spec.get_or_insert_with(Default::default));
    template
}

/// Upstream's `syncNodes`: creates a pod pinned to each of `create` and deletes `delete`,
/// at most [`BURST`] of each; returns the first failure.
#[allow(clippy::too_many_arguments)]
async fn sync_nodes(
    notes: &Notes,
    api: &Api<Pod>,
    owner: &ObjectReference,
    ds: &DaemonSet,
    key: &ObjectKey,
    hash: &str,
    create: &[String],
    delete: &[&Pod],
    out: &mut Outcome,
) -> Option<Error> {
    let mut first = None;
    if !create.is_empty() {
        info!(daemonset = %key, nodes = create.len().min(BURST), "creating daemon pods");
        let template = pod_template(ds, hash);
        let mut pods = Vec::new();
        for node in create.iter().take(BURST) {
            let mut pinned = template.clone();
            if let Some(spec) = pinned.spec.as_mut() {
                // Safe: the node was chosen because the template's own affinity admits it.
                spec.affinity = Some(placement::pin_to(spec.affinity.take(), node));
            }
            match pod_control::from_template(ds, &pinned) {
                Some(pod) => pods.push(pod),
                None => return Some(Error::NoUid { ds: key.clone() }),
            }
        }
        let creation = pod_control::create_all(api, notes, owner, pods).await;
        out.created.extend(creation.created);
        first = creation.error.map(|source| Error::Create {
            ds: key.clone(),
            source,
        });
    }
    let doomed: Vec<&Pod> = delete.iter().copied().take(BURST).collect();
    if !doomed.is_empty() {
        info!(daemonset = %key, pods = doomed.len(), "deleting daemon pods");
    }
    let results = join_all(
        doomed
            .iter()
            .map(|pod| pod_control::delete(api, notes, owner, pod)),
    )
    .await;
    for (pod, result) in doomed.iter().zip(results) {
        match result {
            Ok(_) => out
                .deleted
                .push((pod.name_any(), pod.metadata.uid.clone().unwrap_or_default())),
            Err(source) => {
                first.get_or_insert(Error::Delete {
                    ds: key.clone(),
                    pod: pod.name_any(),
                    source,
                });
            }
        }
    }
    first
}

/// Upstream's `constructHistory`: labels revisions that lack the hash label, finds or makes
/// the current revision (numbered above the old ones, duplicates removed) and returns it
/// with the old ones.
async fn construct_history(
    apis: &Apis,
    ds: &DaemonSet,
    key: &ObjectKey,
    claimed: Vec<Arc<ControllerRevision>>,
    pods: &[Arc<Pod>],
) -> Result<(ControllerRevision, Vec<ControllerRevision>), Error> {
    let history_error = |source: kube::Error| {
        if stale(&source) {
            Error::Stale { ds: key.clone() }
        } else {
            Error::History {
                ds: key.clone(),
                source,
            }
        }
    };
    let mut revisions = Vec::with_capacity(claimed.len());
    for revision in claimed {
        if history::hash_of(&revision).is_some() {
            revisions.push(revision.as_ref().clone());
            continue;
        }
        // Named by the revision's own name: no hash collision to worry about.
        let mut labelled = revision.as_ref().clone();
        let name = labelled.name_any();
        labelled
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), name.clone());
        let stored = apis
            .revisions
            .replace(&name, &PostParams::default(), &labelled)
            .await
            .map_err(history_error)?;
        revisions.push(stored);
    }
    let refs: Vec<&ControllerRevision> = revisions.iter().collect();
    let (current, old) = history::split(ds, &refs);
    let next = history::next_number(&old);
    let Some(kept) = history::keep(&current) else {
        let made = snapshot(apis, ds, key, next).await?;
        return Ok((made, old.into_iter().cloned().collect()));
    };
    // Upstream's dedupCurHistories: pods move to the kept revision's hash, the others go.
    if current.len() > 1 {
        let kept_hash = history::hash_of(kept).unwrap_or_default().to_owned();
        for pod in pods {
            let label = pod.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
            if label.map(String::as_str) == Some(kept_hash.as_str()) {
                continue;
            }
            let patch = json!({ "metadata": { "labels": { HASH_LABEL: kept_hash } } });
            match apis
                .pods
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => return Err(history_error(source)),
            }
        }
        for duplicate in current
            .iter()
            .filter(|r| r.metadata.name != kept.metadata.name)
        {
            match apis
                .revisions
                .delete(&duplicate.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => return Err(history_error(source)),
            }
        }
    }
    let mut kept = kept.clone();
    if history::number(&kept) < next {
        kept.revision = Some(next);
        kept = apis
            .revisions
            .replace(&kept.name_any(), &PostParams::default(), &kept)
            .await
            .map_err(history_error)?;
    }
    Ok((kept, old.into_iter().cloned().collect()))
}

/// Upstream's `snapshot`: creates the revision of the current template; a name taken by
/// another template raises collisionCount, so that the next sync hashes elsewhere.
async fn snapshot(
    apis: &Apis,
    ds: &DaemonSet,
    key: &ObjectKey,
    number: i64,
) -> Result<ControllerRevision, Error> {
    let history_error = |source| Error::History {
        ds: key.clone(),
        source,
    };
    let revision = history::snapshot(ds, number).ok_or_else(|| Error::NoUid { ds: key.clone() })?;
    let name = revision.name_any();
    match apis
        .revisions
        .create(&PostParams::default(), &revision)
        .await
    {
        Ok(made) => return Ok(made),
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(source) => return Err(history_error(source)),
    }
    let existing = apis.revisions.get(&name).await.map_err(history_error)?;
    if history::matches(ds, &existing) {
        return Ok(existing);
    }
    let fresh = apis
        .daemonsets
        .get(&key.name)
        .await
        .map_err(history_error)?;
    let collisions = |d: &DaemonSet| d.status.as_ref().and_then(|s| s.collision_count);
    if collisions(&fresh) != collisions(ds) {
        // The count hashed with is stale: the next sync uses the fresh one.
        return Err(Error::Stale { ds: key.clone() });
    }
    let mut bumped = fresh;
    let status = bumped.status.get_or_insert_with(Default::default);
    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
    warn!(daemonset = %key, revision = %name, "hash collision; raising collisionCount");
    match apis
        .daemonsets
        .replace_status(&key.name, &PostParams::default(), &bumped)
        .await
    {
        Ok(_) => Err(Error::Collision {
            ds: key.clone(),
            name,
        }),
        Err(err) if stale(&err) => Err(Error::Stale { ds: key.clone() }),
        Err(source) => Err(Error::Status {
            ds: key.clone(),
            source,
        }),
    }
}

/// Upstream's `cleanupHistory`: deletes old revisions beyond the limit that no pod carries
/// (finished pods being deleted count too).
async fn clean_history(
    apis: &Apis,
    ds: &DaemonSet,
    key: &ObjectKey,
    old: &[ControllerRevision],
    pods: &[Arc<Pod>],
) -> Result<(), Error> {
    let live: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(HASH_LABEL).cloned())
        .collect();
    let refs: Vec<&ControllerRevision> = old.iter().collect();
    for name in history::to_clean(ds, &refs, &live) {
        debug!(daemonset = %key, revision = %name, "deleting old revision");
        match apis.revisions.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(Error::History {
                    ds: key.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        DaemonSetStatus, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::Value;

    use super::placement::tests::node;
    use super::*;
    use crate::controllers::history::tests::daemonset;
    use crate::controllers::replicaset::api_double::Double;
    use crate::controllers::replicaset::pods::tests::pod;

    const NS: &str = "/api/v1/namespaces/kube-system";
    const REVISIONS: &str = "/apis/apps/v1/namespaces/kube-system/controllerrevisions";
    const DS: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/agent";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/kube-system/events";

    fn echo(method: &str, path: &str, body: &Value, n: usize) -> (u16, Value) {
        let mut reply = body.clone();
        if method == "POST" && path == format!("{NS}/pods") {
            reply["metadata"]["name"] = json!(format!("agent-{n}"));
            reply["metadata"]["uid"] = json!(format!("uid-agent-{n}"));
        }
        if method == "DELETE" {
            let name = path.rsplit('/').next().unwrap_or_default();
            reply = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}});
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    fn owned(mut p: Pod, hash: &str) -> Pod {
        p.metadata.namespace = Some("kube-system".into());
        p.metadata.labels = Some(BTreeMap::from([
            ("app".to_owned(), "agent".to_owned()),
            (HASH_LABEL.to_owned(), hash.to_owned()),
        ]));
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "agent".into(),
            uid: "uid-agent".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    fn work(
        ds: DaemonSet,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        revisions: Vec<ControllerRevision>,
    ) -> Work {
        let selector = owner::selector(&ds.spec.selector).expect("valid");
        Work {
            key: ObjectKey::new("kube-system", "agent"),
            ds: Arc::new(ds),
            selector,
            nodes: nodes.into_iter().map(Arc::new).collect(),
            pods: pods.into_iter().map(Arc::new).collect(),
            revisions: revisions.into_iter().map(Arc::new).collect(),
            satisfied: true,
            backoff: FailedBackoff::default(),
        }
    }

    async fn sync(double: &Double, w: Work) -> (Outcome, Result<(), Error>) {
        let notes = Notes::new(Client::new(double.clone(), "kube-system"), REPORTER);
        let mut out = Outcome::new(ObjectKey::new("kube-system", "agent"));
        let result = reconcile(&notes, w, &mut out).await;
        (out, result)
    }

    #[tokio::test]
    async fn a_new_daemonset_records_a_revision_and_pins_a_pod_to_each_eligible_node() {
        let double = Double::new(echo);
        let ds = daemonset("agent:1");
        let nodes = vec![
            node("n1", &[], &[]),
            node("n2", &[], &[("dedicated", "NoSchedule")]),
            node("n3", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]),
        ];
        let (out, result) = sync(&double, work(ds.clone(), nodes, Vec::new(), Vec::new())).await;
        assert!(result.is_ok(), "{result:?}");
        let revisions = double.sent("POST", REVISIONS);
        assert_eq!(revisions.len(), 1);
        let hash = history::hash(&ds);
        assert_eq!(revisions[0].2["metadata"]["name"], format!("agent-{hash}"));
        assert_eq!(revisions[0].2["revision"], 1);

        let creates = double.sent("POST", &format!("{NS}/pods"));
        assert_eq!(creates.len(), 2, "n2's taint is not tolerated");
        let targets: Vec<String> = creates
            .iter()
            .map(|(_, _, p)| {
                let term = &p["spec"]["affinity"]["nodeAffinity"]
                    ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
                assert_eq!(term["matchFields"][0]["key"], "metadata.name");
                assert!(p["spec"]["nodeName"].is_null(), "bound by the scheduler");
                term["matchFields"][0]["values"][0].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(targets, vec!["n1", "n3"]);
        let labels = &creates[0].2["metadata"]["labels"];
        assert_eq!(labels[HASH_LABEL], hash);
        assert_eq!(labels[GENERATION_LABEL], "2");
        let tolerations = creates[0].2["spec"]["tolerations"].as_array().map(Vec::len);
        assert_eq!(tolerations, Some(6));
        assert_eq!(out.created.len(), 2);

        let statuses = double.sent("PUT", &format!("{DS}/status"));
        let status = &statuses[0].2["status"];
        assert_eq!(status["desiredNumberScheduled"], 2);
        assert_eq!(status["currentNumberScheduled"], 0);
        assert_eq!(status["numberUnavailable"], 2);
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(statuses[0].2["metadata"]["resourceVersion"], "11");
    }

    #[tokio::test]
    async fn a_new_template_rolls_out_within_max_unavailable() {
        let double = Double::new(echo);
        let old_ds = daemonset("agent:1");
        let old_revision = history::snapshot(&old_ds, 1).expect("uid");
        let old_hash = history::hash(&old_ds);
        let mut ds = daemonset("agent:2");
        ds.spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: None,
            }),
        });
        ds.status = Some(DaemonSetStatus {
            desired_number_scheduled: 2,
            current_number_scheduled: 2,
            number_ready: 2,
            number_available: Some(2),
            updated_number_scheduled: Some(2),
            observed_generation: Some(1),
            ..DaemonSetStatus::default()
        });
        let nodes = vec![node("n1", &[], &[]), node("n2", &[], &[])];
        let pods = vec![
            owned(pod("agent-a", "n1", "Running", Some(0), 0), &old_hash),
            owned(pod("agent-b", "n2", "Running", Some(0), 0), &old_hash),
        ];
        let (out, result) = sync(&double, work(ds.clone(), nodes, pods, vec![old_revision])).await;
        assert!(result.is_ok(), "{result:?}");
        let revisions = double.sent("POST", REVISIONS);
        assert_eq!(revisions.len(), 1);
        assert_eq!(revisions[0].2["revision"], 2, "above the old one");
        let deletes = double.sent("DELETE", &format!("{NS}/pods"));
        assert_eq!(deletes.len(), 1, "maxUnavailable 1");
        assert_eq!(out.deleted.len(), 1);
        assert!(double.sent("POST", &format!("{NS}/pods")).is_empty());
        let statuses = double.sent("PUT", &format!("{DS}/status"));
        let status = &statuses[0].2["status"];
        assert_eq!(status["updatedNumberScheduled"], 0);
        assert_eq!(status["observedGeneration"], 2);
    }

    #[tokio::test]
    async fn failed_pods_are_reported_and_deleted_and_pods_of_gone_nodes_unpinned_go() {
        let double = Double::new(echo);
        let ds = daemonset("agent:1");
        let hash = history::hash(&ds);
        let revision = history::snapshot(&ds, 1).expect("uid");
        let failed = owned(pod("agent-f", "n1", "Failed", None, 0), &hash);
        let mut stranded = owned(pod("agent-s", "", "Pending", None, 0), &hash);
        if let Some(spec) = stranded.spec.as_mut() {
            spec.affinity = Some(placement::pin_to(None, "gone"));
        }
        let (_, result) = sync(
            &double,
            work(
                ds,
                vec![node("n1", &[], &[])],
                vec![failed, stranded],
                vec![revision],
            ),
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(
            double.sent("POST", REVISIONS).is_empty(),
            "the revision exists"
        );
        let mut deleted: Vec<String> = double
            .sent("DELETE", &format!("{NS}/pods"))
            .iter()
            .map(|(_, path, _)| path.rsplit('/').next().unwrap_or_default().to_owned())
            .collect();
        deleted.sort();
        assert_eq!(deleted, vec!["agent-f", "agent-s"]);
        let reasons: Vec<String> = double
            .sent("POST", EVENTS)
            .iter()
            .map(|(_, _, e)| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            reasons.contains(&"FailedDaemonPod".to_owned()),
            "{reasons:?}"
        );
    }

    #[test]
    fn node_views_and_ownership() {
        let ds = daemonset("agent:1");
        let mut n = node("n1", &[("zone", "a")], &[]);
        n.status = Some(Default::default());
        let v = view(&n);
        assert_eq!(v.metadata.labels, n.metadata.labels);
        assert!(v.status.is_none());
        assert_eq!(
            place(&ds, &v),
            Some(Placement {
                should_run: true,
                should_continue: true
            })
        );
        n.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(place(&ds, &n), None);
        let p = owned(pod("x", "n1", "Running", None, 0), "h");
        assert_eq!(
            ds_of(&p.metadata),
            Some(ObjectKey::new("kube-system", "agent"))
        );
        assert!(
            !Error::Collision {
                ds: ObjectKey::new("kube-system", "agent"),
                name: "agent-x".into()
            }
            .backs_off()
        );
    }
}
