//! `proxy::netlink` against the kernel: in-place updates and full replaces sent as one netlink
//! batch must leave exactly the table that the same transaction as `nft -f -` text leaves, down
//! to the expressions.
//!
//! Invariants: every namespace a test creates is removed by a Drop guard, even when the test
//! fails; the netlink socket is opened by a thread that entered the test namespace with setns(2)
//! (a socket stays in the namespace it was created in); without root, `ip` or `nft`, tests skip
//! with a message instead of failing.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{Netns, canonical_listing};
use nix::errno::Errno;
use nodus_net::proxy::model::{
    Endpoint, Node, NodePortAddresses, Protocol, ProxyState, Service, ServicePort, SessionAffinity,
    TrafficPolicy,
};
use nodus_net::proxy::netlink::Error as NetlinkError;
use nodus_net::proxy::ruleset::{Ruleset, build};
use nodus_net::proxy::transaction::{Op, Transaction, Update};

/// `nft --debug=netlink list` in a canonical form: rules per chain in order without their
/// handles, set elements sorted, anonymous set numbers dropped, chains and sets sorted.
fn canonical_expressions(dump: &str) -> Vec<String> {
    let unnumber = |s: &str| {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("__map") {
            out.push_str(&rest[..i + 5]);
            rest = rest[i + 5..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    };
    let mut sets = Vec::new();
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut header: Option<String> = None;
    let mut lines: Vec<String> = Vec::new();
    let mut flush = |header: &mut Option<String>, lines: &mut Vec<String>| {
        let Some(h) = header.take() else { return };
        if h.contains(" @") {
            lines.sort();
            sets.push(format!("{h}\n{}", lines.join("\n")));
        } else {
            // `inet nodus CHAIN HANDLE [PREVIOUS]`
            let chain = h.split(' ').nth(2).unwrap_or_default().to_owned();
            chains.entry(chain).or_default().push(lines.join("\n"));
        }
        lines.clear();
    };
    for line in dump.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            flush(&mut header, &mut lines);
            header = Some(unnumber(line));
        } else {
            lines.push(unnumber(line.trim()));
        }
    }
    flush(&mut header, &mut lines);
    sets.sort();
    sets.extend(
        chains
            .into_iter()
            .map(|(chain, rules)| format!("chain {chain}\n{}", rules.join("\n--\n"))),
    );
    sets
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, local)
}

fn port(protocol: Protocol, port: u16, node_port: Option<u16>, eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: format!("{protocol}-{port}"),
        protocol,
        port,
        node_port,
        endpoints: eps,
    }
}

fn svc(name: &str, cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
    Service {
        namespace: "test".into(),
        name: name.into(),
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity: SessionAffinity::None,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        ports,
    }
}

fn node_only() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::Only(vec![ip("10.97.0.1"), ip("fd00:97::1")]),
        cluster_cidrs: vec![
            "10.99.0.0/16".parse().expect("CIDR"),
            "fd00:99::/64".parse().expect("CIDR"),
        ],
    }
}

/// All local addresses for node ports, and prefixes that are not whole bytes.
fn node_all_local() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::AllLocal,
        cluster_cidrs: vec![
            "10.99.0.0/16".parse().expect("CIDR"),
            "10.100.0.0/14".parse().expect("CIDR"),
            "fd00:99::/60".parse().expect("CIDR"),
        ],
    }
}

fn endpoints(count: usize, base: &str, port: u16) -> Vec<Endpoint> {
    (0..count)
        .map(|i| ep(&format!("{base}.{}", i + 2), port, i % 3 == 0))
        .collect()
}

