//! Namespace lifecycle: a namespace being deleted is emptied of every namespaced object,
//! then released — `kubernetes` removed from its `spec.finalizers` through the `finalize`
//! subresource — so that the API server deletes it.
//!
//! Invariants: only namespaces with a deletionTimestamp are touched; the finalizer is removed
//! only after a pass in which every group version answered discovery, every type was emptied
//! without error and every listing afterwards came back empty; each pass rereads the
//! namespace and rediscovers the API (types come and go with CRDs and aggregated API
//! servers); a namespace is handled by one task at a time, up to [`WORKERS`] at once, each
//! with its own backoff, so a stuck namespace delays only itself. Pods go first and alone
//! (upstream's ordered deletion): the rest is deleted only once no pod is left, and pods are
//! deleted gracefully, their node stopping them while the namespace waits.
//!
//! Not done: a namespace's own `metadata.finalizers` (`orphan`, `foregroundDeletion`) are the
//! garbage collector's, which nodus does not have yet. Upstream: `pkg/controller/namespace/`
//! (`namespace_controller.go`, `deletion/namespaced_resources_deleter.go`).
//!
//! ```text
//!  Namespace watch ──► queue: 5 s settle, ──► task: get ─► discover ─► delete each type
//!  (deleting ones)     dedup, backoff          ─► list what is left ─► conditions
//!                                              ─► finalize, or look again later
//! ```

#[cfg(test)]
mod api_double;
mod conditions;
mod content;
mod discovery;

pub use conditions::{Report, update as updated_conditions};
pub use content::{FINALIZER_ESTIMATE, Left, Tally, Target, targets};
pub use discovery::{Discovered, Resources, Served, discover, preferred};

use std::collections::HashMap;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams,
    Preconditions,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::chain;
use super::queue::{Backoff, Queue};

/// The finalizer this controller owns in `spec.finalizers`; the API server puts it on every
/// namespace it creates.
pub const FINALIZER: &str = "kubernetes";
/// Namespaces emptied at once (upstream's `--concurrent-namespace-syncs` is 10; this runs on
/// small control planes).
pub const WORKERS: usize = 4;
/// Upstream's `namespaceDeletionGracePeriod`: a namespace is looked at 5 s after its event,
/// so that every API server has seen the deletion before content is listed; an object
/// created through one that had not would otherwise outlive the namespace.
const SETTLE: Duration = Duration::from_secs(5);
/// Upstream retries a namespace at least every minute.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};
/// How soon a namespace that changed under a write is looked at again.
const STALE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, the controller
    /// would no longer hear of deletions, so it stops.
    #[error("the namespace watch ended")]
    WatchEnded,
    #[error("reading namespace {namespace}")]
    Get {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("discovering the API to empty namespace {namespace}")]
    Discovery {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// Some group versions could not be discovered, or some types not emptied; the rest of
    /// the content was deleted.
    #[error("namespace {namespace} is not emptied yet: {}", failures.join("; "))]
    Content {
        namespace: String,
        failures: Vec<String>,
    },
    #[error("updating the conditions of namespace {namespace}")]
    Status {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the {FINALIZER} finalizer of namespace {namespace}")]
    Finalize {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the released namespace {namespace}")]
    Delete {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// The namespace changed since it was read: look again soon, without backing off.
    #[error("namespace {namespace} changed since it was read")]
    Stale { namespace: String },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. })
    }
}

/// The namespace as the `finalize` subresource should receive it: without [`FINALIZER`] in
/// `spec.finalizers`, everything else as read (its resourceVersion makes the write
/// conditional). None when the finalizer is not there: released already.
pub fn release(namespace: &Namespace) -> Option<Namespace> {
    let finalizers = namespace.spec.as_ref()?.finalizers.as_ref()?;
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return None;
    }
    let kept: Vec<String> = finalizers
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let mut released = namespace.clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.finalizers = Some(kept);
    }
    Some(released)
}

/// Whether nothing holds the namespace any more, so that a delete removes it for good.
fn unheld(namespace: &Namespace) -> bool {
    let spec = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_none_or(Vec::is_empty);
    spec && namespace.finalizers().is_empty()
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("namespace controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("namespace controller stopped"),
        Err(err) => error!(error = %chain(&err), "the namespace controller stopped"),
    }
}

