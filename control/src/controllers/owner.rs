//! Controller references: the one ownerReference with `controller: true` says which object
//! controls another, and a controller claims the objects of its namespace that its label
//! selector picks — the ReplicaSet its pods, the Deployment its ReplicaSets.
//!
//! Invariants: an object controlled by someone else (another uid) is never touched; an
//! orphan is adopted only if it matches, is not being deleted, and its would-be controller is
//! not being deleted either, as a fresh read of it confirms before the first adoption (a
//! stale store could otherwise adopt for an owner that is already gone); an owned object that
//! no longer matches is released, unless its controller is being deleted. Both writes are
//! strategic merge patches whose `metadata.uid` makes them apply only to the very object read.
//! Upstream: `pkg/controller/controller_ref_manager.go` (`ClaimObject`, `ownerRefControllerPatch`,
//! `GenerateDeleteOwnerRefStrategicMergeBytes`) and `controller_utils.go`
//! (`RecheckDeletionTimestamp`); label selectors as `metav1.LabelSelectorAsSelector` reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::debug;

/// An object by namespace and name: the key controllers queue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of<K: Resource>(object: &K) -> Self {
        ObjectKey::new(
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default(),
        )
    }

    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A label selector the API server should have refused: upstream's controllers skip the
/// object and say so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{operator:?} is not a valid label selector operator (key {key:?})")]
    Operator { key: String, operator: String },
    #[error("key {key:?}: for 'In' and 'NotIn' operators, values set can't be empty")]
    NoValues { key: String },
    #[error("key {key:?}: values set must be empty for 'Exists' and 'DoesNotExist'")]
    Values { key: String },
}

/// The selector as upstream's `LabelSelectorAsSelector` reads it, with its checks: kube's
/// own conversion accepts `In` without values and `Exists` with some, which upstream refuses.
/// An empty selector selects everything.
pub fn selector(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    for requirement in selector.match_expressions.iter().flatten() {
        let key = requirement.key.clone();
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(SelectorError::NoValues { key }),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError::Values { key });
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(SelectorError::Operator {
                    key,
                    operator: other.to_owned(),
                });
            }
        }
    }
    Selector::try_from(selector.clone()).map_err(|_| SelectorError::Operator {
        key: String::new(),
        operator: "unknown".into(),
    })
}

/// Whether `selector` picks an object with these labels (none: no labels).
pub fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    match labels {
        Some(labels) => selector.matches(labels),
        None => selector.matches(&BTreeMap::new()),
    }
}

/// The object's controller: its ownerReference with `controller: true` (the API server allows
/// at most one).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether the object is controlled by the object with this uid.
pub fn controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| controller_of(meta).is_some_and(|r| r.uid == uid))
}

/// The reference a controller puts on what it creates or adopts: `controller` and
/// `blockOwnerDeletion` set, as upstream's `NewControllerRef` (so that foreground deletion of
/// the owner waits for it). None for an object not read from the API server (no uid).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner.controller_owner_ref(&())?
    })
}

/// What a controller does with one object of its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by it and matching: its own, even while it is being deleted.
    Owned,
    /// An orphan it may take.
    Adopt,
    /// Its own, but no longer matching: to be let go.
    Release,
    /// Someone else's, or not for it.
    Ignore,
}

