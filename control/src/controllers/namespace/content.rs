//! Content: what emptying a namespace deletes, and what the listing afterwards says is left —
//! pure, from discovery's resource types and the objects' metadata.
//!
//! Invariants: every namespaced type that can be listed and deleted is emptied (by one
//! `deletecollection` when the type serves it, else object by object) and listed again; the
//! namespace is empty only when every such listing came back empty. Upstream:
//! `pkg/controller/namespace/deletion/namespaced_resources_deleter.go`
//! (`deleteAllContentForGroupVersionResource`, `estimateGracefulTermination`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, verbs};

/// Upstream's `finalizerEstimateSeconds`: how long objects held by finalizers are
/// expected to take.
pub const FINALIZER_ESTIMATE: Duration = Duration::from_secs(15);

/// One resource type to empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub resource: ApiResource,
    /// Served `deletecollection`: one request empties it.
    pub collection: bool,
}

impl Target {
    pub fn is_pods(&self) -> bool {
        self.resource.group.is_empty() && self.resource.plural == "pods"
    }
}

/// `resource.group`, as upstream names types in conditions (`pods.` for core pods).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.resource.plural, self.resource.group)
    }
}

/// The namespaced types to empty, sorted by group and resource for stable logs.
pub fn targets(resources: &[(ApiResource, ApiCapabilities)]) -> Vec<Target> {
    let mut targets: Vec<Target> = resources
        .iter()
        .filter(|(_, caps)| caps.scope == Scope::Namespaced)
        .filter(|(_, caps)| caps.supports_operation(verbs::LIST))
        .filter(|(_, caps)| {
            caps.supports_operation(verbs::DELETE)
                || caps.supports_operation(verbs::DELETE_COLLECTION)
        })
        .map(|(resource, caps)| Target {
            resource: resource.clone(),
            collection: caps.supports_operation(verbs::DELETE_COLLECTION),
        })
        .collect();
    targets.sort_by(|a, b| {
        (&a.resource.group, &a.resource.plural).cmp(&(&b.resource.group, &b.resource.plural))
    });
    targets
}

/// What the listings after deleting found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Objects left, by `resource.group`.
    pub remaining: BTreeMap<String, usize>,
    /// Objects left, by each finalizer they carry.
    pub finalizers: BTreeMap<String, usize>,
    /// The latest end of a grace period among the pods left (their deletionTimestamp).
    pods_due: Option<Timestamp>,
}

/// What to do about what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Nothing: the namespace can be released.
    Nothing,
    /// Pods in their grace period or objects held by finalizers: look again then.
    Wait(Duration),
    /// Objects nothing explains (pods past their grace period, on a node that has not
    /// stopped them yet, or objects that reappeared): look again with backoff.
    Unexplained,
}

