//! Desired Endpoints: what a Service's `Endpoints` object should hold, as a pure function of
//! the Service and the pods of its namespace. The pods, their readiness and their resolved
//! ports come from the EndpointSlice controller's [`slices::desired`], so that the two objects
//! never disagree about which pod serves on which port.
//!
//! Invariants: only a Service that selects ([`selector`]) has desired Endpoints; a pod gives
//! one address, of the Service's primary IP family; a pod being deleted is listed only when the
//! Service publishes not-ready addresses, which also lists every address as ready; a pod is
//! listed under exactly the ports it resolves, and one resolving none is left out (a headless
//! Service without ports lists its pods without ports); the subsets have one canonical layout
//! (the ports offered by the same addresses, equally ready, share a subset; everything sorted),
//! so equal contents compare equal; at most [`MAX_ADDRESSES`] addresses, ready ones kept first,
//! and no subset left without addresses.
//!
//! Upstream: `pkg/controller/endpoint/endpoints_controller.go` (`syncService`,
//! `podToEndpointAddressForService`, `truncateEndpoints`) and `pkg/api/v1/endpoints/util.go`
//! (`RepackSubsets`, `LessEndpointAddress`). Upstream orders ports and subsets by a hash of
//! Go's in-memory layout; here they are ordered by content, which changes where an entry sits
//! in a list and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::Endpoint;

use crate::controllers::endpointslice::desired::{
    self as slices, AddressType, NodeInfo, Port, Skipped, is_headless, selector,
};
use crate::controllers::endpointslice::plan::LABEL_HEADLESS;

/// Upstream's `maxCapacity`: addresses beyond it are left out.
pub const MAX_ADDRESSES: usize = 1000;
/// The label that tells this controller's Endpoints from those users write (upstream's
/// `LabelManagedBy`, since Kubernetes 1.33).
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpoint-controller";
/// Set to [`TRUNCATED`] on an Endpoints object that lists fewer addresses than it should.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
pub const TRUNCATED: &str = "truncated";

/// What an address points at: upstream's targetRef (its resourceVersion ignored, as upstream
/// compares). The uid comes first so that addresses sort as upstream's
/// `LessEndpointAddress` sorts them: by IP, then uid, a missing target first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub uid: Option<String>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One address of a subset, comparable and ordered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub ip: String,
    pub target: Option<Target>,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

impl Address {
    pub fn from_api(address: &EndpointAddress) -> Self {
        Address {
            ip: address.ip.clone(),
            target: address.target_ref.as_ref().map(|t| Target {
                uid: non_empty(&t.uid),
                kind: t.kind.clone().unwrap_or_default(),
                namespace: t.namespace.clone().unwrap_or_default(),
                name: t.name.clone().unwrap_or_default(),
            }),
            node_name: non_empty(&address.node_name),
            hostname: non_empty(&address.hostname),
        }
    }

    pub fn to_api(&self) -> EndpointAddress {
        EndpointAddress {
            ip: self.ip.clone(),
            target_ref: self.target.as_ref().map(|t| ObjectReference {
                kind: Some(t.kind.clone()),
                namespace: Some(t.namespace.clone()),
                name: Some(t.name.clone()),
                uid: t.uid.clone(),
                ..ObjectReference::default()
            }),
            node_name: self.node_name.clone(),
            hostname: self.hostname.clone(),
        }
    }

    /// Upstream's `addressKey`: the same IP for two pods (both on the host network) is two
    /// addresses.
    fn key(&self) -> (String, Option<String>) {
        (
            self.ip.clone(),
            self.target.as_ref().and_then(|t| t.uid.clone()),
        )
    }
}

/// A port as the API has it, the protocol defaulted as the API server defaults it.
pub fn port_from_api(port: &EndpointPort) -> Port {
    Port {
        name: port.name.clone().unwrap_or_default(),
        port: Some(port.port),
        protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
        app_protocol: port.app_protocol.clone(),
    }
}

