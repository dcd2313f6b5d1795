//! Endpoints controller: every Service with a selector has a core/v1 `Endpoints` object of
//! its name listing the pods it selects, as kube-controller-manager's legacy endpoints
//! controller keeps it (still read by `kubectl describe service`, many tools and conformance
//! tests; proxies read EndpointSlices).
//!
//! Invariants: level-triggered — an event only names the Services it may affect, and each
//! reconcile recomputes that Service's object from the current stores ([`desired()`] then
//! [`plan()`], both pure) and writes only when it differs; nothing reconciles before the
//! Service, Pod and Endpoints watches have listed once; one Service is reconciled by one task
//! at a time; after a write, a Service is not reconciled again until the Endpoints watch shows
//! it (upstream's `staleEndpointsTracker`), or [`EXPECTATION_TTL`] passed; the Endpoints of a
//! Service without a selector are never written, and an object is deleted only when its
//! Service is gone and it carries the managed-by label (upstream deletes any same-named one).
//!
//! Not done: the `endpoints.kubernetes.io/last-change-trigger-time` annotation (optional in the
//! API; one already there is kept) and metrics. Upstream:
//! `pkg/controller/endpoint/endpoints_controller.go`.
//!
//! ```text
//!  Service watch ───┐                      ┌─ pure: desired(service, pods)
//!  Pod watch ───────┼─► queue of Services ─┤        plan(want, observed)
//!  Endpoints watch ─┘   (dedup, backoff,   └─ task: create, update or delete
//!                        one at a time each)         └─► expectation
//! ```

pub mod desired;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Pod, Service};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::desired::desired;
use self::plan::{Plan, Want, managed, plan};
use super::endpointslice::{Skipped, selector};
use super::owner::ObjectKey;
use super::queue::{Backoff, Queue};
use super::replicaset::api_message;
use super::{chain, namespace_terminating};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "endpoint-controller";
/// Services reconciled at once (upstream's `--concurrent-endpoint-syncs` is 5).
const WORKERS: usize = 4;
/// How soon a Service whose object changed under a write, or whose write the watch has not
/// shown yet, is looked at again (the watch event usually brings it back sooner).
const STALE_RETRY: Duration = Duration::from_secs(1);
/// How long to wait for the watch to show this controller's write before trusting the store
/// anyway.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, reconciling
    /// from a frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("creating Endpoints {key}")]
    Create {
        key: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("updating Endpoints {key}")]
    Update {
        key: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Endpoints {key}")]
    Delete {
        key: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// The object changed, went or appeared since the store showed it: the watch brings the
    /// news, and the Service is reconciled again without backing off.
    #[error("Endpoints {key} changed since it was read")]
    Stale { key: ObjectKey },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. })
    }
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("Endpoints controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("Endpoints controller stopped"),
        Err(err) => error!(error = %chain(&err), "the Endpoints controller stopped"),
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (services, services_writer) = reflector::store::<Service>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (endpoints, endpoints_writer) = reflector::store::<Endpoints>();
    let service_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(services_writer);
    // Terminal pods are never listed: not holding them saves memory, and a pod that finishes
    // arrives as a deletion.
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
    )
    .default_backoff()
    .reflect(pods_writer);
    // Every Endpoints object, labelled or not: one of a selecting Service is taken over
    // whoever wrote it (as upstream), and must be updated, not created again.
    let endpoints_events = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(endpoints_writer);
    let mut service_events = pin!(service_events);
    let mut pod_events = pin!(pod_events);
    let mut endpoints_events = pin!(endpoints_events);

    let mut c = Controller {
        client,
        services,
        pods,
        endpoints,
        listed: Listed::default(),
        pod_labels: HashMap::new(),
        queue: Queue::new(BACKOFF),
        expected: HashMap::new(),
        last_skipped: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
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
            event = endpoints_events.next() => match event {
                Some(Ok(event)) => c.on_endpoints(event),
                Some(Err(err)) => warn!(error = %chain(&err), "Endpoints watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Endpoints" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "Endpoints writes").await;
    result
}

/// Which watches have listed everything at least once.
#[derive(Debug, Default)]
struct Listed {
    services: bool,
    pods: bool,
    endpoints: bool,
}

impl Listed {
    fn all(&self) -> bool {
        self.services && self.pods && self.endpoints
    }
}

/// A write of this controller, as the Endpoints store must come to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wrote {
    Created,
    /// Replaced the object at this resourceVersion (an update the API server found to be a
    /// no-op keeps it, and expects nothing).
    Replaced {
        old: Option<String>,
    },
    Deleted {
        uid: Option<String>,
    },
}

