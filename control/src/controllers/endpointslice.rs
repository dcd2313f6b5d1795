//! EndpointSlice controller: every Service with a selector gets EndpointSlices listing the
//! pods it selects, with upstream's conditions, labels, owner and 100-endpoint limit, so that
//! proxies (nodus's own, or kube-proxy) and DNS see its backends.
//!
//! Invariants: level-triggered — an event only names the Services it may affect, and each
//! reconcile recomputes that Service's slices from the current stores ([`desired`] then
//! [`plan`], both pure) and writes only the difference; nothing reconciles before the
//! Service, Pod, EndpointSlice and Node watches have listed once; only slices labelled
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io` are ever written
//! or deleted; one Service is reconciled by one task at a time; after writing, a Service is not
//! reconciled again until the slice watch shows those writes (upstream's
//! `EndpointSliceTracker`), so a stale store never creates duplicate slices.
//!
//! The legacy `Endpoints` object is the separate [`super::endpoints`] controller's, built from
//! the same desired endpoints. Not done: topology hints, the `last-change-trigger-time`
//! annotation and metrics. Upstream: `pkg/controller/endpointslice/endpointslice_controller.go`.
//!
//! ```text
//!  Service watch ─┐                       ┌─ pure: desired(service, pods, nodes)
//!  Pod watch ─────┼─► queue of Services ──┤        plan(service, desired, slices)
//!  Slice watch ───┤   (dedup, backoff,    └─ task: create, update, delete ──► expectations
//!  Node watch ────┘    one at a time each)
//! ```

pub(crate) mod desired;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod plan;

pub mod writes;

pub use desired::{AddressType, Desired, NodeInfo, Skipped, desired, selector, selects};
pub use plan::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MANAGED_BY, MAX_ENDPOINTS, Plan, plan};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::writes::{Expectation, WriteError, Written, met};
use super::chain;

