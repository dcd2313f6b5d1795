//! Kernel integration: rulesets applied with `nft` inside throwaway network namespaces, with real
//! TCP and UDP traffic between veth "pods", a "client" outside the node, and the node itself.
//!
//! Invariants: every namespace a test creates is removed by a Drop guard, even when the test
//! fails; all traffic stays inside those namespaces (servers and clients are threads that entered
//! a namespace with setns(2), which is per thread); without root, `ip` or `nft`, tests skip with
//! a message instead of failing.
//!
//! Topology of a [`Lab`] (addresses from test-only ranges):
//!
//! ```text
//!   client ns                node ns                          pod ns i
//!   10.97.0.2/24 ── veth ── 10.97.0.1/24 (ext0, node IP)
//!                            br0 10.99.0.1/24 ── vp{i} (hairpin) ─ eth0 10.99.0.{i+2}/24
//!                            route 10.98.0.0/16 (service IPs) dev br0
//! ```

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Netns, canonical_listing, run};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nodus_net::proxy::apply::Error as ApplyError;
use nodus_net::proxy::model::{
    Endpoint, Node, NodePortAddresses, Protocol, ProxyState, Service, ServicePort, SessionAffinity,
    TrafficPolicy,
};
use nodus_net::proxy::netlink::Netlink;
use nodus_net::proxy::ruleset::{Builder, Ruleset, build};
use nodus_net::proxy::transaction::{Transaction, Update};

const NODE_IP: &str = "10.97.0.1";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A node namespace with pods behind a bridge and an external client.
struct Lab {
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    // Dropped after `Lab::drop` has stopped the servers.
    pods: Vec<Netns>,
    client: Netns,
    node: Netns,
}

