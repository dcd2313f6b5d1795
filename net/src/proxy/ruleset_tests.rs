//! Ruleset behaviour, checked by walking synthetic packets through the IR with the tracer.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::proxy::model::{Endpoint, Node, NodePortAddresses, ProxyState, Service, ServicePort};
use crate::proxy::tracer::{Origin, Outcome, Packet, Tracer};

const NODE_IP: &str = "10.97.0.1";
/// A second node address that is not a NodePort address.
const OTHER_NODE_IP: &str = "10.97.0.9";
const CLIENT: &str = "203.0.113.7";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn node() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::Only(vec![ip(NODE_IP)]),
        cluster_cidrs: vec!["10.99.0.0/16".parse().expect("CIDR")],
    }
}

fn ep(addr: &str, local: bool) -> Endpoint {
    let a = sa(addr);
    Endpoint::ready(a.ip(), a.port(), local)
}

fn web(endpoints: Vec<Endpoint>) -> Service {
    Service {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ips: vec![ip("10.98.0.10")],
        external_ips: vec![ip("192.0.2.10")],
        load_balancer_ips: vec![ip("192.0.2.20")],
        session_affinity: SessionAffinity::None,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            endpoints,
        }],
    }
}

fn three() -> Vec<Endpoint> {
    vec![
        ep("10.99.0.2:8080", true),
        ep("10.99.0.3:8080", true),
        ep("10.99.1.4:8080", false),
    ]
}

fn build_one(services: Vec<Service>) -> Ruleset {
    let b = build(&ProxyState::new(node(), services));
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    b.ruleset
}

fn tracer(rs: &Ruleset) -> Tracer<'_> {
    Tracer::new(rs, [ip(NODE_IP), ip(OTHER_NODE_IP)])
}

fn pkt(origin: Origin, src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        origin,
        src: ip(src),
        dst: ip(dst),
        protocol: Protocol::Tcp,
        dport,
    }
}

fn dnat(list: &[&str], masquerade: bool) -> BTreeSet<Outcome> {
    list.iter()
        .map(|a| Outcome::Dnat {
            to: sa(a),
            masquerade,
        })
        .collect()
}

fn one(o: Outcome) -> BTreeSet<Outcome> {
    BTreeSet::from([o])
}

const ALL3: [&str; 3] = ["10.99.0.2:8080", "10.99.0.3:8080", "10.99.1.4:8080"];

#[test]
fn cluster_ip_spreads_over_all_endpoints() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    // From a pod: inside the cluster CIDR, no masquerade.
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&ALL3, false)
    );
    // From the host: outside the cluster CIDR, masqueraded so replies come back here.
    assert_eq!(
        t.trace(&pkt(Origin::Host, NODE_IP, "10.98.0.10", 80)),
        dnat(&ALL3, true)
    );
    // Each pick reaches a different endpoint: the spread is real, not one branch repeated.
    let mut t = tracer(&rs);
    let picked: BTreeSet<Outcome> = (0..3)
        .map(|i| t.connect(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80), i))
        .collect();
    assert_eq!(picked, dnat(&ALL3, false));
}

#[test]
fn node_port_works_on_node_port_addresses_only() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, NODE_IP, 30080)),
        dnat(&ALL3, true)
    );
    assert_eq!(
        t.trace(&pkt(Origin::Host, NODE_IP, NODE_IP, 30080)),
        dnat(&ALL3, true)
    );
    // Not a --nodeport-addresses address: untouched.
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, OTHER_NODE_IP, 30080)),
        one(Outcome::Accept { masquerade: false })
    );
    // The service port on the node IP is not a NodePort.
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, NODE_IP, 80)),
        one(Outcome::Accept { masquerade: false })
    );
}

#[test]
fn all_local_node_port_addresses_use_fib() {
    let mut state = ProxyState::new(node(), [web(three())]);
    state.node.node_port_addresses = NodePortAddresses::AllLocal;
    let b = build(&state);
    let t = tracer(&b.ruleset);
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, OTHER_NODE_IP, 30080)),
        dnat(&ALL3, true)
    );
    assert!(
        b.ruleset
            .render()
            .contains("fib daddr type local ip daddr != 127.0.0.0/8")
    );
}

#[test]
fn load_balancer_and_external_ips_reach_endpoints_masqueraded() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    for dst in ["192.0.2.10", "192.0.2.20"] {
        assert_eq!(
            t.trace(&pkt(Origin::External, CLIENT, dst, 80)),
            dnat(&ALL3, true),
            "{dst}"
        );
    }
}

