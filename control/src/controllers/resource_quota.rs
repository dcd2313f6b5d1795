//! ResourceQuota controller: every ResourceQuota's status shows its limits (`spec.hard`) and
//! what its namespace uses of each, so that the API server's quota admission, which charges
//! each create against that status and refuses creates in a namespace whose quotas have
//! none, lets work through. Upstream: `pkg/controller/resourcequota`.
//!
//! Invariants: level-triggered — a quota is synced when it is new, its limits change, its
//! status disagrees with its limits, an object it measures changes in its namespace (this
//! returns what a deleted or finished object held: admission only ever adds), and every
//! sync period; each sync recomputes the usage from the stores ([`usage::measure`], pure)
//! and writes the status only when it changed, conditional on the resourceVersion read.
//! Only the types some quota limits are watched, from the first quota that names them; a
//! quota waits until each of its types has listed, and a `count/…` type that is not served
//! is not measured (as upstream, where no evaluator exists for it). Object counts are
//! watched as metadata only.
//!
//! ```text
//!  ResourceQuota watch ──────────────► queue of quotas ─► measure (stores) ─► status write
//!  watches started on demand:            ▲ namespace's quotas
//!   pods, services, claims (typed) ──────┤ that measure the type
//!   any counted type (metadata) ─────────┘
//!  discovery: the served version of a counted type of another group
//! ```

pub mod usage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, PostParams};
use kube::core::PartialObjectMeta;
use kube::discovery::{ApiResource, Scope, verbs};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::usage::{Objects, Source, source_of};
use super::chain;
use super::owner::ObjectKey;
use super::queue::{Backoff, Ending, Queue, Tasks};

/// Upstream's `--resource-quota-sync-period` default: how often every quota is recomputed
/// whether or not anything was seen to change.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(300);
/// Quotas synced at once (upstream's `--concurrent-resource-quota-syncs` is 5).
const WORKERS: usize = 4;
/// How soon a counted type that discovery could not find is looked for again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(30);
/// How soon a quota that changed under a write is looked at again.
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};
/// Watch signals in flight to the controller loop.
const CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A status write task panicked (a bug): the quota is retried with backoff.
    #[error("the status write task failed")]
    Task,
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the ResourceQuota watch ended")]
    WatchEnded,
    #[error("writing the status of ResourceQuota {quota}")]
    Status {
        quota: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// The quota changed or went since the store showed it (admission charges it on every
    /// create): its watch event brings it back.
    #[error("ResourceQuota {quota} changed since it was read")]
    Stale { quota: ObjectKey },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub sync_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_period: DEFAULT_SYNC_PERIOD,
        }
    }
}

/// Runs the controller until cancelled; a quota watch that ends stops it, logged here.
pub async fn run(client: Client, config: Config, cancel: CancellationToken) {
    info!("ResourceQuota controller starting");
    match run_until(client, config, cancel).await {
        Ok(()) => info!("ResourceQuota controller stopped"),
        Err(err) => error!(error = %chain(&err), "the ResourceQuota controller stopped"),
    }
}

/// The store of one watched type.
#[derive(Clone)]
enum Held {
    Pods(Store<Pod>),
    Services(Store<Service>),
    Claims(Store<PersistentVolumeClaim>),
    Metadata(Store<PartialObjectMeta<DynamicObject>>),
}

struct Watched {
    objects: Held,
    listed: bool,
}

/// What a type's watch reports to the loop.
#[derive(Debug)]
enum Signal {
    /// An object of the type changed in this namespace.
    Changed {
        source: Source,
        namespace: String,
    },
    /// The watch has listed (again): its store is whole.
    Listed(Source),
    Failed(Source, String),
}

/// Where a counted type of another group is served, as discovery answered; None when it is
/// not (or not as a namespaced type that can be listed and watched).
type Resolved = Option<ApiResource>;