/// Proxy states covering every shape the ruleset has; updates between any two are in place
/// except where an affinity timeout or a base chain changes.
fn states() -> Vec<ProxyState> {
    use Protocol::{Sctp, Tcp, Udp};
    let web = svc(
        "web",
        &["10.98.0.10"],
        vec![port(Tcp, 80, None, endpoints(2, "10.99.0", 8080))],
    );
    let dns = svc(
        "dns",
        &["10.98.0.53"],
        vec![
            port(Udp, 53, None, vec![ep("10.99.1.2", 5353, true)]),
            port(Tcp, 53, None, vec![ep("10.99.1.2", 5353, true)]),
        ],
    );
    let mut exposed = svc(
        "exposed",
        &["10.98.0.20"],
        vec![port(Tcp, 443, Some(30443), endpoints(2, "10.99.2", 8443))],
    );
    exposed.external_ips = vec![ip("192.0.2.20")];
    exposed.load_balancer_ips = vec![ip("192.0.2.21")];
    let no_eps = svc(
        "empty",
        &["10.98.0.30"],
        vec![port(Tcp, 80, Some(30080), vec![])],
    );

    let mut changed_web = web.clone();
    changed_web.ports[0].endpoints = endpoints(3, "10.99.0", 8080);
    changed_web.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let mut changed_dns = dns.clone();
    changed_dns.ports[0].endpoints.clear();
    let mut local = exposed.clone();
    local.external_traffic_policy = TrafficPolicy::Local;
    local.ports[0].endpoints = vec![ep("10.99.2.2", 8443, true), ep("10.99.3.2", 8443, false)];

    let mut dual = changed_web.clone();
    dual.cluster_ips.push(ip("fd00:98::10"));
    dual.ports[0].endpoints.push(ep("fd00:99::2", 8080, true));
    dual.ports[0].endpoints.push(ep("fd00:99::3", 8080, false));
    let mut v6 = svc(
        "v6",
        &["fd00:98::20"],
        vec![port(
            Tcp,
            443,
            Some(30444),
            vec![ep("fd00:99::4", 8443, true)],
        )],
    );
    v6.external_ips = vec![ip("2001:db8::20")];
    v6.external_traffic_policy = TrafficPolicy::Local;
    let sctp = svc(
        "sctp",
        &["10.98.0.40"],
        vec![port(Sctp, 9999, None, vec![ep("10.99.4.2", 9999, false)])],
    );

    // More endpoints than the numgen cascade takes (an anonymous vmap), and exactly as many.
    let wide = svc(
        "wide",
        &["10.98.0.50"],
        vec![port(Tcp, 80, None, endpoints(40, "10.99.5", 8080))],
    );
    let mut cascade = svc(
        "cascade",
        &["10.98.0.51"],
        vec![port(Udp, 53, Some(30053), endpoints(32, "10.99.6", 53))],
    );
    cascade.internal_traffic_policy = TrafficPolicy::Local;
    // Endpoints, but none local under a Local policy: drop.
    let mut remote = svc(
        "remote",
        &["10.98.0.52"],
        vec![port(Tcp, 80, Some(30052), vec![ep("10.99.7.2", 80, false)])],
    );
    remote.external_traffic_policy = TrafficPolicy::Local;
    let mut wider = wide.clone();
    wider.ports[0].endpoints = endpoints(41, "10.99.5", 8080);
    wider.ports[0].endpoints.remove(3);

    let state = |node: fn() -> Node, services: Vec<Service>| ProxyState::new(node(), services);
    vec![
        state(node_only, vec![]),
        state(node_only, vec![web.clone(), dns.clone()]),
        state(
            node_only,
            vec![web.clone(), dns.clone(), exposed.clone(), no_eps.clone()],
        ),
        state(
            node_only,
            vec![
                changed_web.clone(),
                changed_dns.clone(),
                local.clone(),
                no_eps.clone(),
            ],
        ),
        state(
            node_only,
            vec![dual.clone(), v6.clone(), sctp.clone(), local.clone()],
        ),
        state(
            node_only,
            vec![wide.clone(), cascade.clone(), remote.clone(), dual.clone()],
        ),
        state(
            node_only,
            vec![wider, cascade.clone(), remote, dual.clone(), v6.clone()],
        ),
        state(node_all_local, vec![dual, v6, sctp, local, no_eps, cascade]),
    ]
}

fn rulesets(states: &[ProxyState]) -> Vec<Ruleset> {
    states
        .iter()
        .map(|s| {
            let b = build(s);
            assert!(b.skipped.is_empty(), "{:?}", b.skipped);
            b.ruleset
        })
        .collect()
}

#[test]
fn updates_through_netlink_match_updates_through_nft() {
    require_kernel!(&["ip", "nft"]);
    let via_netlink = Netns::new("netlink");
    let via_text = Netns::new("text");
    let (nft, text) = (via_netlink.nft(), via_text.nft());
    let netlink = via_netlink.netlink();
    let rulesets = rulesets(&states());
    let mut applied = 0;
    for (i, from) in rulesets.iter().enumerate() {
        for (j, to) in rulesets.iter().enumerate() {
            let tx = match Transaction::update(from, to) {
                Update::Apply(tx) => tx,
                Update::Unchanged => {
                    assert_eq!(i, j);
                    continue;
                }
                Update::NeedsFull => continue,
            };
            nft.apply(from).expect("full apply");
            text.apply(from).expect("full apply");
            netlink
                .apply(&tx)
                .unwrap_or_else(|e| panic!("update {i} -> {j} via netlink: {e}"));
            text.run(&tx.render())
                .unwrap_or_else(|e| panic!("update {i} -> {j} via nft: {e}"));
            assert_eq!(
                canonical_listing(&nft.list().expect("list")),
                canonical_listing(&text.list().expect("list")),
                "update {i} -> {j}: listings differ"
            );
            assert_eq!(
                canonical_expressions(&via_netlink.expressions()),
                canonical_expressions(&via_text.expressions()),
                "update {i} -> {j}: expressions differ"
            );
            applied += 1;
        }
    }
    // Only the affinity timeout of one service differs between some states.
    assert!(
        applied >= 40,
        "only {applied} in-place updates were compared"
    );
}