type Pass = (String, Result<Left, Error>);

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    // No store: every pass reads its namespace afresh, and the events only say which.
    let events = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut events = pin!(events);
    let mut queue: Queue<String> = Queue::new(BACKOFF);
    let mut tasks: JoinSet<Pass> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    let result = loop {
        let now = Instant::now();
        let ready = tasks.len() < WORKERS && queue.has_ready(now);
        let wake = queue.next_wakeup();
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = events.next() => match event {
                Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                    if ns.metadata.deletion_timestamp.is_some() {
                        queue.add_after(ns.name_any(), now + SETTLE);
                    }
                }
                Some(Ok(Event::Delete(ns))) => queue.remove(&ns.name_any()),
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(err)) => warn!(error = %chain(&err), "namespace watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded),
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finish(&mut queue, &mut running, done);
            }
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => {
                if let Some(name) = queue.pop(now) {
                    let (client, key) = (client.clone(), name.clone());
                    let handle = tasks.spawn(async move {
                        let result = reconcile(&client, &key).await;
                        (key, result)
                    });
                    running.insert(handle.id(), name);
                }
            }
        }
    };
    super::drain(&mut tasks, "namespace deletions").await;
    result
}

fn finish(
    queue: &mut Queue<String>,
    running: &mut HashMap<tokio::task::Id, String>,
    done: Result<(tokio::task::Id, Pass), tokio::task::JoinError>,
) {
    let now = Instant::now();
    let (name, result) = match done {
        Ok((id, pass)) => {
            running.remove(&id);
            pass
        }
        Err(err) => {
            // A pass that panicked: its namespace is free again and retried with backoff.
            let Some(name) = running.remove(&err.id()) else {
                return;
            };
            warn!(namespace = %name, error = %err, "namespace deletion task failed");
            queue.done(&name);
            let delay = queue.backoff(&name);
            queue.add_after(name, now + delay);
            return;
        }
    };
    queue.done(&name);
    match result {
        Ok(Left::Nothing) => queue.forget(&name),
        Ok(Left::Wait(delay)) => {
            queue.forget(&name);
            debug!(namespace = %name, retry_in = ?delay, "content is still going; looking again");
            queue.add_after(name, now + delay);
        }
        Ok(Left::Unexplained) => {
            let delay = queue.backoff(&name);
            info!(namespace = %name, retry_in = ?delay, "namespace content remains after deletion; looking again");
            queue.add_after(name, now + delay);
        }
        Err(err) if !err.backs_off() => {
            debug!(namespace = %name, error = %chain(&err), "retrying");
            queue.add_after(name, now + STALE_RETRY);
        }
        Err(err) => {
            let delay = queue.backoff(&name);
            warn!(namespace = %name, error = %chain(&err), retry_in = ?delay, "deleting namespace failed");
            queue.add_after(name, now + delay);
        }
    }
}

/// One pass over a namespace: empty it, record what happened in its conditions, release it
/// when nothing is left. `Left::Nothing` also when there is nothing (more) to do.
async fn reconcile(client: &Client, name: &str) -> Result<Left, Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = api.get_opt(name).await.map_err(|source| Error::Get {
        namespace: name.to_owned(),
        source,
    })?;
    let Some(namespace) = namespace else {
        return Ok(Left::Nothing);
    };
    if namespace.metadata.deletion_timestamp.is_none() {
        return Ok(Left::Nothing);
    }
    if release(&namespace).is_none() {
        // Released already (before a restart, or by hand): only the delete may be missing.
        delete(&api, &namespace).await?;
        return Ok(Left::Nothing);
    }

    let discovered = discover(client).await.map_err(|source| Error::Discovery {
        namespace: name.to_owned(),
        source,
    })?;
    let mut tally = Tally::default();
    let mut content_failures = Vec::new();
    // Pods first, and nothing else while any is left (upstream's ordered namespace
    // deletion): a pod never outlives the ConfigMaps, Secrets and accounts it uses.
    let (pods, others): (Vec<Target>, Vec<Target>) = targets(&discovered.resources)
        .into_iter()
        .partition(Target::is_pods);
    for target in &pods {
        if let Err(err) = empty(client, name, target, &mut tally).await {
            content_failures.push(format!("{target}: {}", chain(&err)));
        }
    }
    if tally.is_empty() && content_failures.is_empty() {
        for target in &others {
            if let Err(err) = empty(client, name, target, &mut tally).await {
                content_failures.push(format!("{target}: {}", chain(&err)));
            }
        }
    }
    let left = tally.left(Timestamp::now());
    let report = Report {
        discovery_failures: discovered.failed,
        content_failures,
        remaining: tally.remaining,
        finalizers: tally.finalizers,
    };
    let namespace = record(&api, namespace, &report).await?;
    if !report.discovery_failures.is_empty() || !report.content_failures.is_empty() {
        let discovery = report
            .discovery_failures
            .iter()
            .map(|f| format!("discovering {f}"));
        let content = report
            .content_failures
            .iter()
            .map(|f| format!("deleting {f}"));
        return Err(Error::Content {
            namespace: name.to_owned(),
            failures: discovery.chain(content).collect(),
        });
    }
    if left != Left::Nothing {
        debug!(namespace = %name, remaining = ?report.remaining, "namespace content is going");
        return Ok(left);
    }
    finalize(&api, &namespace).await?;
    Ok(Left::Nothing)
}

