//! History: the ControllerRevisions that record each template a DaemonSet or StatefulSet
//! has had ([`Versioned`]), named `<owner>-<hash>` and labelled
//! `controller-revision-hash: <hash>`, so that `kubectl rollout history` and `rollout undo`
//! work.
//!
//! Invariants: a revision's data is the strategic merge patch that puts its template back
//! (`{"spec":{"template":{…,"$patch":"replace"}}}`, upstream's `getPatch`); the current
//! revision is one whose template equals the owner's (compared as objects, not bytes: nodus
//! cannot reproduce Go's JSON byte for byte), numbered above every old one; of several
//! current ones the highest numbered is kept; the hash is the Deployment controller's
//! template hash with the owner's collisionCount; old revisions beyond
//! `revisionHistoryLimit` (default 10) go lowest number first, except those still live
//! (a pod carries them, or the owner's status names them). Upstream:
//! `pkg/controller/daemon/update.go` (`constructHistory`, `cleanupHistory`,
//! `dedupCurHistories`, `Match`, `getPatch`, `snapshot`) and
//! `pkg/controller/history/controller_history.go`.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::Resource;
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use crate::controllers::deployment::hash::{equal_ignore_hash, template_hash};
use crate::controllers::owner::controller_ref;

/// Upstream's `DefaultDaemonSetUniqueLabelKey`, on revisions and pods.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// The label of pods made before ControllerRevisions (`DaemonSetTemplateGenerationKey`).
pub const GENERATION_LABEL: &str = "pod-template-generation";
/// The annotation the API server keeps the template generation in.
pub const GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// An owner of revisions: what it records and how many old ones it keeps.
pub trait Versioned: Resource<DynamicType = ()> {
    fn template(&self) -> PodTemplateSpec;
    fn collision_count(&self) -> Option<i32>;
    fn history_limit(&self) -> Option<i32>;
}

impl Versioned for DaemonSet {
    fn template(&self) -> PodTemplateSpec {
        self.spec.template.clone()
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
    fn history_limit(&self) -> Option<i32> {
        self.spec.revision_history_limit
    }
}

impl Versioned for StatefulSet {
    fn template(&self) -> PodTemplateSpec {
        self.spec.template.clone()
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
    fn history_limit(&self) -> Option<i32> {
        self.spec.revision_history_limit
    }
}

/// Upstream's `GetTemplateGeneration`; an unparsable one is ignored, as upstream does.
pub fn template_generation(ds: &DaemonSet) -> Option<i64> {
    ds.metadata
        .annotations
        .as_ref()?
        .get(GENERATION_ANNOTATION)?
        .parse()
        .ok()
}

/// The hash naming the current template's revision.
pub fn hash<K: Versioned>(ds: &K) -> String {
    template_hash(&ds.template(), ds.collision_count())
}

/// Upstream's `getPatch`.
pub fn patch<K: Versioned>(ds: &K) -> Value {
    let mut template = serde_json::to_value(ds.template()).unwrap_or_else(|_| json!({}));
    if let Some(object) = template.as_object_mut() {
        object.insert("$patch".into(), json!("replace"));
    }
    json!({ "spec": { "template": template } })
}

/// The template a revision records.
pub fn recorded_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut recorded = revision.data.0.pointer("/spec/template")?.clone();
    recorded.as_object_mut()?.remove("$patch");
    serde_json::from_value(recorded).ok()
}

/// Upstream's `Match`: the revision records the owner's current template.
pub fn matches<K: Versioned>(ds: &K, revision: &ControllerRevision) -> bool {
    recorded_template(revision).is_some_and(|t| equal_ignore_hash(&t, &ds.template()))
}

pub fn number(revision: &ControllerRevision) -> i64 {
    revision.revision.unwrap_or(0)
}

pub fn hash_of(revision: &ControllerRevision) -> Option<&str> {
    revision
        .metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

/// Upstream's `snapshot`: the revision recording the current template, numbered `number`;
/// None for an owner not read from the API server.
pub fn snapshot<K: Versioned>(ds: &K, number: i64) -> Option<ControllerRevision> {
    let hash = hash(ds);
    let meta = ds.meta();
    let name = format!("{}-{hash}", meta.name.as_deref().unwrap_or_default());
    let mut labels = ds
        .template()
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash);
    Some(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: meta.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations.clone(),
            owner_references: Some(vec![controller_ref(ds)?]),
            ..ObjectMeta::default()
        },
        data: RawExtension(patch(ds)),
        revision: Some(number),
    })
}

/// The owner's revisions split into those recording its template and the old ones.
pub fn split<'a, K: Versioned>(
    ds: &K,
    revisions: &[&'a ControllerRevision],
) -> (Vec<&'a ControllerRevision>, Vec<&'a ControllerRevision>) {
    revisions.iter().partition(|r| matches(ds, r))
}

