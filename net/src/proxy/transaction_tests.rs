//! Transactions, checked by replaying their operations on a model of the kernel's table that
//! refuses what the kernel refuses (a rule naming a missing chain or set, deleting a chain that is
//! still referred to): an update must both be accepted and end exactly at the desired ruleset.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::proxy::model::{
    Endpoint, Node, NodePortAddresses, Protocol, ProxyState, Service, ServicePort, SessionAffinity,
    TrafficPolicy,
};
use crate::proxy::ruleset::{Chain, Match, Stmt, build};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn node() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::Only(vec![ip("10.97.0.1")]),
        cluster_cidrs: vec!["10.99.0.0/16".parse().expect("CIDR")],
    }
}

fn ep(addr: &str, local: bool) -> Endpoint {
    let a: SocketAddr = addr.parse().expect("test socket address");
    Endpoint::ready(a.ip(), a.port(), local)
}

/// A service with a node port derived from its cluster IP, so test services never collide.
fn service(name: &str, cluster_ip: &str, endpoints: Vec<Endpoint>) -> Service {
    let IpAddr::V4(v4) = ip(cluster_ip) else {
        panic!("v4 test service")
    };
    let [.., hi, lo] = v4.octets();
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
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30000 + u16::from_be_bytes([hi, lo]) % 2000),
            endpoints,
        }],
    }
}

fn ruleset(services: Vec<Service>) -> Ruleset {
    let b = build(&ProxyState::new(node(), services));
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    b.ruleset
}

fn two() -> Vec<Endpoint> {
    vec![ep("10.99.0.2:8080", true), ep("10.99.1.3:8080", false)]
}

fn with_affinity(mut s: Service, timeout_seconds: u32) -> Service {
    s.session_affinity = SessionAffinity::ClientIp { timeout_seconds };
    s
}

/// Chains and sets a rule refers to.
fn references(rule: &Rule) -> (Vec<&str>, Vec<&str>) {
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for m in &rule.matches {
        match m {
            Match::DaddrInSet(_, s)
            | Match::SaddrInSet(_, s)
            | Match::SaddrDaddrInSet(_, s)
            | Match::DaddrProtoPortInSet(_, s) => sets.push(s.as_str()),
            _ => {}
        }
    }
    for s in &rule.stmts {
        match s {
            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => chains.push(c.as_ref()),
            Stmt::NumgenDnat(_, picks) => {
                sets.extend(picks.iter().filter_map(|p| p.affinity.as_deref()))
            }
            Stmt::VmapAddrProtoPort(_, m) | Stmt::VmapProtoPort(m) | Stmt::UpdateSaddr(_, m) => {
                sets.push(m.as_str())
            }
            _ => {}
        }
    }
    (chains, sets)
}

fn verdict_chain(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
        _ => None,
    }
}

/// The table as the kernel sees it: one namespace of chains and one of sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Table {
    chains: BTreeMap<String, Chain>,
    sets: BTreeMap<String, Set>,
}

fn flatten(rs: &Ruleset) -> Table {
    Table {
        chains: rs
            .all_chains()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect(),
        sets: rs.all_sets().map(|(n, s)| (n.clone(), s.clone())).collect(),
    }
}

