//! Disruption controller: every PodDisruptionBudget's status says how many of its pods are
//! expected, healthy and wanted healthy, and so how many disruptions it allows now — what
//! the API server's eviction subresource (and `kubectl drain`) checks before deleting a pod.
//! Upstream: `pkg/controller/disruption`.
//!
//! Invariants: level-triggered — a pod event queues the budgets of its namespace, and each
//! sync recomputes from the stores ([`status`], pure) plus a read of the scale of each
//! controller behind the pods when the budget is a percentage or maxUnavailable; a budget
//! whose counts cannot be known (a pod whose controller is gone or unknown) allows nothing,
//! with a `SyncFailed` condition saying why; a pod the eviction API admitted stays
//! "disrupted" (not healthy) until it is deleted or two minutes pass, and the budget is looked
//! at again then; status is written only when it changed, conditional on the resourceVersion
//! read.
//!
//! Not done: upstream's clearing of stale DisruptionTarget conditions on pods whose
//! eviction never completed.

pub mod status;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::status::{Counts, Scale};
use super::chain;
use super::owner::{ObjectKey, controller_of, selector, selects};
use super::queue::{Backoff, Ending, Queue, Tasks};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "controllermanager";
const WORKERS: usize = 2;
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sync task panicked (a bug): the key is retried with backoff.
    #[error("the sync task failed")]
    Task,
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("reading the scale of {kind} {name}")]
    Scale {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of PodDisruptionBudget {pdb}")]
    Status {
        pdb: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("PodDisruptionBudget {pdb} changed since it was read")]
    Stale { pdb: ObjectKey },
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("disruption controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("disruption controller stopped"),
        Err(err) => error!(error = %chain(&err), "the disruption controller stopped"),
    }
}

type Finished = Result<Option<Duration>, Error>;

