//! Desired endpoints: what a Service's EndpointSlices should hold, as a pure function of the
//! Service, the pods of its namespace and the nodes. Invariants: only pods the selector
//! matches, that are not terminal, have an IP of the slice's family and run on a known node
//! appear; a pod gives at most one endpoint per (address type, port set); endpoints are
//! grouped by the ports they resolve to, as upstream's reconciler groups them (a pod lacking a
//! named target port lands in a group without that port).
//!
//! Upstream: `pkg/controller/endpointslice/reconciler.go` (`reconcileByAddressType`) and
//! `staging/src/k8s.io/endpointslice/utils.go` (`podToEndpoint`, `getEndpointPorts`,
//! `getAddressTypesForService`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The zone label copied onto endpoints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// An EndpointSlice address type this controller writes (upstream's `FQDN` type is never
/// written for pods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        }
    }

    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressType::IPv4,
            IpAddr::V6(_) => AddressType::IPv6,
        }
    }
}

/// One resolved port of a slice: an EndpointPort with the API defaults filled in, so that
/// ports read back from the API server compare equal to the ones written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub name: String,
    /// None means "all ports" in the API; this controller never writes it.
    pub port: Option<i32>,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl Port {
    pub fn from_api(port: &EndpointPort) -> Self {
        Port {
            name: port.name.clone().unwrap_or_default(),
            port: port.port,
            protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: port.app_protocol.clone(),
        }
    }

    pub fn to_api(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            port: self.port,
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// What the endpoints of one set of slices share: the address type and the ports (sorted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceKey {
    pub address_type: AddressType,
    pub ports: Vec<Port>,
}

impl SliceKey {
    pub fn new(address_type: AddressType, mut ports: Vec<Port>) -> Self {
        ports.sort();
        ports.dedup();
        SliceKey {
            address_type,
            ports,
        }
    }
}

/// What the controller knows of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub zone: Option<String>,
}

/// Input this controller leaves out, said once per reconcile; never fatal to the Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("pod {pod} has no container port named {target:?} for service port {port:?}")]
    NoNamedPort {
        pod: String,
        port: String,
        target: String,
    },
    #[error("service port {port:?} has target port {target}, outside 1-65535")]
    BadTargetPort { port: String, target: i32 },
    #[error(
        "service port {port:?} (target {target:?}) resolves on none of the {pods} selected pods"
    )]
    PortUnresolved {
        port: String,
        target: String,
        pods: usize,
    },
    #[error("pod {pod} has an unparsable IP {ip:?}")]
    BadPodIp { pod: String, ip: String },
    #[error("pod {pod} is on node {node:?}, which does not exist")]
    UnknownNode { pod: String, node: String },
}

/// A Service's desired endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// The address types the Service has; each gets at least one slice.
    pub address_types: BTreeSet<AddressType>,
    /// Endpoints by what their slice holds in common, each list sorted by pod name.
    pub groups: BTreeMap<SliceKey, Vec<Endpoint>>,
    pub skipped: Vec<Skipped>,
}

/// The Service's selector, if this controller manages its endpoints: not ExternalName
/// (upstream issue 105986) and a non-empty selector (a selector-less Service's slices are
/// written by someone else).
pub fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Equality-based selection, the only kind a Service has.
pub fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Upstream's `getAddressTypesForService`: the Service's ipFamilies; failing those the family
/// of its cluster IP; failing that (headless, never defaulted) both.
pub fn address_types(service: &Service) -> BTreeSet<AddressType> {
    let spec = service.spec.clone().unwrap_or_default();
    let mut types: BTreeSet<AddressType> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| AddressType::parse(f))
        .collect();
    if !types.is_empty() {
        return types;
    }
    match spec.cluster_ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => {
            types.insert(AddressType::of(ip));
        }
        _ => {
            types.insert(AddressType::IPv4);
            types.insert(AddressType::IPv6);
        }
    }
    types
}

/// Upstream's `IsServiceIPSet`: a headless Service has no cluster IP.
pub fn is_headless(service: &Service) -> bool {
    matches!(
        service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        None | Some("") | Some("None")
    )
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// Upstream's `ShouldPodBeInEndpoints` with terminating pods included: not Succeeded or
/// Failed, and an IP assigned (a Pending pod before its sandbox has none).
fn eligible(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        || status.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The pod's IPs: `podIPs`, or `podIP` from an agent that sets only that.
fn pod_ips(pod: &Pod) -> Vec<String> {
    let status = pod.status.clone().unwrap_or_default();
    let ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|ip| ip.ip)
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty() {
        status
            .pod_ip
            .into_iter()
            .filter(|ip| !ip.is_empty())
            .collect()
    } else {
        ips
    }
}

fn port_label(port: &ServicePort) -> String {
    port.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| port.port.to_string())
}

