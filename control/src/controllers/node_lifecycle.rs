//! Node lifecycle: notices nodes whose kubelet went silent and acts for them — their
//! kubelet conditions turn Unknown, their pods stop counting as Ready, the NoExecute taints
//! `not-ready`/`unreachable` follow their Ready condition — and evicts the pods that do not
//! tolerate a node's NoExecute taints, at once or when their `tolerationSeconds` run out.
//!
//! Invariants: nothing is judged before the Node, Lease and Pod watches have listed once;
//! every `monitor_period` one pass recomputes every node from the stores ([`health`],
//! [`tainting`]) and its writes run while the next waits (a pass still writing delays the
//! next, never doubles it); node status and taint writes are conditional on the
//! resourceVersion read, so a kubelet that wakes up meanwhile wins; a node's taint follows
//! the Ready condition it shows, so it comes a pass after the Unknown that calls for it has
//! landed (upstream's `observedReadyCondition`); only the NoExecute variants of the two
//! taints are written here (the NoSchedule ones are `node_taints`'s, which keeps other
//! effects as they are); a pod is evicted at most once per watch view
//! (the DisruptionTarget condition first, then the delete, preconditioned on its uid), and
//! its deadline is recomputed on every change of its node's taints ([`eviction`]).
//! Upstream: `pkg/controller/nodelifecycle/node_lifecycle_controller.go` (`monitorNodeHealth`,
//! `processTaintBaseEviction`, `handleDisruption`), `pkg/controller/util/node`
//! (`MarkPodsNotReady`, `RecordNodeStatusChange`) and
//! `pkg/controller/tainteviction/taint_eviction.go`.
//!
//! ```text
//!  Node, Lease, Pod watches ─► stores ─┬─ every monitor_period: health ─► conditions Unknown,
//!                                      │     pods Ready=False, NoExecute taints (zone-rate-limited)
//!                                      └─ on taint/pod changes and deadlines: eviction ─► pods
//!                                            DisruptionTarget, then deleted
//! ```

pub mod eviction;
pub mod health;
pub mod tainting;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::eviction::Verdict;
use self::health::Health;
use self::tainting::{Change, Tainter, View};
use super::chain;
use super::owner::ObjectKey;

/// The name node events are reported under, as upstream's controller.
pub const REPORTER: &str = "node-controller";
/// The name eviction events are reported under, as upstream's controller.
pub const EVICTION_REPORTER: &str = "taint-eviction-controller";
/// Where the kubelets' heartbeat Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Writes of one pass in flight at once.
const CONCURRENT_WRITES: usize = 8;
/// How long writes in flight at shutdown may take to finish.
const GRACE: Duration = Duration::from_secs(5);

/// The controller's settings, named as kube-controller-manager's flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// `--node-monitor-grace-period`: how long a node may be silent before it is Unknown.
    pub grace_period: Duration,
    /// `--node-monitor-period`: how often every node is looked at.
    pub monitor_period: Duration,
    /// `--node-startup-grace-period`: the same for a node that never reported Ready.
    pub startup_grace_period: Duration,
    /// `--node-eviction-rate`: nodes given a NoExecute taint per second, per zone.
    pub eviction_rate: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_period: Duration::from_secs(50),
            monitor_period: Duration::from_secs(5),
            startup_grace_period: Duration::from_secs(60),
            eviction_rate: tainting::EVICTION_QPS,
        }
    }
}

/// Go's duration syntax, for clap's `value_parser` (shared with the agent's `--config`).
pub use nodus_api::duration::parse as parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, judging nodes
    /// from a frozen view would evict for nothing, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
}

/// A write that failed; the next pass recomputes and tries again.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("setting the conditions of node {node} to Unknown")]
    Conditions {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the NoExecute taints of node {node}")]
    Taints {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("marking pod {pod} not ready")]
    PodReady {
        pod: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("evicting pod {pod}")]
    Evict {
        pod: ObjectKey,
        #[source]
        source: kube::Error,
    },
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, config: Config, cancel: CancellationToken) {
    info!(grace = ?config.grace_period, period = ?config.monitor_period, "node lifecycle controller starting");
    match run_until(client, config, cancel).await {
        Ok(()) => info!("node lifecycle controller stopped"),
        Err(err) => error!(error = %chain(&err), "the node lifecycle controller stopped"),
    }
}

/// What the writes of a pass share.
struct Ctx {
    client: Client,
}

