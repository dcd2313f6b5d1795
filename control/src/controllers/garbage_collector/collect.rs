//! Collect: the garbage collector's reads and writes — each [`Work`] carried out against the
//! API server, after a live read of the object and of its owners, because the graph may lag
//! behind (upstream: `attemptToDeleteItem`, `orphanDependents`, `removeFinalizer`,
//! `deleteObject` in `pkg/controller/garbagecollector/garbagecollector.go`).
//!
//! Invariants: nothing is deleted unless a live read by name, in the dependent's namespace
//! or cluster-wide by the kind's scope, found none of its owners (or another object of the
//! same name); every write is conditional — deletes carry the UID and the resourceVersion
//! read, patches the resourceVersion — so a write never lands on a newer state than the one
//! judged; a patch rewrites the whole `ownerReferences` or `finalizers` list as read.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::discovery::{ApiResource, Scope};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::graph::{Identity, Judge, Work};
use super::kinds::Kinds;
use super::verdict::{
    self, Dependent, ORPHAN, Owner, Verdict, judge, owner_state, unblocked, without_finalizer,
    without_owners,
};
use crate::controllers::chain;

/// Upstream's event reason for an owner reference that cannot resolve where it is.
pub const OWNER_REF_INVALID_NAMESPACE: &str = "OwnerRefInvalidNamespace";
/// Conditional patches retried on a conflict before the key is requeued (upstream's
/// `retry.RetryOnConflict` tries 5 times).
const TRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {object}")]
    Read {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The kind an owner reference names is not served (a CRD not yet discovered, or gone):
    /// retried with backoff, as upstream retries its REST mapping errors.
    #[error("the owner kind {kind} ({api_version}) of {object} is not served")]
    UnknownKind {
        object: String,
        api_version: String,
        kind: String,
    },
    #[error("deleting {object}")]
    Delete {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the {field} of {object}")]
    Patch {
        object: String,
        field: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("orphaning the dependents of {owner}: {}", failures.join("; "))]
    Orphan {
        owner: String,
        failures: Vec<String>,
    },
    /// The object changed since it was read: look again soon, without backing off.
    #[error("{object} changed since it was read")]
    Stale { object: String },
}

impl Error {
    pub fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. })
    }
}

/// What a finished piece of work leaves to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Settled,
    /// An owner exists that the graph has not seen (its type is not watched, or not yet):
    /// no event will say when it goes, so look again with backoff (upstream requeues
    /// unobserved virtual nodes the same way).
    Unobserved,
}

/// What the work needs besides the graph: cheap to clone into each task.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub kinds: Arc<Kinds>,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("kinds", &self.kinds.len())
            .finish_non_exhaustive()
    }
}

fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn object_api(ctx: &Ctx, id: &Identity) -> Api<DynamicObject> {
    api(&ctx.client, &id.resource, id.namespace.as_deref())
}

/// The object's metadata now; None when it is gone or another object has its name.
async fn read(ctx: &Ctx, id: &Identity) -> Result<Option<ObjectMeta>, Error> {
    match object_api(ctx, id).get_metadata_opt(&id.name).await {
        Ok(Some(found)) if found.metadata.uid.as_deref() == Some(id.uid.as_str()) => {
            Ok(Some(found.metadata))
        }
        Ok(_) => Ok(None),
        Err(source) => Err(Error::Read {
            object: id.to_string(),
            source,
        }),
    }
}

/// Carries out one piece of work. [`Work::Nudge`] needs no API call and is the caller's.
pub async fn reconcile(ctx: &Ctx, work: Work) -> Result<Done, Error> {
    match work {
        Work::Judge(j) => judge_dependent(ctx, j).await,
        Work::Orphan { owner, dependents } => orphan(ctx, &owner, &dependents).await,
        Work::Release { owner } => release(ctx, &owner).await,
        Work::Nudge(_) => Ok(Done::Settled),
    }
}

