//! Desired mirror: the endpoints a custom `Endpoints` object's EndpointSlices should hold, as a
//! pure function of that object. Which objects are mirrored at all is [`should_mirror`] and
//! [`selectorless`].
//!
//! Invariants: the subsets are first repacked as the API server would store them (an address
//! offering the same ports in several subsets is one address, not-ready wins over ready), so
//! that two spellings of the same object mirror the same; endpoints are grouped by (address
//! family, port set), one group per repacked subset and family; at most
//! [`MAX_ENDPOINTS_PER_SUBSET`] addresses of a subset are mirrored, ready ones first, and those
//! beyond, like addresses that are not IPs, are reported in [`Desired::skipped`]; within a
//! group an endpoint is identified as upstream's `EndpointSet` identifies it (address,
//! hostname, target namespace and name) and listed once.
//!
//! Upstream: `pkg/controller/endpointslicemirroring/reconciler.go` (`reconcile`),
//! `reconciler_helpers.go` (`desiredCalc`), `utils.go` (`addressToEndpoint`, `skipMirror`,
//! `hasLeaderElection`) and `pkg/api/v1/endpoints/util.go` (`RepackSubsets`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

use crate::controllers::endpoints::desired::port_from_api;
use crate::controllers::endpointslice::desired::{AddressType, Port, SliceKey};

/// Upstream's `--mirroring-max-endpoints-per-subset` default: one subset fits one slice.
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;
/// `endpointslice.kubernetes.io/skip-mirror: "true"` keeps an Endpoints object from being
/// mirrored; upstream's endpoints controller (and nodus's) sets it on the objects it writes.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Endpoints used as a leader-election lock (an old client-go lock type) are not endpoints.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

/// Input left out of the mirror; never fatal to the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("address {ip:?} is not a valid IP")]
    InvalidIp { ip: String },
    #[error("{count} addresses of a subset past its first {MAX_ENDPOINTS_PER_SUBSET}")]
    TooMany { count: usize },
}

/// What an Endpoints object's slices should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Endpoints by the slice that holds them; every list is non-empty and in a stable order.
    pub groups: BTreeMap<SliceKey, Vec<Endpoint>>,
    pub skipped: Vec<Skipped>,
}

/// Upstream's `shouldMirror`: not opted out, and not a leader-election lock.
pub fn should_mirror(endpoints: &Endpoints) -> bool {
    let skip = endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_some_and(|v| v == "true");
    let leader = endpoints
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_LEADER));
    !skip && !leader
}

/// Whether the Service leaves its endpoints to whoever writes its Endpoints: no selector. An
/// empty selector counts as none (the API server stores it as none; upstream checks for nil).
pub fn selectorless(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(|s| s.is_empty())
}

/// Upstream's `addressKey`: the same IP for two targets (pods on the host network) is two
/// addresses.
type AddressKey = (String, Option<String>);

fn address_key(address: &EndpointAddress) -> AddressKey {
    (
        address.ip.clone(),
        address.target_ref.as_ref().and_then(|t| t.uid.clone()),
    )
}

/// One repacked subset: a port set and the addresses offering exactly it, each list sorted by
/// IP then target uid (upstream's `LessEndpointAddress`).
#[derive(Debug, Clone, PartialEq)]
struct Subset<'a> {
    ports: Vec<Port>,
    ready: Vec<&'a EndpointAddress>,
    not_ready: Vec<&'a EndpointAddress>,
}

/// Upstream's `RepackSubsets`: maps every port to the addresses offering it (an address seen
/// twice keeps its first spelling; not-ready on any subset of a port wins), then gathers the
/// ports offered by exactly the same addresses, equally ready, into one subset. Addresses of a
/// subset without ports form a subset without ports (unless exactly the same addresses offer
/// ports, which upstream merges likewise).
fn repack(subsets: &[EndpointSubset]) -> Vec<Subset<'_>> {
    let mut first: BTreeMap<AddressKey, &EndpointAddress> = BTreeMap::new();
    // None stands for "no port", upstream's sentinel.
    let mut by_port: BTreeMap<Option<Port>, BTreeMap<AddressKey, bool>> = BTreeMap::new();
    for subset in subsets {
        let ports: Vec<Option<Port>> = match subset.ports.as_deref() {
            None | Some([]) => vec![None],
            Some(ports) => ports.iter().map(|p| Some(port_from_api(p))).collect(),
        };
        let addresses = (subset.addresses.iter().flatten().map(|a| (a, true))).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        for (address, ready) in addresses {
            let key = address_key(address);
            first.entry(key.clone()).or_insert(address);
            for port in &ports {
                let readiness = by_port
                    .entry(port.clone())
                    .or_default()
                    .entry(key.clone())
                    .or_insert(ready);
                *readiness &= ready;
            }
        }
    }
    let mut by_addresses: BTreeMap<Vec<(AddressKey, bool)>, Vec<Port>> = BTreeMap::new();
    for (port, addresses) in by_port {
        let ports = by_addresses
            .entry(addresses.into_iter().collect())
            .or_default();
        ports.extend(port);
    }
    by_addresses
        .into_iter()
        .map(|(addresses, ports)| {
            let pick = |want: bool| {
                addresses
                    .iter()
                    .filter(|(_, ready)| *ready == want)
                    .filter_map(|(key, _)| first.get(key).copied())
                    .collect()
            };
            Subset {
                ports,
                ready: pick(true),
                not_ready: pick(false),
            }
        })
        .collect()
}