#[test]
fn client_ip_affinity_sticks_per_client() {
    let mut s = web(three());
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    let rs = build_one(vec![s]);
    let mut t = tracer(&rs);
    let first = t.connect(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80), 1);
    assert_eq!(
        first,
        Outcome::Dnat {
            to: sa(ALL3[1]),
            masquerade: false
        }
    );
    // The same client now always reaches that endpoint, whichever branch numgen would take...
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&[ALL3[1]], false)
    );
    // ...also through the NodePort, which shares the affinity sets.
    for pick in 0..3 {
        assert_eq!(
            t.connect(&pkt(Origin::Pod, "10.99.0.7", NODE_IP, 30080), pick),
            Outcome::Dnat {
                to: sa(ALL3[1]),
                masquerade: true
            }
        );
    }
    // Another client is free.
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.8", "10.98.0.10", 80)),
        dnat(&ALL3, false)
    );
    let text = rs.render();
    assert!(
        text.contains("flags dynamic,timeout ; timeout 600s"),
        "{text}"
    );
    assert!(text.contains("update @aff-"), "{text}");
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip_and_stays_local() {
    let mut s = web(three());
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(32000);
    let rs = build_one(vec![s]);
    let t = tracer(&rs);
    let local = ["10.99.0.2:8080", "10.99.0.3:8080"];
    for dst in [NODE_IP, "192.0.2.20"] {
        let port = if dst == NODE_IP { 30080 } else { 80 };
        assert_eq!(
            t.trace(&pkt(Origin::External, CLIENT, dst, port)),
            dnat(&local, false),
            "{dst}"
        );
    }
    // Pods going to an external address are treated as internal traffic (upstream's short-circuit).
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "192.0.2.20", 80)),
        dnat(&ALL3, false)
    );
    // The host's own traffic is masqueraded and may go anywhere.
    assert_eq!(
        t.trace(&pkt(Origin::Host, NODE_IP, NODE_IP, 30080)),
        dnat(&ALL3, true)
    );
    // The ClusterIP is unaffected by eTP.
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&ALL3, false)
    );
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_external_traffic() {
    let mut s = web(vec![ep("10.99.1.4:8080", false)]);
    s.external_traffic_policy = TrafficPolicy::Local;
    let rs = build_one(vec![s]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, NODE_IP, 30080)),
        one(Outcome::Drop)
    );
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, "192.0.2.20", 80)),
        one(Outcome::Drop)
    );
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&["10.99.1.4:8080"], false)
    );
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let mut s = web(three());
    s.internal_traffic_policy = TrafficPolicy::Local;
    let rs = build_one(vec![s.clone()]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&["10.99.0.2:8080", "10.99.0.3:8080"], false)
    );
    // External traffic still follows eTP (Cluster).
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, NODE_IP, 30080)),
        dnat(&ALL3, true)
    );
    // No local endpoint: the ClusterIP drops (endpoints exist elsewhere), as upstream.
    s.ports[0].endpoints = vec![ep("10.99.1.4:8080", false)];
    let rs = build_one(vec![s]);
    assert_eq!(
        tracer(&rs).trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        one(Outcome::Drop)
    );
}

#[test]
fn no_endpoints_rejects_at_once_everywhere() {
    let rs = build_one(vec![web(vec![])]);
    let t = tracer(&rs);
    for (origin, src, dst, port) in [
        (Origin::Pod, "10.99.0.7", "10.98.0.10", 80),
        (Origin::Host, NODE_IP, "10.98.0.10", 80),
        (Origin::External, CLIENT, NODE_IP, 30080),
        (Origin::Host, NODE_IP, NODE_IP, 30080),
        (Origin::External, CLIENT, "192.0.2.10", 80),
    ] {
        assert_eq!(
            t.trace(&pkt(origin, src, dst, port)),
            one(Outcome::Reject),
            "{origin:?} {dst}:{port}"
        );
    }
}

#[test]
fn unknown_port_on_a_cluster_ip_is_rejected() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 81)),
        one(Outcome::Reject)
    );
    assert_eq!(
        t.trace(&pkt(Origin::Host, NODE_IP, "10.98.0.10", 81)),
        one(Outcome::Reject)
    );
    // An address that is no ClusterIP is not ours to reject (leaving the pod network, the
    // packet goes out with the node's address).
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.11", 81)),
        one(Outcome::Accept { masquerade: true })
    );
}

