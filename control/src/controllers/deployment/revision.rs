//! Revisions: which of a Deployment's ReplicaSets is the new one, the annotations that
//! number them and record what they were sized for, and which old ones history keeps.
//!
//! Invariants, as upstream: the new ReplicaSet is the oldest whose template equals the
//! Deployment's but for the hash label, so going back to an earlier template (what
//! `kubectl rollout undo` does) reuses that ReplicaSet; it gets revision max(old)+1, and a
//! ReplicaSet renumbered so keeps its former numbers in `revision-history` (at most 2000
//! characters, oldest dropped first); the Deployment's own annotations are copied onto its new
//! ReplicaSet, all but kubectl's last-applied configuration and these controller
//! annotations; only old ReplicaSets beyond `revisionHistoryLimit`, lowest revision first,
//! with no pods, scaled to zero and synced, are deleted. Upstream:
//! `pkg/controller/deployment/util/deployment_util.go` (`SetNewReplicaSetAnnotations`,
//! `FindNewReplicaSet`, `MaxRevision`, `SetReplicasAnnotations`) and `sync.go`
//! (`cleanupDeployment`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::ObjectMeta;
use tracing::warn;

use super::arithmetic::{actual, by_creation, max_surge, replicas, size};
use super::hash::equal_ignore_hash;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Upstream's `maxRevHistoryLengthInChars`.
pub const MAX_HISTORY_CHARS: usize = 2000;
/// Annotations never copied from a Deployment to its ReplicaSets: kubectl's, this
/// controller's, and the retired rollback request.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// An integer annotation of the ReplicaSet; None if absent or not a number.
pub fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(&rs.metadata, key)?.parse().ok()
}

/// Upstream's `Revision`: 0 without the annotation, an error if it is not a number.
pub fn revision(meta: &ObjectMeta) -> Result<i64, std::num::ParseIntError> {
    annotation(meta, REVISION).map_or(Ok(0), str::parse)
}

/// The highest revision among `rss`; unparsable ones are skipped.
pub fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter()
        .filter_map(|rs| revision(&rs.metadata).ok())
        .max()
        .unwrap_or(0)
        .max(0)
}

/// Upstream's `SetReplicasAnnotations`: what the ReplicaSet was sized for.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut updated = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_owned(), value);
            updated = true;
        }
    }
    updated
}

pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&rs.metadata, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(&rs.metadata, MAX_REPLICAS) != Some(max.to_string().as_str())
}

/// Upstream's `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the
/// revision to `new_revision` if it is lower (keeping the former one in the history), and on
/// a ReplicaSet not created yet (`exists` false) records what it is sized for. Whether
/// anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    let old_revision = annotations.get(REVISION).cloned();
    let old_number = match old_revision.as_deref().map(str::parse::<i64>) {
        None | Some(Err(_)) if old_revision.as_deref().is_some_and(|r| !r.is_empty()) => {
            // Upstream leaves such a ReplicaSet alone entirely.
            warn!(replicaset = ?rs.metadata.name, revision = ?old_revision, "not a revision number; leaving it");
            return false;
        }
        Some(Ok(n)) => n,
        _ => 0,
    };
    if old_number < new_revision {
        annotations.insert(REVISION.to_owned(), new_revision.to_string());
        changed = true;
        // It had a revision and gets a newer one: a rollback to it. Keep the old number.
        if let Some(old) = old_revision {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if let Some(updated) = appended_history(&history, &old) {
                annotations.insert(REVISION_HISTORY.to_owned(), updated);
            } else {
                warn!(replicaset = ?rs.metadata.name, limit = MAX_HISTORY_CHARS, "revision history full; not recording revision {old}");
            }
        }
    }
    if !exists {
        let desired = replicas(d);
        changed |= set_replicas_annotations(rs, desired, desired + max_surge(d));
    }
    changed
}

/// Upstream's history append: `old` added at the end, the oldest entries dropped while the
/// whole is longer than [`MAX_HISTORY_CHARS`]; None if even `old` alone does not fit.
fn appended_history(history: &str, old: &str) -> Option<String> {
    if history.is_empty() {
        return Some(old.to_owned());
    }
    let entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_HISTORY_CHARS && start < entries.len() {
        total = total.saturating_sub(entries[start].len() + 1);
        start += 1;
    }
    if total > MAX_HISTORY_CHARS {
        return None;
    }
    let mut kept = entries[start..].to_vec();
    kept.push(old);
    Some(kept.join(","))
}

/// Upstream's `SetDeploymentRevision`: the Deployment's revision annotation follows its new
/// ReplicaSet's. Whether it changed.
pub fn set_deployment_revision(d: &mut Deployment, revision: &str) -> bool {
    let annotations = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if annotations.get(REVISION).map(String::as_str) == Some(revision) {
        return false;
    }
    annotations.insert(REVISION.to_owned(), revision.to_owned());
    true
}

/// Upstream's `FindNewReplicaSet`: the oldest ReplicaSet whose template is the Deployment's
/// (but for the hash label); its index in `rss`.
pub fn find_new(d: &Deployment, rss: &[&ReplicaSet]) -> Option<usize> {
    let mut order: Vec<usize> = (0..rss.len()).collect();
    order.sort_by(|a, b| by_creation(rss[*a], rss[*b]));
    order.into_iter().find(|i| {
        rss[*i]
            .spec
            .template
            .as_ref()
            .is_some_and(|t| equal_ignore_hash(t, &d.spec.template))
    })
}