/// Go's `ParseIPSloppy`, which upstream parses with: also IPv4 octets with leading zeros
/// (decimal, as Go read them before 1.17; older objects may hold them).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Go's old `dtoi`: any number of digits, the value at most 255.
        let value = part.bytes().try_fold(0u32, |n, b| {
            Some(n * 10 + u32::from(b - b'0')).filter(|n| *n <= 255)
        })?;
        *octet = u8::try_from(value).ok()?;
    }
    parts
        .next()
        .is_none()
        .then_some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Upstream's `addressToEndpoint`: the IP re-spelled canonically (an IPv4-mapped IPv6 address
/// is IPv4, as Go's `To4` has it), readiness as the list it came from, target, node and
/// hostname copied. None for an address that is not an IP.
fn endpoint(address: &EndpointAddress, ready: bool) -> Option<(AddressType, Endpoint)> {
    let ip = match parse_ip(&address.ip)? {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let family = match ip {
        IpAddr::V4(_) => AddressType::IPv4,
        IpAddr::V6(_) => AddressType::IPv6,
    };
    let endpoint = Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        target_ref: address.target_ref.clone(),
        node_name: address.node_name.clone(),
        hostname: address.hostname.clone().filter(|h| !h.is_empty()),
        ..Endpoint::default()
    };
    Some((family, endpoint))
}

/// Upstream's endpoint hash: what makes two endpoints of a group the same one, so that a
/// change of readiness or node is an update of it, not another endpoint.
pub type Identity = (Vec<String>, String, String, String);

pub fn identity(endpoint: &Endpoint) -> Identity {
    let mut addresses = endpoint.addresses.clone();
    addresses.sort();
    let target = endpoint.target_ref.as_ref();
    (
        addresses,
        endpoint.hostname.clone().unwrap_or_default(),
        target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        target.and_then(|t| t.name.clone()).unwrap_or_default(),
    )
}