impl Lab {
    fn new(pods: usize) -> Lab {
        let node = Netns::new("node");
        let client = Netns::new("client");
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        node.ip(&["route", "add", "10.98.0.0/16", "dev", "br0"]);
        node.ip(&[
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "ext0"]);
        node.ip(&["link", "set", "ext0", "up"]);
        client.ip(&["addr", "add", "10.97.0.2/24", "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "default", "via", NODE_IP]);
        run(&[
            "ip",
            "netns",
            "exec",
            &node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let pods = (0..pods)
            .map(|i| {
                let pod = Netns::new(&format!("pod{i}"));
                let veth = format!("vp{i}");
                node.ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                    &pod.name,
                ]);
                node.ip(&["link", "set", &veth, "master", "br0", "up"]);
                // As the bridge CNI plugin's hairpinMode: with br_netfilter a pod's connection
                // DNAT'd back to itself is bridged out of the port it came in by.
                node.ip(&[
                    "link",
                    "set",
                    &veth,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ]);
                pod.ip(&["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"]);
                pod.ip(&["link", "set", "eth0", "up"]);
                pod.ip(&["route", "add", "default", "via", "10.99.0.1"]);
                pod
            })
            .collect();
        Lab {
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            pods,
            client,
            node,
        }
    }

    /// TCP and UDP servers in pod `i` that answer with `pod{i}`.
    fn serve(&mut self, i: usize) {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = self.stop.clone();
        let name = format!("pod{i}");
        self.servers.push(self.pods[i].spawn(move || {
            let tcp = TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("binding the TCP server");
            tcp.set_nonblocking(true).expect("nonblocking listener");
            let udp = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("binding the UDP server");
            udp.set_nonblocking(true).expect("nonblocking UDP socket");
            tx.send(()).expect("the lab waits for the server");
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                // Wake at least every 100 ms to notice `stop`.
                let mut fds = [
                    PollFd::new(tcp.as_fd(), PollFlags::POLLIN),
                    PollFd::new(udp.as_fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::from(100u16)).expect("poll") == 0 {
                    continue;
                }
                if let Ok((mut stream, _)) = tcp.accept() {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(name.as_bytes());
                }
                while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(name.as_bytes(), peer);
                }
            }
        }));
        rx.recv_timeout(TIMEOUT).expect("the server starts");
    }

    fn apply(&self, state: &ProxyState) -> Ruleset {
        let b = build(state);
        assert!(b.skipped.is_empty(), "{:?}", b.skipped);
        self.node
            .nft()
            .apply(&b.ruleset)
            .expect("applying the ruleset");
        b.ruleset
    }

    /// Moves the kernel from `applied` to `state` with an in-place update, as syncs do.
    fn update(&self, applied: &Ruleset, state: &ProxyState) -> Ruleset {
        let b = build(state);
        assert!(b.skipped.is_empty(), "{:?}", b.skipped);
        match Transaction::update(applied, &b.ruleset) {
            Update::Apply(tx) => {
                self.node
                    .nft()
                    .run(&tx.render())
                    .expect("applying the update");
            }
            other => panic!("expected an in-place update, got {other:?}"),
        }
        b.ruleset
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

fn pod_ip(i: usize) -> String {
    format!("10.99.0.{}", i + 2)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn node_config() -> Node {
    Node {
        node_port_addresses: NodePortAddresses::Only(vec![ip(NODE_IP)]),
        cluster_cidrs: vec!["10.99.0.0/16".parse().expect("CIDR")],
    }
}

fn service(cluster_ip: &str, protocol: Protocol, port: u16, pods: &[usize]) -> Service {
    let target = if protocol == Protocol::Udp {
        UDP_PORT
    } else {
        TCP_PORT
    };
    Service {
        namespace: "test".into(),
        name: format!("svc-{}", cluster_ip.replace('.', "-")),
        cluster_ips: vec![ip(cluster_ip)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity: SessionAffinity::None,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        ports: vec![ServicePort {
            name: String::new(),
            protocol,
            port,
            node_port: None,
            endpoints: pods
                .iter()
                .map(|&i| Endpoint::ready(ip(&pod_ip(i)), target, true))
                .collect(),
        }],
    }
}

fn state(services: Vec<Service>) -> ProxyState {
    ProxyState::new(node_config(), services)
}

/// Connects from namespace `ns` and returns what the server said.
fn tcp_get(ns: &Netns, to: &str) -> std::io::Result<String> {
    let addr: SocketAddr = to.parse().expect("test socket address");
    ns.exec(move || {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
}

/// Only connects, from namespace `ns`.
fn tcp_connect(ns: &Netns, to: &str) -> std::io::Result<()> {
    let addr: SocketAddr = to.parse().expect("test socket address");
    ns.exec(move || TcpStream::connect_timeout(&addr, TIMEOUT).map(drop))
}

/// Sends one datagram from `src_port` in namespace `ns` and returns the reply.
fn udp_ask(ns: &Netns, src_port: u16, to: &str) -> std::io::Result<String> {
    let addr: SocketAddr = to.parse().expect("test socket address");
    ns.exec(move || {
        let socket = UdpSocket::bind(("0.0.0.0", src_port))?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.send_to(b"?", addr)?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn tally(replies: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts.entry(r).or_default() += 1;
    }
    counts
}

#[test]
fn cluster_ip_spreads_over_endpoints() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(3);
    lab.serve(0);
    lab.serve(1);
    lab.apply(&state(vec![service(
        "10.98.0.10",
        Protocol::Tcp,
        80,
        &[0, 1],
    )]));

    let from_pod = tally((0..40).map(|_| tcp_get(&lab.pods[2], "10.98.0.10:80").expect("connect")));
    // 40 random picks between two endpoints all landing on one: probability 2^-39.
    assert_eq!(
        from_pod.keys().collect::<Vec<_>>(),
        ["pod0", "pod1"],
        "{from_pod:?}"
    );

    let from_node = tcp_get(&lab.node, "10.98.0.10:80").expect("connect from the node");
    assert!(from_node == "pod0" || from_node == "pod1", "{from_node}");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(2);
    lab.serve(0);
    lab.serve(1);
    let applied = lab.apply(&state(vec![service(
        "10.98.0.10",
        Protocol::Tcp,
        80,
        &[0, 1],
    )]));
    // Without the hairpin masquerade a pod picked as its own endpoint would get a packet from
    // outside with its own address as the source, a martian it drops: every connect must work.
    // 20 picks that never land on pod0 itself: probability 2^-20.
    let replies = tally((0..20).map(|_| tcp_get(&lab.pods[0], "10.98.0.10:80").expect("connect")));
    assert!(replies.contains_key("pod0"), "{replies:?}");
    // After an in-place update that leaves pod0 alone.
    lab.update(
        &applied,
        &state(vec![service("10.98.0.10", Protocol::Tcp, 80, &[0])]),
    );
    assert_eq!(
        tcp_get(&lab.pods[0], "10.98.0.10:80").expect("hairpin connect after the update"),
        "pod0"
    );
}

/// Accepts one connection in `ns` on `port` and answers with the peer's address.
fn tell_peer(ns: &Netns, port: u16) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = ns.spawn(move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("binding the server");
        tx.send(()).expect("the test waits for the server");
        if let Ok((mut stream, peer)) = listener.accept() {
            let _ = stream.write_all(peer.ip().to_string().as_bytes());
        }
    });
    rx.recv_timeout(TIMEOUT).expect("the server starts");
    server
}

#[test]
fn pod_traffic_leaving_the_pod_network_goes_out_with_the_node_address() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let lab = Lab::new(1);
    let server = tell_peer(&lab.client, 9000);
    let seen = tcp_get(&lab.pods[0], "10.97.0.2:9000").expect("out of the cluster, unmasqueraded");
    let _ = server.join();
    assert_eq!(
        seen,
        pod_ip(0),
        "before the ruleset the pod's own address arrives"
    );

    lab.apply(&state(vec![]));
    let server = tell_peer(&lab.client, 9001);
    let seen = tcp_get(&lab.pods[0], "10.97.0.2:9001").expect("out of the cluster");
    let _ = server.join();
    assert_eq!(seen, NODE_IP, "masqueraded to the node's address");
}

#[test]
fn node_port_works_on_the_node_ip() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(1);
    lab.serve(0);
    let mut svc = service("10.98.0.11", Protocol::Tcp, 80, &[0]);
    svc.ports[0].node_port = Some(30080);
    lab.apply(&state(vec![svc]));

    assert_eq!(
        tcp_get(&lab.client, &format!("{NODE_IP}:30080")).expect("NodePort from outside"),
        "pod0"
    );
    assert_eq!(
        tcp_get(&lab.node, &format!("{NODE_IP}:30080")).expect("NodePort from the node"),
        "pod0"
    );
}

#[test]
fn a_service_without_endpoints_rejects_at_once() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let lab = Lab::new(1);
    // Something on the node listens on the NodePort, so a refusal there comes from the ruleset,
    // not from the node's TCP stack finding no socket.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let listener = lab.node.spawn(move || {
        let _socket = TcpListener::bind((NODE_IP, 30081)).expect("binding on the node");
        let _ = rx.recv();
    });
    // Without the ruleset, the ClusterIP is just an unreachable address: the client times out.
    let err = tcp_get(&lab.pods[0], "10.98.0.12:80").expect_err("nothing there yet");
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        tcp_connect(&lab.client, &format!("{NODE_IP}:30081")).map_err(|e| e.kind()),
        Ok(()),
        "the node's own listener answers before the ruleset exists"
    );