struct Controller {
    client: Client,
    quotas: Store<ResourceQuota>,
    quotas_listed: bool,
    /// Each quota's `spec.hard` when last synced: a change of limits syncs it.
    limits: HashMap<ObjectKey, BTreeMap<String, Quantity>>,
    /// The quotas seen so far, to tell a new one from an update.
    known: HashSet<ObjectKey>,
    watched: HashMap<Source, Watched>,
    signals: mpsc::Sender<Signal>,
    watches: JoinSet<()>,
    resolved: HashMap<Source, (Resolved, Instant)>,
    discovering: HashSet<Source>,
    discoveries: JoinSet<(Source, Result<Resolved, kube::Error>)>,
    /// Quotas waiting for a type to list or to be discovered.
    waiting: HashSet<ObjectKey>,
    queue: Queue<ObjectKey>,
    tasks: Tasks<ObjectKey, Result<(), Error>>,
    stop: CancellationToken,
}

async fn run_until(client: Client, config: Config, cancel: CancellationToken) -> Result<(), Error> {
    let (quotas, writer) = reflector::store::<ResourceQuota>();
    let quota_events = watcher(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer);
    let mut quota_events = pin!(quota_events);
    let (signals, mut signals_rx) = mpsc::channel(CHANNEL);
    let mut resync = interval(config.sync_period);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    resync.tick().await;
    let mut c = Controller {
        client,
        quotas,
        quotas_listed: false,
        limits: HashMap::new(),
        known: HashSet::new(),
        watched: HashMap::new(),
        signals,
        watches: JoinSet::new(),
        resolved: HashMap::new(),
        discovering: HashSet::new(),
        discoveries: JoinSet::new(),
        waiting: HashSet::new(),
        queue: Queue::new(BACKOFF),
        tasks: Tasks::default(),
        stop: cancel.child_token(),
    };
    let result = loop {
        let now = Instant::now();
        let ready = c.quotas_listed && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if c.quotas_listed {
            c.queue.next_wakeup()
        } else {
            None
        };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = quota_events.next() => match event {
                Some(Ok(event)) => c.on_quota(event),
                Some(Err(err)) => warn!(error = %chain(&err), "ResourceQuota watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded),
            },
            Some(signal) = signals_rx.recv() => c.on_signal(signal),
            Some(found) = c.discoveries.join_next(), if !c.discoveries.is_empty() => match found {
                Ok((source, found)) => c.discovered(source, found),
                Err(err) => warn!(error = %err, "a discovery task failed"),
            },
            Some((key, done)) = c.tasks.next(), if !c.tasks.is_empty() => c.finish(key, done),
            Some(_) = c.watches.join_next(), if !c.watches.is_empty() => {}
            _ = resync.tick() => c.mark_all(),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    c.stop.cancel();
    c.tasks.drain("ResourceQuota status writes").await;
    result
}

impl Controller {
    fn mark_all(&mut self) {
        for quota in self.quotas.state() {
            self.queue.add(ObjectKey::of(quota.as_ref()));
        }
    }

    fn on_quota(&mut self, event: Event<ResourceQuota>) {
        match event {
            Event::Apply(quota) | Event::InitApply(quota) => {
                let key = ObjectKey::of(&quota);
                let hard = usage::hard(&quota);
                let limits_changed = self.limits.get(&key) != Some(&hard);
                // Upstream waits for its next full resync to undo a status written by hand;
                // a status that disagrees with the limits is put right at once.
                let status_off = !usage::same(&usage::status_hard(&quota), &hard);
                if limits_changed || status_off {
                    self.queue.add(key.clone());
                }
                if self.known.insert(key) {
                    self.quota_count_changed(&quota);
                }
            }
            Event::Delete(quota) => {
                let key = ObjectKey::of(&quota);
                self.limits.remove(&key);
                self.waiting.remove(&key);
                self.queue.remove(&key);
                self.known.remove(&key);
                self.quota_count_changed(&quota);
            }
            Event::Init => {}
            Event::InitDone => {
                self.quotas_listed = true;
                self.mark_all();
            }
        }
    }

    /// A quota came or went: the quotas of its namespace that count quotas (from this
    /// store, not a watch of their own) are out of date.
    fn quota_count_changed(&mut self, quota: &ResourceQuota) {
        if let Some(namespace) = quota.metadata.namespace.as_deref() {
            self.enqueue_namespace(&Source::quotas(), namespace);
        }
    }

    /// Queues the namespace's quotas that measure `source`.
    fn enqueue_namespace(&mut self, source: &Source, namespace: &str) {
        let keys: Vec<ObjectKey> = self
            .quotas
            .state()
            .iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(namespace))
            .filter(|q| {
                usage::hard(q)
                    .keys()
                    .any(|n| source_of(n).as_ref() == Some(source))
            })
            .map(|q| ObjectKey::of(q.as_ref()))
            .collect();
        for key in keys {
            self.queue.add(key);
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Changed { source, namespace } => self.enqueue_namespace(&source, &namespace),
            Signal::Listed(source) => {
                if let Some(w) = self.watched.get_mut(&source) {
                    w.listed = true;
                }
                self.wake_waiting();
            }
            Signal::Failed(source, why) => {
                warn!(?source, error = %why, "a watch of measured objects failed; retrying with backoff");
            }
        }
    }

    fn wake_waiting(&mut self) {
        for key in std::mem::take(&mut self.waiting) {
            self.queue.add(key);
        }
    }

    fn discovered(&mut self, source: Source, found: Result<Resolved, kube::Error>) {
        self.discovering.remove(&source);
        match found {
            Ok(resolved) => {
                if resolved.is_none() {
                    info!(
                        ?source,
                        "a counted type is not served: its usage is not measured"
                    );
                }
                self.resolved.insert(source, (resolved, Instant::now()));
            }
            Err(err) => {
                warn!(?source, error = %chain(&err), retry_in = ?DISCOVERY_RETRY, "discovering a counted type failed");
                self.resolved.insert(source, (None, Instant::now()));
            }
        }
        self.wake_waiting();
    }

    /// Makes sure `source` is watched; false while it cannot be measured yet (its watch
    /// has not listed, or discovery has not answered).
    fn ensure(&mut self, source: &Source, now: Instant) -> Readiness {
        if let Some(w) = self.watched.get(source) {
            return if w.listed {
                Readiness::Ready
            } else {
                Readiness::Waiting
            };
        }
        let objects = match source {
            Source::Pods => Held::Pods(self.watch_typed::<Pod>(source)),
            Source::Services => Held::Services(self.watch_typed::<Service>(source)),
            Source::Claims => Held::Claims(self.watch_typed::<PersistentVolumeClaim>(source)),
            quotas if *quotas == Source::quotas() => return Readiness::Ready,
            Source::Count { .. } => match self.resolved.get(source) {
                Some((Some(resource), _)) => {
                    Held::Metadata(self.watch_metadata(source, resource.clone()))
                }
                Some((None, at)) if now.duration_since(*at) < DISCOVERY_RETRY => {
                    return Readiness::NotServed;
                }
                _ => {
                    self.discover(source);
                    return Readiness::Waiting;
                }
            },
        };
        self.watched.insert(
            source.clone(),
            Watched {
                objects,
                listed: false,
            },
        );
        Readiness::Waiting
    }

    fn discover(&mut self, source: &Source) {
        let Source::Count { group, plural } = source else {
            return;
        };
        if !self.discovering.insert(source.clone()) {
            return;
        }
        let client = self.client.clone();
        let (group, plural, source) = (group.clone(), plural.clone(), source.clone());
        self.discoveries.spawn(async move {
            let found = match kube::discovery::group(&client, &group).await {
                Ok(served) => {
                    Ok(served
                        .recommended_resources()
                        .into_iter()
                        .find_map(|(r, caps)| {
                            let usable = r.plural == plural
                                && caps.scope == Scope::Namespaced
                                && [verbs::LIST, verbs::WATCH]
                                    .iter()
                                    .all(|v| caps.supports_operation(v));
                            usable.then_some(r)
                        }))
                }
                Err(kube::Error::Discovery(_)) => Ok(None),
                Err(err) => Err(err),
            };
            (source, found)
        });
    }

    fn watch_typed<K>(&mut self, source: &Source) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (store, writer) = reflector::store::<K>();
        let api = Api::<K>::all(self.client.clone());
        self.watches.spawn(forward(
            api,
            writer,
            source.clone(),
            self.signals.clone(),
            self.stop.clone(),
        ));
        store
    }

    fn watch_metadata(
        &mut self,
        source: &Source,
        resource: ApiResource,
    ) -> Store<PartialObjectMeta<DynamicObject>> {
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &resource);
        self.watches.spawn(forward(
            api,
            writer,
            source.clone(),
            self.signals.clone(),
            self.stop.clone(),
        ));
        store
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(quota) = self
            .quotas
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let hard = usage::hard(&quota);
        let sources: HashSet<Source> = hard.keys().filter_map(|n| source_of(n)).collect();
        let mut objects = Objects::default();
        let mut wait = false;
        for source in &sources {
            match self.ensure(source, now) {
                Readiness::Ready => self.collect(source, &key.namespace, &mut objects),
                Readiness::Waiting => wait = true,
                Readiness::NotServed => {}
            }
        }
        if wait {
            debug!(quota = %key, "waiting for the types it measures to list");
            self.waiting.insert(key.clone());
            self.queue.done(&key);
            return;
        }
        self.limits.insert(key.clone(), hard);
        let measured = usage::measure(&quota, &objects, Timestamp::now());
        let Some(status) = usage::status(&quota, &measured) else {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut updated = quota.as_ref().clone();
        updated.status = Some(status);
        self.tasks.spawn(key.clone(), async move {
            // The resourceVersion read makes the write conditional: usage computed from a
            // quota that admission charged since never lands.
            match api
                .replace_status(&key.name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                    Err(Error::Stale { quota: key.clone() })
                }
                Err(source) => Err(Error::Status { quota: key, source }),
            }
        });
    }

    /// Adds what the namespace holds of `source` (which has listed) to `objects`.
    fn collect(&self, source: &Source, namespace: &str, objects: &mut Objects) {
        let here = |ns: Option<&String>| ns.map(String::as_str) == Some(namespace);
        if *source == Source::quotas() {
            let n = self
                .quotas
                .state()
                .iter()
                .filter(|q| here(q.metadata.namespace.as_ref()))
                .count();
            objects.counts.insert(source.clone(), n);
            return;
        }
        let Some(watched) = self.watched.get(source) else {
            return;
        };
        match &watched.objects {
            Held::Pods(store) => {
                let pods = store.state().into_iter();
                objects.pods = pods
                    .filter(|p| here(p.metadata.namespace.as_ref()))
                    .collect();
            }
            Held::Services(store) => {
                let services = store.state().into_iter();
                objects.services = services
                    .filter(|s| here(s.metadata.namespace.as_ref()))
                    .collect();
            }
            Held::Claims(store) => {
                let claims = store.state().into_iter();
                objects.claims = claims
                    .filter(|c| here(c.metadata.namespace.as_ref()))
                    .collect();
            }
            Held::Metadata(store) => {
                let n = store
                    .state()
                    .iter()
                    .filter(|o| here(o.metadata.namespace.as_ref()))
                    .count();
                objects.counts.insert(source.clone(), n);
            }
        }
    }

    fn finish(&mut self, key: ObjectKey, done: Result<Result<(), Error>, tokio::task::JoinError>) {
        let now = Instant::now();
        let result = match done {
            Ok(result) => result,
            Err(err) => {
                warn!(quota = %key, error = %err, "a ResourceQuota status write failed to run");
                Err(Error::Task)
            }
        };
        let ending = match &result {
            Ok(()) => Ending::Done { recheck: None },
            Err(Error::Stale { .. }) => Ending::Stale { retry: STALE_RETRY },
            Err(_) => Ending::Failed,
        };
        if let Some(delay) = self.queue.settle(key.clone(), ending, now)
            && let Err(err) = &result
        {
            warn!(quota = %key, error = %chain(err), retry_in = ?delay, "writing a ResourceQuota status failed");
        }
    }
}

/// Whether a quota's type can be measured now.
enum Readiness {
    Ready,
    Waiting,
    /// Not served: measured as nothing (left out of the usage).
    NotServed,
}

/// Watches one type into its store and tells the loop what changed, until stopped.
async fn forward<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    source: Source,
    signals: mpsc::Sender<Signal>,
    stop: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut events = pin!(events);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let signal = match event {
            Some(Ok(Event::Apply(object) | Event::Delete(object))) => Signal::Changed {
                source: source.clone(),
                namespace: object.meta().namespace.clone().unwrap_or_default(),
            },
            Some(Ok(Event::InitDone)) => Signal::Listed(source.clone()),
            Some(Ok(Event::Init | Event::InitApply(_))) => continue,
            // kube-runtime's error already carries its cause in its text.
            Some(Err(err)) => Signal::Failed(source.clone(), err.to_string()),
            None => return,
        };
        if signals.send(signal).await.is_err() {
            return;
        }
    }
}
