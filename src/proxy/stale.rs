//! Stale UDP flows: which conntrack entries to delete after a sync, decided by comparing the state
//! synced before with the state synced now.
//!
//! Invariants: pure; only UDP service ports produce work; the result is a set, so each deletion is
//! asked for once per sync however many ports share an address.
//!
//! Why: UDP has no connection end, so a conntrack entry DNAT'd to an endpoint that went away keeps
//! sending a client's datagrams into the void until the entry times out, and an entry created while
//! a service had no endpoints keeps its datagrams un-NAT'd. As upstream kube-proxy
//! (`pkg/proxy/conntrack/cleanup.go`, before its netlink rewrite): an endpoint that was serving and
//! is no longer (or is gone) has the entries NAT'd to it deleted, for every address of its service
//! and for its node port; a UDP service port whose serving endpoints go from none to some has the
//! entries to its addresses and node port deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nodus_net::proxy::model::{Protocol, ProxyState, Service, ServicePort};

/// One conntrack deletion, as `nodus_net::proxy::conntrack::Conntrack` offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cleanup {
    /// Entries to `ip:port`: a service address that just gained endpoints.
    ToService { ip: IpAddr, port: u16 },
    /// Entries to service address `service` that were DNAT'd to `endpoint`, which went away.
    ServiceNat { service: IpAddr, endpoint: IpAddr },
    /// Entries to node port `port` on any address of the family of `family_of`: a NodePort that
    /// just gained endpoints.
    ToNodePort { family_of: IpAddr, port: u16 },
    /// Entries to node port `port` that were DNAT'd to `endpoint`, which went away.
    NodePortNat { port: u16, endpoint: IpAddr },
}

/// `namespace/name/port-name` of a UDP service port.
type PortKey<'a> = (&'a str, &'a str, &'a str);

fn udp_ports(state: &ProxyState) -> BTreeMap<PortKey<'_>, (&Service, &ServicePort)> {
    state
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s.as_ref(), p)))
        .filter(|(_, p)| p.protocol == Protocol::Udp)
        .map(|(s, p)| {
            (
                (s.namespace.as_str(), s.name.as_str(), p.name.as_str()),
                (s, p),
            )
        })
        .collect()
}

/// The endpoints of a port that can have received traffic: upstream's "serving".
fn serving(port: &ServicePort) -> BTreeSet<(IpAddr, u16)> {
    port.endpoints
        .iter()
        .filter(|e| e.serving)
        .map(|e| (e.ip, e.port))
        .collect()
}

fn addresses(service: &Service) -> impl Iterator<Item = IpAddr> + '_ {
    service
        .cluster_ips
        .iter()
        .chain(&service.external_ips)
        .chain(&service.load_balancer_ips)
        .copied()
}