#[test]
fn a_refused_batch_changes_nothing() {
    require_kernel!(&["ip", "nft"]);
    let ns = Netns::new("refused");
    let nft = ns.nft();
    let netlink = ns.netlink();
    let rulesets = rulesets(&states());
    nft.apply(&rulesets[1]).expect("full apply");
    let before = nft.list().expect("list");
    let before_expressions = ns.expressions();

    // Computed against the wrong applied state: it flushes and fills chains the kernel does not
    // have, after adding many objects that must not survive.
    let Update::Apply(wrong) = Transaction::update(&rulesets[3], &rulesets[2]) else {
        panic!("expected an in-place update");
    };
    match netlink.apply(&wrong) {
        Err(NetlinkError::Refused { op, errno }) => {
            assert_eq!(errno, Errno::ENOENT, "{op}");
            assert!(op.contains("inet nodus"), "{op}");
        }
        other => panic!("expected a refused batch, got {other:?}"),
    }
    assert_eq!(nft.list().expect("list"), before);
    assert_eq!(ns.expressions(), before_expressions);

    // The socket is still usable: the right update goes through.
    let Update::Apply(right) = Transaction::update(&rulesets[1], &rulesets[2]) else {
        panic!("expected an in-place update");
    };
    netlink.apply(&right).expect("the right update");
    nft.apply(&rulesets[2]).expect("full apply");
    let full = canonical_listing(&nft.list().expect("list"));
    nft.apply(&rulesets[1]).expect("full apply");
    netlink.apply(&right).expect("the right update");
    assert_eq!(canonical_listing(&nft.list().expect("list")), full);
}

#[test]
fn full_replaces_through_netlink_match_full_replaces_through_nft() {
    require_kernel!(&["ip", "nft"]);
    let via_netlink = Netns::new("fullnl");
    let via_text = Netns::new("fulltext");
    let (nft, text) = (via_netlink.nft(), via_text.nft());
    let netlink = via_netlink.netlink();
    // The first replace finds no table; each later one replaces the previous state's.
    for (i, ruleset) in rulesets(&states()).iter().enumerate() {
        netlink
            .apply(&Transaction::full(ruleset))
            .unwrap_or_else(|e| panic!("full replace {i} via netlink: {e}"));
        text.apply(ruleset)
            .unwrap_or_else(|e| panic!("full replace {i} via nft: {e}"));
        let (listed, reference) = (nft.list().expect("list"), text.list().expect("list"));
        // The table line and its comment, which the canonical form leaves out.
        let head = |listing: &str| listing.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            head(&listed),
            head(&reference),
            "replace {i}: table differs"
        );
        assert!(
            listed.contains("comment \"nodus service proxy\""),
            "{listed}"
        );
        assert_eq!(
            canonical_listing(&listed),
            canonical_listing(&reference),
            "replace {i}: listings differ"
        );
        assert_eq!(
            canonical_expressions(&via_netlink.expressions()),
            canonical_expressions(&via_text.expressions()),
            "replace {i}: expressions differ"
        );
    }
}

#[test]
fn a_refused_full_replace_leaves_the_old_table() {
    require_kernel!(&["ip", "nft"]);
    let ns = Netns::new("fullrefused");
    let nft = ns.nft();
    let netlink = ns.netlink();
    let rulesets = rulesets(&states());
    nft.apply(&rulesets[2]).expect("full apply");
    let before = nft.list().expect("list");
    // Everything of another state, then an op the kernel refuses: the table it deleted and the
    // one it began to build are both rolled back.
    let mut broken = Transaction::full(&rulesets[4]);
    broken.ops.push(Op::FlushChain("no-such-chain"));
    match netlink.apply(&broken) {
        Err(NetlinkError::Refused { op, errno }) => {
            assert_eq!(errno, Errno::ENOENT, "{op}");
            assert!(op.contains("flush chain inet nodus no-such-chain"), "{op}");
        }
        other => panic!("expected a refused batch, got {other:?}"),
    }
    assert_eq!(nft.list().expect("list"), before);
}