/// The endpoints `endpoints` should be mirrored as (whether it should be mirrored at all is
/// the caller's question).
pub fn desired(endpoints: &Endpoints) -> Desired {
    let mut groups: BTreeMap<SliceKey, BTreeMap<Identity, Endpoint>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for subset in repack(endpoints.subsets.as_deref().unwrap_or_default()) {
        let total = subset.ready.len() + subset.not_ready.len();
        let mut added = 0;
        let mut invalid = 0;
        let addresses = (subset.ready.iter().map(|a| (*a, true)))
            .chain(subset.not_ready.iter().map(|a| (*a, false)));
        for (address, ready) in addresses {
            if added >= MAX_ENDPOINTS_PER_SUBSET {
                break;
            }
            match endpoint(address, ready) {
                Some((family, endpoint)) => {
                    // A later spelling of the same endpoint replaces the earlier, as upstream's
                    // set insert does; it still counts towards the limit.
                    groups
                        .entry(SliceKey::new(family, subset.ports.clone()))
                        .or_default()
                        .insert(identity(&endpoint), endpoint);
                    added += 1;
                }
                None => {
                    invalid += 1;
                    skipped.push(Skipped::InvalidIp {
                        ip: address.ip.clone(),
                    });
                }
            }
        }
        let beyond = total - added - invalid;
        if beyond > 0 {
            skipped.push(Skipped::TooMany { count: beyond });
        }
    }
    Desired {
        groups: groups
            .into_iter()
            .map(|(key, endpoints)| (key, endpoints.into_values().collect()))
            .collect(),
        skipped,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{EndpointPort, ObjectReference, ServiceSpec};
    use kube::api::ObjectMeta;

    use super::*;

    pub const NS: &str = "shop";

    pub fn address(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            ..EndpointAddress::default()
        }
    }

    pub fn port(name: &str, port: i32) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()).filter(|n: &String| !n.is_empty()),
            port,
            protocol: Some("TCP".into()),
            app_protocol: None,
        }
    }

    pub fn subset(ports: Vec<EndpointPort>, ready: &[&str], not_ready: &[&str]) -> EndpointSubset {
        let list = |ips: &[&str]| Some(ips.iter().map(|ip| address(ip)).collect::<Vec<_>>());
        EndpointSubset {
            ports: Some(ports),
            addresses: list(ready).filter(|l| !l.is_empty()),
            not_ready_addresses: list(not_ready).filter(|l| !l.is_empty()),
        }
    }

    /// A custom Endpoints object `name` (uid `uid-<name>`), labelled `team: blue`.
    pub fn endpoints(name: &str, subsets: Vec<EndpointSubset>) -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("team".into(), "blue".into())])),
                ..ObjectMeta::default()
            },
            subsets: Some(subsets),
        }
    }

    /// A Service `name`, with the selector given (none if empty).
    pub fn service(name: &str, selector: &[(&str, &str)]) -> Service {
        let selector: BTreeMap<String, String> = selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                uid: Some(format!("svc-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector).filter(|s| !s.is_empty()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Each endpoint's address and ready condition.
    type Listed = Vec<(String, Option<bool>)>;

    fn ips(endpoints: &[Endpoint]) -> Listed {
        endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.join(","),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect()
    }

    fn key(family: AddressType, ports: &[(&str, i32)]) -> SliceKey {
        SliceKey::new(
            family,
            ports
                .iter()
                .map(|(n, p)| port_from_api(&port(n, *p)))
                .collect(),
        )
    }

    #[test]
    fn addresses_are_ready_and_not_ready_addresses_are_not() {
        let mut ep = endpoints(
            "web",
            vec![subset(
                vec![port("http", 80)],
                &["10.0.0.2", "10.0.0.1"],
                &["10.0.0.3"],
            )],
        );
        if let Some(subsets) = ep.subsets.as_mut() {
            let first = &mut subsets[0].addresses.as_mut().expect("addresses")[0];
            first.hostname = Some("two".into());
            first.node_name = Some("node-1".into());
            first.target_ref = Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(NS.into()),
                name: Some("pod-2".into()),
                uid: Some("uid-pod-2".into()),
                ..ObjectReference::default()
            });
        }
        let d = desired(&ep);
        assert!(d.skipped.is_empty());
        assert_eq!(d.groups.len(), 1);
        let group = &d.groups[&key(AddressType::IPv4, &[("http", 80)])];
        let mut got = ips(group);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".into(), Some(true)),
                ("10.0.0.2".into(), Some(true)),
                ("10.0.0.3".into(), Some(false)),
            ]
        );
        let two = group
            .iter()
            .find(|e| e.addresses == ["10.0.0.2"])
            .expect("10.0.0.2 mirrored");
        assert_eq!(two.hostname.as_deref(), Some("two"));
        assert_eq!(two.node_name.as_deref(), Some("node-1"));
        let target = two.target_ref.clone().expect("target copied");
        assert_eq!(
            (target.kind.as_deref(), target.name.as_deref()),
            (Some("Pod"), Some("pod-2"))
        );
        let one = group
            .iter()
            .find(|e| e.addresses == ["10.0.0.1"])
            .expect("10.0.0.1 mirrored");
        assert_eq!(
            (one.hostname.as_ref(), one.target_ref.as_ref()),
            (None, None)
        );
    }

    #[test]
    fn endpoints_group_by_port_set_and_family_after_repacking() {
        // 10.0.0.2 offers http and https, the others only http: repacked, http is offered by
        // all three and https by 10.0.0.2 alone, as the API server would store the object.
        let ep = endpoints(
            "web",
            vec![
                subset(vec![port("http", 80)], &["10.0.0.1", "fd00::1"], &[]),
                subset(
                    vec![port("http", 80), port("https", 443)],
                    &["10.0.0.2"],
                    &[],
                ),
            ],
        );
        let d = desired(&ep);
        let got: Vec<(SliceKey, Listed)> =
            d.groups.iter().map(|(k, e)| (k.clone(), ips(e))).collect();
        assert_eq!(
            got,
            vec![
                (
                    key(AddressType::IPv4, &[("http", 80)]),
                    vec![
                        ("10.0.0.1".into(), Some(true)),
                        ("10.0.0.2".into(), Some(true))
                    ]
                ),
                (
                    key(AddressType::IPv4, &[("https", 443)]),
                    vec![("10.0.0.2".into(), Some(true))]
                ),
                (
                    key(AddressType::IPv6, &[("http", 80)]),
                    vec![("fd00::1".into(), Some(true))]
                ),
            ]
        );
    }

    #[test]
    fn one_address_in_two_subsets_is_repacked_into_one_subset_and_not_ready_wins() {
        // Upstream's "multiple subsets and same IP address" spec: one pod, two ports.
        let ep = endpoints(
            "web",
            vec![
                subset(vec![port("port80", 8090)], &["10.0.0.1"], &[]),
                subset(vec![port("port81", 9090)], &["10.0.0.1"], &[]),
            ],
        );
        let d = desired(&ep);
        assert_eq!(
            d.groups.keys().cloned().collect::<Vec<_>>(),
            vec![key(
                AddressType::IPv4,
                &[("port80", 8090), ("port81", 9090)]
            )]
        );
        // The same address ready in one subset and not ready in another of the same port.
        let ep = endpoints(
            "web",
            vec![
                subset(vec![port("http", 80)], &["10.0.0.1"], &[]),
                subset(vec![port("http", 80)], &[], &["10.0.0.1"]),
            ],
        );
        let d = desired(&ep);
        let group: Vec<_> = d.groups.values().flat_map(|e| ips(e)).collect();
        assert_eq!(group, vec![("10.0.0.1".into(), Some(false))]);
    }

    #[test]
    fn invalid_addresses_are_skipped_and_sloppy_ones_respelled() {
        let ep = endpoints(
            "web",
            vec![subset(
                vec![port("", 80)],
                &[
                    "not-an-ip",
                    "010.001.002.003",
                    "::ffff:10.9.9.9",
                    "10.0.0.300",
                ],
                &[],
            )],
        );
        let d = desired(&ep);
        let mut got: Vec<_> = d.groups.values().flat_map(|e| ips(e)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.1.2.3".into(), Some(true)),
                ("10.9.9.9".into(), Some(true))
            ]
        );
        let mut skipped = d.skipped.clone();
        skipped.sort_by_key(|s| s.to_string());
        assert_eq!(
            skipped,
            vec![
                Skipped::InvalidIp {
                    ip: "10.0.0.300".into()
                },
                Skipped::InvalidIp {
                    ip: "not-an-ip".into()
                },
            ]
        );
    }

    #[test]
    fn a_subset_mirrors_at_most_its_limit_ready_addresses_first() {
        let ready: Vec<String> = (0..900)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1))
            .collect();
        let not_ready: Vec<String> = (0..150)
            .map(|i| format!("10.1.{}.{}", i / 200, i % 200 + 1))
            .collect();
        let ready: Vec<&str> = ready.iter().map(String::as_str).collect();
        let not_ready: Vec<&str> = not_ready.iter().map(String::as_str).collect();
        let ep = endpoints(
            "web",
            vec![
                subset(vec![port("http", 80)], &ready, &not_ready),
                subset(vec![port("dns", 53)], &["10.2.0.1"], &[]),
            ],
        );
        let d = desired(&ep);
        let http = &d.groups[&key(AddressType::IPv4, &[("http", 80)])];
        assert_eq!(http.len(), MAX_ENDPOINTS_PER_SUBSET);
        let not_ready_kept = ips(http).iter().filter(|(_, r)| *r == Some(false)).count();
        assert_eq!(
            not_ready_kept, 100,
            "all 900 ready ones, then 100 not ready"
        );
        assert_eq!(d.groups[&key(AddressType::IPv4, &[("dns", 53)])].len(), 1);
        assert_eq!(d.skipped, vec![Skipped::TooMany { count: 50 }]);
    }

    #[test]
    fn opted_out_objects_and_selecting_services_are_not_mirrored() {
        let mut ep = endpoints("web", vec![]);
        assert!(should_mirror(&ep));
        ep.metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_SKIP_MIRROR.into(), "true".into());
        assert!(!should_mirror(&ep));
        let mut lock = endpoints("lock", vec![]);
        lock.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_LEADER.into(), "{}".into())]));
        assert!(!should_mirror(&lock));
        assert!(selectorless(&service("web", &[])));
        assert!(!selectorless(&service("web", &[("app", "web")])));
        let mut empty = service("web", &[]);
        if let Some(spec) = empty.spec.as_mut() {
            spec.selector = Some(BTreeMap::new());
        }
        assert!(selectorless(&empty));
    }
}
