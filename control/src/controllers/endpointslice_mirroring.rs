//! EndpointSlice mirroring controller: a custom `Endpoints` object (one a user or another
//! controller writes) of a Service without a selector is mirrored into EndpointSlices, so
//! that proxies and DNS, which read only slices, see its endpoints, as kube-controller-manager's
//! `endpointslice-mirroring-controller` does.
//!
//! Invariants: level-triggered — an event only names the Endpoints object (by namespace and
//! name, the Service's too) it may affect, and each reconcile recomputes that object's slices
//! from the current stores ([`desired()`](desired::desired) then [`mirror()`], both pure) and
//! writes only the difference; nothing reconciles before the Endpoints, Service and mirrored
//! EndpointSlice watches have listed once; only slices labelled
//! `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io` are ever
//! read, written or deleted (the EndpointSlice controller's own are not); one object is
//! reconciled by one task at a time; after writing, it is not reconciled again until the slice
//! watch shows those writes (upstream's `EndpointSliceTracker`), or [`EXPECTATION_TTL`]
//! passed, so a stale store never creates duplicate slices; addresses left out (not an IP,
//! beyond the per-subset limit) are reported once per change as Warning events on the object,
//! as upstream reports them.
//!
//! Not done: metrics and upstream's batching of slice events
//! (`--mirroring-endpointslice-updates-batch-period`, 0 by default). Upstream:
//! `pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go`.
//!
//! ```text
//!  Endpoints watch ─┐                        ┌─ pure: mirror(endpoints, service, slices)
//!  Service watch ───┼─► queue of Endpoints ──┤
//!  Slice watch ─────┘   (dedup, backoff,     └─ task: events, create, update, delete
//!  (mirrored only)       one at a time each)                      └─► expectations
//! ```

pub mod desired;
pub mod plan;

pub use desired::{Desired, Skipped, selectorless, should_mirror};
pub use plan::{MANAGED_BY, Mirror, mirror};

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::desired::MAX_ENDPOINTS_PER_SUBSET;
use super::chain;
use super::endpointslice::writes::{self, Expectation, WriteError, Written, met};
use super::endpointslice::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME, Plan};
use super::owner::ObjectKey;
use super::queue::{Backoff, Queue};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "endpoint-slice-mirroring-controller";
/// Objects reconciled at once (upstream's `--mirroring-concurrent-service-endpoint-syncs` is 5).
const WORKERS: usize = 4;
/// How soon an object whose slices were written is looked at again if the slice watch has not
/// shown the writes yet (the watch event usually brings it back sooner).
const STALE_RETRY: Duration = Duration::from_secs(1);
/// How long to wait for the watch to show this controller's writes before trusting the store
/// anyway (a relist can skip a slice created and deleted meanwhile).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);
/// Upstream's `defaultSyncBackOff` and `maxSyncBackOff`.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(100),
};

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
    info!("EndpointSlice mirroring controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("EndpointSlice mirroring controller stopped"),
        Err(err) => error!(error = %chain(&err), "the EndpointSlice mirroring controller stopped"),
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (endpoints, endpoints_writer) = reflector::store::<Endpoints>();
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    // Every Endpoints object: which ones to mirror is decided by their labels and
    // annotations, which a label selector cannot fully express (a missing label counts).
    let endpoints_events = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(endpoints_writer);
    let service_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(services_writer);
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
    )
    .default_backoff()
    .reflect(slices_writer);
    let mut endpoints_events = pin!(endpoints_events);
    let mut service_events = pin!(service_events);
    let mut slice_events = pin!(slice_events);

    let mut c = Controller {
        client,
        endpoints,
        services,
        slices,
        listed: Listed::default(),
        slice_owners: HashMap::new(),
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
            event = endpoints_events.next() => match event {
                Some(Ok(event)) => c.on_endpoints(event),
                Some(Err(err)) => warn!(error = %chain(&err), "Endpoints watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Endpoints" }),
            },
            event = service_events.next() => match event {
                Some(Ok(event)) => c.on_service(event),
                Some(Err(err)) => warn!(error = %chain(&err), "service watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "service" }),
            },
            event = slice_events.next() => match event {
                Some(Ok(event)) => c.on_slice(event),
                Some(Err(err)) => warn!(error = %chain(&err), "EndpointSlice watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "EndpointSlice" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "mirrored EndpointSlice writes").await;
    result
}

/// Which watches have listed everything at least once.
#[derive(Debug, Default)]
struct Listed {
    endpoints: bool,
    services: bool,
    slices: bool,
}

impl Listed {
    fn all(&self) -> bool {
        self.endpoints && self.services && self.slices
    }
}

/// A Warning event to record on the Endpoints object before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Warning {
    reason: &'static str,
    note: String,
}

/// What one reconcile's task reports.
#[derive(Debug)]
struct Outcome {
    key: ObjectKey,
    writes: Vec<Written>,
    result: Result<(), Error>,
}

/// The Endpoints object (and Service) a mirrored slice belongs to, by its service-name label.
fn owner_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.labels().get(LABEL_SERVICE_NAME)?;
    Some(ObjectKey::new(
        slice.namespace().as_deref().unwrap_or_default(),
        name,
    ))
}