impl Wrote {
    /// Whether `observed` (the store's object of that name) is past the write.
    fn seen(&self, observed: Option<&Endpoints>) -> bool {
        match self {
            Wrote::Created => observed.is_some(),
            Wrote::Replaced { old } => observed.is_none_or(|e| e.metadata.resource_version != *old),
            Wrote::Deleted { uid } => observed.is_none_or(|e| e.metadata.uid != *uid),
        }
    }
}

#[derive(Debug)]
struct Expectation {
    since: Instant,
    wrote: Wrote,
}

/// What one reconcile's task reports: the write made, if any, and how it ended.
#[derive(Debug)]
struct Outcome {
    key: ObjectKey,
    result: Result<Option<Wrote>, Error>,
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    listed: Listed,
    /// Each pod's labels when last seen: a pod that changes its labels or goes must reach the
    /// Services its old labels matched.
    pod_labels: HashMap<ObjectKey, BTreeMap<String, String>>,
    queue: Queue<ObjectKey>,
    expected: HashMap<ObjectKey, Expectation>,
    /// What was left out of each Service's Endpoints, so that it is said once, not on every
    /// reconcile.
    last_skipped: HashMap<ObjectKey, Vec<Skipped>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ObjectKey>,
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

impl Controller {
    /// Every Service this controller may have to write for: those that select, and those its
    /// objects name (a Service deleted while a watch was down leaves its object behind).
    fn mark_all(&mut self) {
        for service in self.services.state() {
            if selector(&service).is_some() {
                self.queue.add(ObjectKey::of(service.as_ref()));
            }
        }
        for endpoints in self.endpoints.state() {
            if managed(&endpoints) {
                self.queue.add(ObjectKey::of(endpoints.as_ref()));
            }
        }
    }

