//! Plan: one StatefulSet sync's decisions as a pure function of the set, its current and
//! update revisions' templates and its pods — upstream's `updateStatefulSet` and
//! `computeReplicaStatus` (`pkg/controller/statefulset/stateful_set_control.go`).
//!
//! Invariants: a pod is named `<set>-<ordinal>` and its ordinal decides everything: ordinals
//! in `[start, start + replicas)` are kept, the rest are condemned, highest first; with
//! OrderedReady (the default) one pod is acted on per sync and nothing goes past a pod that
//! is not running and ready (creation in order, deletion in reverse, rolling update from the
//! highest ordinal down to the partition); with Parallel every pod is created or condemned
//! at once; a failed or succeeded pod is deleted and made again from its revision.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::controllers::history::HASH_LABEL;
use crate::controllers::owner::controller_ref;
use crate::controllers::replicaset::pods::{available_after, is_available, is_ready};

/// Upstream's `StatefulSetPodNameLabel`.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Upstream's `PodIndexLabel`.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.replicas.unwrap_or(1).max(0)
}

fn start(set: &StatefulSet) -> i32 {
    set.spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
}

fn min_ready(set: &StatefulSet) -> i32 {
    set.spec.min_ready_seconds.unwrap_or(0)
}

fn ordered(set: &StatefulSet) -> bool {
    set.spec.pod_management_policy.as_deref() != Some("Parallel")
}

/// The ordinal in a pod's name when the pod belongs to the set by name (`<set>-<n>`).
pub fn ordinal(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    let set_name = set.metadata.name.as_deref()?;
    let n = name.strip_prefix(set_name)?.strip_prefix('-')?;
    // No sign, no leading zeros: the name must be what `pod_name` makes.
    let value: i32 = n.parse().ok()?;
    (value >= 0 && value.to_string() == n).then_some(value)
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// `<claim>-<set>-<ordinal>`, upstream's `getPersistentVolumeClaimName`.
pub fn claim_name(set: &StatefulSet, claim: &str, ordinal: i32) -> String {
    format!("{claim}-{}-{ordinal}", set.name_any())
}

pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn created(pod: &Pod) -> bool {
    !phase(pod).is_empty()
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

/// The pod for `ordinal` from a revision's template: its identity (name, hostname, the
/// headless service's subdomain, the name and index labels), its revision label, and a
/// volume per claim template pointing at that ordinal's claim.
pub fn new_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
) -> Option<Pod> {
    let meta = template.metadata.clone().unwrap_or_default();
    let name = pod_name(set, ordinal);
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.to_owned());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.service_name.clone().filter(|s| !s.is_empty());
    let mut volumes = spec.volumes.take().unwrap_or_default();
    for claim in set.spec.volume_claim_templates.iter().flatten() {
        let claim_template = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != claim_template);
        volumes.push(Volume {
            name: claim_template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(set, &claim_template, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(set)?]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The claims `ordinal` needs, from the claim templates: labelled with the set's selector,
/// owned by the set when its retention policy deletes them with it.
pub fn claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let selector_labels = set.spec.selector.match_labels.clone().unwrap_or_default();
    let deleted_with_set = set
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let template_name = template.metadata.name.clone().unwrap_or_default();
            let mut claim = template.clone();
            let mut labels = claim.metadata.labels.take().unwrap_or_default();
            labels.extend(selector_labels.clone());
            claim.metadata = ObjectMeta {
                name: Some(claim_name(set, &template_name, ordinal)),
                namespace: set.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                owner_references: deleted_with_set
                    .then(|| controller_ref(set).map(|r| vec![r]))
                    .flatten(),
                ..ObjectMeta::default()
            };
            claim.status = None;
            claim
        })
        .collect()
}

/// What one sync does to the pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make this pod (and its claims first).
    Create { ordinal: i32, pod: Box<Pod> },
    /// Delete this pod (by name and uid): failed, condemned, or of an old revision.
    Delete {
        name: String,
        uid: Option<String>,
        why: Why,
    },
    /// Put back the identity labels someone took off.
    Relabel { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Failed,
    ScaleDown,
    Update,
}