/// Upstream's events for what was left out: `InvalidIPAddress`, and `TooManyAddressesToMirror`
/// counting every address left out (the invalid ones too), in its words.
fn warnings(skipped: &[Skipped]) -> Vec<Warning> {
    let invalid = skipped
        .iter()
        .filter(|s| matches!(s, Skipped::InvalidIp { .. }))
        .count();
    let beyond: usize = skipped
        .iter()
        .map(|s| match s {
            Skipped::TooMany { count } => *count,
            Skipped::InvalidIp { .. } => 0,
        })
        .sum();
    let mut warnings = Vec::new();
    if invalid > 0 {
        warnings.push(Warning {
            reason: "InvalidIPAddress",
            note: format!(
                "Skipped {invalid} invalid IP addresses when mirroring to EndpointSlices"
            ),
        });
    }
    if beyond > 0 {
        warnings.push(Warning {
            reason: "TooManyAddressesToMirror",
            note: format!(
                "A max of {MAX_ENDPOINTS_PER_SUBSET} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
                invalid + beyond
            ),
        });
    }
    warnings
}

struct Controller {
    client: Client,
    endpoints: Store<Endpoints>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    listed: Listed,
    /// The object each mirrored slice was last seen to belong to: a slice whose service-name
    /// label changes must reach its previous object too.
    slice_owners: HashMap<ObjectKey, ObjectKey>,
    queue: Queue<ObjectKey>,
    expected: HashMap<ObjectKey, Expectation>,
    /// What was left out of each object's mirror, so that it is said once, not on every
    /// reconcile.
    last_skipped: HashMap<ObjectKey, Vec<Skipped>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ObjectKey>,
}

