//! Conditions: the status conditions upstream's namespace controller sets on a namespace it
//! is deleting, so that `kubectl describe namespace` says why one stays Terminating — pure.
//!
//! Invariants: all five condition types are always present once a deletion was attempted;
//! a type whose problem is absent holds upstream's "ok" variant (status False); a condition
//! changes, with a new lastTransitionTime, only when its status, reason or message does;
//! conditions of other types are kept as they are. Upstream:
//! `pkg/controller/namespace/deletion/status_condition_utils.go`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NamespaceCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const DISCOVERY_FAILURE: &str = "NamespaceDeletionDiscoveryFailure";
pub const GROUP_VERSION_PARSING_FAILURE: &str = "NamespaceDeletionGroupVersionParsingFailure";
pub const CONTENT_FAILURE: &str = "NamespaceDeletionContentFailure";
pub const CONTENT_REMAINING: &str = "NamespaceContentRemaining";
pub const FINALIZERS_REMAINING: &str = "NamespaceFinalizersRemaining";

/// (type, ok reason, ok message), in upstream's order.
const OK: &[(&str, &str, &str)] = &[
    (
        DISCOVERY_FAILURE,
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        GROUP_VERSION_PARSING_FAILURE,
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        CONTENT_FAILURE,
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        CONTENT_REMAINING,
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        FINALIZERS_REMAINING,
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// What one pass over a namespace being deleted ran into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// `group/version: error` per group version discovery could not read.
    pub discovery_failures: Vec<String>,
    /// `resource.group: error` per type that could not be emptied.
    pub content_failures: Vec<String>,
    /// Objects left, by `resource.group`.
    pub remaining: BTreeMap<String, usize>,
    /// Objects left, by finalizer.
    pub finalizers: BTreeMap<String, usize>,
}

impl Report {
    /// The failing conditions as (type, reason, message), with upstream's wording.
    fn failing(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut failing = Vec::new();
        if !self.discovery_failures.is_empty() {
            failing.push((
                DISCOVERY_FAILURE,
                "DiscoveryFailed",
                format!(
                    "Discovery failed for some groups, {} failing: unable to retrieve the complete list of server APIs: {}",
                    self.discovery_failures.len(),
                    self.discovery_failures.join(", ")
                ),
            ));
        }
        if !self.content_failures.is_empty() {
            let mut failures = self.content_failures.clone();
            failures.sort();
            failing.push((
                CONTENT_FAILURE,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    failures.len(),
                    failures.join(", ")
                ),
            ));
        }
        if !self.remaining.is_empty() {
            let left: Vec<String> = self
                .remaining
                .iter()
                .map(|(resource, n)| format!("{resource} has {n} resource instances"))
                .collect();
            failing.push((
                CONTENT_REMAINING,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", left.join(", ")),
            ));
        }
        if !self.finalizers.is_empty() {
            let left: Vec<String> = self
                .finalizers
                .iter()
                .map(|(finalizer, n)| format!("{finalizer} in {n} resource instances"))
                .collect();
            failing.push((
                FINALIZERS_REMAINING,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    left.join(", ")
                ),
            ));
        }
        failing
    }
}

/// The namespace's conditions after `report`, or None when they would not change.
pub fn update(
    existing: &[NamespaceCondition],
    report: &Report,
    now: Timestamp,
) -> Option<Vec<NamespaceCondition>> {
    let failing = report.failing();
    let mut conditions = existing.to_vec();
    let mut changed = false;
    for (kind, ok_reason, ok_message) in OK {
        let (status, reason, message) = match failing.iter().find(|(k, _, _)| k == kind) {
            Some((_, reason, message)) => ("True", *reason, message.clone()),
            None => ("False", *ok_reason, (*ok_message).to_owned()),
        };
        let wanted = NamespaceCondition {
            type_: (*kind).to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
        };
        match conditions.iter_mut().find(|c| c.type_ == *kind) {
            None => {
                conditions.push(wanted);
                changed = true;
            }
            Some(old)
                if old.status != wanted.status
                    || old.reason != wanted.reason
                    || old.message != wanted.message =>
            {
                *old = wanted;
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed.then_some(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of<'a>(conditions: &'a [NamespaceCondition], kind: &str) -> (&'a str, &'a str) {
        let c = conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition present");
        (c.status.as_str(), c.message.as_deref().unwrap_or_default())
    }

    #[test]
    fn a_clean_pass_sets_every_ok_condition_once() {
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let conditions = update(&[], &Report::default(), now).expect("new conditions");
        assert_eq!(conditions.len(), 5);
        assert!(conditions.iter().all(|c| c.status == "False"));
        assert_eq!(
            status_of(&conditions, CONTENT_REMAINING),
            ("False", "All content successfully removed")
        );
        let later = Timestamp::from_second(1_700_000_100).expect("time");
        assert_eq!(update(&conditions, &Report::default(), later), None);
    }

    #[test]
    fn remaining_content_and_failures_read_as_upstream_writes_them() {
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let report = Report {
            discovery_failures: vec!["metrics.k8s.io/v1beta1: 503".into()],
            content_failures: vec!["widgets.example.com: forbidden".into()],
            remaining: BTreeMap::from([("pods.".into(), 2), ("widgets.example.com".into(), 1)]),
            finalizers: BTreeMap::from([("example.com/cleanup".into(), 1)]),
        };
        let other = NamespaceCondition {
            type_: "Custom".into(),
            status: "True".into(),
            ..NamespaceCondition::default()
        };
        let conditions = update(std::slice::from_ref(&other), &report, now).expect("changed");
        assert_eq!(conditions[0], other, "other conditions are kept");
        assert_eq!(
            status_of(&conditions, CONTENT_REMAINING),
            (
                "True",
                "Some resources are remaining: pods. has 2 resource instances, widgets.example.com has 1 resource instances"
            )
        );
        assert_eq!(
            status_of(&conditions, FINALIZERS_REMAINING),
            (
                "True",
                "Some content in the namespace has finalizers remaining: example.com/cleanup in 1 resource instances"
            )
        );
        assert_eq!(
            status_of(&conditions, DISCOVERY_FAILURE),
            (
                "True",
                "Discovery failed for some groups, 1 failing: unable to retrieve the complete list of server APIs: metrics.k8s.io/v1beta1: 503"
            )
        );
        assert_eq!(
            status_of(&conditions, CONTENT_FAILURE),
            (
                "True",
                "Failed to delete all resource types, 1 remaining: widgets.example.com: forbidden"
            )
        );
        // Once the pods are gone only their condition changes, with a new transition time.
        let later = Timestamp::from_second(1_700_000_100).expect("time");
        let fewer = Report {
            remaining: BTreeMap::from([("widgets.example.com".into(), 1)]),
            ..report
        };
        let next = update(&conditions, &fewer, later).expect("changed");
        for (before, after) in conditions.iter().zip(&next) {
            let moved = before.last_transition_time != after.last_transition_time;
            assert_eq!(moved, before.type_ == CONTENT_REMAINING, "{}", before.type_);
        }
    }
}