    let mut svc = service("10.98.0.12", Protocol::Tcp, 80, &[]);
    svc.ports[0].node_port = Some(30081);
    lab.apply(&state(vec![svc]));

    for (ns, to) in [
        (&lab.pods[0], "10.98.0.12:80".to_owned()),
        (&lab.node, "10.98.0.12:80".to_owned()),
        (&lab.client, format!("{NODE_IP}:30081")),
        // A ClusterIP on a port no service uses.
        (&lab.pods[0], "10.98.0.12:81".to_owned()),
    ] {
        let start = Instant::now();
        let err = tcp_get(ns, &to).expect_err("no endpoints");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "{to} from {}: {err}",
            ns.name
        );
        assert!(
            start.elapsed() < TIMEOUT / 2,
            "{to}: refused only after {:?}",
            start.elapsed()
        );
    }
    drop(tx);
    listener.join().expect("the node listener");
}

#[test]
fn removing_an_endpoint_moves_traffic() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(3);
    lab.serve(0);
    lab.serve(1);
    let applied = lab.apply(&state(vec![service("10.98.0.13", Protocol::Tcp, 80, &[0])]));
    let before = tally((0..10).map(|_| tcp_get(&lab.pods[2], "10.98.0.13:80").expect("connect")));
    assert_eq!(before, BTreeMap::from([("pod0".to_owned(), 10)]));

    lab.update(
        &applied,
        &state(vec![service("10.98.0.13", Protocol::Tcp, 80, &[1])]),
    );
    let after = tally((0..10).map(|_| tcp_get(&lab.pods[2], "10.98.0.13:80").expect("connect")));
    assert_eq!(after, BTreeMap::from([("pod1".to_owned(), 10)]));
}

