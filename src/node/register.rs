//! Registration: create this machine's Node, or take over the one a previous run created.
//!
//! As with the kubelet, `--node-labels` and `--register-with-taints` apply only when the
//! Node is created (the NodeRestriction admission plugin forbids a node from changing its
//! own taints later); on an existing Node only the default labels are brought up to date.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use kube::Api;
use kube::ResourceExt;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::runtime::error_chain;
use crate::backoff::Backoff;

/// Annotation the kubelet sets so that attach/detach is left to the controller manager.
const CONTROLLER_MANAGED_ATTACH_DETACH: &str =
    "volumes.kubernetes.io/controller-managed-attach-detach";

/// The labels the kubelet keeps current on its Node.
pub fn default_labels(hostname: &str, os: &str, arch: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".into(), hostname.into()),
        ("kubernetes.io/os".into(), os.into()),
        ("kubernetes.io/arch".into(), arch.into()),
        ("beta.kubernetes.io/os".into(), os.into()),
        ("beta.kubernetes.io/arch".into(), arch.into()),
    ])
}

/// The Node to create.
pub fn initial_node(
    name: &str,
    default_labels: &BTreeMap<String, String>,
    extra_labels: &BTreeMap<String, String>,
    taints: &[Taint],
    status: NodeStatus,
) -> Node {
    let mut labels = extra_labels.clone();
    labels.extend(default_labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                CONTROLLER_MANAGED_ATTACH_DETACH.into(),
                "true".into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then(|| taints.to_vec()),
            ..NodeSpec::default()
        }),
        status: Some(status),
    }
}

/// Registers `desired` until it succeeds or `cancel` fires (then `None`). Transient
/// failures (API server unreachable, forbidden while RBAC settles) are retried with
/// backoff, as the kubelet does, and each is logged.
pub async fn register(api: &Api<Node>, desired: &Node, cancel: &CancellationToken) -> Option<Node> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(7));
    loop {
        match try_register(api, desired).await {
            Ok(node) => return Some(node),
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(node = %name, error = %error_chain(&err), retry_in = ?delay, "registering the node failed");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn try_register(api: &Api<Node>, desired: &Node) -> Result<Node, kube::Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    match api.create(&PostParams::default(), desired).await {
        Ok(node) => {
            info!(node = %name, "node registered");
            Ok(node)
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let existing = api.get(name).await?;
            let node = reconcile_existing(api, existing, desired).await?;
            info!(node = %name, uid = node.metadata.uid.as_deref().unwrap_or_default(), "node already registered; taking it over");
            Ok(node)
        }
        Err(err) => Err(err),
    }
}

/// Brings the default labels and the attach/detach annotation of an existing Node up to date.
async fn reconcile_existing(
    api: &Api<Node>,
    existing: Node,
    desired: &Node,
) -> Result<Node, kube::Error> {
    let name = existing.metadata.name.clone().unwrap_or_default();
    let current = existing.metadata.labels.clone().unwrap_or_default();
    let hostname = desired
        .labels()
        .get("kubernetes.io/hostname")
        .cloned()
        .unwrap_or_default();
    let os = desired
        .labels()
        .get("kubernetes.io/os")
        .cloned()
        .unwrap_or_default();
    let arch = desired
        .labels()
        .get("kubernetes.io/arch")
        .cloned()
        .unwrap_or_default();
    let stale: BTreeMap<String, String> = default_labels(&hostname, &os, &arch)
        .into_iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .collect();
    let annotated = existing.metadata.annotations.as_ref().is_some_and(|a| {
        a.get(CONTROLLER_MANAGED_ATTACH_DETACH)
            .is_some_and(|v| v == "true")
    });
    if stale.is_empty() && annotated {
        return Ok(existing);
    }
    let patch = json!({
        "metadata": {
            "labels": stale,
            "annotations": { CONTROLLER_MANAGED_ATTACH_DETACH: "true" },
        }
    });
    api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_node_carries_labels_taints_and_status() {
        let defaults = default_labels("worker-1", "linux", "amd64");
        let extra = BTreeMap::from([
            ("tier".to_owned(), "edge".to_owned()),
            ("kubernetes.io/hostname".to_owned(), "spoofed".to_owned()),
        ]);
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("infra".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let node = initial_node(
            "worker-1",
            &defaults,
            &extra,
            std::slice::from_ref(&taint),
            NodeStatus::default(),
        );
        let labels = node.labels();
        assert_eq!(labels["tier"], "edge");
        assert_eq!(
            labels["kubernetes.io/hostname"], "worker-1",
            "default labels win"
        );
        assert_eq!(labels["beta.kubernetes.io/arch"], "amd64");
        assert_eq!(node.spec.and_then(|s| s.taints), Some(vec![taint]));
        assert_eq!(
            node.metadata.annotations.expect("annotations")[CONTROLLER_MANAGED_ATTACH_DETACH],
            "true"
        );

        let untainted = initial_node("w", &defaults, &BTreeMap::new(), &[], NodeStatus::default());
        assert_eq!(untainted.spec.and_then(|s| s.taints), None);
    }
}