impl Controller {
    /// The mirrored slices of `key`, from the store (which holds only mirrored slices).
    fn slices_of(&self, key: &ObjectKey) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .state()
            .into_iter()
            .filter(|s| owner_of(s).as_ref() == Some(key))
            .collect()
    }

    fn has_slices(&self, key: &ObjectKey) -> bool {
        self.slice_owners.values().any(|k| k == key)
    }

    /// Every object this controller may have to write for: those to mirror, and those its
    /// slices name (an object deleted while a watch was down leaves its slices behind).
    fn mark_all(&mut self) {
        for endpoints in self.endpoints.state() {
            if should_mirror(&endpoints) {
                self.queue.add(ObjectKey::of(endpoints.as_ref()));
            }
        }
        for slice in self.slices.state() {
            if let Some(key) = owner_of(&slice) {
                self.queue.add(key);
            }
        }
    }

    /// Upstream looks only at objects to mirror; one that was mirrored and now is not (the
    /// skip-mirror label added) still has slices, which must go.
    fn on_endpoints(&mut self, event: Event<Endpoints>) {
        match event {
            Event::Apply(endpoints) | Event::Delete(endpoints) => {
                let key = ObjectKey::of(&endpoints);
                if should_mirror(&endpoints) || self.has_slices(&key) {
                    self.queue.add(key);
                }
            }
            // A (re)list: everything is looked at when it is done.
            Event::InitApply(_) | Event::Init => {}
            Event::InitDone => {
                self.listed.endpoints = true;
                self.mark_all();
            }
        }
    }

    /// A Service without a selector may be one to mirror for; one with a selector matters only
    /// if it had mirrored slices (it gained the selector).
    fn on_service(&mut self, event: Event<Service>) {
        match event {
            Event::Apply(service) | Event::Delete(service) => {
                let key = ObjectKey::of(&service);
                if selectorless(&service) || self.has_slices(&key) {
                    self.queue.add(key);
                }
            }
            Event::InitApply(_) | Event::Init => {}
            Event::InitDone => {
                self.listed.services = true;
                self.mark_all();
            }
        }
    }

    /// Any change to a mirrored slice (by someone else, or a deletion) is undone by
    /// reconciling its object; this controller's own writes reconcile to no change.
    fn on_slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Apply(slice) | Event::InitApply(slice) => {
                let id = ObjectKey::of(&slice);
                let now = owner_of(&slice);
                let before = match &now {
                    Some(owner) => self.slice_owners.insert(id, owner.clone()),
                    None => self.slice_owners.remove(&id),
                };
                for key in before.into_iter().chain(now) {
                    self.queue.add(key);
                }
            }
            Event::Delete(slice) => {
                let before = self.slice_owners.remove(&ObjectKey::of(&slice));
                for key in before.into_iter().chain(owner_of(&slice)) {
                    self.queue.add(key);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                // Slices deleted while the watch was down are gone from the store only.
                self.slice_owners = self
                    .slices
                    .state()
                    .iter()
                    .filter_map(|s| Some((ObjectKey::of(s.as_ref()), owner_of(s)?)))
                    .collect();
                self.listed.slices = true;
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
                // The slice event will bring the object back; the delay is a safety net.
                self.queue.done(&key);
                self.queue.add_after(key, now + STALE_RETRY);
                return;
            }
            if !all_met {
                debug!(endpoints = %key, "the slice watch never showed this controller's writes; trusting the store");
            }
            self.expected.remove(&key);
        }
        let (plan, warnings) = match self.plan(&key) {
            Ok(planned) => planned,
            Err(err) => {
                self.failed(key, err, now);
                return;
            }
        };
        if plan.is_empty() && warnings.is_empty() {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        }
        let uid = self
            .endpoints
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .and_then(|e| e.metadata.uid.clone());
        let handle = self
            .tasks
            .spawn(apply(self.client.clone(), key.clone(), uid, warnings, plan));
        self.running.insert(handle.id(), key);
    }

    /// The writes that converge `key`'s slices, from the stores, and the events to record.
    fn plan(&mut self, key: &ObjectKey) -> Result<(Plan, Vec<Warning>), Error> {
        let endpoints = self
            .endpoints
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let service = self
            .services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let existing = self.slices_of(key);
        let existing: Vec<&EndpointSlice> = existing.iter().map(Arc::as_ref).collect();
        let Mirror { plan, skipped } = mirror(endpoints.as_deref(), service.as_deref(), &existing)?;
        Ok((plan, self.report(key, skipped)))
    }

    /// Logs what this reconcile left out if the previous one did not leave out the same, and
    /// returns the events that says.
    fn report(&mut self, key: &ObjectKey, skipped: Vec<Skipped>) -> Vec<Warning> {
        if skipped.is_empty() {
            self.last_skipped.remove(key);
            return Vec::new();
        }
        if self.last_skipped.get(key) == Some(&skipped) {
            return Vec::new();
        }
        for skip in &skipped {
            warn!(endpoints = %key, "{skip}; not mirrored");
        }
        let warnings = warnings(&skipped);
        self.last_skipped.insert(key.clone(), skipped);
        warnings
    }

    fn failed(&mut self, key: ObjectKey, err: Error, now: Instant) {
        self.queue.done(&key);
        let delay = if err.backs_off() {
            let delay = self.queue.backoff(&key);
            warn!(endpoints = %key, error = %chain(&err), retry_in = ?delay, "mirroring Endpoints failed");
            delay
        } else {
            debug!(endpoints = %key, error = %chain(&err), "stale EndpointSlice; retrying");
            STALE_RETRY
        };
        self.queue.add_after(key, now + delay);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let Outcome {
            key,
            writes,
            result,
        } = match done {
            Ok((id, outcome)) => {
                self.running.remove(&id);
                outcome
            }
            Err(err) => {
                // A task that panicked: its object is free again and retried with backoff.
                let Some(key) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(endpoints = %key, error = %err, "mirrored EndpointSlice write task failed");
                self.queue.done(&key);
                let delay = self.queue.backoff(&key);
                self.queue.add_after(key, now + delay);
                return;
            }
        };
        if !writes.is_empty() {
            self.expected
                .insert(key.clone(), Expectation { since: now, writes });
        }
        match result {
            Ok(()) => {
                self.queue.done(&key);
                self.queue.forget(&key);
            }
            Err(err) => self.failed(key, err, now),
        }
    }
}

/// Records the warnings, then makes the plan's writes in order (creates, updates, deletes),
/// stopping at the first failure: the next reconcile recomputes from what the watch shows.
async fn apply(
    client: Client,
    key: ObjectKey,
    uid: Option<String>,
    warnings: Vec<Warning>,
    plan: Plan,
) -> Outcome {
    for warning in warnings {
        record(&client, &key, uid.clone(), warning).await;
    }
    let api: Api<EndpointSlice> = Api::namespaced(client, &key.namespace);
    let mut writes = Vec::new();
    let owner = format!("Endpoints {key}");
    let result = writes::write(&api, &key.namespace, &owner, plan, &mut writes)
        .await
        .map_err(Error::from);
    Outcome {
        key,
        writes,
        result,
    }
}