#[test]
fn hairpin_is_masqueraded() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    let outcomes = t.trace(&pkt(Origin::Pod, "10.99.0.2", "10.98.0.10", 80));
    let mut expected = dnat(&["10.99.0.3:8080", "10.99.1.4:8080"], false);
    expected.insert(Outcome::Dnat {
        to: sa("10.99.0.2:8080"),
        masquerade: true,
    });
    assert_eq!(outcomes, expected);
}

#[test]
fn terminating_endpoints_are_a_fallback_only() {
    let terminating = |addr, serving| Endpoint {
        ready: false,
        serving,
        terminating: true,
        ..ep(addr, true)
    };
    let rs = build_one(vec![web(vec![
        terminating("10.99.0.2:8080", true),
        terminating("10.99.0.3:8080", false),
    ])]);
    assert_eq!(
        tracer(&rs).trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&["10.99.0.2:8080"], false)
    );
    let rs = build_one(vec![web(vec![
        terminating("10.99.0.2:8080", true),
        ep("10.99.0.4:8080", false),
    ])]);
    assert_eq!(
        tracer(&rs).trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&["10.99.0.4:8080"], false)
    );
    // Neither ready nor serving: no endpoints, so reject.
    let rs = build_one(vec![web(vec![terminating("10.99.0.3:8080", false)])]);
    assert_eq!(
        tracer(&rs).trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        one(Outcome::Reject)
    );
}

#[test]
fn other_traffic_is_untouched() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.99.0.3", 8080)),
        one(Outcome::Accept { masquerade: false })
    );
    let mut udp = pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80);
    udp.protocol = Protocol::Udp;
    assert_eq!(
        t.trace(&udp),
        one(Outcome::Reject),
        "UDP on a TCP-only ClusterIP"
    );
}

#[test]
fn dual_stack_families_stay_apart() {
    let mut s = web(vec![
        ep("10.99.0.2:8080", true),
        ep("[fd00:99::2]:8080", true),
    ]);
    s.cluster_ips.push(ip("fd00:98::10"));
    let rs = build_one(vec![s]);
    let t = tracer(&rs);
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.10", 80)),
        dnat(&["10.99.0.2:8080"], false)
    );
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "fd00:99::7", "fd00:98::10", 80)),
        dnat(&["[fd00:99::2]:8080"], false),
        "no IPv6 cluster CIDR configured: no outside-the-cluster masquerade for v6"
    );
    let text = rs.render();
    assert!(text.contains("dnat ip6 to [fd00:99::2]:8080"), "{text}");
    for (name, _) in rs.all_chains() {
        assert!(!name.contains(':'), "{name}");
    }
    for (name, _) in rs.all_sets() {
        assert!(!name.contains(':'), "{name}");
    }
}

#[test]
fn bad_and_conflicting_services_are_skipped_without_harming_others() {
    let mut bad = web(three());
    bad.name = "bad".into();
    bad.ports[0].port = 0;
    let mut thief = web(vec![ep("10.99.0.9:9", true)]);
    thief.name = "zz-thief".into();
    thief.cluster_ips = vec![ip("10.98.0.11")];
    thief.external_ips = vec![ip("192.0.2.10")]; // web's external IP
    thief.load_balancer_ips = vec![];
    thief.ports[0].node_port = None;
    let b = build(&ProxyState::new(node(), [thief, bad, web(three())]));
    let skipped: Vec<String> = b.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        matches!(b.skipped[0], ServiceError::ZeroPort { .. }),
        "{skipped:?}"
    );
    assert!(
        matches!(&b.skipped[1], ServiceError::Conflict { owner, .. } if owner == "default/web"),
        "{skipped:?}"
    );
    let t = tracer(&b.ruleset);
    assert_eq!(
        t.trace(&pkt(Origin::External, CLIENT, "192.0.2.10", 80)),
        dnat(&ALL3, true)
    );
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.98.0.11", 80)),
        one(Outcome::Accept { masquerade: true })
    );
}

