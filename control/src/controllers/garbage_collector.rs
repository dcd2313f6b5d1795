//! Garbage collector: an object whose owners are all gone is deleted; one that keeps some
//! owner loses only its references to the gone ones; an owner deleted in the foreground
//! (`foregroundDeletion` finalizer) goes after its blocking dependents, and one deleted with
//! `orphan` goes after its dependents stop naming it — Kubernetes' cascading deletion
//! ("Garbage Collection", "Owners and Dependents"; upstream `pkg/controller/garbagecollector`).
//!
//! Invariants: every type discovery shows as listable, watchable and deletable (events
//! aside) is watched, metadata only, into one owner→dependents [`Graph`] keyed by UID, and
//! discovery is redone every 30 s so that CRDs come and go; a type whose watch fails is
//! logged once and collected without, the others go on; no work starts before every watch
//! has listed once, failed or had [`SYNC_TIMEOUT`]; the graph only says who to look at —
//! nothing is deleted or detached without a live read of the object and of each owner by
//! name, in the dependent's namespace or cluster-wide as the owner kind's scope says (an
//! owner reference has no namespace: cross-namespace ownership does not exist), and every
//! write is conditional on what was read; a UID is worked on by one task at a time, up to
//! [`WORKERS`], each with its own backoff. Decisions are pure ([`judge`], [`foreground`],
//! [`Graph::work`]) and table-tested.
//!
//! Not done: upstream's absent-owner cache (every lookup is a GET), the `/graph` debug
//! dump, metrics, and the legacy strategic-merge patches (JSON merge patches with a
//! resourceVersion serve every type, CRDs included).
//!
//! ```text
//!  discovery (30 s) ─► one metadata watch per type ─► graph (UID → node, owner → dependents)
//!                                                          │ UIDs whose work may have changed
//!                     ┌────────────────────────────────────┘
//!                     ▼
//!  queue (dedup, backoff) ─► Graph::work ─► task: live reads ─► judge / orphan / release
//!                                                ─► delete, detach, remove finalizer
//! ```

mod collect;
mod graph;
mod kinds;
mod verdict;

#[cfg(test)]
mod api_double;

pub use collect::{Ctx, Done, Error, OWNER_REF_INVALID_NAMESPACE, reconcile};
pub use graph::{Graph, Identity, Judge, Node, Work};
pub use kinds::{Kinds, group_of, monitored};
pub use verdict::{
    Blocker, Dependent, FOREGROUND, Foreground, ORPHAN, Owner, Verdict, foreground, judge,
    owner_state,
};

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::chain;
use super::namespace::{Discovered, discover};
use super::queue::{Backoff, Queue};

/// UIDs worked on at once (upstream's `--concurrent-gc-syncs` is 20; this runs on small
/// control planes).
pub const WORKERS: usize = 8;
/// Upstream's discovery resync period for the garbage collector.
pub const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);
/// How long a new watch may take to list before work goes on without it (upstream proceeds
/// after its initial sync timeout too).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's event source for this controller.
const REPORTER: &str = "garbage-collector-controller";
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};
/// How soon a UID whose object changed under a write is looked at again.
const STALE_RETRY: Duration = Duration::from_secs(1);
/// Watch events in flight from the watches to the graph: a busy graph slows the watches.
const CHANNEL: usize = 1024;

/// Where a type's watch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Listing for the first time: work waits for it, up to [`SYNC_TIMEOUT`].
    Listing {
        since: Instant,
    },
    /// Listing again after the watch broke: work goes on meanwhile.
    Relisting,
    Synced,
    /// It cannot list (forbidden, not served, timed out): logged once, work goes on without
    /// it, and its watcher keeps trying with backoff.
    Failing,
}

#[derive(Debug)]
struct Monitor {
    generation: u64,
    stop: CancellationToken,
    sync: Sync,
}

