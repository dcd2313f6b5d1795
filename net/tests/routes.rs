//! `routes` against the kernel: in a throwaway network namespace joined to a second one (the
//! "other node") by a veth pair, a sync makes the route to the other node's pod CIDR, traffic
//! to a pod address there arrives, and a sync without it takes it away again; a route whose
//! gateway is not on a connected network fails alone.

#[macro_use]
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::Netns;
use nodus_net::routes::{Route, Routes};

fn route(destination: &str, gateway: &str) -> Route {
    Route {
        destination: destination.parse().expect("net"),
        gateway: gateway.parse().expect("ip"),
    }
}

#[test]
fn a_synced_route_carries_traffic_to_the_other_nodes_pods() {
    require_kernel!(&["ip"]);
    let here = Netns::new("node-a");
    let there = Netns::new("node-b");
    here.ip(&[
        "link",
        "add",
        "a0",
        "type",
        "veth",
        "peer",
        "name",
        "b0",
        "netns",
        &there.name,
    ]);
    here.ip(&["addr", "add", "10.250.0.1/24", "dev", "a0"]);
    here.ip(&["link", "set", "a0", "up"]);
    there.ip(&["addr", "add", "10.250.0.2/24", "dev", "b0"]);
    there.ip(&["link", "set", "b0", "up"]);
    // A "pod" address on the other node, and its way back.
    there.ip(&["addr", "add", "10.244.1.5/32", "dev", "lo"]);
    let listener = there.exec(|| TcpListener::bind("10.244.1.5:8080").expect("listen"));

    let connect = |ns: &Netns| {
        ns.exec(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([10, 244, 1, 5], 8080)),
                Duration::from_secs(2),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    };
    assert!(connect(&here).is_err(), "reachable before any route");

    let wanted = vec![
        route("10.244.1.0/24", "10.250.0.2"),
        // Not on any connected network: refused, without stopping the other.
        route("10.244.2.0/24", "10.99.0.7"),
    ];
    let synced = here.exec(move || Routes::open().expect("open").sync(&wanted).expect("sync"));
    assert_eq!(synced.added, vec![route("10.244.1.0/24", "10.250.0.2")]);
    assert_eq!(synced.failed.len(), 1, "{:?}", synced.failed);
    assert!(
        synced.failed[0].to_string().contains("10.244.2.0/24"),
        "{}",
        synced.failed[0]
    );
    let listed = here.exec(|| Routes::open().expect("open").list().expect("list"));
    assert_eq!(listed, vec![route("10.244.1.0/24", "10.250.0.2")]);
    connect(&here).expect("the route carries the connection");
    drop(listener.accept().expect("accepted"));

    // A route made by hand is not ours: a sync leaves it alone.
    here.ip(&["route", "add", "10.244.9.0/24", "via", "10.250.0.2"]);
    // The other node went away: its route goes.
    let synced = here.exec(|| Routes::open().expect("open").sync(&[]).expect("sync"));
    assert_eq!(synced.removed, vec![route("10.244.1.0/24", "10.250.0.2")]);
    assert!(
        connect(&here).is_err(),
        "reachable after the route was removed"
    );
    let out = std::process::Command::new("ip")
        .args(["-n", &here.name, "route", "show", "10.244.9.0/24"])
        .output()
        .expect("ip route");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.250.0.2"),
        "someone else's route was touched"
    );
}