#[test]
fn pod_traffic_leaving_the_pod_network_is_masqueraded_and_only_that() {
    let rs = build_one(vec![web(three())]);
    let t = tracer(&rs);
    // To a pod on another node: routed as it is, the source kept.
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "10.99.3.4", 8080)),
        one(Outcome::Accept { masquerade: false })
    );
    // Out of the cluster: the node's address, so that the answer finds its way back.
    assert_eq!(
        t.trace(&pkt(Origin::Pod, "10.99.0.7", "198.51.100.7", 443)),
        one(Outcome::Accept { masquerade: true })
    );
    // The node's own traffic is not the pods'.
    assert_eq!(
        t.trace(&pkt(Origin::Host, NODE_IP, "198.51.100.7", 443)),
        one(Outcome::Accept { masquerade: false })
    );
    // Without a cluster CIDR nothing tells pods' traffic apart: left alone.
    let mut unknown = node();
    unknown.cluster_cidrs.clear();
    let rs = build(&ProxyState::new(unknown, [web(three())])).ruleset;
    assert_eq!(
        tracer(&rs).trace(&pkt(Origin::Pod, "10.99.0.7", "198.51.100.7", 443)),
        one(Outcome::Accept { masquerade: false })
    );
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let mut a = web(three());
    a.name = "a".into();
    a.cluster_ips = vec![ip("10.98.0.1")];
    a.external_ips.clear();
    a.load_balancer_ips.clear();
    a.ports[0].node_port = None;
    let mut b = web(three());
    b.ports[0].endpoints.reverse();
    let first = build_one(vec![a.clone(), b.clone()]).render();
    let second = build_one(vec![b, a]).render();
    assert_eq!(first, second);
}

#[test]
fn names_are_bounded_and_distinct() {
    let long = "x".repeat(63);
    let n1 = object_name(
        "ep",
        Family::V6,
        &format!(
            "{long}/{long}/sctp/abcdefghijklmno__ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/65535"
        ),
    );
    let n2 = object_name(
        "ep",
        Family::V6,
        &format!(
            "{long}/{long}/sctp/abcdefghijklmno__ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/65535"
        ),
    );
    assert!(n1.len() <= MAX_NAME_LEN && n2.len() <= MAX_NAME_LEN);
    assert_ne!(n1, n2);
    assert_eq!(
        object_name("svc", Family::V4, "a/b/tcp/p80"),
        object_name("svc", Family::V4, "a/b/tcp/p80")
    );
    assert!(object_name("svc", Family::V4, "a/b/tcp/p80").starts_with("svc-"));
}

#[test]
fn numgen_cascade_is_uniform() {
    for n in 1..=40 {
        let picks: Vec<Pick> = (0..n)
            .map(|i| Pick {
                to: SocketAddr::new(ip("10.0.0.1"), 1000 + i as u16),
                affinity: (i % 2 == 0).then(|| format!("aff{i}")),
            })
            .collect();
        let rules = numgen_cascade(&[Match::CtStateNew], Protocol::Udp, &picks);
        assert_eq!(rules.len(), n);
        // Probability of reaching rule i, times the chance that rule i's draw hits.
        let mut reach = 1.0_f64;
        for (i, rule) in rules.iter().enumerate() {
            let hit = match rule.matches.as_slice() {
                [
                    Match::CtStateNew,
                    Match::Numgen(m),
                    Match::L4Proto(Protocol::Udp),
                ] => 1.0 / *m as f64,
                [Match::CtStateNew, Match::L4Proto(Protocol::Udp)] => 1.0,
                other => panic!("unexpected matches {other:?}"),
            };
            let p = reach * hit;
            assert!((p - 1.0 / n as f64).abs() < 1e-12, "n={n} i={i}: {p}");
            let dnat = Stmt::Dnat(picks[i].to);
            match &picks[i].affinity {
                Some(set) => assert_eq!(
                    rule.stmts,
                    vec![Stmt::UpdateSaddr(Family::V4, set.clone()), dnat]
                ),
                None => assert_eq!(rule.stmts, vec![dnat]),
            }
            reach *= 1.0 - hit;
        }
    }
}

#[test]
fn a_remembering_builder_builds_what_build_builds_and_shares_unchanged_services() {
    let mut other = web(vec![ep("10.99.0.9:80", true)]);
    other.name = "other".into();
    other.cluster_ips = vec![ip("10.98.0.11")];
    other.external_ips.clear();
    other.load_balancer_ips.clear();
    other.ports[0].node_port = Some(30081);
    let mut thief = other.clone();
    thief.name = "thief".into();
    let mut bad = other.clone();
    bad.name = "bad".into();
    bad.ports[0].port = 0;
    let mut fewer = web(three());
    fewer.ports[0].endpoints.pop();
    let mut moved = node();
    moved.cluster_cidrs = vec!["10.99.0.0/17".parse().expect("CIDR")];

    let states = [
        (node(), vec![web(three()), other.clone()]),
        (
            node(),
            vec![web(three()), other.clone(), thief.clone(), bad],
        ),
        (node(), vec![fewer.clone(), other.clone(), thief.clone()]),
        // `other` is gone: `thief` may now have its address and port.
        (node(), vec![fewer.clone(), thief]),
        (moved, vec![fewer, other]),
        (node(), vec![]),
    ];
    let mut builder = Builder::default();
    let mut previous: Option<Ruleset> = None;
    for (i, (node, services)) in states.into_iter().enumerate() {
        let state = ProxyState::new(node, services);
        let fresh = build(&state);
        let remembered = builder.build(&state);
        assert_eq!(remembered.ruleset, fresh.ruleset, "state {i}");
        assert_eq!(remembered.skipped, fresh.skipped, "state {i}");
        if i == 2 {
            let before = previous.as_ref().expect("the previous build");
            let shared =
                |id: &str| Arc::ptr_eq(&before.services[id], &remembered.ruleset.services[id]);
            assert!(shared("default/other"), "an unchanged service is reused");
            assert!(!shared("default/web"), "a changed service is rebuilt");
        }
        previous = Some(remembered.ruleset);
    }
}