/// Upstream's `ClaimObject` decision for `object` and the controller `owner`.
pub fn claim(owner: &ObjectMeta, selector: &Selector, object: &ObjectMeta) -> Claim {
    let matches = selects(selector, object.labels.as_ref());
    let owner_deleting = owner.deletion_timestamp.is_some();
    match controller_of(object) {
        Some(r) if Some(r.uid.as_str()) != owner.uid.as_deref() => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || object.deletion_timestamp.is_some() => Claim::Ignore,
        None if owner.namespace.is_some() && owner.namespace != object.namespace => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// The strategic merge patch that makes `owner` the object's controller; the object's uid
/// makes it fail on an object recreated under the same name.
pub fn adopt_patch(owner: &OwnerReference, object_uid: &str) -> Value {
    json!({ "metadata": { "ownerReferences": [owner], "uid": object_uid } })
}

/// The strategic merge patch that removes the owner's reference (ownerReferences merge on
/// uid).
pub fn release_patch(owner_uid: &str, object_uid: &str) -> Value {
    json!({
        "metadata": {
            "ownerReferences": [{ "$patch": "delete", "uid": owner_uid }],
            "uid": object_uid,
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("rereading {owner} before adopting")]
    Recheck {
        owner: String,
        #[source]
        source: kube::Error,
    },
    /// The owner went, was replaced, or is being deleted since the store showed it.
    #[error("{owner} is gone or being deleted; adopting nothing")]
    OwnerGone { owner: String },
    #[error("adopting {object}")]
    Adopt {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing {object}")]
    Release {
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// Claims `candidates` for `owner`: returns those it controls afterwards (owned or just
/// adopted), releasing those it owns that no longer match. Stops at the first failed write,
/// as upstream's callers do; objects that vanished meanwhile are skipped.
pub async fn claim_all<K, O>(
    objects: &Api<K>,
    owners: &Api<O>,
    owner: &O,
    selector: &Selector,
    candidates: Vec<Arc<K>>,
) -> Result<Vec<Arc<K>>, ClaimError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let owner_name = format!("{} {}", O::kind(&()), ObjectKey::of(owner));
    let mut claimed = Vec::new();
    let mut rechecked = false;
    for object in candidates {
        let name = object.name_any();
        let uid = object.meta().uid.clone().unwrap_or_default();
        let described = || format!("{} {}", K::kind(&()), ObjectKey::of(object.as_ref()));
        match claim(owner.meta(), selector, object.meta()) {
            Claim::Owned => claimed.push(object),
            Claim::Ignore => {}
            Claim::Adopt => {
                if !rechecked {
                    recheck(owners, owner, &owner_name).await?;
                    rechecked = true;
                }
                let Some(reference) = controller_ref(owner) else {
                    return Err(ClaimError::OwnerGone { owner: owner_name });
                };
                let patch = adopt_patch(&reference, &uid);
                match objects
                    .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(adopted) => {
                        debug!(object = %described(), owner = %owner_name, "adopted");
                        claimed.push(Arc::new(adopted));
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(source) => {
                        return Err(ClaimError::Adopt {
                            object: described(),
                            source,
                        });
                    }
                }
            }
            Claim::Release => {
                let owner_uid = owner.meta().uid.as_deref().unwrap_or_default();
                let patch = release_patch(owner_uid, &uid);
                match objects
                    .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => debug!(object = %described(), owner = %owner_name, "released"),
                    // Gone, or (422) no longer ours or recreated: either way not ours now.
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.is_invalid() => {}
                    Err(source) => {
                        return Err(ClaimError::Release {
                            object: described(),
                            source,
                        });
                    }
                }
            }
        }
    }
    Ok(claimed)
}

/// Upstream's `RecheckDeletionTimestamp`: a quorum read of the owner, which must still be the
/// same object and not being deleted.
async fn recheck<O>(owners: &Api<O>, owner: &O, owner_name: &str) -> Result<(), ClaimError>
where
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let fresh = owners
        .get_opt(&owner.name_any())
        .await
        .map_err(|source| ClaimError::Recheck {
            owner: owner_name.to_owned(),
            source,
        })?;
    match fresh {
        Some(fresh)
            if fresh.meta().uid == owner.meta().uid
                && fresh.meta().deletion_timestamp.is_none() =>
        {
            Ok(())
        }
        _ => Err(ClaimError::OwnerGone {
            owner: owner_name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn owner(deleting: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("uid-web".into()),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            ..ObjectMeta::default()
        }
    }

    fn object(controller: Option<&str>, app: &str, deleting: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some("web-x".into()),
            namespace: Some("shop".into()),
            uid: Some("uid-x".into()),
            labels: labels(&[("app", app)]),
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "web".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn selectors_are_read_with_upstreams_checks() {
        let good = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: Some(vec![
                requirement("tier", "In", &["front", "edge"]),
                requirement("canary", "DoesNotExist", &[]),
            ]),
        };
        let sel = selector(&good).expect("valid");
        assert!(selects(
            &sel,
            labels(&[("app", "web"), ("tier", "edge")]).as_ref()
        ));
        assert!(!selects(
            &sel,
            labels(&[("app", "web"), ("tier", "edge"), ("canary", "1")]).as_ref()
        ));
        assert!(!selects(&sel, None));
        assert!(selects(
            &selector(&LabelSelector::default()).expect("empty"),
            None
        ));

        let bad = |r: LabelSelectorRequirement| LabelSelector {
            match_expressions: Some(vec![r]),
            ..LabelSelector::default()
        };
        for (r, want) in [
            (
                requirement("tier", "Near", &["x"]),
                SelectorError::Operator {
                    key: "tier".into(),
                    operator: "Near".into(),
                },
            ),
            (
                requirement("tier", "In", &[]),
                SelectorError::NoValues { key: "tier".into() },
            ),
            (
                requirement("tier", "Exists", &["x"]),
                SelectorError::Values { key: "tier".into() },
            ),
        ] {
            assert_eq!(selector(&bad(r)), Err(want));
        }
    }

    #[test]
    fn claims_follow_upstreams_table() {
        let sel = selector(&LabelSelector {
            match_labels: labels(&[("app", "web")]),
            ..LabelSelector::default()
        })
        .expect("valid");
        let cases = [
            // (owner deleting, object controller, object app, object deleting, claim)
            (false, Some("uid-web"), "web", false, Claim::Owned),
            (true, Some("uid-web"), "web", false, Claim::Owned),
            (false, Some("uid-web"), "db", false, Claim::Release),
            (true, Some("uid-web"), "db", false, Claim::Ignore),
            (false, Some("uid-other"), "web", false, Claim::Ignore),
            (false, None, "web", false, Claim::Adopt),
            (false, None, "web", true, Claim::Ignore),
            (false, None, "db", false, Claim::Ignore),
            (true, None, "web", false, Claim::Ignore),
        ];
        for (deleting, controller, app, object_deleting, want) in cases {
            assert_eq!(
                claim(
                    &owner(deleting),
                    &sel,
                    &object(controller, app, object_deleting)
                ),
                want,
                "owner deleting {deleting}, controller {controller:?}, app {app}, object deleting {object_deleting}"
            );
        }
        let mut elsewhere = object(None, "web", false);
        elsewhere.namespace = Some("other".into());
        assert_eq!(claim(&owner(false), &sel, &elsewhere), Claim::Ignore);
    }

    #[test]
    fn patches_are_upstreams() {
        let rs = ReplicaSet {
            metadata: owner(false),
            ..ReplicaSet::default()
        };
        let reference = controller_ref(&rs).expect("has a uid");
        assert_eq!(
            adopt_patch(&reference, "uid-x"),
            json!({"metadata": {"uid": "uid-x", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-web",
                "controller": true, "blockOwnerDeletion": true,
            }]}})
        );
        assert_eq!(
            release_patch("uid-web", "uid-x"),
            json!({"metadata": {"uid": "uid-x", "ownerReferences": [{"$patch": "delete", "uid": "uid-web"}]}})
        );
        assert!(controlled_by(
            &object(Some("uid-web"), "web", false),
            Some("uid-web")
        ));
        assert!(!controlled_by(&object(None, "web", false), Some("uid-web")));
        assert_eq!(controller_ref(&ReplicaSet::default()), None);
    }
}