struct Controller {
    client: Client,
    /// One recorder, so that repeats of an event (NoPods at every sync) fold into a series.
    recorder: Recorder,
    budgets: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    listed: (bool, bool),
    queue: Queue<ObjectKey>,
    tasks: Tasks<ObjectKey, Finished>,
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (budgets, pdb_writer) = reflector::store::<PodDisruptionBudget>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pdb_events = watcher(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(pdb_writer);
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer);
    let mut pdb_events = pin!(pdb_events);
    let mut pod_events = pin!(pod_events);
    let mut c = Controller {
        recorder: Recorder::new(client.clone(), Reporter::from(REPORTER)),
        client,
        budgets,
        pods,
        listed: (false, false),
        queue: Queue::new(BACKOFF),
        tasks: Tasks::default(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.0 && c.listed.1;
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = pdb_events.next() => match event {
                Some(Ok(event)) => c.on_budget(event),
                Some(Err(err)) => warn!(error = %chain(&err), "PodDisruptionBudget watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "PodDisruptionBudget" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            Some((key, done)) = c.tasks.next(), if !c.tasks.is_empty() => c.finish(key, done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    c.tasks.drain("PodDisruptionBudget syncs").await;
    result
}

impl Controller {
    fn mark_all(&mut self) {
        for pdb in self.budgets.state() {
            self.queue.add(ObjectKey::of(pdb.as_ref()));
        }
    }

    fn on_budget(&mut self, event: Event<PodDisruptionBudget>) {
        match event {
            Event::Apply(pdb) | Event::InitApply(pdb) => self.queue.add(ObjectKey::of(&pdb)),
            Event::Delete(pdb) => self.queue.remove(&ObjectKey::of(&pdb)),
            Event::Init => {}
            Event::InitDone => {
                self.listed.0 = true;
                self.mark_all();
            }
        }
    }

    /// A pod's change may move any budget of its namespace (its labels may have left one):
    /// budgets are few per namespace, so all of them are queued.
    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::Delete(pod) => {
                let namespace = pod.metadata.namespace.as_deref();
                let keys: Vec<ObjectKey> = self
                    .budgets
                    .state()
                    .iter()
                    .filter(|b| b.metadata.namespace.as_deref() == namespace)
                    .map(|b| ObjectKey::of(b.as_ref()))
                    .collect();
                for key in keys {
                    self.queue.add(key);
                }
            }
            Event::Init | Event::InitApply(_) => {}
            Event::InitDone => {
                self.listed.1 = true;
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(pdb) = self
            .budgets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        // policy/v1: a missing selector selects nothing, an empty one every pod.
        let chosen = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map(selector);
        let pods: Vec<Arc<Pod>> = match chosen {
            None | Some(Err(_)) => Vec::new(),
            Some(Ok(sel)) => self
                .pods
                .state()
                .into_iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                .filter(|p| selects(&sel, p.metadata.labels.as_ref()))
                .collect(),
        };
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        self.tasks.spawn(
            key,
            async move { sync(&client, &recorder, &pdb, &pods).await },
        );
    }

    fn finish(&mut self, key: ObjectKey, done: Result<Finished, tokio::task::JoinError>) {
        let now = Instant::now();
        let result = match done {
            Ok(result) => result,
            Err(err) => {
                warn!(pdb = %key, error = %err, "a PodDisruptionBudget sync task failed");
                Err(Error::Task)
            }
        };
        let ending = match &result {
            Ok(recheck) => Ending::Done { recheck: *recheck },
            Err(Error::Stale { .. }) => Ending::Stale { retry: STALE_RETRY },
            Err(_) => Ending::Failed,
        };
        if let Some(delay) = self.queue.settle(key.clone(), ending, now)
            && let Err(err) = &result
        {
            warn!(pdb = %key, error = %chain(err), retry_in = ?delay, "syncing PodDisruptionBudget failed");
        }
    }
}

async fn event(
    recorder: &Recorder,
    pdb: &PodDisruptionBudget,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let note = Note {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&note, &pdb.object_ref(&())).await {
        debug!(pdb = %ObjectKey::of(pdb), error = %chain(&err), "recording an event failed");
    }
}

/// One sync of one budget; when to look again (a disrupted pod's deadline).
async fn sync(
    client: &Client,
    recorder: &Recorder,
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
) -> Result<Option<Duration>, Error> {
    let key = ObjectKey::of(pdb);
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    if pods.is_empty() {
        event(
            recorder,
            pdb,
            EventType::Normal,
            "NoPods",
            "No matching pods found".into(),
        )
        .await;
    }
    let mut failure = None;
    let mut scales = HashMap::new();
    if status::needs_scale(pdb) {
        if !status::unmanaged(&pods).is_empty() {
            let note = "Pods selected by this PodDisruptionBudget were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.";
            event(
                recorder,
                pdb,
                EventType::Warning,
                "UnmanagedPods",
                note.into(),
            )
            .await;
        }
        for pod in &pods {
            let Some(owner) = controller_of(&pod.metadata) else {
                continue;
            };
            if scales.contains_key(&owner.uid) {
                continue;
            }
            match scale_of(client, &key.namespace, owner).await {
                Ok(Some(scale)) => {
                    scales.insert(owner.uid.clone(), scale);
                }
                Ok(None) => {}
                Err(err) => failure = Some(chain(&err)),
            }
        }
    }
    let counts: Option<Counts> = match status::counts(pdb, &pods, &scales) {
        Ok(counts) => Some(counts),
        Err(err) => {
            let note = format!("Failed to calculate the number of expected pods: {err}");
            event(
                recorder,
                pdb,
                EventType::Warning,
                "CalculateExpectedPodCountFailed",
                note,
            )
            .await;
            failure.get_or_insert(err.to_string());
            None
        }
    };
    let now = Timestamp::now();
    let (disrupted, recheck) = status::disrupted(pdb, &pods, now);
    let healthy = status::healthy(&pods, &disrupted);
    let new = status::status(pdb, counts, healthy, disrupted, failure.as_deref(), now);
    if pdb.status.as_ref() != Some(&new) {
        let mut updated = pdb.clone();
        updated.status = Some(new);
        let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &key.namespace);
        match api
            .replace_status(&key.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                return Err(Error::Stale { pdb: key });
            }
            Err(source) => return Err(Error::Status { pdb: key, source }),
        }
    }
    Ok(recheck.map(|at| {
        Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
            + Duration::from_secs(1)
    }))
}

/// What scales the pod controller `owner` names (upstream's finders): a ReplicaSet's
/// Deployment if it has one, else the ReplicaSet; a ReplicationController or StatefulSet;
/// anything else through its scale subresource. None when it is gone or not that object.
async fn scale_of(
    client: &Client,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<Option<Scale>, Error> {
    let failed = |source| Error::Scale {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        source,
    };
    let group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let same = |uid: Option<&String>| uid.map(String::as_str) == Some(owner.uid.as_str());
    let scale = |uid: Option<String>, replicas: Option<i32>| Scale {
        uid: uid.unwrap_or_default(),
        replicas: replicas.unwrap_or(1),
    };
    match (group, owner.kind.as_str()) {
        ("apps", "ReplicaSet") => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
            let Some(rs) = api.get_opt(&owner.name).await.map_err(failed)? else {
                return Ok(None);
            };
            if !same(rs.metadata.uid.as_ref()) {
                return Ok(None);
            }
            match controller_of(&rs.metadata).filter(|c| c.kind == "Deployment") {
                Some(parent) => {
                    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                    let found = api.get_opt(&parent.name).await.map_err(failed)?;
                    Ok(found
                        .filter(|d| d.metadata.uid.as_deref() == Some(parent.uid.as_str()))
                        .map(|d| scale(d.metadata.uid, d.spec.replicas)))
                }
                None => Ok(Some(scale(rs.metadata.uid, rs.spec.replicas))),
            }
        }
        ("", "ReplicationController") => {
            let api: Api<ReplicationController> = Api::namespaced(client.clone(), namespace);
            let found = api.get_opt(&owner.name).await.map_err(failed)?;
            Ok(found
                .filter(|rc| same(rc.metadata.uid.as_ref()))
                .map(|rc| scale(rc.metadata.uid, rc.spec.and_then(|s| s.replicas))))
        }
        ("apps", "StatefulSet") => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let found = api.get_opt(&owner.name).await.map_err(failed)?;
            Ok(found
                .filter(|s| same(s.metadata.uid.as_ref()))
                .map(|s| scale(s.metadata.uid, s.spec.replicas)))
        }
        _ => {
            let (group, version) = owner
                .api_version
                .rsplit_once('/')
                .unwrap_or(("", owner.api_version.as_str()));
            let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
            let (resource, _) = match kube::discovery::pinned_kind(client, &gvk).await {
                Ok(found) => found,
                Err(kube::Error::Discovery(_)) => return Ok(None),
                Err(source) => return Err(failed(source)),
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let Some(object) = api.get_opt(&owner.name).await.map_err(failed)? else {
                return Ok(None);
            };
            if !same(object.metadata.uid.as_ref()) {
                return Ok(None);
            }
            let found = api.get_scale(&owner.name).await.map_err(failed)?;
            Ok(Some(scale(
                object.metadata.uid,
                found.spec.and_then(|s| s.replicas),
            )))
        }
    }
}