/// A long walk of small random edits (endpoints shared between services, services coming and
/// going, invalid services, two services claiming one address and port, a node change): after
/// every step the patching builder holds exactly what a fresh build makes, and steps without a
/// conflict are patches.
#[test]
fn a_patched_build_equals_a_fresh_build_at_every_step() {
    // A small linear congruential generator: the walk is the same on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let service = |i: usize, eps: Vec<Endpoint>| {
        let mut s = web(eps);
        s.name = format!("s{i}");
        s.cluster_ips = vec![ip(&format!("10.98.1.{i}"))];
        s.external_ips.clear();
        s.load_balancer_ips.clear();
        s.ports[0].node_port = None;
        s
    };
    // Endpoints come from a small pool, so services share them (the hairpin set counts holders).
    let pool = |k: usize| ep(&format!("10.99.0.{}:8080", 2 + k % 6), k.is_multiple_of(2));
    // Shared as the mapper shares them: an untouched service stays the same allocation (the
    // builder's pointer check), an edited one becomes a new one (its comparison).
    let mut services: Vec<Arc<Service>> = (0..12)
        .map(|i| Arc::new(service(i, vec![pool(i), pool(i + 1)])))
        .collect();
    let mut node_now = node();
    let mut builder = Builder::default();
    let mut patched = 0;
    for step in 0..400 {
        let i = next(services.len().max(1));
        match next(9) {
            0 | 1 if !services.is_empty() => {
                let eps = &mut Arc::make_mut(&mut services[i]).ports[0].endpoints;
                if eps.is_empty() {
                    eps.push(pool(next(6)));
                } else {
                    eps.remove(next(eps.len()));
                }
            }
            2 | 3 if !services.is_empty() => Arc::make_mut(&mut services[i]).ports[0]
                .endpoints
                .push(pool(next(6))),
            4 if services.len() > 1 => {
                services.remove(i);
            }
            5 => {
                let n = 100 + step;
                services.push(Arc::new(service(n % 250, vec![pool(next(6))])));
            }
            6 if !services.is_empty() => {
                // Invalid (port 0) or valid again.
                let port = &mut Arc::make_mut(&mut services[i]).ports[0].port;
                *port = if *port == 0 { 80 } else { 0 };
            }
            7 if services.len() > 1 => {
                // Claim another service's cluster IP (a conflict), or give it back.
                let j = next(services.len());
                let ips = services[j].cluster_ips.clone();
                Arc::make_mut(&mut services[i]).cluster_ips = ips;
            }
            8 if step % 50 == 0 => {
                node_now.cluster_cidrs = vec![if node_now.cluster_cidrs[0].prefix_len() == 16 {
                    "10.99.0.0/17".parse().expect("CIDR")
                } else {
                    "10.99.0.0/16".parse().expect("CIDR")
                }];
            }
            _ => {}
        }
        let state = ProxyState {
            node: node_now.clone(),
            services: services.clone(),
        };
        let was_patchable = builder.last.is_some() && builder.node.as_ref() == Some(&state.node);
        let fresh = build(&state);
        let kept = builder.build(&state);
        assert_eq!(kept.ruleset, fresh.ruleset, "step {step}");
        assert_eq!(kept.skipped, fresh.skipped, "step {step}");
        let conflicts = fresh
            .skipped
            .iter()
            .any(|e| matches!(e, ServiceError::Conflict { .. }));
        if was_patchable && builder.last.is_some() {
            patched += 1;
        }
        assert_eq!(builder.last.is_none(), conflicts, "step {step}");
    }
    assert!(patched > 100, "only {patched} patched builds");
}