    /// Queues the selecting Services of `namespace` that match any of the label sets.
    fn queue_matching(&mut self, namespace: &str, label_sets: &[&BTreeMap<String, String>]) {
        for service in self.services.state() {
            if service.namespace().as_deref() != Some(namespace) {
                continue;
            }
            let Some(selector) = selector(&service) else {
                continue;
            };
            let matches = |labels: &&BTreeMap<String, String>| {
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            if label_sets.iter().any(matches) {
                self.queue.add(ObjectKey::of(service.as_ref()));
            }
        }
    }

    fn on_service(&mut self, event: Event<Service>) {
        match event {
            Event::Apply(service) | Event::InitApply(service) | Event::Delete(service) => {
                self.queue.add(ObjectKey::of(&service));
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.services = true;
                self.mark_all();
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            // A (re)list: the Services are all looked at when it is done.
            Event::InitApply(pod) => {
                self.pod_labels.insert(ObjectKey::of(&pod), labels_of(&pod));
            }
            Event::Apply(pod) => {
                let key = ObjectKey::of(&pod);
                let now = labels_of(&pod);
                let before = self.pod_labels.insert(key.clone(), now.clone());
                let sets: Vec<&BTreeMap<String, String>> =
                    before.iter().chain(Some(&now)).collect();
                self.queue_matching(&key.namespace, &sets);
            }
            Event::Delete(pod) => {
                let key = ObjectKey::of(&pod);
                let last = labels_of(&pod);
                let before = self.pod_labels.remove(&key);
                let sets: Vec<&BTreeMap<String, String>> =
                    before.iter().chain(Some(&last)).collect();
                self.queue_matching(&key.namespace, &sets);
            }
            Event::Init => {}
            Event::InitDone => {
                // Pods deleted while the watch was down are gone from the store only.
                self.pod_labels = self
                    .pods
                    .state()
                    .iter()
                    .map(|p| (ObjectKey::of(p.as_ref()), labels_of(p)))
                    .collect();
                self.listed.pods = true;
                self.mark_all();
            }
        }
    }

    /// An object of a Service (or one this controller wrote) changed or went: upstream only
    /// recreates deleted ones, but a changed one is as wrong, and reconciling is cheap.
    fn on_endpoints(&mut self, event: Event<Endpoints>) {
        match event {
            Event::Apply(endpoints) | Event::InitApply(endpoints) | Event::Delete(endpoints) => {
                let key = ObjectKey::of(&endpoints);
                let service = ObjectRef::new(&key.name).within(&key.namespace);
                if managed(&endpoints) || self.services.get(&service).is_some() {
                    self.queue.add(key);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.endpoints = true;
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let observed = self
            .endpoints
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        if let Some(expectation) = self.expected.get(&key) {
            let seen = expectation.wrote.seen(observed.as_deref());
            if !seen && now < expectation.since + EXPECTATION_TTL {
                // The Endpoints event will bring the Service back; the delay is a safety net.
                self.queue.done(&key);
                self.queue.add_after(key, now + STALE_RETRY);
                return;
            }
            if !seen {
                debug!(service = %key, "the Endpoints watch never showed this controller's write; trusting the store");
            }
            self.expected.remove(&key);
        }
        match self.plan(&key, observed.as_deref()) {
            Plan::Keep => {
                self.queue.done(&key);
                self.queue.forget(&key);
            }
            plan => {
                let handle = self
                    .tasks
                    .spawn(write(self.client.clone(), key.clone(), plan));
                self.running.insert(handle.id(), key);
            }
        }
    }

    /// The write that converges `key`'s object, from the stores.
    fn plan(&mut self, key: &ObjectKey, observed: Option<&Endpoints>) -> Plan {
        let service = self
            .services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let Some(service) = service else {
            self.last_skipped.remove(key);
            return plan(key, Want::Gone, observed);
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(key.namespace.as_str()))
            .collect();
        let Some(wanted) = desired(&service, pods.iter().map(Arc::as_ref)) else {
            self.last_skipped.remove(key);
            return plan(key, Want::Unmanaged, observed);
        };
        self.report(key, &wanted.skipped);
        plan(key, Want::Endpoints(&wanted), observed)
    }

    /// Logs what this reconcile left out that the previous one did not. Quietly: the
    /// EndpointSlice controller, reading the same input, already warns about bad input.
    fn report(&mut self, key: &ObjectKey, skipped: &[Skipped]) {
        let before = self.last_skipped.get(key);
        for skip in skipped {
            if !before.is_some_and(|b| b.contains(skip)) {
                debug!(service = %key, "{skip}; left out of the Endpoints");
            }
        }
        if skipped.is_empty() {
            self.last_skipped.remove(key);
        } else {
            self.last_skipped.insert(key.clone(), skipped.to_vec());
        }
    }

    fn failed(&mut self, key: ObjectKey, err: Error, now: Instant) {
        self.queue.done(&key);
        let delay = if err.backs_off() {
            let delay = self.queue.backoff(&key);
            warn!(service = %key, error = %chain(&err), retry_in = ?delay, "reconciling Endpoints failed");
            delay
        } else {
            debug!(service = %key, error = %chain(&err), "stale Endpoints; retrying");
            STALE_RETRY
        };
        self.queue.add_after(key, now + delay);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let Outcome { key, result } = match done {
            Ok((id, outcome)) => {
                self.running.remove(&id);
                outcome
            }
            Err(err) => {
                // A task that panicked: its Service is free again and retried with backoff.
                let Some(key) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(service = %key, error = %err, "Endpoints write task failed");
                self.queue.done(&key);
                let delay = self.queue.backoff(&key);
                self.queue.add_after(key, now + delay);
                return;
            }
        };
        match result {
            Ok(wrote) => {
                if let Some(wrote) = wrote {
                    self.expected
                        .insert(key.clone(), Expectation { since: now, wrote });
                }
                self.queue.done(&key);
                self.queue.forget(&key);
            }
            Err(err) => self.failed(key, err, now),
        }
    }
}

fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict())
}

fn not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_not_found())
}

/// Makes the plan's write.
async fn write(client: Client, key: ObjectKey, plan: Plan) -> Outcome {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &key.namespace);
    let result = match plan {
        Plan::Keep => Ok(None),
        Plan::Create(endpoints) => create(&api, &client, &key, &endpoints).await,
        Plan::Update(endpoints) => update(&api, &client, &key, &endpoints).await,
        Plan::Delete { uid } => delete(&api, &key, uid).await,
    };
    Outcome { key, result }
}

async fn create(
    api: &Api<Endpoints>,
    client: &Client,
    key: &ObjectKey,
    endpoints: &Endpoints,
) -> Result<Option<Wrote>, Error> {
    match api.create(&PostParams::default(), endpoints).await {
        Ok(_) => {
            debug!(service = %key, "Endpoints created");
            Ok(Some(Wrote::Created))
        }
        // Its Endpoints would go with the namespace anyway.
        Err(err) if namespace_terminating(&err) => {
            debug!(service = %key, "namespace is being deleted; no Endpoints for it");
            Ok(None)
        }
        // Already there: the store is behind, and the watch brings the object.
        Err(err) if conflict(&err) => Err(Error::Stale { key: key.clone() }),
        Err(source) => {
            let note = format!(
                "Failed to create endpoint for service {key}: {}",
                api_message(&source)
            );
            record(client, key, None, "FailedToCreateEndpoint", "Create", note).await;
            Err(Error::Create {
                key: key.clone(),
                source,
            })
        }
    }
}

async fn update(
    api: &Api<Endpoints>,
    client: &Client,
    key: &ObjectKey,
    endpoints: &Endpoints,
) -> Result<Option<Wrote>, Error> {
    // The object carries the resourceVersion the store showed: the write is conditional.
    let old = endpoints.metadata.resource_version.clone();
    match api
        .replace(&key.name, &PostParams::default(), endpoints)
        .await
    {
        Ok(made) => {
            debug!(service = %key, "Endpoints updated");
            Ok((made.metadata.resource_version != old).then_some(Wrote::Replaced { old }))
        }
        Err(err) if conflict(&err) || not_found(&err) => Err(Error::Stale { key: key.clone() }),
        Err(source) => {
            let note = format!("Failed to update endpoint {key}: {}", api_message(&source));
            let uid = endpoints.metadata.uid.clone();
            record(client, key, uid, "FailedToUpdateEndpoint", "Update", note).await;
            Err(Error::Update {
                key: key.clone(),
                source,
            })
        }
    }
}

async fn delete(
    api: &Api<Endpoints>,
    key: &ObjectKey,
    uid: Option<String>,
) -> Result<Option<Wrote>, Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &params).await {
        Ok(_) => {
            debug!(service = %key, "Endpoints of a deleted service deleted");
            Ok(Some(Wrote::Deleted { uid }))
        }
        // Already gone, or replaced by another object of the name (whose event brings the
        // key back): either way not this one to delete.
        Err(err) if conflict(&err) || not_found(&err) => Ok(None),
        Err(source) => Err(Error::Delete {
            key: key.clone(),
            source,
        }),
    }
}