/// What a watch saw, sent to the loop that owns the graph.
#[derive(Debug)]
struct Observed {
    resource: Arc<ApiResource>,
    /// Tells a replaced watch's late events apart.
    generation: u64,
    change: Change,
}

#[derive(Debug)]
enum Change {
    /// The watch lists (again).
    Restarted,
    Apply(Node),
    Delete(String),
    /// The listing is complete: these UIDs exist.
    Listed(HashSet<String>),
    Failed(String),
    /// kube-runtime's watcher never ends; if it does, the type is dropped until the next
    /// discovery starts it again.
    Ended,
}

type Finished = (String, Result<Done, Error>);

struct Collector {
    ctx: Ctx,
    graph: Graph,
    monitors: HashMap<ApiResource, Monitor>,
    generation: u64,
    discovered: bool,
    observed: mpsc::Sender<Observed>,
    watches: JoinSet<()>,
    cancel: CancellationToken,
    queue: Queue<String>,
    tasks: JoinSet<Finished>,
    running: HashMap<tokio::task::Id, String>,
}

/// Runs the garbage collector until cancelled. Nothing stops it before: discovery and
/// watches that fail are retried.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("garbage collector starting");
    run_until(client, cancel).await;
    info!("garbage collector stopped");
}

async fn run_until(client: Client, cancel: CancellationToken) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.to_owned(),
            instance: None,
        },
    );
    let (observed, mut observed_rx) = mpsc::channel(CHANNEL);
    let (found, mut found_rx) = mpsc::channel(1);
    let mut discovery = JoinSet::new();
    discovery.spawn(rediscover(client.clone(), found, cancel.clone()));
    let mut c = Collector {
        ctx: Ctx {
            client,
            recorder,
            kinds: Arc::new(Kinds::default()),
        },
        graph: Graph::default(),
        monitors: HashMap::new(),
        generation: 0,
        discovered: false,
        observed,
        watches: JoinSet::new(),
        cancel: cancel.clone(),
        queue: Queue::new(BACKOFF),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let mut announced = false;
    loop {
        let now = Instant::now();
        c.time_out_listings(now);
        let synced = c.synced();
        if synced && !announced {
            announced = true;
            info!(
                types = c.monitors.len(),
                objects = c.graph.len(),
                "garbage collector has listed; collecting"
            );
        }
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = [
            synced.then(|| c.queue.next_wakeup()).flatten(),
            c.listing_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(found) = found_rx.recv() => c.rediscovered(found),
            Some(event) = observed_rx.recv() => c.observe(event),
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            Some(_) = c.watches.join_next(), if !c.watches.is_empty() => {}
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.dispatch(now),
        }
    }
    super::drain(&mut c.tasks, "garbage collections").await;
}

/// Discovers the API now and every [`DISCOVERY_PERIOD`]; a failed discovery is retried at
/// the next period.
async fn rediscover(client: Client, found: mpsc::Sender<Discovered>, cancel: CancellationToken) {
    let mut tick = interval(DISCOVERY_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let discovered = tokio::select! {
            _ = cancel.cancelled() => return,
            discovered = discover(&client) => discovered,
        };
        match discovered {
            Ok(discovered) => {
                if found.send(discovered).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                warn!(error = %chain(&err), retry_in = ?DISCOVERY_PERIOD, "discovering the API failed")
            }
        }
    }
}