#[test]
fn udp_flow_moves_to_the_new_endpoint_after_conntrack_cleanup() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(3);
    lab.serve(0);
    lab.serve(1);
    let client = &lab.pods[2];
    // A fixed source port makes every datagram part of the same conntrack flow.
    let src_port = 40053;
    let applied = lab.apply(&state(vec![service("10.98.0.14", Protocol::Udp, 53, &[0])]));
    assert_eq!(
        udp_ask(client, src_port, "10.98.0.14:53").expect("first reply"),
        "pod0"
    );

    lab.update(
        &applied,
        &state(vec![service("10.98.0.14", Protocol::Udp, 53, &[1])]),
    );
    // The ruleset moved on, but the flow's conntrack entry still DNATs to the old endpoint.
    assert_eq!(
        udp_ask(client, src_port, "10.98.0.14:53").expect("stale reply"),
        "pod0"
    );

    let deleted = lab
        .node
        .conntrack()
        .delete_udp_nat(ip("10.98.0.14"), ip(&pod_ip(0)))
        .expect("deleting the stale entries");
    assert!(deleted >= 1, "deleted {deleted}");
    assert_eq!(
        udp_ask(client, src_port, "10.98.0.14:53").expect("new reply"),
        "pod1"
    );
    // Nothing left to delete is not an error.
    assert_eq!(
        lab.node
            .conntrack()
            .delete_udp_nat(ip("10.98.0.14"), ip(&pod_ip(0)))
            .expect("deleting nothing"),
        0
    );
}

#[test]
fn client_ip_affinity_survives_unrelated_updates() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let mut lab = Lab::new(3);
    lab.serve(0);
    lab.serve(1);
    let mut sticky = service("10.98.0.16", Protocol::Tcp, 80, &[0, 1]);
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    let mut applied = lab.apply(&state(vec![sticky.clone()]));
    let first = tcp_get(&lab.pods[2], "10.98.0.16:80").expect("connect");
    for i in 0..10 {
        // Another Service comes and goes between connections; each update leaves the affinity
        // set alone, so every connection still reaches the first endpoint (a reset set would
        // pick at random: ten times the same by chance is 2^-10).
        let other = service(&format!("10.98.1.{i}"), Protocol::Tcp, 80, &[i % 2]);
        applied = lab.update(&applied, &state(vec![sticky.clone(), other]));
        let reply = tcp_get(&lab.pods[2], "10.98.0.16:80").expect("connect");
        assert_eq!(reply, first, "affinity lost after update {i}");
    }
}

#[test]
fn in_place_updates_reach_the_same_kernel_state_as_a_full_apply() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let ns = Netns::new("update");
    let nft = ns.nft();
    let mut sticky = service("10.98.0.20", Protocol::Tcp, 80, &[0, 1]);
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let mut exposed = service("10.98.0.21", Protocol::Tcp, 443, &[2]);
    exposed.ports[0].node_port = Some(30443);
    exposed.external_ips = vec![ip("192.0.2.21")];
    let udp = service("10.98.0.22", Protocol::Udp, 53, &[]);
    let mut states = vec![
        vec![],
        vec![sticky.clone(), exposed.clone(), udp.clone()],
        vec![sticky.clone(), udp.clone()],
    ];
    let mut changed = vec![sticky.clone(), exposed.clone(), udp.clone()];
    changed[0].ports[0].endpoints.pop();
    changed[1].external_traffic_policy = TrafficPolicy::Local;
    changed[2].ports[0].endpoints = vec![Endpoint::ready(ip(&pod_ip(3)), UDP_PORT, false)];
    states.push(changed);
    states.push(vec![exposed]);
    let rulesets: Vec<Ruleset> = states
        .into_iter()
        .map(|services| build(&state(services)).ruleset)
        .collect();
    let expected: Vec<Vec<String>> = rulesets
        .iter()
        .map(|rs| {
            nft.apply(rs).expect("full apply");
            canonical_listing(&nft.list().expect("list"))
        })
        .collect();
    for (i, a) in expected.iter().enumerate() {
        for b in &expected[i + 1..] {
            assert_ne!(a, b, "the states differ, and so must their listings");
        }
    }
    for (i, from) in rulesets.iter().enumerate() {
        for (j, to) in rulesets.iter().enumerate() {
            nft.apply(from).expect("full apply");
            match Transaction::update(from, to) {
                Update::Unchanged => assert_eq!(i, j),
                Update::Apply(tx) => {
                    nft.run(&tx.render())
                        .unwrap_or_else(|e| panic!("update {i} -> {j}: {e}"));
                }
                Update::NeedsFull => panic!("update {i} -> {j} asked for a full apply"),
            }
            let reached = canonical_listing(&nft.list().expect("list"));
            assert_eq!(reached, expected[j], "update {i} -> {j}");
        }
    }
}

