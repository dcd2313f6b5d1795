//! Kinds: the API types as the garbage collector needs them — which to watch (upstream's
//! `GetDeletableResources`: list, watch and delete, minus the ignored events), and where an
//! owner reference's kind is served, to read the owner by name (upstream's REST mapper).
//!
//! Invariant: a kind resolves to one resource type of its group that can be read by name,
//! at the version discovery prefers; owner references name a group and kind, and the same
//! object answers at every version its type serves.

use std::collections::HashMap;

use kube::discovery::{ApiCapabilities, ApiResource, Scope, verbs};

/// Upstream's `DefaultIgnoredResources`: events are many, short-lived and never owners.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// The group of an `apiVersion` (`apps/v1` is `apps`, `v1` the core group's).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// The types to watch: every one that can be listed, watched and deleted, except events.
pub fn monitored(resources: &[(ApiResource, ApiCapabilities)]) -> Vec<ApiResource> {
    resources
        .iter()
        .filter(|(r, _)| {
            !IGNORED
                .iter()
                .any(|(group, plural)| r.group == *group && r.plural == *plural)
        })
        .filter(|(_, caps)| {
            [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|verb| caps.supports_operation(verb))
        })
        .map(|(r, _)| r.clone())
        .collect()
}

/// Where each kind is served, by group and kind.
#[derive(Clone, Debug, Default)]
pub struct Kinds {
    by_kind: HashMap<(String, String), (ApiResource, Scope)>,
}

impl Kinds {
    /// From discovery's types. With `previous`, its kinds are kept where discovery found
    /// nothing: a group version that did not answer this time still serves what it did.
    pub fn new(resources: &[(ApiResource, ApiCapabilities)], previous: Option<&Kinds>) -> Self {
        let mut by_kind = previous.map(|p| p.by_kind.clone()).unwrap_or_default();
        let mut fresh = HashMap::new();
        for (resource, caps) in resources {
            if !caps.supports_operation(verbs::GET) {
                continue;
            }
            // The first type of a kind wins (discovery lists the preferred version first).
            fresh
                .entry((resource.group.clone(), resource.kind.clone()))
                .or_insert_with(|| (resource.clone(), caps.scope.clone()));
        }
        by_kind.extend(fresh);
        Kinds { by_kind }
    }

    /// The type and scope an owner reference's `apiVersion` and `kind` point at.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&(ApiResource, Scope)> {
        self.by_kind
            .get(&(group_of(api_version).to_owned(), kind.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_kind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use kube::core::gvk::GroupVersion;

    use super::*;

    fn resource(
        group: &str,
        kind: &str,
        plural: &str,
        scope: Scope,
        operations: &[&str],
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
                operations: operations.iter().map(|o| (*o).to_owned()).collect(),
            },
        )
    }

    const ALL: &[&str] = &["get", "list", "watch", "delete", "patch"];

    fn served() -> Vec<(ApiResource, ApiCapabilities)> {
        vec![
            resource("", "Pod", "pods", Scope::Namespaced, ALL),
            resource("", "Event", "events", Scope::Namespaced, ALL),
            resource("events.k8s.io", "Event", "events", Scope::Namespaced, ALL),
            resource("", "Binding", "bindings", Scope::Namespaced, &["create"]),
            resource("", "Node", "nodes", Scope::Cluster, ALL),
            resource("apps", "ReplicaSet", "replicasets", Scope::Namespaced, ALL),
            resource(
                "authorization.k8s.io",
                "SubjectAccessReview",
                "subjectaccessreviews",
                Scope::Cluster,
                &["create"],
            ),
        ]
    }

    #[test]
    fn only_deletable_watchable_types_other_than_events_are_watched() {
        let watched: Vec<String> = monitored(&served())
            .iter()
            .map(|r| format!("{}.{}", r.plural, r.group))
            .collect();
        assert_eq!(watched, vec!["pods.", "nodes.", "replicasets.apps"]);
    }

    #[test]
    fn owner_kinds_resolve_by_group_whatever_the_version() {
        let kinds = Kinds::new(&served(), None);
        let (rs, scope) = kinds.resolve("apps/v1beta2", "ReplicaSet").expect("served");
        assert_eq!(
            (rs.plural.as_str(), scope),
            ("replicasets", &Scope::Namespaced)
        );
        let (node, scope) = kinds.resolve("v1", "Node").expect("served");
        assert_eq!((node.plural.as_str(), scope), ("nodes", &Scope::Cluster));
        assert!(kinds.resolve("v1", "Binding").is_none(), "cannot be read");
        assert!(kinds.resolve("example.com/v1", "Widget").is_none());
    }

    #[test]
    fn kinds_of_a_group_that_did_not_answer_are_kept() {
        let before = Kinds::new(&served(), None);
        let widget = resource("example.com", "Widget", "widgets", Scope::Namespaced, ALL);
        let now = Kinds::new(std::slice::from_ref(&widget), Some(&before));
        assert!(now.resolve("apps/v1", "ReplicaSet").is_some());
        assert!(now.resolve("example.com/v1", "Widget").is_some());
        assert_eq!(Kinds::new(&[widget], None).len(), 1);
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
    }
}