impl Ctx {
    /// Records an event; a failure is logged, never retried.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reporter: &str,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let note = Note {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        // A recorder per event: kube's folds later notes of one reason into the first.
        let recorder = Recorder::new(self.client.clone(), Reporter::from(reporter));
        if let Err(err) = recorder.publish(&note, &object.object_ref(&())).await {
            debug!(error = %chain(&err), "recording an event failed");
        }
    }
}

/// The writes one monitor pass decided.
#[derive(Debug, Default)]
struct Plan {
    /// Silent nodes and their conditions as they become.
    unknown: Vec<(Arc<Node>, Vec<NodeCondition>)>,
    /// Nodes whose Ready condition stopped being True.
    not_ready_events: Vec<Arc<Node>>,
    /// Ready pods on nodes that are not.
    pods_not_ready: Vec<Arc<Pod>>,
    /// NoExecute taint changes.
    taints: Vec<(Arc<Node>, Change)>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.unknown.is_empty()
            && self.not_ready_events.is_empty()
            && self.pods_not_ready.is_empty()
            && self.taints.is_empty()
    }
}

/// What a running task is doing.
#[derive(Debug)]
enum Task {
    /// A monitor pass's writes.
    Pass,
    /// The eviction of the pod with this uid.
    Evict(String),
    /// An event.
    Note,
}

struct Controller {
    config: Config,
    ctx: Arc<Ctx>,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    /// Whether the Node, Lease and Pod watches have listed once.
    listed: [bool; 3],
    health: HashMap<String, Health>,
    tainter: Tainter,
    /// Nodes with NoExecute taints when last seen.
    tainted: HashSet<String>,
    /// When each NoExecute taint without a timeAdded was first seen: (node, key, value).
    noticed: HashMap<(String, String, Option<String>), Timestamp>,
    /// Pods with a deletion ahead, by uid: their key and when.
    scheduled: HashMap<String, (ObjectKey, Timestamp)>,
    /// Pods whose eviction has begun, by uid.
    evicting: HashSet<String>,
    passing: bool,
    evict_due: bool,
    next_eviction: Option<Timestamp>,
    /// Tasks report whether they succeeded.
    tasks: JoinSet<bool>,
    running: HashMap<tokio::task::Id, Task>,
}