/// Services reconciled at once; each is a handful of sequential API calls.
const WORKERS: usize = 4;
/// How soon a Service whose slices were written is looked at again if the slice watch has
/// not shown the writes yet (the watch event usually brings it back sooner).
const STALE_RETRY: Duration = Duration::from_secs(1);
/// How long to wait for the watch to show this controller's writes before trusting the store
/// anyway (a relist can skip a slice created and deleted meanwhile).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);
/// Upstream's workqueue rate limiter for this controller: 1 s doubling, capped (upstream
/// caps at 1000 s; a control plane for small clusters retries sooner).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A Service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    fn of<K: Resource>(object: &K) -> Self {
        ServiceKey {
            namespace: object.meta().namespace.clone().unwrap_or_default(),
            name: object.meta().name.clone().unwrap_or_default(),
        }
    }

    /// The Service a managed slice belongs to, by its service-name label.
    fn of_slice(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.labels().get(LABEL_SERVICE_NAME)?;
        Some(ServiceKey {
            namespace: slice.namespace().unwrap_or_default(),
            name: name.clone(),
        })
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, reconciling
    /// from a frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error(transparent)]
    Plan(#[from] plan::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Write(w) if w.is_stale())
    }
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    if let Err(err) = run_until(client, cancel).await {
        error!(error = %chain(&err), "the EndpointSlice controller stopped");
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (services, services_writer) = reflector::store::<Service>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let service_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(services_writer);
    // Terminal pods are never endpoints: like the scheduler, do not hold them (a pod that
    // finishes arrives as a deletion).
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
    )
    .default_backoff()
    .reflect(pods_writer);
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
    )
    .default_backoff()
    .reflect(slices_writer);
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(nodes_writer);
    let mut service_events = pin!(service_events);
    let mut pod_events = pin!(pod_events);
    let mut slice_events = pin!(slice_events);
    let mut node_events = pin!(node_events);

    let mut c = Controller {
        client,
        services,
        pods,
        slices,
        nodes,
        listed: Listed::default(),
        pod_services: HashMap::new(),
        zones: HashMap::new(),
        expected: HashMap::new(),
        last_skipped: HashMap::new(),
        queue: Queue::default(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    info!("EndpointSlice controller starting");
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.all();
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = service_events.next() => match event {
                Some(Ok(event)) => c.on_service(event),
                Some(Err(err)) => warn!(error = %chain(&err), "service watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "service" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            event = slice_events.next() => match event {
                Some(Ok(event)) => c.on_slice(event),
                Some(Err(err)) => warn!(error = %chain(&err), "EndpointSlice watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "EndpointSlice" }),
            },
            event = node_events.next() => match event {
                Some(Ok(event)) => c.on_node(event),
                Some(Err(err)) => warn!(error = %chain(&err), "node watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "node" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "EndpointSlice writes").await;
    info!("EndpointSlice controller stopped");
    result
}

/// Which watches have listed everything at least once.
#[derive(Debug, Default)]
struct Listed {
    services: bool,
    pods: bool,
    slices: bool,
    nodes: bool,
}

impl Listed {
    fn all(&self) -> bool {
        self.services && self.pods && self.slices && self.nodes
    }
}

/// Services to reconcile: deduplicated, some only after a delay, and never one that is
/// being reconciled (it waits its turn, then runs once more).
#[derive(Debug, Default)]
struct Queue {
    dirty: BTreeSet<ServiceKey>,
    later: HashMap<ServiceKey, Instant>,
    busy: HashSet<ServiceKey>,
    failures: HashMap<ServiceKey, u32>,
}

impl Queue {
    /// Now: an event overrides a pending delay, as upstream's workqueue `Add` does.
    fn add(&mut self, key: ServiceKey) {
        self.later.remove(&key);
        self.dirty.insert(key);
    }

    fn add_after(&mut self, key: ServiceKey, at: Instant) {
        if self.dirty.contains(&key) {
            return;
        }
        let when = self.later.entry(key).or_insert(at);
        if at < *when {
            *when = at;
        }
    }

    fn promote(&mut self, now: Instant) {
        let due: Vec<ServiceKey> = self
            .later
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.later.remove(&key);
            self.dirty.insert(key);
        }
    }

    fn has_ready(&self, now: Instant) -> bool {
        self.dirty.iter().any(|k| !self.busy.contains(k))
            || self
                .later
                .iter()
                .any(|(k, at)| *at <= now && !self.busy.contains(k))
    }

    fn pop(&mut self, now: Instant) -> Option<ServiceKey> {
        self.promote(now);
        let key = self
            .dirty
            .iter()
            .find(|k| !self.busy.contains(*k))
            .cloned()?;
        self.dirty.remove(&key);
        self.busy.insert(key.clone());
        Some(key)
    }

    fn done(&mut self, key: &ServiceKey) {
        self.busy.remove(key);
    }

    /// When a delayed Service that is not busy comes due (a busy one is looked at when its
    /// task ends).
    fn next_wakeup(&self) -> Option<Instant> {
        self.later
            .iter()
            .filter(|(k, _)| !self.busy.contains(*k))
            .map(|(_, at)| *at)
            .min()
    }

    fn backoff(&mut self, key: &ServiceKey) -> Duration {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        let delay = BACKOFF_BASE
            .saturating_mul(2u32.saturating_pow(*failures))
            .min(BACKOFF_MAX);
        *failures = failures.saturating_add(1);
        delay
    }
}

/// What one reconcile's task reports.
#[derive(Debug)]
struct Outcome {
    key: ServiceKey,
    writes: Vec<Written>,
    result: Result<(), Error>,
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    listed: Listed,
    /// The Services each pod was last seen to match (plus those that matched it since): a
    /// pod that changes its labels or goes must reach the Services that listed it.
    pod_services: HashMap<(String, String), BTreeSet<ServiceKey>>,
    /// Each node's zone label, to tell which node events matter.
    zones: HashMap<String, Option<String>>,
    expected: HashMap<ServiceKey, Expectation>,
    /// What was said about each Service's bad input, so that it is said once, not on every
    /// reconcile.
    last_skipped: HashMap<ServiceKey, Vec<Skipped>>,
    queue: Queue,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ServiceKey>,
}

fn pod_key(pod: &Pod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

impl Controller {
    /// Every Service this controller may have slices for: those that select, and those its
    /// slices name (a Service deleted while a watch was down leaves those behind).
    fn mark_all(&mut self) {
        for service in self.services.state() {
            if selector(&service).is_some() {
                self.queue.add(ServiceKey::of(service.as_ref()));
            }
        }
        for slice in self.slices.state() {
            if let Some(key) = ServiceKey::of_slice(&slice) {
                self.queue.add(key);
            }
        }
    }

    /// The selecting Services of `pod`'s namespace whose selector matches it.
    fn matching(&self, pod: &Pod) -> BTreeSet<ServiceKey> {
        let namespace = pod.namespace().unwrap_or_default();
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|s| selector(s).is_some_and(|sel| selects(sel, pod)))
            .map(|s| ServiceKey::of(s.as_ref()))
            .collect()
    }

    /// Recomputes every pod's Services from the stores (after a relist, when events may
    /// have been missed).
    fn rebuild_pod_services(&mut self) {
        let mut by_namespace: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
        for service in self.services.state() {
            if selector(&service).is_some() {
                by_namespace
                    .entry(service.namespace().unwrap_or_default())
                    .or_default()
                    .push(service);
            }
        }
        self.pod_services.clear();
        for pod in self.pods.state() {
            let key = pod_key(&pod);
            let matching: BTreeSet<ServiceKey> = by_namespace
                .get(&key.0)
                .into_iter()
                .flatten()
                .filter(|s| selector(s).is_some_and(|sel| selects(sel, &pod)))
                .map(|s| ServiceKey::of(s.as_ref()))
                .collect();
            if !matching.is_empty() {
                self.pod_services.insert(key, matching);
            }
        }
    }

    fn on_service(&mut self, event: Event<Service>) {
        match event {
            Event::Apply(service) | Event::InitApply(service) => {
                let key = ServiceKey::of(&service);
                // A new or changed selector: its pods must reach it when they change.
                if let Some(sel) = selector(&service) {
                    for pod in self.pods.state() {
                        if pod.namespace().as_deref() == Some(key.namespace.as_str())
                            && selects(sel, &pod)
                        {
                            self.pod_services
                                .entry(pod_key(&pod))
                                .or_default()
                                .insert(key.clone());
                        }
                    }
                }
                self.queue.add(key);
            }
            Event::Delete(service) => self.queue.add(ServiceKey::of(&service)),
            Event::Init => {}
            Event::InitDone => {
                self.listed.services = true;
                self.rebuild_pod_services();
                self.mark_all();
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let now = self.matching(&pod);
                let before = self.pod_services.remove(&pod_key(&pod));
                for key in before.into_iter().flatten().chain(now.iter().cloned()) {
                    self.queue.add(key);
                }
                if !now.is_empty() {
                    self.pod_services.insert(pod_key(&pod), now);
                }
            }
            Event::Delete(pod) => {
                let before = self.pod_services.remove(&pod_key(&pod));
                for key in before.into_iter().flatten().chain(self.matching(&pod)) {
                    self.queue.add(key);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.pods = true;
                self.rebuild_pod_services();
                self.mark_all();
            }
        }
    }

    fn on_slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Apply(slice) | Event::InitApply(slice) | Event::Delete(slice) => {
                if let Some(key) = ServiceKey::of_slice(&slice) {
                    self.queue.add(key);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.slices = true;
                self.mark_all();
            }
        }
    }

    /// Only a node's existence and zone matter to endpoints; status heartbeats do not.
    fn on_node(&mut self, event: Event<Node>) {
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let zone = node.labels().get(desired::ZONE_LABEL).cloned();
                let before = self.zones.insert(node.name_any(), zone.clone());
                if before != Some(zone) && self.listed.nodes {
                    self.mark_all();
                }
            }
            Event::Delete(node) => {
                self.zones.remove(&node.name_any());
                self.mark_all();
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.nodes = true;
                self.zones = self
                    .nodes
                    .state()
                    .iter()
                    .map(|n| (n.name_any(), n.labels().get(desired::ZONE_LABEL).cloned()))
                    .collect();
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        if let Some(expectation) = self.expected.get(&key) {
            let all_met = expectation
                .writes
                .iter()
                .all(|w| met(&self.slices, &key.namespace, w));
            if !all_met && now < expectation.since + EXPECTATION_TTL {
                // The slice event will bring the Service back; the delay is a safety net.
                self.queue.done(&key);
                self.queue.add_after(key, now + STALE_RETRY);
                return;
            }
            if !all_met {
                debug!(service = %key, "the slice watch never showed this controller's writes; trusting the store");
            }
            self.expected.remove(&key);
        }
        match self.plan(&key) {
            Ok(plan) if plan.is_empty() => {
                self.queue.done(&key);
                self.queue.failures.remove(&key);
            }
            Ok(plan) => {
                let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
                let handle = self.tasks.spawn(apply(api, key.clone(), plan));
                self.running.insert(handle.id(), key);
            }
            Err(err) => self.failed(key, err, now),
        }
    }

    /// The writes that converge `key`'s slices, from the stores.
    fn plan(&mut self, key: &ServiceKey) -> Result<Plan, Error> {
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| ServiceKey::of_slice(s).as_ref() == Some(key))
            .collect();
        let existing: Vec<&EndpointSlice> = existing.iter().map(Arc::as_ref).collect();
        let service = self
            .services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let Some(service) = service.filter(|s| selector(s).is_some()) else {
            self.last_skipped.remove(key);
            return Ok(plan::delete_all(&existing));
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(key.namespace.as_str()))
            .collect();
        let nodes = &self.nodes;
        let node = |name: &str| {
            nodes.get(&ObjectRef::new(name)).map(|n| NodeInfo {
                zone: n.labels().get(desired::ZONE_LABEL).cloned(),
            })
        };
        let wanted = desired(&service, pods.iter().map(Arc::as_ref), &node);
        self.report(key, &wanted.skipped);
        Ok(plan(&service, &wanted, &existing)?)
    }

    /// Logs what this reconcile left out that the previous one did not.
    fn report(&mut self, key: &ServiceKey, skipped: &[Skipped]) {
        let before = self.last_skipped.get(key);
        for skip in skipped {
            if before.is_some_and(|b| b.contains(skip)) {
                continue;
            }
            match skip {
                // Normal churn, and upstream's behaviour for pods without the named port.
                Skipped::NoNamedPort { .. } | Skipped::UnknownNode { .. } => {
                    debug!(service = %key, "{skip}; left out")
                }
                _ => warn!(service = %key, "{skip}; left out"),
            }
        }
        if skipped.is_empty() {
            self.last_skipped.remove(key);
        } else {
            self.last_skipped.insert(key.clone(), skipped.to_vec());
        }
    }

    fn failed(&mut self, key: ServiceKey, err: Error, now: Instant) {
        self.queue.done(&key);
        let delay = if err.backs_off() {
            let delay = self.queue.backoff(&key);
            warn!(service = %key, error = %chain(&err), retry_in = ?delay, "reconciling EndpointSlices failed");
            delay
        } else {
            debug!(service = %key, error = %chain(&err), "stale EndpointSlice; retrying");
            STALE_RETRY
        };
        self.queue.add_after(key, now + delay);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let outcome = match done {
            Ok((id, outcome)) => {
                self.running.remove(&id);
                outcome
            }
            Err(err) => {
                // A task that panicked: its Service is free again and retried with backoff.
                let Some(key) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(service = %key, error = %err, "EndpointSlice write task failed");
                self.queue.done(&key);
                let delay = self.queue.backoff(&key);
                self.queue.add_after(key, now + delay);
                return;
            }
        };
        let Outcome {
            key,
            writes,
            result,
        } = outcome;
        if !writes.is_empty() {
            self.expected
                .insert(key.clone(), Expectation { since: now, writes });
        }
        match result {
            Ok(()) => {
                self.queue.done(&key);
                self.queue.failures.remove(&key);
            }
            Err(err) => self.failed(key, err, now),
        }
    }
}

/// Makes the plan's writes in order (creates, updates, deletes), stopping at the first
/// failure: the next reconcile recomputes from what the watch then shows.
async fn apply(api: Api<EndpointSlice>, key: ServiceKey, plan: Plan) -> Outcome {
    let mut writes = Vec::new();
    let owner = format!("service {key}");
    let result = writes::write(&api, &key.namespace, &owner, plan, &mut writes)
        .await
        .map_err(Error::from);
    Outcome {
        key,
        writes,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_dedups_delays_and_never_hands_out_a_busy_service() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add(key("a"));
        q.add(key("a"));
        q.add_after(key("b"), now + Duration::from_secs(5));
        assert_eq!(q.pop(now), Some(key("a")));
        assert_eq!(q.pop(now), None, "b is not due, a is busy");
        q.add(key("a"));
        assert!(!q.has_ready(now), "a is dirty again but still busy");
        assert_eq!(q.next_wakeup(), Some(now + Duration::from_secs(5)));
        q.done(&key("a"));
        assert_eq!(q.pop(now), Some(key("a")));
        q.done(&key("a"));
        // An event overrides a pending delay.
        q.add(key("b"));
        assert_eq!(q.next_wakeup(), None);
        assert_eq!(q.pop(now), Some(key("b")));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut q = Queue::default();
        let delays: Vec<u64> = (0..12).map(|_| q.backoff(&key("a")).as_secs()).collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
    }

    #[test]
    fn errors_name_what_they_are_about_and_only_stale_skips_backoff() {
        let stale = Error::Write(WriteError::Stale {
            namespace: "ns".into(),
            name: "web-abc".into(),
        });
        assert_eq!(
            stale.to_string(),
            "EndpointSlice ns/web-abc changed since it was read"
        );
        assert!(!stale.backs_off());
        let ended = Error::WatchEnded { resource: "pod" };
        assert!(ended.backs_off());
    }
}
