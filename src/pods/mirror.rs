//! Mirror pods: the API's read-only copy of each static pod, so that `kubectl get pods`
//! shows what the node runs from its manifest directory. The agent creates one per static
//! pod (owned by the Node, marked with the static pod's hash), posts the static pod's
//! status to it, and replaces it when it is deleted or stale, as the kubelet does.
//! Deleting a mirror pod never stops the static pod: only its manifest does.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::static_pods::{CONFIG_MIRROR, annotation};

/// What to do to bring the API's mirror pods in line with the static pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Create(Box<Pod>),
    /// Delete the mirror pod with this UID at once (a grace period means nothing for a copy).
    Delete {
        namespace: String,
        name: String,
        uid: String,
    },
}

impl Op {
    /// The `namespace/name` the operation is about.
    pub fn key(&self) -> String {
        match self {
            Op::Create(pod) => key(pod),
            Op::Delete {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
        }
    }
}

/// `namespace/name` of a pod: static pods and their mirrors share it.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether `mirror` is the current, live mirror of `static_pod`.
pub fn mirrors(mirror: &Pod, static_pod: &Pod) -> bool {
    mirror.metadata.deletion_timestamp.is_none()
        && annotation(mirror, CONFIG_MIRROR) == static_pod.metadata.uid.as_deref()
}

/// The mirror pod of `static_pod`, owned by the node (`node_uid`).
pub fn mirror_of(static_pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut mirror = static_pod.clone();
    let hash = static_pod.metadata.uid.clone().unwrap_or_default();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror.metadata.creation_timestamp = None;
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), hash);
    // The node authorizer lets a node create only mirror pods owned by itself.
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node_name.to_owned(),
        uid: node_uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    mirror.status = None;
    mirror
}

/// The operations that make `mirrors` (the API's mirror pods on this node, by key) match
/// `static_pods`; creations wait for the Node (`node`: its name and UID).
pub fn reconcile(
    static_pods: &[&Pod],
    mirrors_in_api: &HashMap<String, Pod>,
    node: Option<(&str, &str)>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let wanted: HashMap<String, &Pod> = static_pods.iter().map(|p| (key(p), *p)).collect();
    let mut existing: Vec<(&String, &Pod)> = mirrors_in_api.iter().collect();
    existing.sort_by_key(|(k, _)| *k);
    for (k, mirror) in existing {
        let current = wanted.get(k).is_some_and(|s| mirrors(mirror, s));
        if !current {
            ops.push(Op::Delete {
                namespace: mirror.metadata.namespace.clone().unwrap_or_default(),
                name: mirror.metadata.name.clone().unwrap_or_default(),
                uid: mirror.metadata.uid.clone().unwrap_or_default(),
            });
        }
    }
    if let Some((node_name, node_uid)) = node {
        let mut missing: Vec<(&String, &&Pod)> = wanted
            .iter()
            .filter(|(k, _)| !mirrors_in_api.contains_key(*k))
            .collect();
        missing.sort_by_key(|(k, _)| *k);
        for (_, pod) in missing {
            ops.push(Op::Create(Box::new(mirror_of(pod, node_name, node_uid))));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::static_pods;
    use std::path::Path;

    fn static_pod(image: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: {image}\n"
        );
        static_pods::parse(Path::new("/m/web.yaml"), &text, "n1").expect("parses")
    }

    fn in_api(mirror: Pod, uid: &str) -> (String, Pod) {
        let mut mirror = mirror;
        mirror.metadata.uid = Some(uid.into());
        (key(&mirror), mirror)
    }

    #[test]
    fn a_mirror_is_a_copy_owned_by_the_node() {
        let pod = static_pod("busybox");
        let mirror = mirror_of(&pod, "n1", "node-uid");
        assert_eq!(mirror.metadata.name, pod.metadata.name);
        assert_eq!(mirror.metadata.uid, None);
        assert_eq!(
            annotation(&mirror, CONFIG_MIRROR),
            pod.metadata.uid.as_deref()
        );
        assert!(static_pods::is_mirror(&mirror));
        let owner = &mirror.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "n1", "node-uid")
        );
        assert_eq!(mirror.spec, pod.spec);
        assert!(mirrors(&mirror, &pod));
    }

    #[test]
    fn missing_mirrors_are_created_once_the_node_is_known() {
        let pod = static_pod("busybox");
        assert!(reconcile(&[&pod], &HashMap::new(), None).is_empty());
        let ops = reconcile(&[&pod], &HashMap::new(), Some(("n1", "u")));
        assert!(matches!(&ops[..], [Op::Create(m)] if mirrors(m, &pod)));
        let api = HashMap::from([in_api(mirror_of(&pod, "n1", "u"), "m1")]);
        assert!(reconcile(&[&pod], &api, Some(("n1", "u"))).is_empty());
    }

    #[test]
    fn stale_deleted_and_orphaned_mirrors_are_removed() {
        let old = static_pod("busybox");
        let new = static_pod("pause");
        let api = HashMap::from([in_api(mirror_of(&old, "n1", "u"), "m1")]);
        let delete = Op::Delete {
            namespace: "default".into(),
            name: "web-n1".into(),
            uid: "m1".into(),
        };
        // The manifest changed: the old mirror goes; the new one follows once it is gone.
        assert_eq!(
            reconcile(&[&new], &api, Some(("n1", "u"))),
            vec![delete.clone()]
        );
        // The manifest was removed.
        assert_eq!(
            reconcile(&[], &api, Some(("n1", "u"))),
            vec![delete.clone()]
        );
        // Someone deleted the mirror: it is removed at once and made again.
        let (k, mut mirror) = in_api(mirror_of(&old, "n1", "u"), "m1");
        mirror.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let api = HashMap::from([(k, mirror)]);
        assert_eq!(reconcile(&[&old], &api, Some(("n1", "u"))), vec![delete]);
    }
}