async fn run_until(client: Client, config: Config, cancel: CancellationToken) -> Result<(), Error> {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer);
    let lease_events = watcher(
        Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(lease_writer);
    // Only pods bound to a node can be on a node that goes away.
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
    )
    .default_backoff()
    .reflect(pod_writer);
    let mut node_events = pin!(node_events);
    let mut lease_events = pin!(lease_events);
    let mut pod_events = pin!(pod_events);
    // A zero period would make the ticker panic.
    let mut ticker = tokio::time::interval(config.monitor_period.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut c = Controller::new(config, client, nodes, leases, pods);
    let result = loop {
        let synced = c.listed.iter().all(|l| *l);
        let evict_now = synced && c.evict_due;
        let wake = c.next_eviction.map(|at| {
            let left = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
            Instant::now() + left
        });
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = node_events.next() => match event {
                Some(Ok(event)) => c.on_node(event),
                Some(Err(err)) => warn!(error = %chain(&err), "node watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Node" }),
            },
            event = lease_events.next() => match event {
                Some(Ok(Event::InitDone)) => c.listed[1] = true,
                Some(Ok(_)) => {}
                Some(Err(err)) => warn!(error = %chain(&err), "Lease watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Lease" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            _ = ticker.tick(), if synced => {
                c.monitor(Timestamp::now());
                // Deadlines are also met here should a wakeup have been missed.
                c.evict_due = true;
            }
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() && !evict_now => {
                c.next_eviction = None;
                c.evict_due = true;
            }
            _ = std::future::ready(()), if evict_now => c.evict(Timestamp::now()),
        }
    };
    let drain = async { while c.tasks.join_next().await.is_some() {} };
    if timeout(GRACE, drain).await.is_err() {
        warn!("node lifecycle writes still in flight at shutdown were abandoned");
    }
    result
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Controller {
    fn new(
        config: Config,
        client: Client,
        nodes: Store<Node>,
        leases: Store<Lease>,
        pods: Store<Pod>,
    ) -> Self {
        Controller {
            config,
            ctx: Arc::new(Ctx { client }),
            nodes,
            leases,
            pods,
            listed: [false; 3],
            health: HashMap::new(),
            tainter: Tainter::new(config.eviction_rate),
            tainted: HashSet::new(),
            noticed: HashMap::new(),
            scheduled: HashMap::new(),
            evicting: HashSet::new(),
            passing: false,
            evict_due: false,
            next_eviction: None,
            tasks: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    fn on_node(&mut self, event: Event<Node>) {
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let name = node.name_any();
                let has = !eviction::no_execute(&node).is_empty();
                if has || self.tainted.contains(&name) {
                    self.evict_due = true;
                }
                if has {
                    self.tainted.insert(name);
                } else {
                    self.tainted.remove(&name);
                }
            }
            Event::Delete(node) => {
                let name = node.name_any();
                self.health.remove(&name);
                if self.tainted.remove(&name) {
                    self.evict_due = true;
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[0] = true;
                self.evict_due = true;
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                if node.is_some_and(|n| self.tainted.contains(n)) {
                    self.evict_due = true;
                }
            }
            Event::Delete(pod) => {
                let uid = uid(&pod);
                self.evicting.remove(&uid);
                self.scheduled.remove(&uid);
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed[2] = true;
                self.evict_due = true;
            }
        }
    }

    /// One monitor pass: decides, then leaves the writes to a task. Skipped while the
    /// previous pass still writes.
    fn monitor(&mut self, now: Timestamp) {
        if self.passing {
            debug!("the previous node pass is still writing; skipping this one");
            return;
        }
        let plan = self.plan(now);
        if plan.is_empty() {
            return;
        }
        self.passing = true;
        let ctx = self.ctx.clone();
        let handle = self.tasks.spawn(async move {
            execute(&ctx, plan, now).await;
            true
        });
        self.running.insert(handle.id(), Task::Pass);
    }

    /// What a monitor pass at `now` writes, from the stores.
    fn plan(&mut self, now: Timestamp) -> Plan {
        let mut plan = Plan::default();
        let nodes = self.nodes.state();
        let mut pods_by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                pods_by_node.entry(node).or_default().push(pod);
            }
        }
        let mut health = HashMap::new();
        let mut ready_after: Vec<Option<String>> = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let name = node.name_any();
            let lease = self
                .leases
                .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
            let mut seen = health::observe(self.health.remove(&name), node, lease.as_deref(), now);
            let silent = health::silent(
                &seen,
                node,
                self.config.grace_period,
                self.config.startup_grace_period,
                now,
            );
            let changed = if silent {
                health::unknown(node, now)
            } else {
                Vec::new()
            };
            let ready = changed
                .iter()
                .find(|c| c.type_ == health::READY)
                .map(|c| c.status.clone())
                .or_else(|| health::ready_status(node).map(str::to_owned));
            if !changed.is_empty() {
                plan.unknown.push((node.clone(), changed));
            }
            if seen.ready.as_deref() == Some("True") && ready.as_deref() != Some("True") {
                plan.not_ready_events.push(node.clone());
            }
            if ready.as_deref().is_some_and(|r| r != "True") {
                // Upstream's MarkPodsNotReady: only the status changes, reason and message
                // stay whatever the kubelet said.
                plan.pods_not_ready.extend(
                    pods_by_node
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .filter(|p| pod_ready(p))
                        .cloned(),
                );
            }
            seen.ready = ready.clone();
            health.insert(name, seen);
            ready_after.push(ready);
        }
        self.health = health;

        let views: Vec<View<'_>> = nodes
            .iter()
            .zip(&ready_after)
            .map(|(node, ready)| View {
                name: node.metadata.name.as_deref().unwrap_or_default(),
                ready: ready.as_deref(),
                observed: health::ready_status(node),
                taints: node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_deref())
                    .unwrap_or_default(),
                zone: tainting::zone_of(node),
                excluded: node
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(tainting::EXCLUDE_DISRUPTION)),
            })
            .collect();
        let outcome = self.tainter.step(&views, now);
        if outcome.entered_disruption {
            warn!(
                "every node is not ready: the control plane has most likely lost them, so none is tainted NoExecute and their pods stay"
            );
        }
        if outcome.left_disruption {
            info!("a node is ready again: every node gets a fresh grace period");
            for seen in self.health.values_mut() {
                seen.probe = now;
            }
        }
        let by_name: HashMap<&str, &Arc<Node>> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_deref().unwrap_or_default(), n))
            .collect();
        for change in outcome.changes {
            if let Some(node) = by_name.get(change.node.as_str()) {
                plan.taints.push(((*node).clone(), change));
            }
        }
        plan
    }

    /// One eviction pass: deletes the pods whose time has come on tainted nodes, and
    /// remembers when the next one comes.
    fn evict(&mut self, now: Timestamp) {
        self.evict_due = false;
        let nodes: HashMap<String, Arc<Node>> = self
            .nodes
            .state()
            .into_iter()
            .filter(|n| !eviction::no_execute(n).is_empty())
            .map(|n| (n.name_any(), n))
            .collect();
        // Untimed taints are timed from when first seen; forget the ones gone.
        let mut noticed = HashMap::new();
        for (name, node) in &nodes {
            for taint in eviction::no_execute(node) {
                if taint.time_added.is_none() {
                    let key = (name.clone(), taint.key.clone(), taint.value.clone());
                    let since = self.noticed.get(&key).copied().unwrap_or(now);
                    noticed.insert(key, since);
                }
            }
        }
        self.noticed = noticed;

        let pods = self.pods.state();
        let present: HashSet<String> = pods.iter().map(|p| uid(p)).collect();
        self.evicting.retain(|u| present.contains(u));
        let mut scheduled = HashMap::new();
        let mut next: Option<Timestamp> = None;
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = uid(&pod);
            let Some(node) = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .and_then(|n| nodes.get(n))
            else {
                continue;
            };
            if self.evicting.contains(&uid) {
                continue;
            }
            let node_name = node.name_any();
            let taints = eviction::no_execute(node);
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            let since = |taint: &k8s_openapi::api::core::v1::Taint| {
                taint.time_added.as_ref().map(|t| t.0).unwrap_or_else(|| {
                    self.noticed
                        .get(&(node_name.clone(), taint.key.clone(), taint.value.clone()))
                        .copied()
                        .unwrap_or(now)
                })
            };
            match eviction::verdict(&taints, tolerations, since) {
                Verdict::Stays => {}
                Verdict::At(at) if at > now => {
                    scheduled.insert(uid, (ObjectKey::of(pod.as_ref()), at));
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                Verdict::Now | Verdict::At(_) => {
                    info!(pod = %ObjectKey::of(pod.as_ref()), node = %node_name, "deleting pod: it does not tolerate its node's NoExecute taints (any longer)");
                    self.evicting.insert(uid.clone());
                    let ctx = self.ctx.clone();
                    let handle = self.tasks.spawn(async move {
                        let result = evict_pod(&ctx, &pod, Timestamp::now()).await;
                        if let Err(err) = &result {
                            warn!(error = %chain(err), "evicting a pod failed; retrying on the next pass");
                        }
                        result.is_ok()
                    });
                    self.running.insert(handle.id(), Task::Evict(uid));
                }
            }
        }
        // Deletions called off: the taint went, or the pod tolerates it for good now.
        let cancelled: Vec<ObjectKey> = self
            .scheduled
            .iter()
            .filter(|(uid, _)| {
                present.contains(*uid)
                    && !scheduled.contains_key(*uid)
                    && !self.evicting.contains(*uid)
            })
            .map(|(_, (key, _))| key.clone())
            .collect();
        for key in cancelled {
            if let Some(pod) = self
                .pods
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
            {
                info!(pod = %key, "pod deletion called off");
                let ctx = self.ctx.clone();
                let handle = self.tasks.spawn(async move {
                    let note = eviction::cancel_note(&key.namespace, &key.name);
                    ctx.event(
                        pod.as_ref(),
                        EVICTION_REPORTER,
                        EventType::Normal,
                        "TaintManagerEviction",
                        note,
                    )
                    .await;
                    true
                });
                self.running.insert(handle.id(), Task::Note);
            }
        }
        self.scheduled = scheduled;
        self.next_eviction = next;
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, bool), tokio::task::JoinError>) {
        let (id, ok) = match done {
            Ok(done) => done,
            Err(err) => {
                error!(error = %err, "a node lifecycle task failed");
                (err.id(), false)
            }
        };
        match self.running.remove(&id) {
            Some(Task::Pass) => self.passing = false,
            // A failed eviction is tried again by the next pass.
            Some(Task::Evict(uid)) if !ok => {
                self.evicting.remove(&uid);
            }
            Some(_) | None => {}
        }
    }
}