impl Tally {
    /// Counts the objects of `target` a listing found.
    pub fn add(&mut self, target: &Target, left: &[ObjectMeta]) {
        if left.is_empty() {
            return;
        }
        *self.remaining.entry(target.to_string()).or_default() += left.len();
        for meta in left {
            for finalizer in meta.finalizers.iter().flatten() {
                *self.finalizers.entry(finalizer.clone()).or_default() += 1;
            }
            if target.is_pods()
                && let Some(due) = &meta.deletion_timestamp
            {
                self.pods_due = Some(self.pods_due.map_or(due.0, |d| d.max(due.0)));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remaining.is_empty()
    }

    /// Upstream requeues after half the estimate plus a second: the estimate is the longest
    /// remaining pod grace period, or [`FINALIZER_ESTIMATE`] when finalizers hold content.
    pub fn left(&self, now: Timestamp) -> Left {
        if self.remaining.is_empty() {
            return Left::Nothing;
        }
        let grace = self
            .pods_due
            .and_then(|due| Duration::try_from(due.duration_since(now)).ok())
            .unwrap_or_default();
        let finalizers = if self.finalizers.is_empty() {
            Duration::ZERO
        } else {
            FINALIZER_ESTIMATE
        };
        let estimate = grace.max(finalizers);
        if estimate.is_zero() {
            Left::Unexplained
        } else {
            Left::Wait(estimate / 2 + Duration::from_secs(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn resource(
        group: &str,
        plural: &str,
        verbs: &[&str],
        scope: Scope,
    ) -> (ApiResource, ApiCapabilities) {
        (
            ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: if group.is_empty() {
                    "v1".into()
                } else {
                    format!("{group}/v1")
                },
                kind: plural.into(),
                plural: plural.into(),
            },
            ApiCapabilities {
                scope,
                subresources: vec![],
                operations: verbs.iter().map(|v| (*v).to_owned()).collect(),
            },
        )
    }

    const ALL: &[&str] = &[
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "watch",
    ];

    fn target(group: &str, plural: &str) -> Target {
        Target {
            resource: resource(group, plural, ALL, Scope::Namespaced).0,
            collection: true,
        }
    }

    #[test]
    fn only_namespaced_listable_deletable_types_are_emptied() {
        let resources = vec![
            resource("apps", "deployments", ALL, Scope::Namespaced),
            resource("", "pods", ALL, Scope::Namespaced),
            resource("", "nodes", ALL, Scope::Cluster),
            resource("", "bindings", &["create"], Scope::Namespaced),
            resource(
                "authorization.k8s.io",
                "localsubjectaccessreviews",
                &["create"],
                Scope::Namespaced,
            ),
            resource(
                "example.com",
                "widgets",
                &["delete", "get", "list"],
                Scope::Namespaced,
            ),
            resource(
                "example.com",
                "unlistable",
                &["delete", "get"],
                Scope::Namespaced,
            ),
        ];
        let found: Vec<(String, bool)> = targets(&resources)
            .iter()
            .map(|t| (t.to_string(), t.collection))
            .collect();
        assert_eq!(
            found,
            vec![
                ("pods.".to_owned(), true),
                ("deployments.apps".to_owned(), true),
                ("widgets.example.com".to_owned(), false),
            ]
        );
    }

    fn object(finalizers: &[&str], deleting_until: Option<Timestamp>) -> ObjectMeta {
        ObjectMeta {
            finalizers: (!finalizers.is_empty())
                .then(|| finalizers.iter().map(|f| (*f).to_owned()).collect()),
            deletion_timestamp: deleting_until.map(Time),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_empty_namespace_can_be_released() {
        let mut tally = Tally::default();
        tally.add(&target("", "configmaps"), &[]);
        assert!(tally.is_empty());
        assert_eq!(tally.left(Timestamp::now()), Left::Nothing);
    }

    #[test]
    fn terminating_pods_are_waited_for_half_their_remaining_grace_plus_a_second() {
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let due = |secs: i64| Some(Timestamp::from_second(1_700_000_000 + secs).expect("time"));
        let mut tally = Tally::default();
        tally.add(
            &target("", "pods"),
            &[object(&[], due(4)), object(&[], due(30))],
        );
        assert_eq!(tally.remaining, BTreeMap::from([("pods.".to_owned(), 2)]));
        assert_eq!(tally.left(now), Left::Wait(Duration::from_secs(16)));
        // Past their grace period: the node has not stopped them yet; back off.
        assert_eq!(tally.left(now + Duration::from_secs(60)), Left::Unexplained);
    }

    #[test]
    fn finalizers_are_counted_and_waited_for() {
        let mut tally = Tally::default();
        let held = [
            object(&["example.com/cleanup"], None),
            object(&["example.com/cleanup", "other"], None),
        ];
        tally.add(&target("example.com", "widgets"), &held);
        assert_eq!(
            tally.finalizers,
            BTreeMap::from([
                ("example.com/cleanup".to_owned(), 2),
                ("other".to_owned(), 1)
            ])
        );
        assert_eq!(
            tally.left(Timestamp::now()),
            Left::Wait(Duration::from_millis(8_500))
        );
    }

    #[test]
    fn content_nothing_explains_backs_off() {
        let mut tally = Tally::default();
        // A deletionTimestamp on something other than a pod is no grace period to wait for.
        tally.add(
            &target("", "secrets"),
            &[object(&[], Some(Timestamp::now()))],
        );
        assert_eq!(tally.left(Timestamp::now()), Left::Unexplained);
    }
}
