//! Pod routes: the pod network across nodes in host-gateway mode. For every other node
//! with a pod CIDR, a route to that CIDR through the node's InternalIP of the same address
//! family; routes of nodes that are gone are removed. The Nodes are watched, and the routes
//! synced again after each change (changes within a moment go together) and every minute,
//! so a route removed by hand comes back. Nodes must share a network (the gateway must be
//! directly reachable); a node that does not gets a warning and no route.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use nodus_net::routes::{Route, Routes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::node::runtime::error_chain;

/// Changes within this long are synced together.
const SETTLE: Duration = Duration::from_millis(200);
/// The safety net behind the watch.
const RESYNC: Duration = Duration::from_secs(60);

/// The routes to the other nodes' pod CIDRs.
pub fn wanted<'a>(nodes: impl IntoIterator<Item = &'a Node>, this_node: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(this_node) {
            continue;
        }
        let spec = node.spec.as_ref();
        let cidrs: Vec<IpNet> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let addresses: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        for cidr in cidrs {
            let gateway = addresses
                .iter()
                .find(|ip| ip.is_ipv4() == matches!(cidr, IpNet::V4(_)));
            if let Some(gateway) = gateway {
                routes.push(Route {
                    destination: cidr.trunc(),
                    gateway: *gateway,
                });
            }
        }
    }
    routes.sort();
    routes
}

async fn sync(routes: Vec<Route>) {
    let result = tokio::task::spawn_blocking(move || Routes::open()?.sync(&routes)).await;
    match result {
        Ok(Ok(synced)) => {
            for route in &synced.added {
                info!(%route, "pod route added");
            }
            for route in &synced.removed {
                info!(%route, "pod route removed");
            }
            for err in &synced.failed {
                warn!(error = %error_chain(err), "a pod route could not be made (is that node on a network this one shares?)");
            }
        }
        Ok(Err(err)) => warn!(error = %error_chain(&err), "syncing pod routes failed"),
        Err(err) => warn!(error = %err, "the pod route sync did not finish"),
    }
}

/// Keeps the routes to other nodes' pod CIDRs until cancelled; they stay in place after,
/// so that pods keep talking while the agent restarts.
pub async fn follow(client: Client, node_name: String, cancel: CancellationToken) {
    let api: Api<Node> = Api::all(client);
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: BTreeMap<String, Node> = BTreeMap::new();
    let mut synced_once = false;
    let mut last: Option<Vec<Route>> = None;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        let settle = async {
            if dirty {
                tokio::time::sleep(SETTLE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listing.clear(),
                Some(Ok(Event::InitApply(node))) => {
                    listing.insert(node.metadata.name.clone().unwrap_or_default(), node);
                }
                Some(Ok(Event::InitDone)) => {
                    nodes = std::mem::take(&mut listing);
                    synced_once = true;
                    dirty = true;
                }
                Some(Ok(Event::Apply(node))) => {
                    nodes.insert(node.metadata.name.clone().unwrap_or_default(), node);
                    dirty = true;
                }
                Some(Ok(Event::Delete(node))) => {
                    nodes.remove(node.metadata.name.as_deref().unwrap_or_default());
                    dirty = true;
                }
                Some(Err(err)) => debug!(error = %error_chain(&err), "watching nodes for pod routes failed; retrying"),
                None => return,
            },
            _ = settle => {
                dirty = false;
                let routes = wanted(nodes.values(), &node_name);
                // Node status updates come every few seconds; most change no route.
                if last.as_ref() != Some(&routes) {
                    sync(routes.clone()).await;
                    last = Some(routes);
                }
            }
            // Only a complete view may remove routes.
            _ = resync.tick(), if synced_once => {
                let routes = wanted(nodes.values(), &node_name);
                sync(routes.clone()).await;
                last = Some(routes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "podCIDR": cidrs.first(), "podCIDRs": cidrs },
            "status": { "addresses": ips.iter().map(|ip| json!({ "type": "InternalIP", "address": ip }))
                .chain([json!({ "type": "Hostname", "address": name })]).collect::<Vec<_>>() },
        }))
        .expect("node")
    }

    #[test]
    fn every_other_node_with_a_pod_cidr_gets_a_route_through_its_address() {
        let nodes = [
            node("a", &["10.244.0.0/24"], &["10.250.0.1"]),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.250.0.2", "fd00::2"],
            ),
            node("c", &[], &["10.250.0.3"]),
            node("d", &["10.244.3.0/24"], &[]),
            node("e", &["fd00:10:244:4::/64"], &["10.250.0.5"]),
        ];
        let routes: Vec<String> = wanted(&nodes, "a")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.1.0/24 via 10.250.0.2",
                "fd00:10:244:1::/64 via fd00::2"
            ],
            "no route to itself, nor without a CIDR, an address, or one of the family"
        );
    }
}