#[test]
fn golden_rulesets_load_into_the_kernel() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let ns = Netns::new("golden");
    for (name, text) in [
        ("cluster-ip", include_str!("golden/cluster-ip.nft")),
        ("edge-cases", include_str!("golden/edge-cases.nft")),
        (
            "node-port-local-affinity",
            include_str!("golden/node-port-local-affinity.nft"),
        ),
    ] {
        ns.nft().run(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn cleanup_removes_the_table_and_a_refused_transaction_changes_nothing() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let ns = Netns::new("cleanup");
    let nft = ns.nft();
    nft.cleanup().expect("cleanup without a table");
    let b = build(&state(vec![service("10.98.0.15", Protocol::Tcp, 80, &[0])]));
    nft.apply(&b.ruleset).expect("apply");
    let applied = nft.list().expect("list");
    assert!(applied.contains("10.98.0.15"), "{applied}");

    let bad = format!(
        "{}add rule inet nodus services nonsense here\n",
        b.ruleset.render()
    );
    match nft.run(&bad) {
        Err(ApplyError::Rejected { stderr, .. }) => {
            assert!(stderr.contains("nonsense"), "{stderr}")
        }
        other => panic!("expected a refused transaction, got {other:?}"),
    }
    assert_eq!(
        nft.list().expect("list after a refused transaction"),
        applied
    );

    nft.cleanup().expect("cleanup");
    assert!(
        matches!(nft.list(), Err(ApplyError::Rejected { .. })),
        "the table is gone"
    );
    nft.cleanup().expect("cleanup is idempotent");
}

/// Services × 2 endpoints each, spread over a /16 of cluster IPs.
fn many(count: usize) -> ProxyState {
    let services = (0..count)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let mut s = service(&format!("10.98.{hi}.{lo}"), Protocol::Tcp, 80, &[]);
            s.name = format!("bench-{i}");
            s.ports[0].node_port = (i < 2000).then(|| 30000 + i as u16);
            s.ports[0].endpoints = (0..2)
                .map(|e| Endpoint::ready(ip(&format!("10.{}.{hi}.{lo}", 100 + e)), 8080, e == 0))
                .collect();
            s
        })
        .collect();
    state(services)
}

/// The state with endpoint `which` of service `i` removed.
fn without_endpoint(mut state: ProxyState, i: usize, which: usize) -> ProxyState {
    Arc::make_mut(&mut state.services[i]).ports[0]
        .endpoints
        .remove(which);
    state
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Peak resident memory of this process (VmHWM) and of the largest child (nft), in MiB.
fn peak_rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let own = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .expect("VmHWM in /proc/self/status");
    let children = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss() as f64;
    (own / 1024.0, children / 1024.0)
}

/// 200 TCP connects from pod 1 to a Service in front of pod 0 while `count` other Services are
/// programmed: (p50, p99) of the time to an established connection (the first packet is the one
/// that walks the nat chains).
fn connect_latency(count: usize) -> (Duration, Duration) {
    let mut lab = Lab::new(2);
    lab.serve(0);
    let mut state = many(count);
    state
        .services
        .push(Arc::new(service("10.98.250.1", Protocol::Tcp, 80, &[0])));
    lab.apply(&state);
    let addr: SocketAddr = "10.98.250.1:80".parse().expect("address");
    let mut times = lab.pods[1].exec(move || {
        let mut times = Vec::new();
        for i in 0..220 {
            let start = Instant::now();
            let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
            let took = start.elapsed();
            drop(stream);
            // The first connects warm caches (ARP, routes); they are not the figure.
            if i >= 20 {
                times.push(took);
            }
        }
        times
    });
    times.sort();
    (percentile(&times, 50), percentile(&times, 99))
}