/// Records a warning on the Endpoints object `key`; a failure is logged, never retried. A
/// recorder per event: kube's folds events of one reason on one object into a series that
/// keeps the first note.
async fn record(
    client: &Client,
    key: &ObjectKey,
    uid: Option<String>,
    reason: &str,
    action: &str,
    note: String,
) {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Endpoints".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid,
        ..ObjectReference::default()
    };
    let event = Note {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    let recorder = Recorder::new(client.clone(), Reporter::from(REPORTER));
    if let Err(err) = recorder.publish(&event, &reference).await {
        debug!(service = %key, error = %chain(&err), "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controllers::replicaset::api_double::{Double, failure};

    const EPS: &str = "/api/v1/namespaces/shop/endpoints";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn key() -> ObjectKey {
        ObjectKey::new("shop", "web")
    }

    fn object(rv: &str) -> Endpoints {
        Endpoints {
            metadata: kube::api::ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-ep".into()),
                resource_version: Some(rv.into()),
                ..kube::api::ObjectMeta::default()
            },
            subsets: None,
        }
    }

    /// Answers writes by echoing them with the next resourceVersion.
    fn echo(method: &str, _: &str, body: &Value, _: usize) -> (u16, Value) {
        let mut reply = body.clone();
        if method == "DELETE" {
            reply = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        } else {
            reply["metadata"]["resourceVersion"] = json!("8");
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    async fn run_write(double: &Double, plan: Plan) -> Result<Option<Wrote>, Error> {
        write(Client::new(double.clone(), "shop"), key(), plan)
            .await
            .result
    }

    #[tokio::test]
    async fn writes_report_what_the_store_must_come_to_show() {
        let double = Double::new(echo);
        let created = run_write(&double, Plan::Create(object(""))).await;
        assert_eq!(created.expect("created"), Some(Wrote::Created));
        let updated = run_write(&double, Plan::Update(object("7"))).await;
        assert_eq!(
            updated.expect("updated"),
            Some(Wrote::Replaced {
                old: Some("7".into())
            })
        );
        let deleted = run_write(
            &double,
            Plan::Delete {
                uid: Some("uid-ep".into()),
            },
        )
        .await;
        assert_eq!(
            deleted.expect("deleted"),
            Some(Wrote::Deleted {
                uid: Some("uid-ep".into())
            })
        );
        assert_eq!(double.sent("POST", EPS).len(), 1);
        let put = double.sent("PUT", &format!("{EPS}/web"));
        assert_eq!(put[0].2["metadata"]["resourceVersion"], json!("7"));
        let delete = double.sent("DELETE", &format!("{EPS}/web"));
        assert_eq!(delete[0].2["preconditions"]["uid"], json!("uid-ep"));
        assert!(double.sent("POST", EVENTS).is_empty());
    }

    #[tokio::test]
    async fn an_update_the_server_found_to_change_nothing_expects_nothing() {
        let double = Double::new(|_, _, body, _| (200, body.clone()));
        let updated = run_write(&double, Plan::Update(object("7"))).await;
        assert_eq!(updated.expect("updated"), None);
    }

    #[tokio::test]
    async fn conflicts_are_stale_and_failures_are_recorded_as_upstream_does() {
        let conflicted = Double::new(|_, _, _, _| failure(409, "Conflict", "the object changed"));
        for plan in [Plan::Create(object("")), Plan::Update(object("7"))] {
            let err = run_write(&conflicted, plan).await.expect_err("stale");
            assert!(matches!(err, Error::Stale { .. }), "{err}");
            assert!(!err.backs_off());
        }
        let gone = run_write(&conflicted, Plan::Delete { uid: None }).await;
        assert_eq!(
            gone.expect("a delete that found another object is done"),
            None
        );
        assert!(conflicted.sent("POST", EVENTS).is_empty());

        let refused = Double::new(|method, path, body, _| {
            if path.starts_with(EVENTS) {
                (201, body.clone())
            } else if method == "POST" {
                failure(422, "Invalid", "bad port")
            } else {
                failure(500, "InternalError", "etcd is down")
            }
        });
        let err = run_write(&refused, Plan::Create(object("")))
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Create { .. }));
        assert!(
            chain(&err).starts_with("creating Endpoints shop/web: "),
            "{}",
            chain(&err)
        );
        assert!(err.backs_off());
        let err = run_write(&refused, Plan::Update(object("7")))
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Update { .. }));
        let events = refused.sent("POST", EVENTS);
        let reasons: Vec<&Value> = events.iter().map(|(_, _, e)| &e["reason"]).collect();
        assert_eq!(
            reasons,
            vec![
                &json!("FailedToCreateEndpoint"),
                &json!("FailedToUpdateEndpoint")
            ]
        );
        assert_eq!(
            events[0].2["note"],
            json!("Failed to create endpoint for service shop/web: bad port")
        );
        assert_eq!(events[1].2["regarding"]["kind"], json!("Endpoints"));
        assert_eq!(events[1].2["regarding"]["uid"], json!("uid-ep"));
        assert_eq!(events[0].2["reportingController"], json!(REPORTER));
    }

    #[tokio::test]
    async fn a_create_in_a_terminating_namespace_is_dropped() {
        let double = Double::new(|_, _, _, _| {
            (
                403,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "reason": "Forbidden", "message": "namespace shop is being terminated",
                       "code": 403, "details": {"causes": [{"reason": "NamespaceTerminating"}]}}),
            )
        });
        let created = run_write(&double, Plan::Create(object(""))).await;
        assert_eq!(created.expect("dropped"), None);
    }

    #[test]
    fn the_store_shows_a_write_once_past_it() {
        let created = Wrote::Created;
        assert!(!created.seen(None));
        assert!(created.seen(Some(&object("8"))));
        let replaced = Wrote::Replaced {
            old: Some("7".into()),
        };
        assert!(!replaced.seen(Some(&object("7"))));
        assert!(replaced.seen(Some(&object("8"))));
        assert!(replaced.seen(None));
        let deleted = Wrote::Deleted {
            uid: Some("uid-ep".into()),
        };
        assert!(!deleted.seen(Some(&object("8"))));
        assert!(deleted.seen(None));
        let mut other = object("9");
        other.metadata.uid = Some("uid-new".into());
        assert!(deleted.seen(Some(&other)));
    }
}