/// Replays `tx` on `start` as the kernel would, panicking on anything the kernel would refuse.
fn replay(start: &Ruleset, tx: &Transaction<'_>) -> Table {
    let mut rs = if tx.full {
        Table::default()
    } else {
        flatten(start)
    };
    let referenced = |rs: &Table, chain: &str| {
        rs.chains
            .values()
            .flat_map(|c| &c.rules)
            .any(|r| references(r).0.contains(&chain))
            || rs
                .sets
                .values()
                .flat_map(|s| s.map.values())
                .any(|v| verdict_chain(v) == Some(chain))
    };
    for op in &tx.ops {
        match op {
            Op::AddChain { name, hook } => {
                assert!(!rs.chains.contains_key(*name), "chain {name} added twice");
                rs.chains.insert(
                    name.to_string(),
                    Chain {
                        hook: hook.copied(),
                        rules: Vec::new(),
                    },
                );
            }
            Op::AddSet { name, kind } => {
                assert!(!rs.sets.contains_key(*name), "set {name} added twice");
                rs.sets.insert(
                    name.to_string(),
                    Set {
                        kind: (*kind).clone(),
                        addrs: Default::default(),
                        keys: Default::default(),
                        map: Default::default(),
                    },
                );
            }
            Op::FlushChain(name) => {
                rs.chains
                    .get_mut(*name)
                    .unwrap_or_else(|| panic!("flushing missing chain {name}"))
                    .rules
                    .clear();
            }
            Op::AddRule { chain, rule } => {
                let (chains, sets) = references(rule);
                for c in chains {
                    assert!(
                        rs.chains.contains_key(c),
                        "rule in {chain} names missing {c}"
                    );
                }
                for s in sets {
                    assert!(
                        rs.sets.contains_key(s),
                        "rule in {chain} names missing set {s}"
                    );
                }
                rs.chains
                    .get_mut(*chain)
                    .unwrap_or_else(|| panic!("rule for missing chain {chain}"))
                    .rules
                    .push((*rule).clone());
            }
            Op::DeleteElements { set, elements } => {
                let s = rs.sets.get_mut(*set).expect("deleting from a missing set");
                for e in elements {
                    match e {
                        Element::Addr(a) | Element::Pair(a) => {
                            assert!(s.addrs.remove(a), "{a} not in {set}")
                        }
                        Element::Key(k) => assert!(s.keys.remove(k), "{k:?} not in {set}"),
                        Element::Map(k, _) => {
                            assert!(s.map.remove(k).is_some(), "{k:?} not in {set}")
                        }
                    }
                }
            }
            Op::AddElements { set, elements } => {
                for e in elements {
                    if let Element::Map(_, v) = e
                        && let Some(c) = verdict_chain(v)
                    {
                        assert!(
                            rs.chains.contains_key(c),
                            "element of {set} names missing {c}"
                        );
                    }
                }
                let s = rs.sets.get_mut(*set).expect("adding to a missing set");
                for e in elements {
                    match e {
                        Element::Addr(a) | Element::Pair(a) => {
                            assert!(s.addrs.insert(**a), "{a} already in {set}")
                        }
                        Element::Key(k) => assert!(s.keys.insert(**k), "{k:?} already in {set}"),
                        Element::Map(k, v) => assert!(
                            s.map.insert(**k, (*v).clone()).is_none(),
                            "{k:?} already in {set}"
                        ),
                    }
                }
            }
            Op::DeleteChain(name) => {
                let chain = rs.chains.get(*name).expect("deleting a missing chain");
                assert!(chain.rules.is_empty(), "deleting {name} with rules in it");
                assert!(!referenced(&rs, name), "deleting {name} while referred to");
                rs.chains.remove(*name);
            }
            Op::DeleteSet { name, .. } => {
                let in_use = rs
                    .chains
                    .values()
                    .flat_map(|c| &c.rules)
                    .any(|r| references(r).1.contains(name));
                assert!(!in_use, "deleting set {name} while referred to");
                rs.sets.remove(*name).expect("deleting a missing set");
            }
        }
    }
    rs
}

fn assert_update_reaches(from: &Ruleset, to: &Ruleset) -> usize {
    match Transaction::update(from, to) {
        Update::Unchanged => {
            assert_eq!(from, to);
            0
        }
        Update::Apply(tx) => {
            assert!(!tx.full);
            let reached = replay(from, &tx);
            // Affinity elements are the kernel's; the model never has any, so plain equality.
            assert_eq!(reached, flatten(to));
            tx.len()
        }
        Update::NeedsFull => panic!("expected an in-place update"),
    }
}

#[test]
fn a_full_transaction_builds_the_ruleset_from_nothing() {
    let rs = ruleset(vec![
        service("a", "10.98.0.10", two()),
        with_affinity(service("b", "10.98.0.11", two()), 60),
    ]);
    let tx = Transaction::full(&rs);
    assert_eq!(replay(&Ruleset::default(), &tx), flatten(&rs));
    assert!(
        tx.render()
            .starts_with("add table inet nodus\ndelete table inet nodus\n")
    );
}

#[test]
fn the_same_ruleset_needs_no_transaction() {
    let rs = ruleset(vec![service("a", "10.98.0.10", two())]);
    assert_eq!(
        Transaction::update(&rs, &rs.clone()),
        Update::Unchanged,
        "an unchanged state must not touch the kernel"
    );
}

