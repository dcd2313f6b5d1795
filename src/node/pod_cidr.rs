//! Pod CIDR: the node's pod address range, from `--pod-cidr` or, as the kubelet takes it,
//! from `spec.podCIDR` once the controller manager's node IPAM has set it. With the range
//! known, nodus writes the bridge network's CNI configuration and tells the runtime
//! (CRI `UpdateRuntimeConfig`); until then the runtime reports its network not ready, and so
//! does the node.
//!
//! Invariants: the range is set once (the API allows setting `spec.podCIDR` only once); a
//! range that does not parse is reported and waited past, never guessed.

use std::path::PathBuf;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use nodus_cri::Runtime;
use nodus_net::cni::BridgeNetwork;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the bridge network's configuration goes.
#[derive(Debug, Clone)]
pub struct Network {
    pub cni_conf_dir: PathBuf,
    pub root_dir: PathBuf,
}

impl Network {
    /// Writes the CNI configuration for `subnet`.
    pub fn configure(&self, subnet: IpNet) -> Result<PathBuf, nodus_net::cni::Error> {
        let network = BridgeNetwork {
            name: "nodus".into(),
            bridge: "cni0".into(),
            subnet,
            ipam_data_dir: Some(self.root_dir.join("cni-ipam")),
        };
        let path = network.write(&self.cni_conf_dir)?;
        info!(path = %path.display(), pod_cidr = %subnet, "CNI network configuration in place");
        Ok(path)
    }
}

/// The node's first pod CIDR, if set and valid.
pub fn of_node(node: &Node) -> Option<Result<IpNet, String>> {
    let spec = node.spec.as_ref()?;
    let raw = spec
        .pod_cidrs
        .as_ref()
        .and_then(|all| all.first())
        .or(spec.pod_cidr.as_ref())?;
    Some(raw.parse::<IpNet>().map_err(|err| format!("{raw}: {err}")))
}

/// Waits for the Node's pod CIDR, then configures the network and the runtime with it.
pub async fn follow(
    client: Client,
    node_name: String,
    network: Network,
    runtime: Runtime,
    cancel: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = std::pin::pin!(watcher::watcher(nodes, config).default_backoff());
    info!(node = %node_name, "waiting for the node's spec.podCIDR");
    let subnet = loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(Event::Apply(node) | Event::InitApply(node))) => match of_node(&node) {
                Some(Ok(subnet)) => break subnet,
                Some(Err(message)) => {
                    warn!(node = %node_name, %message, "the node's podCIDR does not parse; waiting for a usable one")
                }
                None => {}
            },
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                warn!(error = %crate::node::runtime::error_chain(&err), "watching the node for its podCIDR failed; retrying")
            }
            None => return,
        }
    };
    if let Err(err) = network.configure(subnet) {
        warn!(error = %crate::node::runtime::error_chain(&err), "writing the CNI configuration failed: pods cannot get addresses");
        return;
    }
    // The kubelet passes the range on too; runtimes that manage their own CNI use it.
    if let Err(err) = runtime.update_pod_cidr(&subnet.to_string()).await {
        warn!(error = %err, "telling the runtime the pod CIDR failed");
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;

    use super::*;

    fn node(cidr: Option<&str>, cidrs: Option<Vec<&str>>) -> Node {
        Node {
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_owned),
                pod_cidrs: cidrs.map(|c| c.into_iter().map(str::to_owned).collect()),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn the_first_of_pod_cidrs_wins_and_bad_ones_are_errors() {
        let net = |s: &str| s.parse::<IpNet>().expect("a net");
        assert_eq!(of_node(&node(None, None)), None);
        assert_eq!(
            of_node(&node(Some("10.244.1.0/24"), None)),
            Some(Ok(net("10.244.1.0/24")))
        );
        assert_eq!(
            of_node(&node(
                Some("10.244.1.0/24"),
                Some(vec!["10.244.2.0/24", "fd00::/64"])
            )),
            Some(Ok(net("10.244.2.0/24")))
        );
        assert!(matches!(
            of_node(&node(Some("10.244.1.0"), None)),
            Some(Err(_))
        ));
    }
}