/// Deletes every object of `target` in `namespace`, then counts what is left into `tally`.
async fn empty(
    client: &Client,
    namespace: &str,
    target: &Target,
    tally: &mut Tally,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &target.resource);
    // Background, as upstream: the objects go now, their dependents after them.
    let params = DeleteParams::background();
    let collected = target.collection
        && match api.delete_collection(&params, &ListParams::default()).await {
            Ok(_) => true,
            // Advertised but refused (upstream keeps a cache of these): one by one instead.
            Err(kube::Error::Api(s)) if s.code == 405 => false,
            // The type went since discovery: nothing of it can be left.
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
            Err(err) => return Err(err),
        };
    if !collected {
        for object in listed(&api).await? {
            // One already being deleted needs no second request.
            if object.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = object.name.as_deref() else {
                continue;
            };
            match api.delete(name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
    }
    tally.add(target, &listed(&api).await?);
    Ok(())
}

/// The metadata of the objects `api` lists; none when the type has gone.
async fn listed(api: &Api<DynamicObject>) -> Result<Vec<ObjectMeta>, kube::Error> {
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Ok(list.items.into_iter().map(|o| o.metadata).collect()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

/// Writes the conditions `report` calls for; returns the namespace as it now is.
async fn record(
    api: &Api<Namespace>,
    namespace: Namespace,
    report: &Report,
) -> Result<Namespace, Error> {
    let existing = namespace
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let Some(conditions) = updated_conditions(&existing, report, Timestamp::now()) else {
        return Ok(namespace);
    };
    let name = namespace.name_any();
    // A merge patch replaces the whole list: this controller computed all of it.
    let patch = json!({ "status": { "conditions": conditions } });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(updated) => Ok(updated),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(namespace),
        Err(source) => Err(Error::Status {
            namespace: name,
            source,
        }),
    }
}

/// Removes [`FINALIZER`] through the `finalize` subresource; the API server then deletes the
/// namespace if nothing else holds it (and a delete makes sure, as upstream's does).
async fn finalize(api: &Api<Namespace>, namespace: &Namespace) -> Result<(), Error> {
    let name = namespace.name_any();
    let Some(released) = release(namespace) else {
        return Ok(());
    };
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &released)
        .await
    {
        Ok(after) => {
            info!(namespace = %name, "namespace emptied; its {FINALIZER} finalizer removed");
            delete(api, &after).await
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => Err(Error::Stale { namespace: name }),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(source) => Err(Error::Finalize {
            namespace: name,
            source,
        }),
    }
}

/// Deletes a released namespace that nothing holds any more (the uid precondition spares a
/// namespace of the same name created since). One still held by `metadata.finalizers` is
/// left to whoever owns them: deleting it again would only touch it.
async fn delete(api: &Api<Namespace>, namespace: &Namespace) -> Result<(), Error> {
    let name = namespace.name_any();
    if !unheld(namespace) {
        debug!(namespace = %name, finalizers = ?namespace.finalizers(), "namespace released but still held by its finalizers");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: namespace.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(source) => Err(Error::Delete {
            namespace: name,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use serde_json::Value;

    use super::api_double::{ApiDouble, CONFIG_MAPS, DEPLOYMENTS, NS, PODS, Sent};
    use super::*;

    fn requests<'a>(sent: &'a [Sent], method: &str) -> Vec<&'a str> {
        sent.iter()
            .filter(|(m, _, _)| m == method)
            .map(|(_, path, _)| path.as_str())
            .collect()
    }

    /// The condition of `kind` on the double's namespace: (status, message).
    fn condition(double: &ApiDouble, kind: &str) -> (String, String) {
        double.with(|s| {
            let conditions = s
                .namespace
                .as_ref()
                .map(|ns| ns["status"]["conditions"].clone())
                .unwrap_or(Value::Null);
            let found = conditions
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == kind)
                .cloned()
                .unwrap_or(Value::Null);
            (
                found["status"].as_str().unwrap_or_default().to_owned(),
                found["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
    }

    #[tokio::test]
    async fn a_pass_empties_the_namespace_waits_for_its_pods_then_releases_it() {
        let double = ApiDouble::new(false);
        let client = Client::new(double.clone(), "default");

        let left = reconcile(&client, NS).await.expect("first pass");
        // The pod's grace period ends in about 30 s: look again in about half that.
        assert!(
            matches!(left, Left::Wait(d) if d > Duration::from_secs(10) && d <= Duration::from_secs(16)),
            "{left:?}"
        );
        let sent = double.take_sent();
        assert_eq!(requests(&sent, "DELETE"), vec![PODS], "pods first, alone");
        assert!(
            sent.iter()
                .filter(|(m, _, _)| m == "DELETE")
                .all(|(_, _, body)| body["propagationPolicy"] == "Background")
        );
        assert_eq!(
            requests(&sent, "PUT"),
            Vec::<&str>::new(),
            "not released yet"
        );
        assert_eq!(
            condition(&double, conditions::CONTENT_REMAINING),
            (
                "True".to_owned(),
                "Some resources are remaining: pods. has 1 resource instances".to_owned()
            )
        );
        assert!(
            double.with(|s| s.objects.values().filter(|o| !o.is_empty()).count() == 3),
            "the rest waits for the pod"
        );

        // The node stops the pod and deletes it for good: the rest goes.
        double.with(|s| s.objects.insert(PODS, Vec::new()));
        let left = reconcile(&client, NS).await.expect("second pass");
        assert_eq!(left, Left::Nothing);
        let sent = double.take_sent();
        assert_eq!(
            requests(&sent, "DELETE"),
            vec![PODS, CONFIG_MAPS, DEPLOYMENTS, "/api/v1/namespaces/shop"],
            "then the namespace itself"
        );
        let finalize = sent
            .iter()
            .find(|(m, p, _)| m == "PUT" && p == "/api/v1/namespaces/shop/finalize")
            .expect("finalize sent");
        assert_eq!(finalize.2["spec"]["finalizers"], serde_json::json!([]));
        assert!(
            double.with(|s| s.namespace.is_none()),
            "the namespace is gone"
        );

        assert_eq!(reconcile(&client, NS).await.expect("gone"), Left::Nothing);
        assert_eq!(
            requests(&double.take_sent(), "GET"),
            vec!["/api/v1/namespaces/shop"]
        );
    }

    #[tokio::test]
    async fn a_group_that_does_not_answer_holds_the_namespace_but_not_its_content() {
        let double = ApiDouble::new(true);
        double.with(|s| s.objects.insert(PODS, Vec::new()));
        let client = Client::new(double.clone(), "default");
        let err = reconcile(&client, NS)
            .await
            .expect_err("discovery incomplete");
        assert!(err.backs_off());
        assert!(
            err.to_string().starts_with(
                "namespace shop is not emptied yet: discovering metrics.k8s.io/v1beta1: "
            ),
            "{err}"
        );
        assert!(double.with(|s| s.objects.values().all(Vec::is_empty)));
        assert_eq!(requests(&double.take_sent(), "PUT"), Vec::<&str>::new());
        assert_eq!(condition(&double, conditions::DISCOVERY_FAILURE).0, "True");
        assert_eq!(condition(&double, conditions::CONTENT_REMAINING).0, "False");
    }

    #[tokio::test]
    async fn a_namespace_not_being_deleted_is_left_alone() {
        let double = ApiDouble::new(false);
        double.with(|s| {
            if let Some(ns) = s.namespace.as_mut() {
                ns["metadata"]["deletionTimestamp"] = Value::Null;
            }
        });
        let client = Client::new(double.clone(), "default");
        assert_eq!(reconcile(&client, NS).await.expect("pass"), Left::Nothing);
        assert_eq!(double.take_sent().len(), 1, "one GET of the namespace");
    }

    fn namespace(spec: &[&str], metadata: &[&str]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                resource_version: Some("7".into()),
                finalizers: (!metadata.is_empty())
                    .then(|| metadata.iter().map(|f| (*f).to_owned()).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(spec.iter().map(|f| (*f).to_owned()).collect()),
            }),
            ..Namespace::default()
        }
    }

    #[test]
    fn release_removes_only_the_kubernetes_finalizer_and_keeps_the_version() {
        let released =
            release(&namespace(&["example.com/x", FINALIZER], &[])).expect("held by kubernetes");
        assert_eq!(released, namespace(&["example.com/x"], &[]));
        assert_eq!(release(&released), None, "released already");
        assert_eq!(release(&Namespace::default()), None);
    }

    #[test]
    fn a_namespace_is_gone_for_good_only_when_nothing_holds_it() {
        assert!(unheld(&namespace(&[], &[])));
        assert!(!unheld(&namespace(&[FINALIZER], &[])));
        assert!(!unheld(&namespace(&[], &["orphan"])));
    }

    #[test]
    fn only_a_stale_namespace_skips_backoff_and_errors_say_what_failed() {
        let stale = Error::Stale {
            namespace: "shop".into(),
        };
        assert!(!stale.backs_off());
        let content = Error::Content {
            namespace: "shop".into(),
            failures: vec![
                "discovering metrics.k8s.io/v1beta1: 503".into(),
                "deleting widgets.example.com: forbidden".into(),
            ],
        };
        assert!(content.backs_off());
        assert_eq!(
            content.to_string(),
            "namespace shop is not emptied yet: discovering metrics.k8s.io/v1beta1: 503; deleting widgets.example.com: forbidden"
        );
    }
}