/// Upstream's `dedupCurHistories` choice: the highest numbered (the last of equals).
pub fn keep<'a>(current: &[&'a ControllerRevision]) -> Option<&'a ControllerRevision> {
    current
        .iter()
        .copied()
        .reduce(|kept, r| if number(r) >= number(kept) { r } else { kept })
}

/// The number the current revision must have: above every old one.
pub fn next_number(old: &[&ControllerRevision]) -> i64 {
    old.iter().map(|r| number(r)).max().unwrap_or(0).max(0) + 1
}

/// Upstream's `cleanupHistory`: the old revisions to delete, lowest number first, keeping
/// `revisionHistoryLimit` of them and any whose hash a pod still carries.
pub fn to_clean<K: Versioned>(
    ds: &K,
    old: &[&ControllerRevision],
    live_hashes: &HashSet<String>,
) -> Vec<String> {
    let limit = ds.history_limit().unwrap_or(DEFAULT_HISTORY_LIMIT);
    let surplus = old
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    let mut by_number: BTreeMap<(i64, String), &ControllerRevision> = BTreeMap::new();
    for r in old {
        by_number.insert((number(r), r.metadata.name.clone().unwrap_or_default()), r);
    }
    by_number
        .into_iter()
        .filter(|(_, r)| hash_of(r).is_none_or(|h| !live_hashes.contains(h)))
        .take(surplus)
        .map(|((_, name), _)| name)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;

    pub fn daemonset(image: &str) -> DaemonSet {
        let labels = BTreeMap::from([("app".to_owned(), "agent".to_owned())]);
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("uid-agent".into()),
                generation: Some(2),
                resource_version: Some("11".into()),
                annotations: Some(BTreeMap::from([(
                    GENERATION_ANNOTATION.to_owned(),
                    "2".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "agent".into(),
                            image: Some(image.into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DaemonSetSpec::default()
            },
            status: None,
        }
    }

    fn numbered(mut r: ControllerRevision, n: i64, hash: &str) -> ControllerRevision {
        r.revision = Some(n);
        r.metadata.name = Some(format!("agent-{hash}"));
        r.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.into());
        r
    }

    #[test]
    fn a_snapshot_records_and_matches_its_template() {
        let v1 = daemonset("agent:1");
        let revision = snapshot(&v1, 1).expect("a uid");
        let hash = hash(&v1);
        assert_eq!(revision.metadata.name, Some(format!("agent-{hash}")));
        assert_eq!(hash_of(&revision), Some(hash.as_str()));
        assert_eq!(
            revision
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("agent")
        );
        assert_eq!(revision.data.0["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            revision.data.0["spec"]["template"]["spec"]["containers"][0]["image"],
            "agent:1"
        );
        assert_eq!(
            revision.metadata.owner_references.as_ref().expect("owner")[0].kind,
            "DaemonSet"
        );
        assert!(matches(&v1, &revision));
        assert!(!matches(&daemonset("agent:2"), &revision));
        // A revision written by Go (nulls, empty objects) matches all the same.
        let mut go = revision.clone();
        go.data.0["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
        assert!(matches(&v1, &go));

        let mut collided = v1.clone();
        collided.status = Some(DaemonSetStatus {
            collision_count: Some(1),
            ..DaemonSetStatus::default()
        });
        assert_ne!(super::hash(&collided), hash);
        assert_eq!(template_generation(&v1), Some(2));
    }

    #[test]
    fn history_keeps_the_newest_current_and_trims_unused_old_ones() {
        let v3 = daemonset("agent:3");
        let base = snapshot(&daemonset("agent:1"), 0).expect("a uid");
        let old: Vec<ControllerRevision> = (1..=4)
            .map(|n| numbered(base.clone(), n, &format!("h{n}")))
            .collect();
        let current_a = numbered(snapshot(&v3, 0).expect("uid"), 5, "c5");
        let current_b = numbered(snapshot(&v3, 0).expect("uid"), 7, "c7");
        let all: Vec<&ControllerRevision> = old.iter().chain([&current_a, &current_b]).collect();
        let (current, old_refs) = split(&v3, &all);
        assert_eq!(current.len(), 2);
        assert_eq!(keep(&current).and_then(|r| r.revision), Some(7));
        assert_eq!(next_number(&old_refs), 5);

        let mut limited = v3.clone();
        limited.spec.revision_history_limit = Some(1);
        // Four old, one kept: three go, lowest first, but h2 is still on a pod.
        let live: HashSet<String> = ["h2".to_owned()].into();
        assert_eq!(
            to_clean(&limited, &old_refs, &live),
            vec!["agent-h1", "agent-h3", "agent-h4"]
        );
        assert!(
            to_clean(&v3, &old_refs, &live).is_empty(),
            "default limit 10"
        );
    }
}