/// Watches one type's metadata and sends what it sees until stopped.
async fn watch(
    client: Client,
    resource: Arc<ApiResource>,
    generation: u64,
    observed: mpsc::Sender<Observed>,
    stop: CancellationToken,
) {
    // An `Api` of `PartialObjectMeta` lists and watches metadata only.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &*resource);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = pin!(events);
    let mut listing: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let change = match event {
            Some(Ok(Event::Init)) => {
                listing = Some(HashSet::new());
                Change::Restarted
            }
            Some(Ok(Event::InitApply(object))) => {
                let Some(node) = Node::from_meta(resource.clone(), &object.metadata) else {
                    continue;
                };
                if let Some(seen) = listing.as_mut() {
                    seen.insert(node.identity.uid.clone());
                }
                Change::Apply(node)
            }
            Some(Ok(Event::InitDone)) => Change::Listed(listing.take().unwrap_or_default()),
            Some(Ok(Event::Apply(object))) => {
                match Node::from_meta(resource.clone(), &object.metadata) {
                    Some(node) => Change::Apply(node),
                    None => continue,
                }
            }
            Some(Ok(Event::Delete(object))) => match object.metadata.uid {
                Some(uid) => Change::Delete(uid),
                None => continue,
            },
            // kube-runtime's error already carries its cause in its text.
            Some(Err(err)) => Change::Failed(err.to_string()),
            None => Change::Ended,
        };
        let ended = matches!(change, Change::Ended);
        let sent = Observed {
            resource: resource.clone(),
            generation,
            change,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = observed.send(sent) => if result.is_err() { return },
        }
        if ended {
            return;
        }
    }
}

impl Collector {
    /// Work starts once discovery has run and no watch is still on its first listing.
    fn synced(&self) -> bool {
        self.discovered
            && !self
                .monitors
                .values()
                .any(|m| matches!(m.sync, Sync::Listing { .. }))
    }

    /// When the earliest first listing times out.
    fn listing_deadline(&self) -> Option<Instant> {
        self.monitors
            .values()
            .filter_map(|m| match m.sync {
                Sync::Listing { since } => Some(since + SYNC_TIMEOUT),
                _ => None,
            })
            .min()
    }

    fn time_out_listings(&mut self, now: Instant) {
        for (resource, m) in &mut self.monitors {
            if let Sync::Listing { since } = m.sync
                && now >= since + SYNC_TIMEOUT
            {
                warn!(resource = %type_name(resource), "not listed after {SYNC_TIMEOUT:?}; collecting without it until it is");
                m.sync = Sync::Failing;
            }
        }
    }

    /// Starts watches for new types and, after a complete discovery, stops those of types
    /// no longer served (after a partial one, types of group versions that did not answer
    /// keep their watches, as upstream keeps their monitors).
    fn rediscovered(&mut self, found: Discovered) {
        if found.resources.is_empty() {
            warn!("discovery found no resource types; keeping the watches as they are");
            return;
        }
        let partial = !found.failed.is_empty();
        if partial {
            debug!(failed = ?found.failed, "some group versions did not answer discovery");
        }
        let previous = partial.then(|| Arc::clone(&self.ctx.kinds));
        self.ctx.kinds = Arc::new(Kinds::new(&found.resources, previous.as_deref()));
        let wanted: HashSet<ApiResource> = monitored(&found.resources).into_iter().collect();
        let now = Instant::now();
        let mut started = Vec::new();
        for resource in &wanted {
            if !self.monitors.contains_key(resource) {
                self.start(resource.clone(), now);
                started.push(type_name(resource));
            }
        }
        let mut stopped = Vec::new();
        if !partial {
            let gone: Vec<ApiResource> = self
                .monitors
                .keys()
                .filter(|r| !wanted.contains(*r))
                .cloned()
                .collect();
            for resource in gone {
                self.stop(&resource);
                stopped.push(type_name(&resource));
            }
        }
        if !started.is_empty() || !stopped.is_empty() {
            started.sort();
            stopped.sort();
            info!(
                watched = self.monitors.len(),
                started = ?started,
                stopped = ?stopped,
                "garbage collector watches follow discovery"
            );
        }
        self.discovered = true;
    }

    fn start(&mut self, resource: ApiResource, now: Instant) {
        self.generation += 1;
        let stop = self.cancel.child_token();
        self.watches.spawn(watch(
            self.ctx.client.clone(),
            Arc::new(resource.clone()),
            self.generation,
            self.observed.clone(),
            stop.clone(),
        ));
        self.monitors.insert(
            resource,
            Monitor {
                generation: self.generation,
                stop,
                sync: Sync::Listing { since: now },
            },
        );
    }