#[test]
fn one_endpoint_change_touches_only_its_service() {
    let others: Vec<Service> = (0..20)
        .map(|i| service(&format!("s{i}"), &format!("10.98.1.{i}"), two()))
        .collect();
    let mut before = others.clone();
    before.push(service("web", "10.98.0.10", two()));
    let mut after = others;
    after.push(service(
        "web",
        "10.98.0.10",
        vec![ep("10.99.0.2:8080", true)],
    ));
    let (before, after) = (ruleset(before), ruleset(after));
    let Update::Apply(tx) = Transaction::update(&before, &after) else {
        panic!("expected an update");
    };
    let text = tx.render();
    // Only `web`'s service chain is refilled; nothing is declared or deleted, no element changes
    // (the other services keep the endpoint in the hairpin set).
    for line in text.lines() {
        assert!(line.contains("default/web/"), "unrelated change: {line}");
    }
    assert!(text.contains("flush chain inet nodus svc-"), "{text}");
    assert!(!text.contains("add chain"), "{text}");
    assert!(!text.contains("delete"), "{text}");
    assert!(!text.contains("element"), "{text}");
    assert_update_reaches(&before, &after);
}

#[test]
fn services_coming_and_going_are_replayable() {
    let base: Vec<Service> = vec![
        service("a", "10.98.0.10", two()),
        service("b", "10.98.0.11", vec![]),
        with_affinity(service("c", "10.98.0.12", two()), 30),
    ];
    let mut states = vec![Vec::new(), base.clone()];
    // An endpoint appears for b (reject → dispatch: the map key moves between maps).
    let mut s = base.clone();
    s[1].ports[0].endpoints = vec![ep("10.99.0.9:80", true)];
    states.push(s.clone());
    // a loses all endpoints (dispatch → reject), c gains one (affinity set added).
    s[0].ports[0].endpoints.clear();
    s[2].ports[0].endpoints.push(ep("10.99.2.2:8080", false));
    states.push(s.clone());
    // a's cluster IP changes; c is deleted (its affinity sets must go after its chains).
    s[0].cluster_ips = vec![ip("10.98.0.20")];
    s.remove(2);
    states.push(s);
    states.push(Vec::new());
    let rulesets: Vec<Ruleset> = states.into_iter().map(ruleset).collect();
    for from in &rulesets {
        for to in &rulesets {
            assert_update_reaches(from, to);
        }
    }
}

#[test]
fn a_verdict_change_deletes_and_re_adds_the_key() {
    let before = ruleset(vec![service("a", "10.98.0.10", vec![])]);
    let after = ruleset(vec![service("a", "10.98.0.10", two())]);
    let Update::Apply(tx) = Transaction::update(&before, &after) else {
        panic!("expected an update");
    };
    let text = tx.render();
    let delete = text
        .find("delete element inet nodus no-endpoint-services {\n\t10.98.0.10 . tcp . 80\n}")
        .expect("the reject entry is deleted by key");
    let add = text
        .find("add element inet nodus service-ips {\n\t10.98.0.10 . tcp . 80 : goto svc-")
        .expect("the dispatch entry is added");
    let chain = text.find("add chain inet nodus svc-").expect("chain added");
    assert!(chain < add && delete < add, "{text}");
}

#[test]
fn affinity_timeout_changes_need_a_full_replace() {
    let before = ruleset(vec![with_affinity(service("a", "10.98.0.10", two()), 30)]);
    let after = ruleset(vec![with_affinity(service("a", "10.98.0.10", two()), 60)]);
    assert_eq!(Transaction::update(&before, &after), Update::NeedsFull);
}

#[test]
fn affinity_elements_are_never_touched() {
    let mut before = ruleset(vec![with_affinity(service("a", "10.98.0.10", two()), 30)]);
    // As if the kernel had learnt a client; the model keeps none, but an update must not try to
    // reconcile dynamic sets either way.
    let objects = std::sync::Arc::make_mut(
        before
            .services
            .values_mut()
            .next()
            .expect("the service's objects"),
    );
    let aff = objects
        .sets
        .values_mut()
        .find(|s| s.is_dynamic())
        .expect("an affinity set");
    aff.addrs.insert(ip("203.0.113.9"));
    let after = ruleset(vec![with_affinity(service("a", "10.98.0.10", two()), 30)]);
    assert_eq!(Transaction::update(&before, &after), Update::Unchanged);
}