/// Carries out a pass's writes, a few at a time; failures are logged and left to the next
/// pass.
async fn execute(ctx: &Ctx, plan: Plan, now: Timestamp) {
    let Plan {
        unknown,
        not_ready_events,
        pods_not_ready,
        taints,
    } = plan;
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let nodes_api = &nodes_api;
    let report = |result: Result<(), WriteError>| {
        if let Err(err) = result {
            warn!(error = %chain(&err), "node lifecycle write failed; the next pass retries");
        }
    };

    futures::stream::iter(unknown)
        .for_each_concurrent(CONCURRENT_WRITES, |(node, conditions)| async move {
            report(mark_unknown(nodes_api, &node, conditions).await);
        })
        .await;
    futures::stream::iter(not_ready_events)
        .for_each_concurrent(CONCURRENT_WRITES, |node| async move {
            let note = format!("Node {} status is now: NodeNotReady", node.name_any());
            ctx.event(
                node.as_ref(),
                REPORTER,
                EventType::Normal,
                "NodeNotReady",
                note,
            )
            .await;
        })
        .await;
    futures::stream::iter(taints)
        .for_each_concurrent(CONCURRENT_WRITES, |(node, change)| async move {
            report(write_taints(nodes_api, &node, &change, now).await);
        })
        .await;
    futures::stream::iter(pods_not_ready)
        .for_each_concurrent(CONCURRENT_WRITES, |pod| async move {
            report(mark_pod_not_ready(ctx, &pod, now).await);
        })
        .await;
}

