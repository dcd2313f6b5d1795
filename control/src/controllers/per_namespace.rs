//! Per-namespace objects: the loop shared by the controllers that keep one named object in
//! every active namespace (`root_ca`'s ConfigMap, `service_account`'s `default`).
//!
//! Invariants: level-triggered — an event of a namespace or of a kept object only names the
//! namespace, and its reconcile recomputes the one write it needs from the current stores
//! ([`plan`], pure); nothing reconciles before both watches have listed once; only objects
//! named [`Kept::NAME`] are watched or written; a namespace being deleted is left alone (the
//! API server refuses new content in it, and the namespace controller is emptying it).
//! Reconciles run one at a time, as upstream runs these controllers with one worker; a
//! failure backs off that namespace only.

use std::fmt::Debug;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::core::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::queue::{Backoff, Queue};
use super::{chain, namespace_terminating};

/// Upstream's default workqueue rate limiter starts at 5 ms; a write that failed is rarely
/// fixed that soon, so start at a second.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// What a controller keeps in every namespace.
pub trait Kept {
    type Object: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static;
    /// The object's name in every namespace.
    const NAME: &'static str;

    /// The write that makes the namespace's object (`existing`, from the store) what it
    /// should be; None when it already is.
    fn write(&self, existing: Option<&Self::Object>) -> Option<Write<Self::Object>>;
}

/// One write of a kept object.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<K> {
    Create(K),
    /// A replace carrying the resourceVersion the store showed: conditional on it.
    Update(K),
}