/// The actions of one sync, the status before them, and when to look again for a pod
/// waiting out minReadySeconds.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: StatefulSetStatus,
    pub recheck_at: Option<Timestamp>,
}

/// The revisions a sync works with: names and the templates they record.
#[derive(Debug)]
pub struct Revisions<'a> {
    pub current: &'a str,
    pub current_template: &'a PodTemplateSpec,
    pub update: &'a str,
    pub update_template: &'a PodTemplateSpec,
}

/// Upstream's `newVersionedStatefulSetPod` choice (with its operator precedence): pods below
/// the partition (or, without rollingUpdate, below the current replica count) keep the
/// current revision.
fn versioned_pod(set: &StatefulSet, revisions: &Revisions, ordinal: i32) -> Option<Pod> {
    let strategy = set.spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let rolling_update = strategy.and_then(|s| s.rolling_update.as_ref());
    let current_replicas = set
        .status
        .as_ref()
        .and_then(|s| s.current_replicas)
        .unwrap_or(0);
    let below_current = (rolling && rolling_update.is_none() && ordinal < current_replicas)
        || rolling_update.is_some_and(|r| ordinal < r.partition.unwrap_or(0));
    if below_current {
        new_pod(set, revisions.current_template, revisions.current, ordinal)
    } else {
        new_pod(set, revisions.update_template, revisions.update, ordinal)
    }
}

/// Upstream's `computeReplicaStatus` and the rest of the status fields.
fn status_of(
    set: &StatefulSet,
    pods: &[&Pod],
    revisions: &Revisions,
    now: Timestamp,
) -> StatefulSetStatus {
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(revisions.current.to_owned()),
        update_revision: Some(revisions.update.to_owned()),
        ..StatefulSetStatus::default()
    };
    let (mut replicas, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for pod in pods {
        if created(pod) {
            replicas += 1;
        }
        if running_and_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready(set), now) {
                available += 1;
            }
        }
        if created(pod) && !terminating(pod) {
            let revision = revision_of(pod);
            if revision == Some(revisions.current) {
                current += 1;
            }
            if revision == Some(revisions.update) {
                updated += 1;
            }
        }
    }
    status.replicas = replicas;
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    // Upstream's `completeRollingUpdate`.
    let rolling = set
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && updated == replicas && ready == replicas {
        status.current_replicas = Some(updated);
        status.current_revision = Some(revisions.update.to_owned());
    }
    status
}

