//! Golden rulesets: representative services rendered and compared with checked-in text, so any
//! change to the generated nft is seen in review. `NODUS_UPDATE_GOLDEN=1 cargo test -p nodus-net
//! --test golden` rewrites the files.

use std::net::IpAddr;
use std::path::PathBuf;

use nodus_net::proxy::model::{
    Endpoint, Node, NodePortAddresses, Protocol, ProxyState, Service, ServicePort, SessionAffinity,
    TrafficPolicy,
};
use nodus_net::proxy::ruleset::build;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn node() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::Only(vec![ip("10.97.0.1")]),
        cluster_cidrs: vec!["10.99.0.0/16".parse().expect("CIDR")],
    }
}

fn service(name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity: SessionAffinity::None,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        ports,
    }
}

fn port(name: &str, protocol: Protocol, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
        node_port: None,
        endpoints,
    }
}

fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, local)
}

/// Compares `actual` with `tests/golden/<name>.nft`, or rewrites it when asked to.
fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"));
    if std::env::var_os("NODUS_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("writing the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; run with NODUS_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(5)
            .map(|(i, (e, a))| format!("line {}:\n  - {e}\n  + {a}", i + 1))
            .collect();
        panic!(
            "{} differs from the rendered ruleset ({} vs {} lines); first differences:\n{}\n\
             run with NODUS_UPDATE_GOLDEN=1 to accept the change",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

/// A two-endpoint ClusterIP service, DNS over UDP and TCP: the common case.
pub fn cluster_ip_state() -> ProxyState {
    let dns_eps = || vec![ep("10.99.0.2", 53, true), ep("10.99.1.3", 53, false)];
    ProxyState::new(
        node(),
        [service(
            "dns",
            "10.98.0.10",
            vec![
                port("dns", Protocol::Udp, 53, dns_eps()),
                port("dns-tcp", Protocol::Tcp, 53, dns_eps()),
            ],
        )],
    )
}

/// NodePort + load balancer with externalTrafficPolicy Local and ClientIP affinity.
pub fn node_port_local_affinity_state() -> ProxyState {
    let mut s = service(
        "shop",
        "10.98.0.20",
        vec![ServicePort {
            node_port: Some(30080),
            ..port(
                "http",
                Protocol::Tcp,
                80,
                vec![ep("10.99.0.4", 8080, true), ep("10.99.1.5", 8080, false)],
            )
        }],
    );
    s.load_balancer_ips = vec![ip("192.0.2.20")];
    s.external_ips = vec![ip("192.0.2.10")];
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(32000);
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    ProxyState::new(node(), [s])
}

/// No endpoints, a terminating fallback, internalTrafficPolicy Local, and dual stack.
pub fn edge_cases_state() -> ProxyState {
    let mut empty = service(
        "empty",
        "10.98.0.30",
        vec![port("", Protocol::Tcp, 80, vec![])],
    );
    empty.ports[0].node_port = Some(30081);
    let mut draining = service(
        "draining",
        "10.98.0.31",
        vec![port(
            "",
            Protocol::Sctp,
            9999,
            vec![Endpoint {
                ready: false,
                serving: true,
                terminating: true,
                ..ep("10.99.0.6", 9999, true)
            }],
        )],
    );
    draining.internal_traffic_policy = TrafficPolicy::Local;
    let mut dual = service(
        "dual",
        "10.98.0.32",
        vec![port(
            "web",
            Protocol::Tcp,
            443,
            vec![ep("10.99.0.7", 8443, true), ep("fd00:99::7", 8443, true)],
        )],
    );
    dual.cluster_ips.push(ip("fd00:98::32"));
    ProxyState::new(node(), [empty, draining, dual])
}

#[test]
fn golden_cluster_ip() {
    let b = build(&cluster_ip_state());
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    check("cluster-ip", &b.ruleset.render());
}

#[test]
fn golden_node_port_local_affinity() {
    let b = build(&node_port_local_affinity_state());
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    check("node-port-local-affinity", &b.ruleset.render());
}

#[test]
fn golden_edge_cases() {
    let b = build(&edge_cases_state());
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    check("edge-cases", &b.ruleset.render());
}