async fn judge_dependent(ctx: &Ctx, work: Judge) -> Result<Done, Error> {
    let id = &work.identity;
    let Some(latest) = read(ctx, id).await? else {
        return Ok(Done::Settled);
    };
    // Deletion is a one-way trip; its owners are looked at again when it is gone.
    if latest.deletion_timestamp.is_some() {
        return Ok(Done::Settled);
    }
    let refs = latest.owner_references.clone().unwrap_or_default();
    if refs.is_empty() {
        return Ok(Done::Settled);
    }
    // A namespaced dependent whose owner was seen elsewhere: the owner is dangling here
    // (the lookup below finds none), which upstream reports. A cluster-scoped one is
    // reported as invalid below.
    if id.namespace.is_some() {
        for reference in refs.iter().filter(|r| work.misplaced.contains(r)) {
            report_invalid(ctx, id, reference).await;
        }
    }
    let mut owners = Vec::with_capacity(refs.len());
    let mut unobserved = false;
    for reference in &refs {
        let owner = lookup(ctx, id, reference).await?;
        match owner {
            Owner::Invalid => {
                warn!(object = %id, owner = %describe(reference, None), "a cluster-scoped object names a namespaced owner; it is never collected");
                report_invalid(ctx, id, reference).await;
            }
            Owner::Solid if !work.observed.contains(&reference.uid) => unobserved = true,
            _ => {}
        }
        owners.push((reference.clone(), owner));
    }
    let facts = Dependent::of(
        &latest,
        work.has_dependents,
        work.dependent_deleting_dependents,
    );
    match judge(&owners, facts) {
        Verdict::Keep => Ok(if unobserved {
            Done::Unobserved
        } else {
            Done::Settled
        }),
        Verdict::Detach(uids) => {
            info!(object = %id, owners = ?uids, "removing references to owners that are gone or deleting");
            detach(ctx, id, &uids, Some(latest)).await?;
            Ok(Done::Settled)
        }
        Verdict::Delete { policy, unblock } => {
            let latest = match unblock.then(|| unblocked(&refs)).flatten() {
                Some(refs) => {
                    info!(object = %id, "clearing blockOwnerDeletion: a dependent of it waits in the foreground too");
                    match patch(ctx, id, owners_patch(&latest, &refs), "ownerReferences").await? {
                        Some(patched) => patched,
                        None => return Ok(Done::Settled),
                    }
                }
                None => latest,
            };
            info!(object = %id, policy = ?policy, "deleting: its owners are gone");
            delete(ctx, id, &latest, policy).await?;
            Ok(Done::Settled)
        }
    }
}

/// What one owner reference of `dependent` points at, read live.
async fn lookup(
    ctx: &Ctx,
    dependent: &Identity,
    reference: &OwnerReference,
) -> Result<Owner, Error> {
    let Some((resource, scope)) = ctx.kinds.resolve(&reference.api_version, &reference.kind) else {
        return Err(Error::UnknownKind {
            object: dependent.to_string(),
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
        });
    };
    // Owners live beside their dependents or cluster-wide: a reference has no namespace.
    let namespace = match (scope, &dependent.namespace) {
        (Scope::Cluster, _) => None,
        (Scope::Namespaced, Some(ns)) => Some(ns.as_str()),
        (Scope::Namespaced, None) => return Ok(Owner::Invalid),
    };
    let live = api(&ctx.client, resource, namespace)
        .get_metadata_opt(&reference.name)
        .await
        .map_err(|source| Error::Read {
            object: describe(reference, namespace),
            source,
        })?;
    Ok(owner_state(
        live.as_ref().map(|l| &l.metadata),
        &reference.uid,
    ))
}