/// Whether the namespace takes new content: it exists and is not being deleted.
pub fn active(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_none()
        && namespace.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// The write one namespace needs: none for a namespace that is gone or being deleted.
pub fn plan<T: Kept>(
    kept: &T,
    namespace: Option<&Namespace>,
    existing: Option<&T::Object>,
) -> Option<Write<T::Object>> {
    namespace.filter(|ns| active(ns))?;
    kept.write(existing)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, reconciling
    /// from a frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: String },
    #[error("creating {kind} {namespace}/{name}")]
    Create {
        kind: String,
        namespace: String,
        name: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("updating {kind} {namespace}/{name}")]
    Update {
        kind: String,
        namespace: String,
        name: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Keeps `kept` in every active namespace until cancelled; `controller` names it in logs.
pub async fn run<T: Kept>(client: Client, kept: T, controller: &str, cancel: CancellationToken) {
    info!("{controller} controller starting");
    match run_until(client, kept, cancel).await {
        Ok(()) => info!("{controller} controller stopped"),
        Err(err) => error!(error = %chain(&err), "the {controller} controller stopped"),
    }
}

fn kind<T: Kept>() -> String {
    T::Object::kind(&()).into_owned()
}

async fn run_until<T: Kept>(
    client: Client,
    kept: T,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let (objects, objects_writer) = reflector::store::<T::Object>();
    let namespace_events = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(namespaces_writer);
    // Only the kept objects: every other object of the kind is none of this controller's
    // business, and holding them all would cost memory for nothing.
    let object_events = watcher(
        Api::<T::Object>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", T::NAME)),
    )
    .default_backoff()
    .reflect(objects_writer);
    let mut namespace_events = pin!(namespace_events);
    let mut object_events = pin!(object_events);

    let mut queue: Queue<String> = Queue::new(BACKOFF);
    let (mut namespaces_listed, mut objects_listed) = (false, false);
    loop {
        let now = Instant::now();
        let synced = namespaces_listed && objects_listed;
        let ready = synced && queue.has_ready(now);
        let wake = if synced { queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            event = namespace_events.next() => match event {
                Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                    if active(&ns) {
                        queue.add(ns.name_any());
                    }
                }
                Some(Ok(Event::Delete(ns))) => queue.remove(&ns.name_any()),
                Some(Ok(Event::Init)) => {}
                Some(Ok(Event::InitDone)) => {
                    namespaces_listed = true;
                    mark_all(&namespaces, &mut queue);
                }
                Some(Err(err)) => warn!(error = %chain(&err), "namespace watch failed; retrying with backoff"),
                None => return Err(Error::WatchEnded { resource: "namespace".into() }),
            },
            event = object_events.next() => match event {
                Some(Ok(Event::Apply(o) | Event::InitApply(o) | Event::Delete(o))) => {
                    if let Some(ns) = o.namespace() {
                        queue.add(ns);
                    }
                }
                Some(Ok(Event::Init)) => {}
                // After a relist, objects deleted while the watch was down have left no event.
                Some(Ok(Event::InitDone)) => {
                    objects_listed = true;
                    mark_all(&namespaces, &mut queue);
                }
                Some(Err(err)) => warn!(error = %chain(&err), "{} watch failed; retrying with backoff", kind::<T>()),
                None => return Err(Error::WatchEnded { resource: kind::<T>() }),
            },
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => {
                let Some(ns) = queue.pop(now) else { continue };
                let result = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    result = reconcile(&client, &kept, &namespaces, &objects, &ns) => result,
                };
                queue.done(&ns);
                match result {
                    Ok(()) => queue.forget(&ns),
                    Err(err) => {
                        let delay = queue.backoff(&ns);
                        warn!(namespace = %ns, error = %chain(&err), retry_in = ?delay, "reconcile failed");
                        queue.add_after(ns, Instant::now() + delay);
                    }
                }
            }
        }
    }
}

fn mark_all(namespaces: &Store<Namespace>, queue: &mut Queue<String>) {
    for ns in namespaces.state() {
        if active(&ns) {
            queue.add(ns.name_any());
        }
    }
}

async fn reconcile<T: Kept>(
    client: &Client,
    kept: &T,
    namespaces: &Store<Namespace>,
    objects: &Store<T::Object>,
    ns: &str,
) -> Result<(), Error> {
    let namespace = namespaces.get(&ObjectRef::new(ns));
    let existing = objects.get(&ObjectRef::new(T::NAME).within(ns));
    let Some(write) = plan(kept, namespace.as_deref(), existing.as_deref()) else {
        return Ok(());
    };
    let api: Api<T::Object> = Api::namespaced(client.clone(), ns);
    let (kind, name) = (kind::<T>(), T::NAME);
    match write {
        Write::Create(object) => match api.create(&PostParams::default(), &object).await {
            Ok(_) => info!(namespace = %ns, "{kind} {name} created"),
            // Upstream: racing another writer, or the store is behind; the watch brings it.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                debug!(namespace = %ns, "{kind} {name} already exists")
            }
            // The namespace went, or is going: its content goes with it.
            Err(err) if namespace_terminating(&err) || is_not_found(&err) => {
                debug!(namespace = %ns, "namespace is gone or being deleted; no {kind} {name}")
            }
            Err(source) => {
                return Err(Error::Create {
                    kind,
                    namespace: ns.to_owned(),
                    name,
                    source,
                });
            }
        },
        Write::Update(object) => match api.replace(name, &PostParams::default(), &object).await {
            Ok(_) => info!(namespace = %ns, "{kind} {name} restored"),
            // The store was behind: the watch event of the change brings the namespace back.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                debug!(namespace = %ns, "{kind} {name} changed since it was read")
            }
            Err(source) => {
                return Err(Error::Update {
                    kind,
                    namespace: ns.to_owned(),
                    name,
                    source,
                });
            }
        },
    }
    Ok(())
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_not_found())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use k8s_openapi::api::core::v1::{ConfigMap, NamespaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    /// Keeps the ConfigMap `marker` holding `{k: v}`.
    struct Marker;

    fn marker() -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("marker".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("k".into(), "v".into())])),
            ..ConfigMap::default()
        }
    }

    impl Kept for Marker {
        type Object = ConfigMap;
        const NAME: &'static str = "marker";

        fn write(&self, existing: Option<&ConfigMap>) -> Option<Write<ConfigMap>> {
            match existing {
                None => Some(Write::Create(marker())),
                Some(cm) if cm.data == marker().data => None,
                Some(_) => Some(Write::Update(marker())),
            }
        }
    }

    fn namespace(phase: &str, deleted: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                deletion_timestamp: deleted.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            status: Some(NamespaceStatus {
                phase: Some(phase.into()),
                ..NamespaceStatus::default()
            }),
            ..Namespace::default()
        }
    }

    #[test]
    fn only_active_namespaces_get_their_object() {
        let active_ns = namespace("Active", false);
        assert_eq!(
            plan(&Marker, Some(&active_ns), None),
            Some(Write::Create(marker()))
        );
        assert_eq!(plan(&Marker, Some(&active_ns), Some(&marker())), None);
        assert_eq!(plan(&Marker, None, None), None, "namespace gone");
        let deleted = namespace("Active", true);
        assert_eq!(
            plan(&Marker, Some(&deleted), None),
            None,
            "deletionTimestamp set"
        );
        let terminating = namespace("Terminating", false);
        assert_eq!(plan(&Marker, Some(&terminating), None), None);
        // A namespace the API server has not given a phase yet is new, hence active.
        assert!(active(&Namespace::default()));
    }

    /// A stand-in API server answering every request with one scripted reply, recording
    /// method and path.
    #[derive(Clone)]
    struct Scripted {
        reply: (u16, Value),
        sent: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl tower::Service<http::Request<Body>> for Scripted {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            self.sent.lock().expect("not poisoned").push((
                request.method().to_string(),
                request.uri().path().to_owned(),
            ));
            let (code, body) = self.reply.clone();
            Box::pin(async move {
                Ok(http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response"))
            })
        }
    }

    fn failure(code: u16, reason: &str, cause: Option<&str>) -> (u16, Value) {
        let causes: Vec<Value> = cause.into_iter().map(|c| json!({ "reason": c })).collect();
        (
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": reason, "message": reason, "code": code,
                   "details": { "causes": causes }}),
        )
    }

    /// Reconciles `shop` (active) holding `existing`, against an API server that answers
    /// `reply`; returns the result and the requests made.
    async fn reconcile_with(
        existing: Option<ConfigMap>,
        reply: (u16, Value),
    ) -> (Result<(), Error>, Vec<(String, String)>) {
        let (namespaces, mut ns_writer) = reflector::store::<Namespace>();
        ns_writer.apply_watcher_event(&Event::Apply(namespace("Active", false)));
        let (objects, mut objects_writer) = reflector::store::<ConfigMap>();
        if let Some(cm) = existing {
            objects_writer.apply_watcher_event(&Event::Apply(cm));
        }
        let double = Scripted {
            reply,
            sent: Arc::default(),
        };
        let client = Client::new(double.clone(), "default");
        let result = reconcile(&client, &Marker, &namespaces, &objects, "shop").await;
        let sent = double.sent.lock().expect("not poisoned").clone();
        (result, sent)
    }

    #[tokio::test]
    async fn writes_go_to_the_namespace_and_races_are_not_failures() {
        let created = (200, serde_json::to_value(marker()).expect("json"));
        let (result, sent) = reconcile_with(None, created.clone()).await;
        assert!(result.is_ok());
        assert_eq!(
            sent,
            vec![("POST".into(), "/api/v1/namespaces/shop/configmaps".into())]
        );
        let (result, sent) = reconcile_with(Some(marker()), created).await;
        assert!(result.is_ok());
        assert!(sent.is_empty(), "nothing to do");

        let exists = failure(409, "AlreadyExists", None);
        assert!(reconcile_with(None, exists).await.0.is_ok());
        let terminating = failure(403, "Forbidden", Some("NamespaceTerminating"));
        assert!(reconcile_with(None, terminating).await.0.is_ok());
        let mut changed = marker();
        changed.data = None;
        let (result, sent) = reconcile_with(Some(changed), failure(409, "Conflict", None)).await;
        assert!(result.is_ok(), "the watch brings the change back");
        assert_eq!(
            sent,
            vec![(
                "PUT".into(),
                "/api/v1/namespaces/shop/configmaps/marker".into()
            )]
        );
    }

    #[tokio::test]
    async fn other_refusals_are_errors_naming_the_object() {
        let (result, _) = reconcile_with(None, failure(500, "InternalError", None)).await;
        let err = result.expect_err("a server error");
        assert_eq!(err.to_string(), "creating ConfigMap shop/marker");
        let forbidden = failure(403, "Forbidden", None);
        assert!(reconcile_with(None, forbidden).await.0.is_err());
    }
}