pub fn port_to_api(port: &Port) -> EndpointPort {
    EndpointPort {
        name: Some(port.name.clone()).filter(|n| !n.is_empty()),
        port: port.port.unwrap_or_default(),
        protocol: Some(port.protocol.clone()),
        app_protocol: port.app_protocol.clone(),
    }
}

/// One subset: the ports offered and the addresses offering them, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subset {
    pub ports: Vec<Port>,
    pub ready: Vec<Address>,
    pub not_ready: Vec<Address>,
}

impl Subset {
    pub fn to_api(&self) -> EndpointSubset {
        let list = |addresses: &[Address]| {
            Some(addresses.iter().map(Address::to_api).collect::<Vec<_>>())
                .filter(|a| !a.is_empty())
        };
        EndpointSubset {
            addresses: list(&self.ready),
            not_ready_addresses: list(&self.not_ready),
            ports: Some(self.ports.iter().map(port_to_api).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()),
        }
    }

    fn sort(&mut self) {
        self.ports.sort();
        self.ready.sort();
        self.not_ready.sort();
    }
}

/// Subsets as read from the API, in the order [`desired`] gives them: an object listing the
/// same addresses and ports in another order (kube-controller-manager's, say) compares equal.
pub fn canonical(subsets: &[EndpointSubset]) -> Vec<Subset> {
    let mut out: Vec<Subset> = subsets
        .iter()
        .map(|s| {
            let mut subset = Subset {
                ports: s.ports.iter().flatten().map(port_from_api).collect(),
                ready: s
                    .addresses
                    .iter()
                    .flatten()
                    .map(Address::from_api)
                    .collect(),
                not_ready: s
                    .not_ready_addresses
                    .iter()
                    .flatten()
                    .map(Address::from_api)
                    .collect(),
            };
            subset.sort();
            subset
        })
        .collect();
    out.sort();
    out
}

/// A Service's desired Endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub subsets: Vec<Subset>,
    pub labels: BTreeMap<String, String>,
    /// Addresses were left out to stay within [`MAX_ADDRESSES`].
    pub truncated: bool,
    /// Input left out, as the EndpointSlice controller found it.
    pub skipped: Vec<Skipped>,
}

/// The labels of a Service's Endpoints: the Service's own, the headless label exactly when the
/// Service has no cluster IP, and this controller's managed-by label.
pub fn labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    if is_headless(service) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

/// Which of a pod's IPs is its address: upstream takes the Service's first ipFamily; failing
/// that (an API server that did not default it) the family of its cluster IP; failing that
/// (headless) the family of each pod's `podIP`.
enum Family {
    Service(AddressType),
    PerPod(HashMap<String, AddressType>),
}

fn family_of(ip: Option<&str>) -> AddressType {
    match ip.map(str::parse::<IpAddr>) {
        Some(Ok(IpAddr::V6(_))) => AddressType::IPv6,
        _ => AddressType::IPv4,
    }
}

impl Family {
    fn of(service: &Service, pods: &[&Pod]) -> Self {
        let spec = service.spec.as_ref();
        if let Some(first) = spec.and_then(|s| s.ip_families.as_ref()?.first()) {
            return Family::Service(if first == "IPv6" {
                AddressType::IPv6
            } else {
                AddressType::IPv4
            });
        }
        if !is_headless(service) {
            return Family::Service(family_of(spec.and_then(|s| s.cluster_ip.as_deref())));
        }
        let namespace = service.metadata.namespace.as_deref();
        Family::PerPod(
            pods.iter()
                .filter(|p| p.metadata.namespace.as_deref() == namespace)
                .map(|p| {
                    let ip = p.status.as_ref().and_then(|s| s.pod_ip.as_deref());
                    (p.metadata.name.clone().unwrap_or_default(), family_of(ip))
                })
                .collect(),
        )
    }

    fn wants(&self, address_type: AddressType, endpoint: &Endpoint) -> bool {
        match self {
            Family::Service(family) => *family == address_type,
            Family::PerPod(families) => {
                let pod = endpoint.target_ref.as_ref().and_then(|t| t.name.as_deref());
                pod.and_then(|p| families.get(p)).copied() == Some(address_type)
            }
        }
    }
}