    /// Stops a type's watch; its objects leave the graph, and their dependents are looked
    /// at (live reads tell whether the owners are really gone).
    fn stop(&mut self, resource: &ApiResource) {
        if let Some(m) = self.monitors.remove(resource) {
            m.stop.cancel();
        }
        for uid in self.graph.forget(resource) {
            self.queue.add(uid);
        }
    }

    fn observe(&mut self, observed: Observed) {
        let resource = &observed.resource;
        let Some(m) = self.monitors.get_mut(&**resource) else {
            return;
        };
        if m.generation != observed.generation {
            return;
        }
        let look = match observed.change {
            Change::Restarted => {
                if m.sync == Sync::Synced {
                    m.sync = Sync::Relisting;
                }
                Vec::new()
            }
            Change::Apply(node) => self.graph.apply(node),
            Change::Delete(uid) => {
                self.queue.remove(&uid);
                self.graph.remove(&uid)
            }
            Change::Listed(seen) => {
                if m.sync == Sync::Failing {
                    info!(resource = %type_name(resource), "watching again");
                }
                m.sync = Sync::Synced;
                self.graph.relisted(resource, &seen)
            }
            Change::Failed(err) => {
                match m.sync {
                    Sync::Listing { .. } | Sync::Relisting => {
                        warn!(resource = %type_name(resource), error = %err, "cannot watch; collecting without it until it can be");
                        m.sync = Sync::Failing;
                    }
                    // A watch that broke, retried by its watcher; or one still failing,
                    // logged already.
                    Sync::Synced | Sync::Failing => {
                        debug!(resource = %type_name(resource), error = %err, "watch failed; retrying")
                    }
                }
                Vec::new()
            }
            Change::Ended => {
                warn!(resource = %type_name(resource), "watch ended; restarted at the next discovery");
                let resource = ApiResource::clone(resource);
                self.stop(&resource);
                Vec::new()
            }
        };
        for uid in look {
            self.queue.add(uid);
        }
    }

    fn dispatch(&mut self, now: Instant) {
        let Some(uid) = self.queue.pop(now) else {
            return;
        };
        match self.graph.work(&uid) {
            None => {
                self.queue.done(&uid);
                self.queue.forget(&uid);
            }
            Some(Work::Nudge(dependents)) => {
                self.queue.done(&uid);
                self.queue.forget(&uid);
                for dependent in dependents {
                    self.queue.add(dependent);
                }
            }
            Some(work) => {
                let (ctx, key) = (self.ctx.clone(), uid.clone());
                let handle = self.tasks.spawn(async move {
                    let result = reconcile(&ctx, work).await;
                    (key, result)
                });
                self.running.insert(handle.id(), uid);
            }
        }
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let now = Instant::now();
        let (uid, result) = match done {
            Ok((id, finished)) => {
                self.running.remove(&id);
                finished
            }
            Err(err) => {
                // A task that panicked: its UID is free again and retried with backoff.
                let Some(uid) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(uid = %uid, error = %err, "garbage collection task failed");
                self.queue.done(&uid);
                let delay = self.queue.backoff(&uid);
                self.queue.add_after(uid, now + delay);
                return;
            }
        };
        self.queue.done(&uid);
        match result {
            Ok(Done::Settled) => self.queue.forget(&uid),
            Ok(Done::Unobserved) => {
                let delay = self.queue.backoff(&uid);
                debug!(uid = %uid, retry_in = ?delay, "an owner exists that no watch shows; looking again");
                self.queue.add_after(uid, now + delay);
            }
            Err(err) if !err.backs_off() => {
                debug!(uid = %uid, error = %chain(&err), "retrying");
                self.queue.add_after(uid, now + STALE_RETRY);
            }
            Err(err) => {
                let delay = self.queue.backoff(&uid);
                warn!(uid = %uid, error = %chain(&err), retry_in = ?delay, "garbage collection failed");
                self.queue.add_after(uid, now + delay);
            }
        }
    }
}