/// Records a warning on the Endpoints object `key`; a failure is logged, never retried. A
/// recorder per event: kube's folds events of one reason on one object into a series that
/// keeps the first note.
async fn record(client: &Client, key: &ObjectKey, uid: Option<String>, warning: Warning) {
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
        reason: warning.reason.into(),
        note: Some(warning.note),
        action: "Mirror".into(),
        secondary: None,
    };
    let recorder = Recorder::new(client.clone(), Reporter::from(REPORTER));
    if let Err(err) = recorder.publish(&event, &reference).await {
        debug!(endpoints = %key, error = %chain(&err), "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controllers::endpointslice::plan::Doomed;
    use crate::controllers::replicaset::api_double::{Double, failure};

    const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn key() -> ObjectKey {
        ObjectKey::new("shop", "web")
    }

    fn slice(name: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()).filter(|n: &String| !n.is_empty()),
                generate_name: Some("web-".into()),
                namespace: Some("shop".into()),
                resource_version: Some("7".into()).filter(|_| !name.is_empty()),
                ..kube::api::ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(Vec::new()),
            ports: None,
        }
    }

    /// Answers writes by echoing them with a name and the next generation.
    fn echo(method: &str, path: &str, body: &Value, _: usize) -> (u16, Value) {
        if method == "DELETE" {
            return (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        let mut reply = body.clone();
        if path.starts_with(SLICES) {
            if reply["metadata"]["name"].is_null() {
                reply["metadata"]["name"] = json!("web-abcde");
            }
            reply["metadata"]["generation"] = json!(2);
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    #[tokio::test]
    async fn writes_report_what_the_store_must_come_to_show_and_warnings_go_first() {
        let double = Double::new(echo);
        let plan = Plan {
            create: vec![slice("")],
            update: vec![slice("web-old")],
            delete: vec![Doomed {
                name: "web-gone".into(),
                uid: Some("uid-gone".into()),
            }],
        };
        let warnings = warnings(&[
            Skipped::InvalidIp { ip: "nope".into() },
            Skipped::TooMany { count: 5 },
        ]);
        let outcome = apply(
            Client::new(double.clone(), "shop"),
            key(),
            Some("uid-web".into()),
            warnings,
            plan,
        )
        .await;
        outcome.result.expect("written");
        assert_eq!(
            outcome.writes,
            vec![
                Written::Present {
                    name: "web-abcde".into(),
                    generation: 2
                },
                Written::Present {
                    name: "web-old".into(),
                    generation: 2
                },
                Written::Gone {
                    name: "web-gone".into()
                },
            ]
        );
        let put = double.sent("PUT", &format!("{SLICES}/web-old"));
        assert_eq!(put[0].2["metadata"]["resourceVersion"], json!("7"));
        let delete = double.sent("DELETE", &format!("{SLICES}/web-gone"));
        assert_eq!(delete[0].2["preconditions"]["uid"], json!("uid-gone"));
        let events = double.sent("POST", EVENTS);
        let notes: Vec<(&Value, &Value)> = events
            .iter()
            .map(|(_, _, e)| (&e["reason"], &e["note"]))
            .collect();
        assert_eq!(
            notes,
            vec![
                (
                    &json!("InvalidIPAddress"),
                    &json!("Skipped 1 invalid IP addresses when mirroring to EndpointSlices")
                ),
                (
                    &json!("TooManyAddressesToMirror"),
                    &json!(
                        "A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. 6 addresses were skipped"
                    )
                ),
            ]
        );
        assert_eq!(events[0].2["regarding"]["kind"], json!("Endpoints"));
        assert_eq!(events[0].2["regarding"]["uid"], json!("uid-web"));
        assert_eq!(events[0].2["reportingController"], json!(REPORTER));
    }

    #[tokio::test]
    async fn conflicts_are_stale_and_other_failures_back_off() {
        let conflicted = Double::new(|_, _, _, _| failure(409, "Conflict", "the object changed"));
        let plan = Plan {
            update: vec![slice("web-old")],
            ..Plan::default()
        };
        let outcome = apply(
            Client::new(conflicted, "shop"),
            key(),
            None,
            Vec::new(),
            plan,
        )
        .await;
        let err = outcome.result.expect_err("stale");
        assert!(matches!(&err, Error::Write(w) if w.is_stale()), "{err}");
        assert!(!err.backs_off());

        let refused = Double::new(|_, _, _, _| failure(500, "InternalError", "etcd is down"));
        let plan = Plan {
            create: vec![slice("")],
            ..Plan::default()
        };
        let outcome = apply(Client::new(refused, "shop"), key(), None, Vec::new(), plan).await;
        let err = outcome.result.expect_err("refused");
        assert!(err.backs_off());
        assert!(
            chain(&err).starts_with("creating an EndpointSlice for Endpoints shop/web: "),
            "{}",
            chain(&err)
        );
        assert!(outcome.writes.is_empty());
    }
}
