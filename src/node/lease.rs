//! Lease: the node's heartbeat, a Lease in `kube-node-lease` renewed every
//! [`RENEW_INTERVAL`] by a task of its own, so that no other work of the agent can delay it.
//!
//! The node lifecycle controller takes a node whose Lease is older than its grace period
//! (40 s by default) as lost; renewing at a quarter of the duration, as the kubelet does,
//! leaves room for three failed renewals.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::runtime::error_chain;
use crate::backoff::Backoff;

pub const NAMESPACE: &str = "kube-node-lease";
pub const DURATION_SECONDS: i32 = 40;
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Renews the node's Lease until cancelled.
pub async fn renew(client: Client, node: Node, cancel: CancellationToken) {
    let api: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let name = node.metadata.name.clone().unwrap_or_default();
    let owner = node.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid,
        ..OwnerReference::default()
    });
    let mut held: Option<Lease> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
    let mut failing = false;
    loop {
        let delay = match renew_once(&api, &name, owner.as_ref(), held.take()).await {
            Ok(lease) => {
                if failing {
                    info!(node = %name, "node lease renewed again");
                    failing = false;
                }
                debug!(node = %name, "node lease renewed");
                held = Some(lease);
                backoff.reset();
                RENEW_INTERVAL
            }
            Err(err) => {
                failing = true;
                let delay = backoff.next_delay();
                warn!(node = %name, error = %error_chain(&err), retry_in = ?delay, "renewing the node lease failed");
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One renewal. With the Lease from the previous renewal in hand this is a single
/// update; after a conflict or a failure the Lease is read again, or created.
async fn renew_once(
    api: &Api<Lease>,
    name: &str,
    owner: Option<&OwnerReference>,
    held: Option<Lease>,
) -> Result<Lease, kube::Error> {
    if let Some(lease) = held {
        match api
            .replace(name, &PostParams::default(), &renewed(lease, name, owner))
            .await
        {
            Ok(lease) => return Ok(lease),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                debug!(lease = %name, "lease changed under us; reading it again");
            }
            Err(err) => return Err(err),
        }
    }
    match api.get_opt(name).await? {
        Some(lease) => {
            api.replace(name, &PostParams::default(), &renewed(lease, name, owner))
                .await
        }
        None => {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                spec: None,
            };
            api.create(&PostParams::default(), &renewed(fresh, name, owner))
                .await
        }
    }
}

fn renewed(mut lease: Lease, holder: &str, owner: Option<&OwnerReference>) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(holder.into());
    spec.lease_duration_seconds = Some(DURATION_SECONDS);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    if let Some(owner) = owner {
        let owners = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        if !owners.iter().any(|o| o.uid == owner.uid) {
            owners.push(owner.clone());
        }
    }
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_sets_holder_duration_time_and_one_owner() {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: "n".into(),
            uid: "u-1".into(),
            ..OwnerReference::default()
        };
        let before = Timestamp::now();
        let lease = renewed(Lease::default(), "n", Some(&owner));
        let lease = renewed(lease, "n", Some(&owner));
        let spec = lease.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("n"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert!(spec.renew_time.is_some_and(|t| t.0 >= before));
        assert_eq!(lease.metadata.owner_references.map(|o| o.len()), Some(1));
    }
}
