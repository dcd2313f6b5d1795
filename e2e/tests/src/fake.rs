//! Fake nodes: Node objects with no agent behind them, Ready and with a fresh Lease, for the
//! scheduler benchmark and the node lifecycle tests. Nothing renews them: the node
//! lifecycle controller takes them as lost once its grace period has passed.

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

/// The label every fake node and its Lease carry.
pub const LABEL: &str = "nodus.dev/fake-node";

/// Creates a Ready node `name` (8 CPUs, 32 GiB, 110 pods) with `labels`, its Lease just
/// renewed, and `pod_cidr` set so that node IPAM leaves its blocks alone.
pub async fn create(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
    pod_cidr: &str,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut all: Vec<(String, String)> = vec![
        (LABEL.into(), "true".into()),
        ("kubernetes.io/hostname".into(), name.into()),
    ];
    all.extend(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(all.into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: Some(serde_json::from_value(json!({ "podCIDR": pod_cidr }))?),
        ..Node::default()
    };
    nodes.create(&PostParams::default(), &node).await?;
    let now = Timestamp::now().to_string();
    let status = json!({ "status": {
        "capacity": { "cpu": "8", "memory": "32Gi", "pods": "110" },
        "allocatable": { "cpu": "8", "memory": "32Gi", "pods": "110" },
        "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now }],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

/// Removes every fake node and Lease.
pub async fn remove_all(client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let labelled = ListParams::default().labels(LABEL);
    nodes
        .delete_collection(&DeleteParams::default(), &labelled)
        .await?;
    leases
        .delete_collection(&DeleteParams::default(), &labelled)
        .await?;
    Ok(())
}