/// Upstream's text for an owner reference: `[apps/v1/ReplicaSet, namespace: shop, name: web,
/// uid: …]`.
fn describe(reference: &OwnerReference, namespace: Option<&str>) -> String {
    format!(
        "[{}/{}, namespace: {}, name: {}, uid: {}]",
        reference.api_version,
        reference.kind,
        namespace.unwrap_or_default(),
        reference.name,
        reference.uid
    )
}

/// The OwnerRefInvalidNamespace warning on the dependent, as upstream words it; a failure to
/// record it is logged, never retried.
async fn report_invalid(ctx: &Ctx, dependent: &Identity, reference: &OwnerReference) {
    let namespace = dependent.namespace.as_deref().unwrap_or_default();
    let note = format!(
        "ownerRef {} does not exist in namespace {namespace:?}",
        describe(reference, Some(namespace))
    );
    let regarding = ObjectReference {
        api_version: Some(dependent.resource.api_version.clone()),
        kind: Some(dependent.resource.kind.clone()),
        namespace: dependent.namespace.clone(),
        name: Some(dependent.name.clone()),
        uid: Some(dependent.uid.clone()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: OWNER_REF_INVALID_NAMESPACE.to_owned(),
        note: Some(note),
        action: "GarbageCollection".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &regarding).await {
        warn!(object = %dependent, error = %err, "recording the OwnerRefInvalidNamespace event failed");
    }
}

/// The merge patch that sets the whole list of owner references, conditional on the version
/// read (an empty list removes the field).
fn owners_patch(latest: &ObjectMeta, refs: &[OwnerReference]) -> Value {
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        json!(refs)
    };
    json!({ "metadata": { "resourceVersion": latest.resource_version, "ownerReferences": refs } })
}

/// The merge patch that sets the whole list of finalizers, conditional on the version read.
fn finalizers_patch(latest: &ObjectMeta, finalizers: &[String]) -> Value {
    json!({ "metadata": { "resourceVersion": latest.resource_version, "finalizers": finalizers } })
}

/// Sends a conditional metadata patch. Ok(None) when the object is gone; Stale on a
/// conflict.
async fn patch(
    ctx: &Ctx,
    id: &Identity,
    body: Value,
    field: &'static str,
) -> Result<Option<ObjectMeta>, Error> {
    match object_api(ctx, id)
        .patch_metadata(&id.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(patched) => Ok(Some(patched.metadata)),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        Err(kube::Error::Api(s)) if s.is_conflict() => Err(Error::Stale {
            object: id.to_string(),
        }),
        Err(source) => Err(Error::Patch {
            object: id.to_string(),
            field,
            source,
        }),
    }
}