/// What to delete after moving from `before` (the state synced last, or an empty state on the
/// first sync, as upstream starts from nothing) to `now`.
pub fn stale_udp(before: &ProxyState, now: &ProxyState) -> BTreeSet<Cleanup> {
    let old_ports = udp_ports(before);
    let new_ports = udp_ports(now);
    let mut work = BTreeSet::new();

    for (key, (service, port)) in &old_ports {
        let still = new_ports
            .get(key)
            .map(|(_, p)| serving(p))
            .unwrap_or_default();
        for (endpoint, target) in serving(port) {
            if still.contains(&(endpoint, target)) {
                continue;
            }
            for address in addresses(service).filter(|a| a.is_ipv4() == endpoint.is_ipv4()) {
                work.insert(Cleanup::ServiceNat {
                    service: address,
                    endpoint,
                });
            }
            if let Some(node_port) = port.node_port {
                work.insert(Cleanup::NodePortNat {
                    port: node_port,
                    endpoint,
                });
            }
        }
    }

    for (key, (service, port)) in &new_ports {
        let had = old_ports
            .get(key)
            .is_some_and(|(_, p)| !serving(p).is_empty());
        if had || serving(port).is_empty() {
            continue;
        }
        for ip in addresses(service) {
            work.insert(Cleanup::ToService {
                ip,
                port: port.port,
            });
        }
        if let Some(node_port) = port.node_port {
            for &family_of in &service.cluster_ips {
                work.insert(Cleanup::ToNodePort {
                    family_of,
                    port: node_port,
                });
            }
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_net::proxy::model::{
        Endpoint, Node, NodePortAddresses, SessionAffinity, TrafficPolicy,
    };
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn state(services: Vec<Service>) -> ProxyState {
        ProxyState {
            node: Node {
                node_port_addresses: NodePortAddresses::AllLocal,
                cluster_cidrs: vec![],
            },
            services: services.into_iter().map(Arc::new).collect(),
        }
    }

    fn dns(protocol: Protocol, endpoints: Vec<Endpoint>) -> Service {
        Service {
            namespace: "kube-system".into(),
            name: "dns".into(),
            cluster_ips: vec![ip("10.96.0.10")],
            external_ips: vec![ip("192.0.2.53")],
            load_balancer_ips: vec![],
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            ports: vec![ServicePort {
                name: "dns".into(),
                protocol,
                port: 53,
                node_port: Some(30053),
                endpoints,
            }],
        }
    }

    fn ep(s: &str) -> Endpoint {
        Endpoint::ready(ip(s), 5353, false)
    }

    fn not_serving(s: &str) -> Endpoint {
        Endpoint {
            ready: false,
            serving: false,
            terminating: true,
            ..ep(s)
        }
    }

    #[test]
    fn stale_flows_are_found_as_upstream_finds_them() {
        use Cleanup::*;
        let (a, b) = ("10.244.0.5", "10.244.0.6");
        let gone = |e: &str| {
            vec![
                ServiceNat {
                    service: ip("10.96.0.10"),
                    endpoint: ip(e),
                },
                ServiceNat {
                    service: ip("192.0.2.53"),
                    endpoint: ip(e),
                },
                NodePortNat {
                    port: 30053,
                    endpoint: ip(e),
                },
            ]
        };
        let first = vec![
            ToService {
                ip: ip("10.96.0.10"),
                port: 53,
            },
            ToService {
                ip: ip("192.0.2.53"),
                port: 53,
            },
            ToNodePort {
                family_of: ip("10.96.0.10"),
                port: 30053,
            },
        ];
        // (what, state before, state now, expected deletions)
        type Case = (&'static str, Vec<Service>, Vec<Service>, Vec<Cleanup>);
        let cases: Vec<Case> = vec![
            (
                "nothing changes",
                vec![dns(Protocol::Udp, vec![ep(a), ep(b)])],
                vec![dns(Protocol::Udp, vec![ep(a), ep(b)])],
                vec![],
            ),
            (
                "an endpoint goes away",
                vec![dns(Protocol::Udp, vec![ep(a), ep(b)])],
                vec![dns(Protocol::Udp, vec![ep(a)])],
                gone(b),
            ),
            (
                "an endpoint stops serving",
                vec![dns(Protocol::Udp, vec![ep(a), ep(b)])],
                vec![dns(Protocol::Udp, vec![ep(a), not_serving(b)])],
                gone(b),
            ),
            (
                "a non-serving endpoint going away had no traffic",
                vec![dns(Protocol::Udp, vec![ep(a), not_serving(b)])],
                vec![dns(Protocol::Udp, vec![ep(a)])],
                vec![],
            ),
            (
                "the service is deleted",
                vec![dns(Protocol::Udp, vec![ep(a)])],
                vec![],
                gone(a),
            ),
            (
                "first endpoint",
                vec![dns(Protocol::Udp, vec![])],
                vec![dns(Protocol::Udp, vec![ep(a)])],
                first.clone(),
            ),
            (
                "first sync after a start",
                vec![],
                vec![dns(Protocol::Udp, vec![ep(a)])],
                first,
            ),
            (
                "a new endpoint next to others is no first one",
                vec![dns(Protocol::Udp, vec![ep(a)])],
                vec![dns(Protocol::Udp, vec![ep(a), ep(b)])],
                vec![],
            ),
            (
                "TCP never",
                vec![dns(Protocol::Tcp, vec![ep(a), ep(b)])],
                vec![dns(Protocol::Tcp, vec![])],
                vec![],
            ),
        ];
        for (what, before, now, expected) in cases {
            let got = stale_udp(&state(before), &state(now));
            let expected: BTreeSet<Cleanup> = expected.into_iter().collect();
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn endpoints_only_pair_with_addresses_of_their_family() {
        let mut before = dns(Protocol::Udp, vec![ep("10.244.0.5"), ep("fd00::5")]);
        before.cluster_ips.push(ip("fd00:96::10"));
        before.external_ips.clear();
        before.ports[0].node_port = None;
        let mut now = before.clone();
        now.ports[0].endpoints.clear();
        let got = stale_udp(&state(vec![before]), &state(vec![now]));
        let expected: BTreeSet<Cleanup> = [
            Cleanup::ServiceNat {
                service: ip("10.96.0.10"),
                endpoint: ip("10.244.0.5"),
            },
            Cleanup::ServiceNat {
                service: ip("fd00:96::10"),
                endpoint: ip("fd00::5"),
            },
        ]
        .into_iter()
        .collect();
        assert_eq!(got, expected);
    }
}