/// Upstream's `cleanupDeployment`: the old ReplicaSets to delete so that at most
/// `revisionHistoryLimit` remain, lowest revision first, skipping any that still has pods,
/// is not scaled to zero, has a spec its controller has not seen, or is being deleted.
/// Upstream orders unparsable revisions by creation; here they count as revision 0.
pub fn history_to_delete(d: &Deployment, old: &[&ReplicaSet]) -> Vec<String> {
    let Some(limit) = d.spec.revision_history_limit.filter(|l| *l != i32::MAX) else {
        return Vec::new();
    };
    let mut alive: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = i64::try_from(alive.len()).unwrap_or(i64::MAX) - i64::from(limit);
    let Ok(excess) = usize::try_from(excess) else {
        return Vec::new();
    };
    alive.sort_by(|a, b| {
        let rev = |rs: &ReplicaSet| revision(&rs.metadata).unwrap_or(0);
        rev(a).cmp(&rev(b)).then_with(|| by_creation(a, b))
    });
    alive
        .into_iter()
        .take(excess)
        .filter(|rs| {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            actual(rs) == 0 && size(rs) == 0 && rs.metadata.generation.unwrap_or(0) <= observed
        })
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{annotated, deployment, rs, template};
    use super::*;

    fn annotations(rs: &ReplicaSet) -> Vec<(&str, &str)> {
        rs.metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn a_new_replicaset_is_numbered_sized_and_gets_the_deployments_annotations() {
        let mut d = deployment(4, "1", "0");
        d.metadata.annotations = Some(BTreeMap::from([
            ("team".to_owned(), "blue".to_owned()),
            (REVISION.to_owned(), "7".to_owned()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            ),
        ]));
        let mut new = rs("web-abc", 0, 0, 10);
        assert!(set_new_rs_annotations(&d, &mut new, 3, false));
        assert_eq!(
            annotations(&new),
            vec![
                (DESIRED_REPLICAS, "4"),
                (MAX_REPLICAS, "5"),
                (REVISION, "3"),
                ("team", "blue"),
            ]
        );
        assert!(
            !set_new_rs_annotations(&d, &mut new, 3, true),
            "nothing left to change"
        );
        assert!(
            !set_new_rs_annotations(&d, &mut new, 2, true),
            "a revision never goes down"
        );
    }

    #[test]
    fn a_rollback_renumbers_the_old_replicaset_and_keeps_its_history() {
        let d = deployment(2, "1", "0");
        let mut old = annotated(rs("web-old", 0, 0, 1), &[(REVISION, "1")]);
        assert!(set_new_rs_annotations(&d, &mut old, 3, true));
        assert_eq!(
            old.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            old.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_HISTORY))
                .map(String::as_str),
            Some("1")
        );
        assert!(set_new_rs_annotations(&d, &mut old, 5, true));
        assert_eq!(
            old.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_HISTORY))
                .map(String::as_str),
            Some("1,3")
        );

        // (history, old revision, want)
        let long = vec!["12345"; 333].join(","); // 1997 characters
        let cases = [
            ("", "4", Some("4".to_owned())),
            ("1,3", "4", Some("1,3,4".to_owned())),
            (long.as_str(), "99", Some(format!("{long},99"))),
            (
                long.as_str(),
                "999",
                Some(format!("{},999", vec!["12345"; 332].join(","))),
            ),
        ];
        for (history, old, want) in cases {
            assert_eq!(
                appended_history(history, old),
                want,
                "{history:.10}… + {old}"
            );
        }
        assert_eq!(
            appended_history("1", &"9".repeat(MAX_HISTORY_CHARS + 1)),
            None
        );
    }

    #[test]
    fn the_new_replicaset_is_the_oldest_with_the_deployments_template() {
        let d = deployment(2, "1", "0");
        let mut first = rs("web-a", 1, 1, 1);
        first.spec.template = Some(template("nginx:1.27"));
        let mut second = rs("web-b", 1, 1, 5);
        second.spec.template = Some(template("nginx:1.27"));
        let other = rs("web-c", 1, 1, 0);
        assert_eq!(find_new(&d, &[&other, &second, &first]), Some(2));
        assert_eq!(find_new(&d, &[&other]), None);
        assert_eq!(
            max_revision(&[
                &annotated(other.clone(), &[(REVISION, "4")]),
                &annotated(first, &[(REVISION, "x")])
            ]),
            4
        );
        assert_eq!(max_revision(&[]), 0);
    }

    #[test]
    fn history_keeps_the_limit_and_deletes_only_idle_synced_replicasets() {
        let mut d = deployment(2, "1", "0");
        d.spec.revision_history_limit = Some(1);
        let numbered = |name: &str, revision: &str, size: i32| {
            annotated(rs(name, size, size, 1), &[(REVISION, revision)])
        };
        let r1 = numbered("r1", "1", 0);
        let r2 = numbered("r2", "2", 1);
        let r3 = numbered("r3", "3", 0);
        let r4 = numbered("r4", "4", 0);
        // Three above the limit: r1 and r3 go, r2 still has a pod.
        assert_eq!(
            history_to_delete(&d, &[&r4, &r3, &r2, &r1]),
            vec!["r1".to_owned(), "r3".to_owned()]
        );
        let mut unsynced = numbered("r0", "0", 0);
        unsynced.metadata.generation = Some(2);
        assert_eq!(
            history_to_delete(&d, &[&r4, &unsynced]),
            Vec::<String>::new()
        );
        d.spec.revision_history_limit = None;
        assert_eq!(
            history_to_delete(&d, &[&r4, &r3, &r1]),
            Vec::<String>::new()
        );
    }
}