/// The target of a service port, resolved for one pod. Upstream's `FindPort`: a number as it
/// is; a name looked up among the pod's containers' ports of the same protocol, then among
/// its sidecars (init containers that restart always).
enum Target {
    Number(i32),
    Named(String),
}

fn target(port: &ServicePort) -> Target {
    match &port.target_port {
        // The API server defaults an absent targetPort to the port.
        None => Target::Number(port.port),
        Some(IntOrString::Int(n)) => Target::Number(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            // "8080" as a string is a number to upstream's intstr too.
            Ok(n) => Target::Number(n),
            Err(_) => Target::Named(name.clone()),
        },
    }
}

fn named_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// Computes the Service's desired endpoints from `pods` (those of other namespaces are
/// ignored) and `node`, which looks a node up by name. The Service must select (see
/// [`selector`]); one that does not gets no groups.
pub fn desired<'a>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
    node: &dyn Fn(&str) -> Option<NodeInfo>,
) -> Desired {
    let mut out = Desired {
        address_types: address_types(service),
        ..Desired::default()
    };
    let Some(selector) = selector(service) else {
        return out;
    };
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let service_ports = spec.ports.unwrap_or_default();

    // Ports whose number is bad input are left out of every endpoint, said once.
    let mut usable = Vec::new();
    for port in &service_ports {
        match target(port) {
            Target::Number(n) if !(1..=65535).contains(&n) => {
                out.skipped.push(Skipped::BadTargetPort {
                    port: port_label(port),
                    target: n,
                });
            }
            t => usable.push((port, t)),
        }
    }

    let mut selected: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|p| selects(selector, p))
        .filter(|p| eligible(p))
        .collect();
    selected.sort_by(|a, b| pod_name(a).cmp(pod_name(b)));

    let mut resolved_on = vec![0usize; usable.len()];
    let mut considered = 0usize;
    for pod in selected {
        let pod_name = pod_name(pod).to_owned();
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        // Upstream leaves out a pod whose node is unknown (and retries); the node watch
        // brings the Service back when the node appears.
        let Some(info) = node(&node_name) else {
            out.skipped.push(Skipped::UnknownNode {
                pod: pod_name,
                node: node_name,
            });
            continue;
        };
        considered += 1;

        let mut ports = Vec::new();
        for (i, (port, target)) in usable.iter().enumerate() {
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let number = match target {
                Target::Number(n) => Some(*n),
                Target::Named(target) => {
                    let found = named_port(pod, target, &protocol);
                    if found.is_none() {
                        out.skipped.push(Skipped::NoNamedPort {
                            pod: pod_name.clone(),
                            port: port_label(port),
                            target: target.clone(),
                        });
                    }
                    found
                }
            };
            if let Some(number) = number {
                resolved_on[i] += 1;
                ports.push(Port {
                    name: port.name.clone().unwrap_or_default(),
                    port: Some(number),
                    protocol,
                    app_protocol: port.app_protocol.clone(),
                });
            }
        }

        let mut by_type: BTreeMap<AddressType, Vec<String>> = BTreeMap::new();
        for ip in pod_ips(pod) {
            match ip.parse::<IpAddr>() {
                Ok(parsed) => by_type.entry(AddressType::of(parsed)).or_default().push(ip),
                Err(_) => out.skipped.push(Skipped::BadPodIp {
                    pod: pod_name.clone(),
                    ip,
                }),
            }
        }

        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_ready(pod);
        // Upstream: ready is never true for a terminating pod, unless the Service publishes
        // not-ready addresses.
        let ready = publish_not_ready || (serving && !terminating);
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(name))
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty());
        for address_type in &out.address_types {
            let Some(addresses) = by_type.remove(address_type) else {
                continue;
            };
            let endpoint = Endpoint {
                addresses,
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname.clone(),
                node_name: Some(node_name.clone()).filter(|n| !n.is_empty()),
                zone: info.zone.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(namespace.to_owned()),
                    name: Some(pod_name.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            };
            out.groups
                .entry(SliceKey::new(*address_type, ports.clone()))
                .or_default()
                .push(endpoint);
        }
    }

    for (i, (port, target)) in usable.iter().enumerate() {
        if let Target::Named(target) = target
            && considered > 0
            && resolved_on[i] == 0
        {
            out.skipped.push(Skipped::PortUnresolved {
                port: port_label(port),
                target: target.clone(),
                pods: considered,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::endpointslice::fixtures::*;

    fn ready_of(e: &Endpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().unwrap_or_default();
        (
            c.ready.unwrap_or(false),
            c.serving.unwrap_or(false),
            c.terminating.unwrap_or(false),
        )
    }

    fn names(d: &Desired) -> Vec<(AddressType, Vec<Option<i32>>, Vec<String>)> {
        d.groups
            .iter()
            .map(|(k, eps)| {
                (
                    k.address_type,
                    k.ports.iter().map(|p| p.port).collect(),
                    eps.iter()
                        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn selection_table() {
        use AddressType::IPv4;
        struct Case {
            what: &'static str,
            pods: Vec<Pod>,
            want: Vec<(AddressType, Vec<Option<i32>>, Vec<String>)>,
        }
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let cases = vec![
            Case {
                what: "selector matches; other labels, other namespace and terminal pods are not",
                pods: vec![
                    pod("a", "10.0.0.1", &[("app", "web")]),
                    pod("b", "10.0.0.2", &[("app", "db")]),
                    pod("c", "10.0.0.3", &[]),
                    Pod {
                        metadata: kube::api::ObjectMeta {
                            namespace: Some("other".into()),
                            ..pod("d", "10.0.0.4", &[("app", "web")]).metadata
                        },
                        ..pod("d", "10.0.0.4", &[("app", "web")])
                    },
                    with_phase(pod("e", "10.0.0.5", &[("app", "web")]), "Succeeded"),
                    with_phase(pod("f", "10.0.0.6", &[("app", "web")]), "Failed"),
                ],
                want: vec![(IPv4, vec![Some(8080)], s(&["a"]))],
            },
            Case {
                what: "a pending pod without an IP is skipped",
                pods: vec![
                    pod("a", "", &[("app", "web")]),
                    pod("b", "10.0.0.2", &[("app", "web")]),
                ],
                want: vec![(IPv4, vec![Some(8080)], s(&["b"]))],
            },
            Case {
                what: "a pod on an unknown node is left out",
                pods: vec![
                    on_node(pod("a", "10.0.0.1", &[("app", "web")]), "gone"),
                    pod("b", "10.0.0.2", &[("app", "web")]),
                ],
                want: vec![(IPv4, vec![Some(8080)], s(&["b"]))],
            },
            Case {
                what: "nothing matches: no groups",
                pods: vec![pod("a", "10.0.0.1", &[("app", "db")])],
                want: vec![],
            },
        ];
        let svc = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        for case in cases {
            let got = desired(&svc, &case.pods, &nodes);
            assert_eq!(names(&got), case.want, "{}", case.what);
        }
    }

    #[test]
    fn services_that_do_not_select_get_no_endpoints() {
        let pods = [pod("a", "10.0.0.1", &[("app", "web")])];
        let mut external = service("x", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        if let Some(spec) = external.spec.as_mut() {
            spec.type_ = Some("ExternalName".into());
        }
        let empty = service("e", &[], vec![tcp("http", 80, 8080)]);
        for svc in [external, empty] {
            assert!(selector(&svc).is_none());
            assert!(desired(&svc, &pods, &nodes).groups.is_empty());
        }
    }

    #[test]
    fn named_ports_resolve_per_pod_and_group_by_port_set() {
        let svc = service(
            "web",
            &[("app", "web")],
            vec![named("http", 80, "web"), tcp("metrics", 9090, 9090)],
        );
        let pods = [
            with_port(pod("a", "10.0.0.1", &[("app", "web")]), "web", 8080),
            with_port(pod("b", "10.0.0.2", &[("app", "web")]), "web", 8081),
            pod("c", "10.0.0.3", &[("app", "web")]),
            // Same name, other protocol: not a match (upstream compares the protocol too).
            with_udp_port(pod("d", "10.0.0.4", &[("app", "web")]), "web", 8080),
        ];
        let got = desired(&svc, &pods, &nodes);
        let ipv4 = AddressType::IPv4;
        assert_eq!(
            names(&got),
            vec![
                (ipv4, vec![Some(8080), Some(9090)], vec!["a".into()]),
                (ipv4, vec![Some(8081), Some(9090)], vec!["b".into()]),
                (ipv4, vec![Some(9090)], vec!["c".into(), "d".into()]),
            ]
        );
        assert!(got.skipped.contains(&Skipped::NoNamedPort {
            pod: "c".into(),
            port: "http".into(),
            target: "web".into()
        }));
    }

    #[test]
    fn bad_ports_are_skipped_without_breaking_the_others() {
        let svc = service(
            "web",
            &[("app", "web")],
            vec![
                named("http", 80, "Not_A_Port!"),
                tcp("zero", 81, 0),
                tcp("ok", 82, 8082),
            ],
        );
        let got = desired(&svc, &[pod("a", "10.0.0.1", &[("app", "web")])], &nodes);
        assert_eq!(
            names(&got),
            vec![(AddressType::IPv4, vec![Some(8082)], vec!["a".into()])]
        );
        assert!(got.skipped.contains(&Skipped::BadTargetPort {
            port: "zero".into(),
            target: 0
        }));
        assert!(got.skipped.contains(&Skipped::PortUnresolved {
            port: "http".into(),
            target: "Not_A_Port!".into(),
            pods: 1
        }));
    }

    #[test]
    fn conditions_table() {
        struct Case {
            what: &'static str,
            ready: bool,
            terminating: bool,
            publish_not_ready: bool,
            want: (bool, bool, bool),
        }
        let cases = [
            Case {
                what: "ready",
                ready: true,
                terminating: false,
                publish_not_ready: false,
                want: (true, true, false),
            },
            Case {
                what: "not ready",
                ready: false,
                terminating: false,
                publish_not_ready: false,
                want: (false, false, false),
            },
            Case {
                what: "terminating but still ready: serving, not ready",
                ready: true,
                terminating: true,
                publish_not_ready: false,
                want: (false, true, true),
            },
            Case {
                what: "terminating and not ready",
                ready: false,
                terminating: true,
                publish_not_ready: false,
                want: (false, false, true),
            },
            Case {
                what: "publishNotReadyAddresses: ready regardless",
                ready: false,
                terminating: false,
                publish_not_ready: true,
                want: (true, false, false),
            },
            Case {
                what: "publishNotReadyAddresses while terminating",
                ready: false,
                terminating: true,
                publish_not_ready: true,
                want: (true, false, true),
            },
        ];
        for case in cases {
            let mut svc = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
            if let Some(spec) = svc.spec.as_mut() {
                spec.publish_not_ready_addresses = Some(case.publish_not_ready);
            }
            let mut p = ready(pod("a", "10.0.0.1", &[("app", "web")]), case.ready);
            if case.terminating {
                p = terminating(p);
            }
            let got = desired(&svc, &[p], &nodes);
            let endpoint = got.groups.values().flatten().next().expect("one endpoint");
            assert_eq!(ready_of(endpoint), case.want, "{}", case.what);
        }
    }

    #[test]
    fn endpoints_carry_node_zone_target_and_hostname() {
        let svc = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        let mut p = on_node(pod("a", "10.0.0.1", &[("app", "web")]), "zoned");
        if let Some(spec) = p.spec.as_mut() {
            spec.hostname = Some("host-a".into());
            spec.subdomain = Some("web".into());
        }
        let got = desired(&svc, &[p], &nodes);
        let e = got.groups.values().flatten().next().expect("one endpoint");
        assert_eq!(e.addresses, vec!["10.0.0.1".to_owned()]);
        assert_eq!(e.node_name.as_deref(), Some("zoned"));
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert_eq!(e.hostname.as_deref(), Some("host-a"));
        let target = e.target_ref.clone().expect("target");
        assert_eq!(
            (target.kind, target.namespace, target.name, target.uid),
            (
                Some("Pod".into()),
                Some(NS.into()),
                Some("a".into()),
                Some("uid-a".into())
            )
        );
    }

    #[test]
    fn families_split_by_address_type() {
        let mut svc = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        if let Some(spec) = svc.spec.as_mut() {
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        }
        let pods = [
            dual(pod("a", "10.0.0.1", &[("app", "web")]), "fd00::1"),
            pod("b", "fd00::2", &[("app", "web")]),
            pod("c", "10.0.0.3", &[("app", "web")]),
        ];
        let got = desired(&svc, &pods, &nodes);
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            names(&got),
            vec![
                (AddressType::IPv4, vec![Some(8080)], s(&["a", "c"])),
                (AddressType::IPv6, vec![Some(8080)], s(&["a", "b"])),
            ]
        );
        // An IPv4-only Service ignores the pods' IPv6 addresses.
        let v4 = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        assert_eq!(
            names(&desired(&v4, &pods, &nodes)),
            vec![(AddressType::IPv4, vec![Some(8080)], s(&["a", "c"]))]
        );
    }

    #[test]
    fn address_types_follow_families_then_cluster_ip_then_both() {
        let mut svc = service("web", &[("app", "web")], vec![]);
        let spec = svc.spec.as_mut().expect("spec");
        spec.ip_families = None;
        spec.cluster_ip = Some("fd00::10".into());
        assert_eq!(address_types(&svc), BTreeSet::from([AddressType::IPv6]));
        let spec = svc.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("None".into());
        assert_eq!(
            address_types(&svc),
            BTreeSet::from([AddressType::IPv4, AddressType::IPv6])
        );
        assert!(is_headless(&svc));
    }

    #[test]
    fn a_headless_service_without_ports_gets_endpoints_without_ports() {
        let mut svc = service("db", &[("app", "db")], vec![]);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        let got = desired(&svc, &[pod("a", "10.0.0.1", &[("app", "db")])], &nodes);
        assert_eq!(
            names(&got),
            vec![(AddressType::IPv4, vec![], vec!["a".into()])]
        );
    }
}