/// Writes the Unknown conditions through the status subresource; the conditions merge by
/// type, and the write holds only if the node is as read.
async fn mark_unknown(
    api: &Api<Node>,
    node: &Node,
    conditions: Vec<NodeCondition>,
) -> Result<(), WriteError> {
    let name = node.name_any();
    let patch = json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "status": { "conditions": conditions },
    });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => {
            info!(node = %name, "node stopped posting status: its conditions are Unknown");
            Ok(())
        }
        // The kubelet wrote meanwhile (so it is alive), or the node went.
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(()),
        Err(source) => Err(WriteError::Conditions { node: name, source }),
    }
}

/// Makes `change` the node's managed NoExecute taint, conditional on the node as read
/// (node_taints writes the same list; the loser of a race retries from fresh taints).
async fn write_taints(
    api: &Api<Node>,
    node: &Node,
    change: &Change,
    now: Timestamp,
) -> Result<(), WriteError> {
    let name = node.name_any();
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let taints = tainting::with_taint(current, change.taint, now);
    let patch = json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "spec": { "taints": taints },
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            match change.taint {
                Some(key) => info!(node = %name, taint = key, "node tainted NoExecute"),
                None => info!(node = %name, "node NoExecute taints removed"),
            }
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(()),
        Err(source) => Err(WriteError::Taints { node: name, source }),
    }
}

/// Upstream's MarkPodsNotReady for one pod: its Ready condition False (transition now),
/// then the NodeNotReady event.
async fn mark_pod_not_ready(ctx: &Ctx, pod: &Pod, now: Timestamp) -> Result<(), WriteError> {
    let key = ObjectKey::of(pod);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = json!({
        "metadata": { "resourceVersion": pod.metadata.resource_version },
        "status": { "conditions": [{
            "type": "Ready",
            "status": "False",
            "lastTransitionTime": Time(now),
        }]},
    });
    match api
        .patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => return Ok(()),
        Err(source) => return Err(WriteError::PodReady { pod: key, source }),
    }
    ctx.event(
        pod,
        REPORTER,
        EventType::Warning,
        "NodeNotReady",
        "Node is not ready".into(),
    )
    .await;
    Ok(())
}

/// Upstream's `addConditionAndDeletePod`, after its event: the DisruptionTarget condition
/// (unless there), then the delete, both for this very pod (its uid).
async fn evict_pod(ctx: &Ctx, pod: &Pod, now: Timestamp) -> Result<(), WriteError> {
    let key = ObjectKey::of(pod);
    ctx.event(
        pod,
        EVICTION_REPORTER,
        EventType::Normal,
        "TaintManagerEviction",
        eviction::eviction_note(&key.namespace, &key.name),
    )
    .await;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let gone = |err: &kube::Error| matches!(err, kube::Error::Api(s) if s.is_not_found() || s.is_conflict());
    let marked = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| {
            c.type_ == "DisruptionTarget"
                && c.status == "True"
                && c.reason.as_deref() == Some("DeletionByTaintManager")
        });
    if !marked {
        // The uid in a patch is a precondition: a new pod of the same name is left alone.
        let patch = json!({
            "metadata": { "uid": pod.metadata.uid },
            "status": { "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": Time(now),
            }]},
        });
        if let Err(err) = api
            .patch_status(
                &key.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            if gone(&err) {
                return Ok(());
            }
            return Err(WriteError::Evict {
                pod: key,
                source: err,
            });
        }
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &params).await {
        Ok(_) => Ok(()),
        Err(err) if gone(&err) => Ok(()),
        Err(source) => Err(WriteError::Evict { pod: key, source }),
    }
}

#[cfg(test)]
mod tests;