/// One pod's address, with its readiness and the ports it resolved.
#[derive(Debug, Clone)]
struct Member {
    address: Address,
    ready: bool,
    ports: Vec<Port>,
}

/// Computes the Service's desired Endpoints from `pods` (those of other namespaces are
/// ignored); `None` for a Service whose Endpoints this controller does not manage (no
/// selector, or ExternalName).
pub fn desired<'a>(service: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Option<Desired> {
    selector(service)?;
    let pods: Vec<&Pod> = pods.into_iter().collect();
    // Upstream's endpoints controller does not look at nodes: a pod on a node not (yet) known
    // is listed all the same.
    let any_node = |_: &str| Some(NodeInfo::default());
    let found = slices::desired(service, pods.iter().copied(), &any_node);

    let spec = service.spec.as_ref();
    let publish_not_ready = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true);
    let portless = spec
        .and_then(|s| s.ports.as_ref())
        .is_none_or(Vec::is_empty);
    // Upstream adds a pod once per port it resolves; resolving none, it is not listed,
    // unless the Service is headless without ports.
    let listed_without_ports = portless && is_headless(service);
    let family = Family::of(service, &pods);
    let mut members = Vec::new();
    for (key, endpoints) in &found.groups {
        if key.ports.is_empty() && !listed_without_ports {
            continue;
        }
        for endpoint in endpoints {
            if !family.wants(key.address_type, endpoint) {
                continue;
            }
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            if conditions.terminating == Some(true) && !publish_not_ready {
                continue;
            }
            // The first IP of the family, in canonical form (upstream re-formats it too).
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue;
            };
            members.push(Member {
                address: Address::from_api(&EndpointAddress {
                    ip: ip.to_string(),
                    hostname: endpoint.hostname.clone(),
                    node_name: endpoint.node_name.clone(),
                    target_ref: endpoint.target_ref.clone(),
                }),
                // Ready unless publishing not-ready addresses; terminating pods are gone by now.
                ready: conditions.ready == Some(true),
                ports: key.ports.clone(),
            });
        }
    }
    let mut subsets = repack(members);
    let truncated = truncate(&mut subsets, MAX_ADDRESSES);
    Some(Desired {
        subsets,
        labels: labels(service),
        truncated,
        skipped: found.skipped,
    })
}

/// Upstream's `RepackSubsets`: each port with the addresses offering it, then the ports whose
/// addresses (and their readiness) are the same in one subset; an address not ready on a port
/// is not ready there, whatever else says it is.
fn repack(members: Vec<Member>) -> Vec<Subset> {
    type Key = (String, Option<String>);
    let mut addresses: BTreeMap<Key, Address> = BTreeMap::new();
    // `None` stands for "no ports" (a headless Service without any).
    let mut offering: BTreeMap<Option<Port>, BTreeMap<Key, bool>> = BTreeMap::new();
    for member in members {
        let key = member.address.key();
        let ports: Vec<Option<Port>> = if member.ports.is_empty() {
            vec![None]
        } else {
            member.ports.into_iter().map(Some).collect()
        };
        for port in ports {
            let ready = offering
                .entry(port)
                .or_default()
                .entry(key.clone())
                .or_insert(member.ready);
            *ready = *ready && member.ready;
        }
        addresses.entry(key).or_insert(member.address);
    }
    let mut shared: BTreeMap<Vec<(Key, bool)>, Vec<Port>> = BTreeMap::new();
    for (port, offered_by) in offering {
        shared
            .entry(offered_by.into_iter().collect())
            .or_default()
            .extend(port);
    }
    let mut subsets: Vec<Subset> = shared
        .into_iter()
        .map(|(offered_by, ports)| {
            let mut subset = Subset {
                ports,
                ..Subset::default()
            };
            for (key, ready) in offered_by {
                if let Some(address) = addresses.get(&key) {
                    let list = if ready {
                        &mut subset.ready
                    } else {
                        &mut subset.not_ready
                    };
                    list.push(address.clone());
                }
            }
            subset.sort();
            subset
        })
        .collect();
    subsets.sort();
    subsets
}