/// The proxy benchmark of the services issue: cold sync, one endpoint change (build + diff +
/// netlink batch, the whole path of a sync after the first), peak memory, and connect latency
/// with few and many services. Run by `e2e/bench`, or by hand:
/// `cargo test --release -p nodus-net --test netns proxy_benchmark -- --ignored --nocapture`
/// (`NODUS_BENCH_SERVICES=1000,10000` picks the sizes).
#[test]
#[ignore = "benchmark: prints figures, asserts none; run with --ignored --nocapture"]
fn proxy_benchmark() {
    require_kernel!(&["ip", "nft", "conntrack"]);
    let sizes: Vec<usize> = std::env::var("NODUS_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 10_000]);
    let changes = 100;
    println!(
        "| services × 2 endpoints | rules | build | full replace via netlink | via nft | change p50 | change p99 | kernel commit p50 | same change via nft p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &count in &sizes {
        let ns = Netns::new("bench");
        let nft = ns.nft();
        let netlink = ns
            .exec(Netlink::open)
            .expect("a netlink socket in the namespace");
        let base = many(count);
        let mut builder = Builder::default();
        let t0 = Instant::now();
        let built = builder.build(&base).ruleset;
        let build = t0.elapsed();
        // Both from no table, as at the proxy's start.
        let full_nft = nft
            .run(&Transaction::full(&built).render())
            .expect("cold apply via nft");
        nft.cleanup().expect("removing the table");
        let full_netlink = netlink
            .apply(&Transaction::full(&built))
            .expect("cold apply via netlink");
        let mut applied = built;
        let mut total = Vec::new();
        let mut in_kernel = Vec::new();
        let mut via_nft = Vec::new();
        for k in 0..changes {
            // Alternately drop an endpoint of one service and restore it, walking over services.
            let i = (k / 2 * 97) % count;
            let next = if k % 2 == 0 {
                without_endpoint(base.clone(), i, k % 4 / 2)
            } else {
                base.clone()
            };
            let start = Instant::now();
            let desired = builder.build(&next).ruleset;
            let Update::Apply(tx) = Transaction::update(&applied, &desired) else {
                panic!("an endpoint change must be an in-place update");
            };
            // Every tenth change also goes through nft, for comparison: there and back.
            if k % 10 == 0 {
                in_kernel.push(netlink.apply(&tx).expect("applying the change"));
                total.push(start.elapsed());
                let back = Transaction::update(&desired, &applied);
                let Update::Apply(back) = back else {
                    panic!("the way back is an update too")
                };
                netlink.apply(&back).expect("going back");
                via_nft.push(nft.run(&tx.render()).expect("the change via nft"));
            } else {
                in_kernel.push(netlink.apply(&tx).expect("applying the change"));
                total.push(start.elapsed());
            }
            drop(tx);
            applied = desired;
        }
        total.sort();
        in_kernel.sort();
        via_nft.sort();
        println!(
            "| {count} | {} | {} | {} | {} | {} | {} | {} | {} |",
            applied.rule_count(),
            ms(build),
            ms(full_netlink),
            ms(full_nft),
            ms(percentile(&total, 50)),
            ms(percentile(&total, 99)),
            ms(percentile(&in_kernel, 50)),
            ms(percentile(&via_nft, 50)),
        );
    }
    let (own, nft) = peak_rss_mib();
    println!(
        "\npeak RSS: this process (model, ruleset, diff) {own:.0} MiB, largest nft run {nft:.0} MiB"
    );
    let (few50, few99) = connect_latency(10);
    let largest = sizes.iter().copied().max().unwrap_or(10_000);
    let (many50, many99) = connect_latency(largest);
    println!(
        "connect through a ClusterIP: 10 services p50 {} p99 {}; {largest} services p50 {} p99 {}",
        ms(few50),
        ms(few99),
        ms(many50),
        ms(many99)
    );
}