/// Removes the references to `uids` from the object, rereading it after a conflict.
async fn detach(
    ctx: &Ctx,
    id: &Identity,
    uids: &[String],
    mut latest: Option<ObjectMeta>,
) -> Result<(), Error> {
    for _ in 0..TRIES {
        let meta = match latest.take() {
            Some(meta) => meta,
            None => match read(ctx, id).await? {
                Some(meta) => meta,
                None => return Ok(()),
            },
        };
        let refs = meta.owner_references.clone().unwrap_or_default();
        let kept = without_owners(&refs, uids);
        if kept.len() == refs.len() {
            return Ok(());
        }
        match patch(ctx, id, owners_patch(&meta, &kept), "ownerReferences").await {
            Ok(_) => return Ok(()),
            Err(Error::Stale { .. }) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(Error::Stale {
        object: id.to_string(),
    })
}

/// Removes one finalizer from the object, rereading it after a conflict.
async fn remove_finalizer(
    ctx: &Ctx,
    id: &Identity,
    finalizer: &str,
    mut latest: Option<ObjectMeta>,
) -> Result<(), Error> {
    for _ in 0..TRIES {
        let meta = match latest.take() {
            Some(meta) => meta,
            None => match read(ctx, id).await? {
                Some(meta) => meta,
                None => return Ok(()),
            },
        };
        let Some(kept) = without_finalizer(&meta, finalizer) else {
            return Ok(());
        };
        match patch(ctx, id, finalizers_patch(&meta, &kept), "finalizers").await {
            Ok(_) => {
                info!(object = %id, finalizer, "finalizer removed");
                return Ok(());
            }
            Err(Error::Stale { .. }) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(Error::Stale {
        object: id.to_string(),
    })
}

/// Deletes the object as read: its UID and resourceVersion as preconditions. If it changed
/// meanwhile but its owners did not, the change cannot have saved it, and it is deleted with
/// the UID alone (upstream's `deleteObject`).
async fn delete(
    ctx: &Ctx,
    id: &Identity,
    latest: &ObjectMeta,
    policy: PropagationPolicy,
) -> Result<(), Error> {
    let api = object_api(ctx, id);
    let mut params = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(id.uid.clone()),
            resource_version: latest.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&id.name, &params).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(kube::Error::Api(s)) if s.is_conflict() => {}
        Err(source) => {
            return Err(Error::Delete {
                object: id.to_string(),
                source,
            });
        }
    }
    let Some(now) = read(ctx, id).await? else {
        return Ok(());
    };
    if now.owner_references != latest.owner_references {
        return Err(Error::Stale {
            object: id.to_string(),
        });
    }
    params.preconditions = Some(Preconditions {
        uid: Some(id.uid.clone()),
        resource_version: None,
    });
    match api.delete(&id.name, &params).await {
        // A conflict now means the UID differs: the object judged is gone.
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(source) => Err(Error::Delete {
            object: id.to_string(),
            source,
        }),
    }
}

/// Detaches every dependent from an owner deleted with `orphan`, then removes the
/// finalizer so that the owner goes alone.
async fn orphan(ctx: &Ctx, owner: &Identity, dependents: &[Identity]) -> Result<Done, Error> {
    let Some(latest) = read(ctx, owner).await? else {
        return Ok(Done::Settled);
    };
    if !verdict::orphaning(&latest) {
        return Ok(Done::Settled);
    }
    let uids = [owner.uid.clone()];
    let mut failures = Vec::new();
    for dependent in dependents {
        if let Err(err) = detach(ctx, dependent, &uids, None).await {
            failures.push(format!("{dependent}: {}", chain(&err)));
        }
    }
    if !failures.is_empty() {
        return Err(Error::Orphan {
            owner: owner.to_string(),
            failures,
        });
    }
    debug!(owner = %owner, dependents = dependents.len(), "dependents orphaned");
    remove_finalizer(ctx, owner, ORPHAN, Some(latest)).await?;
    Ok(Done::Settled)
}

/// Removes `foregroundDeletion` from an owner nothing blocks any more, so that it goes.
async fn release(ctx: &Ctx, owner: &Identity) -> Result<Done, Error> {
    let Some(latest) = read(ctx, owner).await? else {
        return Ok(Done::Settled);
    };
    if !verdict::deleting_dependents(&latest) {
        return Ok(Done::Settled);
    }
    remove_finalizer(ctx, owner, verdict::FOREGROUND, Some(latest)).await?;
    Ok(Done::Settled)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kube::core::gvk::GroupVersion;
    use kube::discovery::ApiCapabilities;
    use kube::runtime::events::Reporter;

    use super::super::api_double::ApiDouble;
    use super::*;

    const POD: &str = "/api/v1/namespaces/shop/pods/p1";
    const RS1: &str = "/apis/apps/v1/namespaces/shop/replicasets/rs1";
    const RS2: &str = "/apis/apps/v1/namespaces/shop/replicasets/rs2";
    const PV: &str = "/api/v1/persistentvolumes/pv1";

    fn resource(
        group: &str,
        kind: &str,
        plural: &str,
        scope: Scope,
    ) -> (ApiResource, ApiCapabilities) {
        (
            ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: GroupVersion::gv(group, "v1").api_version(),
                kind: kind.into(),
                plural: plural.into(),
            },
            ApiCapabilities {
                scope,
                subresources: vec![],
                operations: ["get", "list", "watch", "delete", "patch"]
                    .iter()
                    .map(|o| (*o).to_owned())
                    .collect(),
            },
        )
    }

    fn served() -> Vec<(ApiResource, ApiCapabilities)> {
        vec![
            resource("", "Pod", "pods", Scope::Namespaced),
            resource("", "PersistentVolume", "persistentvolumes", Scope::Cluster),
            resource("apps", "ReplicaSet", "replicasets", Scope::Namespaced),
        ]
    }

    fn ctx(double: &ApiDouble) -> Ctx {
        let client = Client::new(double.clone(), "default");
        Ctx {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "garbage-collector-controller".into(),
                    instance: None,
                },
            ),
            client,
            kinds: Arc::new(Kinds::new(&served(), None)),
        }
    }

    fn identity(plural: &str, namespace: Option<&str>, name: &str) -> Identity {
        let (resource, _) = served()
            .into_iter()
            .find(|(r, _)| r.plural == plural)
            .expect("a served type");
        Identity {
            resource: Arc::new(resource),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn reference(name: &str, blocks: bool) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
               "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": blocks})
    }

    fn meta(name: &str, namespace: Option<&str>, owners: Vec<Value>) -> Value {
        json!({"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
               "ownerReferences": owners})
    }

    fn judge_work(id: Identity, observed: &[&str]) -> Work {
        Work::Judge(Judge {
            identity: id,
            observed: observed.iter().map(|u| (*u).to_owned()).collect(),
            misplaced: vec![],
            has_dependents: false,
            dependent_deleting_dependents: false,
        })
    }

    fn pod_work() -> Work {
        judge_work(identity("pods", Some("shop"), "p1"), &[])
    }

    #[tokio::test]
    async fn a_dependent_whose_owner_is_gone_is_deleted_in_the_background_as_read() {
        let double = ApiDouble::default();
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        let done = reconcile(&ctx(&double), pod_work())
            .await
            .expect("collected");
        assert_eq!(done, Done::Settled);
        let sent = double.take_sent();
        let calls: Vec<String> = sent.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        assert_eq!(
            calls,
            vec![
                format!("GET {POD}"),
                format!("GET {RS1}"),
                format!("DELETE {POD}")
            ]
        );
        let body = &sent[2].2;
        assert_eq!(body["propagationPolicy"], "Background");
        assert_eq!(body["preconditions"]["uid"], "uid-p1");
        assert_eq!(body["preconditions"]["resourceVersion"], "1");
        assert_eq!(double.get(POD), None);
    }

    #[tokio::test]
    async fn an_owner_of_the_same_name_but_another_uid_is_gone() {
        let double = ApiDouble::default();
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        double.put(
            RS1,
            json!({"name": "rs1", "namespace": "shop", "uid": "uid-recreated"}),
        );
        reconcile(&ctx(&double), pod_work())
            .await
            .expect("collected");
        assert_eq!(double.get(POD), None);
    }

    #[tokio::test]
    async fn a_dependent_with_an_owner_left_loses_only_the_dangling_reference() {
        let double = ApiDouble::default();
        double.put(
            POD,
            meta(
                "p1",
                Some("shop"),
                vec![reference("rs1", true), reference("rs2", true)],
            ),
        );
        double.put(RS2, meta("rs2", Some("shop"), vec![]));
        let work = judge_work(identity("pods", Some("shop"), "p1"), &["uid-rs2"]);
        let done = reconcile(&ctx(&double), work).await.expect("detached");
        assert_eq!(done, Done::Settled);
        assert_eq!(
            double.take_calls(),
            vec![
                format!("GET {POD}"),
                format!("GET {RS1}"),
                format!("GET {RS2}"),
                format!("PATCH {POD}")
            ]
        );
        let pod = double.get(POD).expect("kept");
        assert_eq!(pod["ownerReferences"], json!([reference("rs2", true)]));
    }

    #[tokio::test]
    async fn an_existing_owner_no_watch_shows_is_looked_at_again() {
        let double = ApiDouble::default();
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        double.put(RS1, meta("rs1", Some("shop"), vec![]));
        let done = reconcile(&ctx(&double), pod_work()).await.expect("kept");
        assert_eq!(done, Done::Unobserved);
        let observed = judge_work(identity("pods", Some("shop"), "p1"), &["uid-rs1"]);
        let done = reconcile(&ctx(&double), observed).await.expect("kept");
        assert_eq!(done, Done::Settled);
        assert!(double.get(POD).is_some());
    }

    #[tokio::test]
    async fn a_dependent_of_an_owner_deleted_in_the_foreground_goes_in_the_foreground_too() {
        let double = ApiDouble::default();
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        double.put(
            RS1,
            json!({"name": "rs1", "namespace": "shop", "uid": "uid-rs1",
                   "deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": [FOREGROUND_F]}),
        );
        let work = Work::Judge(Judge {
            identity: identity("pods", Some("shop"), "p1"),
            observed: HashSet::from(["uid-rs1".to_owned()]),
            misplaced: vec![],
            has_dependents: true,
            dependent_deleting_dependents: false,
        });
        reconcile(&ctx(&double), work).await.expect("collected");
        let sent = double.take_sent();
        let (_, _, body) = sent
            .iter()
            .find(|(m, _, _)| m == "DELETE")
            .expect("deleted");
        assert_eq!(body["propagationPolicy"], "Foreground");
    }

    const FOREGROUND_F: &str = verdict::FOREGROUND;

    #[tokio::test]
    async fn a_cluster_scoped_dependent_of_a_namespaced_kind_is_kept_and_reported() {
        let double = ApiDouble::default();
        double.put(PV, meta("pv1", None, vec![reference("rs1", true)]));
        let work = judge_work(identity("persistentvolumes", None, "pv1"), &[]);
        let done = reconcile(&ctx(&double), work).await.expect("kept");
        assert_eq!(done, Done::Settled);
        assert!(double.get(PV).is_some());
        let sent = double.take_sent();
        let (_, path, event) = sent
            .iter()
            .find(|(_, p, _)| p.contains("/events"))
            .expect("an event");
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
        assert_eq!(event["reason"], OWNER_REF_INVALID_NAMESPACE);
        assert_eq!(event["type"], "Warning");
        assert_eq!(
            event["note"],
            "ownerRef [apps/v1/ReplicaSet, namespace: , name: rs1, uid: uid-rs1] does not exist in namespace \"\""
        );
        assert_eq!(event["regarding"]["name"], "pv1");
        assert!(
            !sent
                .iter()
                .any(|(m, p, _)| m == "GET" && p.contains("replicasets")),
            "nothing to look up"
        );
    }

    #[tokio::test]
    async fn an_owner_kind_that_is_not_served_is_retried() {
        let double = ApiDouble::default();
        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
                            "uid": "uid-w"});
        double.put(POD, meta("p1", Some("shop"), vec![widget]));
        let err = reconcile(&ctx(&double), pod_work())
            .await
            .expect_err("unknown");
        assert!(matches!(err, Error::UnknownKind { .. }) && err.backs_off());
        assert!(double.get(POD).is_some());
    }

    #[tokio::test]
    async fn a_delete_after_an_unrelated_change_goes_ahead_with_the_uid_alone() {
        let double = ApiDouble::default();
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        let id = identity("pods", Some("shop"), "p1");
        let read = read(&ctx(&double), &id)
            .await
            .expect("read")
            .expect("there");
        // A label changes: the resourceVersion moves, the owners do not.
        double.with(|s| {
            if let Some(pod) = s.objects.get_mut(POD) {
                pod["resourceVersion"] = "99".into();
            }
        });
        delete(&ctx(&double), &id, &read, PropagationPolicy::Background)
            .await
            .expect("deleted");
        assert_eq!(double.get(POD), None);

        // Its owners changed: judged again instead.
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        let read = super::read(&ctx(&double), &id)
            .await
            .expect("read")
            .expect("there");
        double.with(|s| {
            if let Some(pod) = s.objects.get_mut(POD) {
                pod["resourceVersion"] = "99".into();
                pod["ownerReferences"] = json!([reference("rs2", true)]);
            }
        });
        let err = delete(&ctx(&double), &id, &read, PropagationPolicy::Background)
            .await
            .expect_err("stale");
        assert!(!err.backs_off());
        assert!(double.get(POD).is_some());
    }

    #[tokio::test]
    async fn an_orphaning_owner_is_released_after_its_dependents_stop_naming_it() {
        let double = ApiDouble::default();
        double.put(
            RS1,
            json!({"name": "rs1", "namespace": "shop", "uid": "uid-rs1",
                   "deletionTimestamp": "2025-01-01T00:00:00Z",
                   "finalizers": ["example.com/keep", ORPHAN]}),
        );
        double.put(POD, meta("p1", Some("shop"), vec![reference("rs1", true)]));
        let work = Work::Orphan {
            owner: identity("replicasets", Some("shop"), "rs1"),
            dependents: vec![identity("pods", Some("shop"), "p1")],
        };
        reconcile(&ctx(&double), work).await.expect("orphaned");
        assert_eq!(
            double.take_calls(),
            vec![
                format!("GET {RS1}"),
                format!("GET {POD}"),
                format!("PATCH {POD}"),
                format!("PATCH {RS1}")
            ]
        );
        let pod = double.get(POD).expect("kept");
        assert!(pod.get("ownerReferences").is_none(), "{pod}");
        let rs = double.get(RS1).expect("still held by its other finalizer");
        assert_eq!(rs["finalizers"], json!(["example.com/keep"]));
    }

    #[tokio::test]
    async fn an_owner_nothing_blocks_loses_its_foreground_finalizer() {
        let double = ApiDouble::default();
        double.put(
            RS1,
            json!({"name": "rs1", "namespace": "shop", "uid": "uid-rs1",
                   "deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": [FOREGROUND_F]}),
        );
        let work = Work::Release {
            owner: identity("replicasets", Some("shop"), "rs1"),
        };
        reconcile(&ctx(&double), work).await.expect("released");
        let sent = double.take_sent();
        let (_, _, patch) = sent.iter().find(|(m, _, _)| m == "PATCH").expect("patched");
        assert_eq!(patch["metadata"]["finalizers"], json!([]));
        assert!(
            !patch["metadata"]["resourceVersion"].is_null(),
            "conditional"
        );

        // Not being deleted (any more): nothing is written.
        double.put(RS2, meta("rs2", Some("shop"), vec![]));
        let work = Work::Release {
            owner: identity("replicasets", Some("shop"), "rs2"),
        };
        reconcile(&ctx(&double), work).await.expect("nothing");
        assert_eq!(double.take_calls(), vec![format!("GET {RS2}")]);
    }

    #[tokio::test]
    async fn a_dependent_already_going_or_gone_is_left_alone() {
        let double = ApiDouble::default();
        assert_eq!(
            reconcile(&ctx(&double), pod_work()).await.expect("gone"),
            Done::Settled
        );
        double.put(
            POD,
            json!({"name": "p1", "namespace": "shop", "uid": "uid-p1",
                   "deletionTimestamp": "2025-01-01T00:00:00Z",
                   "ownerReferences": [reference("rs1", true)]}),
        );
        reconcile(&ctx(&double), pod_work()).await.expect("going");
        assert_eq!(
            double.take_calls(),
            vec![format!("GET {POD}"), format!("GET {POD}")]
        );
    }
}