/// One sync's plan for `set` and the pods it owns.
pub fn plan(set: &StatefulSet, pods: &[&Pod], revisions: &Revisions, now: Timestamp) -> Plan {
    let mut out = Plan {
        status: status_of(set, pods, revisions, now),
        ..Plan::default()
    };
    if set.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let first = start(set);
    let count = replicas(set);
    let monotonic = ordered(set);
    let mut slots: BTreeMap<i32, Option<&Pod>> =
        (first..first + count).map(|o| (o, None)).collect();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for pod in pods {
        let Some(o) = ordinal(set, pod) else { continue };
        match slots.get_mut(&o) {
            Some(slot) => *slot = Some(pod),
            None => condemned.push((o, pod)),
        }
    }
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
    // Upstream's firstUnhealthyPod: among the kept pods in order, then the condemned ones
    // from the lowest ordinal, so that a scale-down of unhealthy pods halts.
    let first_unhealthy = slots
        .values()
        .flatten()
        .copied()
        .chain(condemned.iter().rev().map(|(_, p)| *p))
        .find(|p| !healthy(p))
        .and_then(|p| p.metadata.name.clone());

    // Kept ordinals, lowest first.
    for (&o, slot) in &slots {
        let Some(pod) = slot else {
            if let Some(pod) = versioned_pod(set, revisions, o) {
                out.actions.push(Action::Create {
                    ordinal: o,
                    pod: Box::new(pod),
                });
            }
            if monotonic {
                return out;
            }
            continue;
        };
        let phase = phase(pod);
        if phase == "Failed" || phase == "Succeeded" {
            if !terminating(pod) {
                out.actions.push(Action::Delete {
                    name: pod.name_any(),
                    uid: pod.metadata.uid.clone(),
                    why: Why::Failed,
                });
            }
            // Made again once the old one is gone from the store.
            if monotonic {
                return out;
            }
            continue;
        }
        if monotonic && (terminating(pod) || !running_and_ready(pod)) {
            return out;
        }
        if monotonic && !is_available(pod, min_ready(set), now) {
            out.recheck_at = available_after(pod, min_ready(set));
            return out;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let identity = labels.get(POD_NAME_LABEL) == pod.metadata.name.as_ref()
            && labels.get(POD_INDEX_LABEL) == Some(&o.to_string());
        if !identity && !terminating(pod) {
            out.actions.push(Action::Relabel {
                name: pod.name_any(),
            });
        }
    }

    // Condemned ordinals, highest first.
    for (_, pod) in &condemned {
        if terminating(pod) {
            if monotonic {
                return out;
            }
            continue;
        }
        let is_first_unhealthy = first_unhealthy.as_deref() == pod.metadata.name.as_deref();
        if monotonic && !running_and_ready(pod) && !is_first_unhealthy {
            return out;
        }
        out.actions.push(Action::Delete {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone(),
            why: Why::ScaleDown,
        });
        if monotonic {
            return out;
        }
    }

    // Rolling update, from the highest ordinal down to the partition.
    let strategy = set.spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return out;
    }
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    for (&o, slot) in slots.iter().rev() {
        if o - first < partition {
            break;
        }
        let Some(pod) = slot else { return out };
        if revision_of(pod) != Some(revisions.update) && !terminating(pod) {
            out.actions.push(Action::Delete {
                name: pod.name_any(),
                uid: pod.metadata.uid.clone(),
                why: Why::Update,
            });
            return out;
        }
        if !healthy(pod) {
            return out;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_owned(), "db".to_owned())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    fn set(replicas: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-db".into()),
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("db-headless".into()),
                selector: LabelSelector {
                    match_labels: Some([("app".to_owned(), "db".to_owned())].into()),
                    ..LabelSelector::default()
                },
                template: template("v1"),
                ..StatefulSetSpec::default()
            },
            status: None,
        }
    }

    /// A pod of ordinal `o` at `revision`, Running and Ready (or not).
    fn pod(o: i32, revision: &str, ready: bool) -> Pod {
        let mut pod = new_pod(&set(1), &template("v1"), revision, o).expect("a pod");
        pod.metadata.uid = Some(format!("uid-{o}"));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    fn run(set: &StatefulSet, pods: &[Pod]) -> Plan {
        let (v1, v2) = (template("v1"), template("v2"));
        let revisions = Revisions {
            current: "db-1",
            current_template: &v1,
            update: "db-2",
            update_template: &v2,
        };
        let pods: Vec<&Pod> = pods.iter().collect();
        plan(set, &pods, &revisions, Timestamp::now())
    }

    fn described(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Create { pod, .. } => format!(
                    "create {} {}",
                    pod.name_any(),
                    revision_of(pod).unwrap_or_default()
                ),
                Action::Delete { name, why, .. } => format!("delete {name} {why:?}"),
                Action::Relabel { name } => format!("relabel {name}"),
            })
            .collect()
    }

    #[test]
    fn pods_have_stable_identities_and_their_claims() {
        let mut s = set(1);
        s.spec.volume_claim_templates = Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        }]);
        let made = new_pod(&s, &template("v1"), "db-1", 4).expect("a pod");
        let spec = made.spec.as_ref().expect("spec");
        assert_eq!(made.metadata.name.as_deref(), Some("db-4"));
        assert_eq!(spec.hostname.as_deref(), Some("db-4"));
        assert_eq!(spec.subdomain.as_deref(), Some("db-headless"));
        let labels = made.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[POD_NAME_LABEL], "db-4");
        assert_eq!(labels[POD_INDEX_LABEL], "4");
        assert_eq!(labels[HASH_LABEL], "db-1");
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-db-4")
        );
        let claim = &claims(&s, 4)[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data-db-4"));
        assert_eq!(
            claim.metadata.labels.as_ref().map(|l| l["app"].as_str()),
            Some("db")
        );
        assert_eq!(claim.metadata.owner_references, None, "retained by default");
        assert_eq!(ordinal(&s, &made), Some(4));
        let mut stranger = made.clone();
        stranger.metadata.name = Some("db-04".into());
        assert_eq!(ordinal(&s, &stranger), None);
    }

    #[test]
    fn ordered_pods_are_made_one_at_a_time_after_the_previous_is_ready() {
        let s = set(3);
        assert_eq!(described(&run(&s, &[])), ["create db-0 db-2"]);
        assert!(
            described(&run(&s, &[pod(0, "db-2", false)])).is_empty(),
            "waits for db-0"
        );
        assert_eq!(
            described(&run(&s, &[pod(0, "db-2", true)])),
            ["create db-1 db-2"]
        );
        let mut parallel = set(3);
        parallel.spec.pod_management_policy = Some("Parallel".into());
        assert_eq!(
            described(&run(&parallel, &[])),
            ["create db-0 db-2", "create db-1 db-2", "create db-2 db-2"]
        );
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_and_a_failed_pod_is_replaced() {
        let pods = [
            pod(0, "db-2", true),
            pod(1, "db-2", true),
            pod(2, "db-2", true),
        ];
        assert_eq!(described(&run(&set(1), &pods)), ["delete db-2 ScaleDown"]);
        let mut failed = pod(1, "db-2", false);
        failed.status.as_mut().expect("status").phase = Some("Failed".into());
        assert_eq!(
            described(&run(
                &set(3),
                &[pod(0, "db-2", true), failed, pod(2, "db-2", true)]
            )),
            ["delete db-1 Failed"]
        );
    }

    #[test]
    fn an_ordered_scale_down_halts_while_pods_are_unhealthy() {
        let unhealthy = [
            pod(0, "db-2", false),
            pod(1, "db-2", false),
            pod(2, "db-2", false),
        ];
        assert!(described(&run(&set(0), &unhealthy)).is_empty());
        // Only the lowest condemned pod may go while unhealthy; the highest goes first.
        let one_bad = [pod(0, "db-2", false), pod(1, "db-2", true)];
        assert_eq!(
            described(&run(&set(0), &one_bad)),
            ["delete db-1 ScaleDown"]
        );
        let mut parallel = set(0);
        parallel.spec.pod_management_policy = Some("Parallel".into());
        assert_eq!(
            described(&run(&parallel, &unhealthy)),
            [
                "delete db-2 ScaleDown",
                "delete db-1 ScaleDown",
                "delete db-0 ScaleDown"
            ]
        );
    }

    #[test]
    fn a_rolling_update_replaces_from_the_top_down_to_the_partition() {
        let old = [
            pod(0, "db-1", true),
            pod(1, "db-1", true),
            pod(2, "db-1", true),
        ];
        let plan = run(&set(3), &old);
        assert_eq!(described(&plan), ["delete db-2 Update"]);
        assert_eq!(plan.status.current_revision.as_deref(), Some("db-1"));
        assert_eq!(plan.status.updated_replicas, Some(0));

        let mut partitioned = set(3);
        partitioned.spec.update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy {
                partition: Some(2),
                max_unavailable: None,
            }),
        });
        let canary = [
            pod(0, "db-1", true),
            pod(1, "db-1", true),
            pod(2, "db-2", true),
        ];
        assert!(
            described(&run(&partitioned, &canary)).is_empty(),
            "below the partition stays"
        );
        // A pod below the partition made again keeps the current revision.
        assert_eq!(
            described(&run(&partitioned, &[pod(0, "db-1", true)])),
            ["create db-1 db-1"]
        );

        let done = [
            pod(0, "db-2", true),
            pod(1, "db-2", true),
            pod(2, "db-2", true),
        ];
        let plan = run(&set(3), &done);
        assert!(plan.actions.is_empty());
        assert_eq!(
            plan.status.current_revision.as_deref(),
            Some("db-2"),
            "rollout complete"
        );
        assert_eq!(
            (
                plan.status.replicas,
                plan.status.ready_replicas,
                plan.status.current_replicas
            ),
            (3, Some(3), Some(3))
        );
        assert_eq!(plan.status.observed_generation, Some(2));

        let mut on_delete = set(3);
        on_delete.spec.update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        assert!(described(&run(&on_delete, &old)).is_empty());
    }
}