/// Upstream's `truncateEndpoints`: beyond `max` addresses, ready ones are kept first. If the
/// ready ones alone are too many, they are cut and every not-ready one goes; otherwise only
/// not-ready ones are cut, to the room left. Each subset keeps its share of the room, rounded
/// up, the last ones what is left. A subset left without addresses is dropped (the API server
/// refuses one). Returns whether anything was cut.
fn truncate(subsets: &mut Vec<Subset>, max: usize) -> bool {
    let ready: usize = subsets.iter().map(|s| s.ready.len()).sum();
    let not_ready: usize = subsets.iter().map(|s| s.not_ready.len()).sum();
    if ready + not_ready <= max {
        return false;
    }
    let cut_ready = ready > max;
    let (room, total) = if cut_ready {
        (max, ready)
    } else {
        (max - ready, not_ready)
    };
    let mut left = room;
    for subset in subsets.iter_mut() {
        let list = if cut_ready {
            subset.not_ready.clear();
            &mut subset.ready
        } else {
            &mut subset.not_ready
        };
        let share = (list.len() * room).div_ceil(total).min(left);
        list.truncate(share);
        left -= list.len();
    }
    subsets.retain(|s| !s.ready.is_empty() || !s.not_ready.is_empty());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::endpointslice::fixtures::*;

    /// A subset as (ports as "name:number", ready pod names, not-ready pod names).
    type Shape = (Vec<String>, Vec<String>, Vec<String>);

    fn names(addresses: &[Address]) -> Vec<String> {
        addresses
            .iter()
            .map(|a| {
                a.target
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn shape(d: &Desired) -> Vec<Shape> {
        d.subsets
            .iter()
            .map(|s| {
                (
                    s.ports
                        .iter()
                        .map(|p| format!("{}:{}", p.name, p.port.unwrap_or_default()))
                        .collect(),
                    names(&s.ready),
                    names(&s.not_ready),
                )
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn web() -> Vec<(&'static str, &'static str)> {
        vec![("app", "web")]
    }

    fn publishing(mut svc: Service) -> Service {
        if let Some(spec) = svc.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        svc
    }

    #[test]
    fn subsets_table() {
        struct Case {
            what: &'static str,
            service: Service,
            pods: Vec<Pod>,
            want: Vec<Shape>,
        }
        let http = || service("web", &web(), vec![tcp("http", 80, 8080)]);
        let named_and_metrics = || {
            service(
                "web",
                &web(),
                vec![named("http", 80, "web"), tcp("metrics", 9090, 9090)],
            )
        };
        let subset = |ports: &[&str], ready: &[&str], not_ready: &[&str]| -> Shape {
            (strings(ports), strings(ready), strings(not_ready))
        };
        let cases = vec![
            Case {
                what: "ready pods in addresses, not-ready ones in notReadyAddresses",
                service: http(),
                pods: vec![
                    pod("a", "10.0.0.1", &web()),
                    ready(pod("b", "10.0.0.2", &web()), false),
                    pod("c", "10.0.0.3", &[("app", "db")]),
                    with_phase(pod("d", "10.0.0.4", &web()), "Failed"),
                    pod("e", "", &web()),
                ],
                want: vec![subset(&["http:8080"], &["a"], &["b"])],
            },
            Case {
                what: "a pod being deleted is left out, ready or not",
                service: http(),
                pods: vec![
                    pod("a", "10.0.0.1", &web()),
                    terminating(pod("b", "10.0.0.2", &web())),
                    terminating(ready(pod("c", "10.0.0.3", &web()), false)),
                ],
                want: vec![subset(&["http:8080"], &["a"], &[])],
            },
            Case {
                what: "publishNotReadyAddresses lists every pod as ready, being deleted or not",
                service: publishing(http()),
                pods: vec![
                    pod("a", "10.0.0.1", &web()),
                    ready(pod("b", "10.0.0.2", &web()), false),
                    terminating(ready(pod("c", "10.0.0.3", &web()), false)),
                ],
                want: vec![subset(&["http:8080"], &["a", "b", "c"], &[])],
            },
            Case {
                what: "named ports resolve per pod and split subsets; a pod without the name \
                       keeps its other ports",
                service: named_and_metrics(),
                pods: vec![
                    with_port(pod("a", "10.0.0.1", &web()), "web", 8080),
                    with_port(ready(pod("b", "10.0.0.2", &web()), false), "web", 8081),
                    pod("c", "10.0.0.3", &web()),
                ],
                want: vec![
                    subset(&["http:8080"], &["a"], &[]),
                    subset(&["http:8081"], &[], &["b"]),
                    subset(&["metrics:9090"], &["a", "c"], &["b"]),
                ],
            },
            Case {
                what: "ports offered by the same addresses share one subset",
                service: named_and_metrics(),
                pods: vec![
                    with_port(pod("a", "10.0.0.1", &web()), "web", 8080),
                    with_port(ready(pod("b", "10.0.0.2", &web()), false), "web", 8080),
                ],
                want: vec![subset(&["http:8080", "metrics:9090"], &["a"], &["b"])],
            },
            Case {
                what: "a pod resolving no port is not listed at all",
                service: service("web", &web(), vec![named("http", 80, "web")]),
                pods: vec![
                    with_port(pod("a", "10.0.0.1", &web()), "web", 8080),
                    pod("b", "10.0.0.2", &web()),
                ],
                want: vec![subset(&["http:8080"], &["a"], &[])],
            },
            Case {
                what: "nothing selected: no subsets",
                service: http(),
                pods: vec![pod("a", "10.0.0.1", &[("app", "db")])],
                want: vec![],
            },
        ];
        for case in cases {
            let got = desired(&case.service, &case.pods).expect("the service selects");
            assert_eq!(shape(&got), case.want, "{}", case.what);
            assert!(!got.truncated, "{}", case.what);
        }
    }

    #[test]
    fn the_layout_is_sorted_and_independent_of_pod_order() {
        let svc = service("web", &web(), vec![tcp("http", 80, 8080)]);
        let mut pods = vec![
            pod("nine", "10.0.0.9", &web()),
            pod("ten", "10.0.0.10", &web()),
            ready(pod("one", "10.0.0.1", &web()), false),
            pod("two", "10.0.0.2", &web()),
        ];
        let first = desired(&svc, &pods).expect("selects");
        pods.reverse();
        assert_eq!(desired(&svc, &pods), Some(first.clone()));
        // By IP as bytes, upstream's `LessEndpointAddress`: "10.0.0.10" < "10.0.0.2".
        assert_eq!(
            shape(&first),
            vec![(
                strings(&["http:8080"]),
                strings(&["ten", "two", "nine"]),
                strings(&["one"])
            )]
        );
    }

    #[test]
    fn addresses_carry_node_target_and_hostname() {
        let svc = service("web", &web(), vec![tcp("http", 80, 8080)]);
        let mut p = on_node(pod("a", "10.0.0.1", &web()), "gone");
        if let Some(spec) = p.spec.as_mut() {
            spec.hostname = Some("host-a".into());
            spec.subdomain = Some("web".into());
        }
        let mut q = pod("b", "10.0.0.2", &web());
        if let Some(spec) = q.spec.as_mut() {
            spec.hostname = Some("host-b".into());
            spec.subdomain = Some("other".into());
        }
        let got = desired(&svc, &[p, q]).expect("selects");
        let api = got.subsets[0].to_api();
        let addresses = api.addresses.expect("ready addresses");
        // The node need not be known: upstream's controller never looks nodes up.
        assert_eq!(
            addresses[0],
            EndpointAddress {
                ip: "10.0.0.1".into(),
                hostname: Some("host-a".into()),
                node_name: Some("gone".into()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(NS.into()),
                    name: Some("a".into()),
                    uid: Some("uid-a".into()),
                    ..ObjectReference::default()
                }),
            }
        );
        assert_eq!(addresses[1].hostname, None, "subdomain is not the service");
        assert_eq!(api.not_ready_addresses, None);
        let ports = api.ports.expect("ports");
        assert_eq!(
            ports,
            vec![EndpointPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]
        );
    }

    #[test]
    fn one_address_per_pod_of_the_primary_family() {
        let pods = [
            dual(pod("a", "10.0.0.1", &web()), "fd00::1"),
            pod("b", "fd00::2", &web()),
            pod("c", "10.0.0.3", &web()),
        ];
        let ips = |svc: &Service| -> Vec<String> {
            let got = desired(svc, &pods).expect("selects");
            got.subsets
                .iter()
                .flat_map(|s| s.ready.iter().map(|a| a.ip.clone()))
                .collect()
        };
        let with_families = |families: Option<Vec<&str>>, cluster_ip: &str| {
            let mut svc = service("web", &web(), vec![tcp("http", 80, 8080)]);
            if let Some(spec) = svc.spec.as_mut() {
                spec.ip_families = families.map(|f| strings(&f));
                spec.cluster_ip = Some(cluster_ip.into());
            }
            svc
        };
        let cases = [
            (
                "IPv4 first",
                with_families(Some(vec!["IPv4", "IPv6"]), "10.96.0.1"),
                vec!["10.0.0.1", "10.0.0.3"],
            ),
            (
                "IPv6 first",
                with_families(Some(vec!["IPv6", "IPv4"]), "fd00::a"),
                vec!["fd00::1", "fd00::2"],
            ),
            (
                "no families: the cluster IP's",
                with_families(None, "fd00::a"),
                vec!["fd00::1", "fd00::2"],
            ),
            (
                "headless without families: each pod's podIP",
                with_families(None, "None"),
                vec!["10.0.0.1", "10.0.0.3", "fd00::2"],
            ),
        ];
        for (what, svc, want) in cases {
            assert_eq!(ips(&svc), strings(&want), "{what}");
        }
    }

    #[test]
    fn a_headless_service_without_ports_lists_addresses_without_ports() {
        let mut svc = service("db", &[("app", "db")], vec![]);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        let pods = [
            pod("a", "10.0.0.1", &[("app", "db")]),
            ready(pod("b", "10.0.0.2", &[("app", "db")]), false),
        ];
        let got = desired(&svc, &pods).expect("selects");
        assert_eq!(
            shape(&got),
            vec![(vec![], strings(&["a"]), strings(&["b"]))]
        );
        assert_eq!(got.subsets[0].to_api().ports, None);
        assert_eq!(got.labels.get(LABEL_HEADLESS).map(String::as_str), Some(""));
    }

    #[test]
    fn labels_are_the_services_plus_headless_and_managed_by() {
        let mut svc = service("web", &web(), vec![tcp("http", 80, 8080)]);
        svc.metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_HEADLESS.into(), "stale".into());
        let got = desired(&svc, &[]).expect("selects");
        assert_eq!(
            got.labels,
            BTreeMap::from([
                ("team".to_owned(), "blue".to_owned()),
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            ])
        );
    }

    #[test]
    fn services_that_do_not_select_have_no_desired_endpoints() {
        let pods = [pod("a", "10.0.0.1", &web())];
        let mut external = service("x", &web(), vec![tcp("http", 80, 8080)]);
        if let Some(spec) = external.spec.as_mut() {
            spec.type_ = Some("ExternalName".into());
        }
        let no_selector = service("e", &[], vec![tcp("http", 80, 8080)]);
        assert_eq!(desired(&external, &pods), None);
        assert_eq!(desired(&no_selector, &pods), None);
    }

    fn addresses(prefix: &str, n: usize) -> Vec<Address> {
        (0..n)
            .map(|i| Address {
                ip: format!("{prefix}{i:04}"),
                target: None,
                node_name: None,
                hostname: None,
            })
            .collect()
    }

    fn port(n: i32) -> Port {
        Port {
            name: format!("p{n}"),
            port: Some(n),
            protocol: "TCP".into(),
            app_protocol: None,
        }
    }

    #[test]
    fn truncation_table() {
        struct Case {
            what: &'static str,
            /// (ready, not ready) per subset.
            before: Vec<(usize, usize)>,
            max: usize,
            after: Vec<(usize, usize)>,
            truncated: bool,
        }
        let cases = [
            Case {
                what: "within the limit: untouched",
                before: vec![(3, 2), (1, 4)],
                max: 10,
                after: vec![(3, 2), (1, 4)],
                truncated: false,
            },
            Case {
                what: "ready ones fit: not-ready ones cut to the room left, by share",
                before: vec![(3, 4), (1, 4)],
                max: 8,
                after: vec![(3, 2), (1, 2)],
                truncated: true,
            },
            Case {
                what: "shares round up; the last subset gets what is left",
                before: vec![(0, 3), (0, 3), (0, 3)],
                max: 4,
                after: vec![(0, 2), (0, 2)],
                truncated: true,
            },
            Case {
                what: "too many ready ones: they are cut and every not-ready one goes",
                before: vec![(6, 1), (4, 5), (0, 2)],
                max: 5,
                after: vec![(3, 0), (2, 0)],
                truncated: true,
            },
        ];
        for case in cases {
            let mut subsets: Vec<Subset> = case
                .before
                .iter()
                .enumerate()
                .map(|(i, (r, n))| Subset {
                    ports: vec![port(i32::try_from(i).expect("small"))],
                    ready: addresses("r", *r),
                    not_ready: addresses("n", *n),
                })
                .collect();
            let truncated = truncate(&mut subsets, case.max);
            let after: Vec<(usize, usize)> = subsets
                .iter()
                .map(|s| (s.ready.len(), s.not_ready.len()))
                .collect();
            assert_eq!(
                (after, truncated),
                (case.after, case.truncated),
                "{}",
                case.what
            );
            // The lowest addresses are the ones kept.
            for s in &subsets {
                assert_eq!(s.ready, addresses("r", s.ready.len()), "{}", case.what);
            }
        }
    }

    #[test]
    fn more_than_a_thousand_pods_are_truncated_ready_first() {
        let svc = service("web", &web(), vec![tcp("http", 80, 8080)]);
        let pods: Vec<Pod> = (0..1005)
            .map(|i| {
                let p = pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250),
                    &web(),
                );
                ready(p, i >= 10)
            })
            .collect();
        let got = desired(&svc, &pods).expect("selects");
        assert!(got.truncated);
        assert_eq!(got.subsets.len(), 1);
        assert_eq!(got.subsets[0].ready.len(), 995);
        assert_eq!(got.subsets[0].not_ready.len(), 5);
    }

    #[test]
    fn canonical_reads_any_order_and_api_defaults_back_to_the_same_subsets() {
        let svc = service(
            "web",
            &web(),
            vec![tcp("http", 80, 8080), tcp("metrics", 9090, 9090)],
        );
        let pods = [
            pod("a", "10.0.0.1", &web()),
            ready(pod("b", "10.0.0.2", &web()), false),
        ];
        let want = desired(&svc, &pods).expect("selects");
        let mut api: Vec<EndpointSubset> = want.subsets.iter().map(Subset::to_api).collect();
        for subset in &mut api {
            if let Some(ports) = subset.ports.as_mut() {
                ports.reverse();
                for port in ports {
                    port.protocol = None;
                }
            }
            for address in subset.addresses.iter_mut().flatten() {
                if let Some(target) = address.target_ref.as_mut() {
                    target.resource_version = Some("41".into());
                }
            }
        }
        api.reverse();
        assert_eq!(canonical(&api), want.subsets);
    }
}