/// `replicasets.apps/v1`, `pods/v1`: a type as logs name it.
fn type_name(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        format!("{}/{}", resource.plural, resource.version)
    } else {
        format!(
            "{}.{}/{}",
            resource.plural, resource.group, resource.version
        )
    }
}

#[cfg(test)]
mod tests {
    use kube::core::gvk::GroupVersion;
    use kube::discovery::{ApiCapabilities, Scope};
    use serde_json::json;

    use super::api_double::ApiDouble;
    use super::*;

    fn resource(group: &str, kind: &str, plural: &str) -> (ApiResource, ApiCapabilities) {
        (
            ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: GroupVersion::gv(group, "v1").api_version(),
                kind: kind.into(),
                plural: plural.into(),
            },
            ApiCapabilities {
                scope: Scope::Namespaced,
                subresources: vec![],
                operations: ["get", "list", "watch", "delete", "patch"]
                    .iter()
                    .map(|o| (*o).to_owned())
                    .collect(),
            },
        )
    }

    fn pods() -> ApiResource {
        resource("", "Pod", "pods").0
    }

    fn replicasets() -> ApiResource {
        resource("apps", "ReplicaSet", "replicasets").0
    }

    /// A collector over the double that watches pods and ReplicaSets, both still listing;
    /// no watch runs: the test plays the watches' part.
    fn collector(double: &ApiDouble) -> Collector {
        let client = Client::new(double.clone(), "default");
        let served = vec![
            resource("", "Pod", "pods"),
            resource("apps", "ReplicaSet", "replicasets"),
        ];
        let (observed, _) = mpsc::channel(1);
        let mut c = Collector {
            ctx: Ctx {
                recorder: Recorder::new(
                    client.clone(),
                    Reporter {
                        controller: REPORTER.to_owned(),
                        instance: None,
                    },
                ),
                client,
                kinds: Arc::new(Kinds::new(&served, None)),
            },
            graph: Graph::default(),
            monitors: HashMap::new(),
            generation: 0,
            discovered: true,
            observed,
            watches: JoinSet::new(),
            cancel: CancellationToken::new(),
            queue: Queue::new(BACKOFF),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        };
        for (i, r) in [pods(), replicasets()].into_iter().enumerate() {
            c.monitors.insert(
                r,
                Monitor {
                    generation: i as u64 + 1,
                    stop: CancellationToken::new(),
                    sync: Sync::Listing {
                        since: Instant::now(),
                    },
                },
            );
        }
        c.generation = 2;
        c
    }

    fn sent(r: ApiResource, change: Change) -> Observed {
        let generation = if r == pods() { 1 } else { 2 };
        Observed {
            resource: Arc::new(r),
            generation,
            change,
        }
    }

    fn node(r: ApiResource, name: &str, owner: Option<&str>) -> Node {
        let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(json!({
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "ownerReferences": owner.map(|o| vec![json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o,
                    "uid": format!("uid-{o}"), "blockOwnerDeletion": true})]),
            }))
            .expect("metadata");
        Node::from_meta(Arc::new(r), &meta).expect("named, with a uid")
    }

    #[tokio::test(start_paused = true)]
    async fn work_waits_until_every_watch_has_listed_failed_or_timed_out() {
        let mut c = collector(&ApiDouble::default());
        assert!(!c.synced());
        c.observe(sent(pods(), Change::Listed(HashSet::new())));
        assert!(!c.synced(), "ReplicaSets still listing");
        let Sync::Listing { since } = c.monitors[&replicasets()].sync else {
            panic!("still listing");
        };
        assert_eq!(c.listing_deadline(), Some(since + SYNC_TIMEOUT));
        tokio::time::advance(SYNC_TIMEOUT).await;
        c.time_out_listings(Instant::now());
        assert!(c.synced());
        assert_eq!(c.monitors[&replicasets()].sync, Sync::Failing);

        // A forbidden type fails at once and holds nothing up either.
        let mut c = collector(&ApiDouble::default());
        c.observe(sent(pods(), Change::Listed(HashSet::new())));
        c.observe(sent(replicasets(), Change::Failed("403 forbidden".into())));
        assert!(c.synced());
        // It recovers when its watcher lists at last.
        c.observe(sent(replicasets(), Change::Listed(HashSet::new())));
        assert_eq!(c.monitors[&replicasets()].sync, Sync::Synced);
        // A relisting does not hold work up.
        c.observe(sent(replicasets(), Change::Restarted));
        assert!(c.synced());
    }

    #[tokio::test]
    async fn an_owner_deleted_while_watched_takes_its_dependents_with_it() {
        let double = ApiDouble::default();
        double.put(
            "/api/v1/namespaces/shop/pods/p1",
            json!({"name": "p1", "namespace": "shop", "uid": "uid-p1",
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                        "name": "rs1", "uid": "uid-rs1"}]}),
        );
        let mut c = collector(&double);
        c.observe(sent(pods(), Change::Apply(node(pods(), "p1", Some("rs1")))));
        c.observe(sent(
            replicasets(),
            Change::Apply(node(replicasets(), "rs1", None)),
        ));
        c.observe(sent(
            pods(),
            Change::Listed(HashSet::from(["uid-p1".into()])),
        ));
        c.observe(sent(
            replicasets(),
            Change::Listed(HashSet::from(["uid-rs1".into()])),
        ));
        assert!(c.synced());
        // The pod was queued while its owner was not seen yet; now the graph vouches for it.
        c.dispatch(Instant::now());
        assert!(c.tasks.is_empty() && c.queue.is_empty());

        c.observe(sent(replicasets(), Change::Delete("uid-rs1".into())));
        assert_eq!(c.queue.len(), 1);
        c.dispatch(Instant::now());
        let done = c.tasks.join_next_with_id().await.expect("a task");
        c.finish(done);
        assert!(c.queue.is_empty());
        assert_eq!(double.get("/api/v1/namespaces/shop/pods/p1"), None);
        assert_eq!(
            double.take_calls(),
            vec![
                "GET /api/v1/namespaces/shop/pods/p1",
                "GET /apis/apps/v1/namespaces/shop/replicasets/rs1",
                "DELETE /api/v1/namespaces/shop/pods/p1"
            ]
        );
    }

    #[tokio::test]
    async fn events_of_a_replaced_watch_are_ignored() {
        let mut c = collector(&ApiDouble::default());
        let mut stale = sent(pods(), Change::Apply(node(pods(), "p1", None)));
        stale.generation = 7;
        c.observe(stale);
        assert!(c.graph.is_empty());
    }

    #[tokio::test]
    async fn a_type_no_longer_served_is_dropped_only_after_a_complete_discovery() {
        let double = ApiDouble::default();
        let mut c = collector(&double);
        c.observe(sent(
            replicasets(),
            Change::Apply(node(replicasets(), "rs1", None)),
        ));
        let only_pods = Discovered {
            resources: vec![resource("", "Pod", "pods")],
            failed: vec!["apps/v1: 503".into()],
        };
        c.rediscovered(only_pods.clone());
        assert!(
            c.monitors.contains_key(&replicasets()),
            "apps did not answer"
        );
        assert!(c.ctx.kinds.resolve("apps/v1", "ReplicaSet").is_some());
        c.rediscovered(Discovered {
            failed: vec![],
            ..only_pods
        });
        assert!(!c.monitors.contains_key(&replicasets()));
        assert!(c.ctx.kinds.resolve("apps/v1", "ReplicaSet").is_none());
        assert!(c.graph.is_empty(), "its objects left the graph");
    }
}
