//! Mapping: Kubernetes Services, EndpointSlices and this Node, read as the stock kube-proxy reads
//! them, turned into `nodus_net`'s proxy model.
//!
//! Invariants: pure (no I/O, no clock, no logging), and deterministic (the same objects in any
//! order give the same state; [`Mapper`] only remembers results, it never changes them); a
//! Service that cannot be mapped is reported as a [`MappingError`] and left out, never breaking
//! the others; Services that are not ours to proxy (headless, `ExternalName`, claimed by another
//! proxy through `service.kubernetes.io/service-proxy-name`) are left out silently, as upstream
//! does.
//!
//! Upstream references: `pkg/proxy/serviceport.go` (`newBaseServiceInfo`),
//! `pkg/proxy/endpointslicecache.go` (slice ports matched to service ports by name and protocol,
//! nil `ready`/`serving` meaning true, the first address of an endpoint only, `nodeName` deciding
//! "local"), `pkg/proxy/util` (`ShouldSkipService`) and the informer label selector kube-proxy uses
//! (`!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodus_net::proxy::model;

/// The label that hands a Service (and its slices) to another proxy implementation.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label selector kube-proxy watches Services and EndpointSlices with.
pub const WATCH_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The taint the cluster autoscaler puts on a node it is about to delete; kube-proxy then reports
/// itself unhealthy on `/healthz` so that load balancers drain the node.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (three hours), as the API defaults it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ServiceKey {
    pub fn of(service: &Service) -> Self {
        ServiceKey {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// Why a Service cannot be mapped. Each variant names the Service; the Service is left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("service {service}: {field} {value:?} is not an IP address")]
    BadIp {
        service: ServiceKey,
        field: &'static str,
        value: String,
    },
    #[error("service {service}: port {port:?} has unsupported protocol {protocol:?}")]
    UnsupportedProtocol {
        service: ServiceKey,
        port: String,
        protocol: String,
    },
    #[error("service {service}: port {port:?} has {field} {value}, outside 0..=65535")]
    PortOutOfRange {
        service: ServiceKey,
        port: String,
        field: &'static str,
        value: i32,
    },
    #[error("service {service}: session affinity timeout {seconds} is negative")]
    NegativeAffinityTimeout { service: ServiceKey, seconds: i32 },
}

impl MappingError {
    /// The Service this error is about.
    pub fn service(&self) -> &ServiceKey {
        match self {
            MappingError::BadIp { service, .. }
            | MappingError::UnsupportedProtocol { service, .. }
            | MappingError::PortOutOfRange { service, .. }
            | MappingError::NegativeAffinityTimeout { service, .. } => service,
        }
    }
}

/// The result of mapping: the model, and the Services left out because they are invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub state: model::ProxyState,
    pub invalid: Vec<MappingError>,
}

/// Builds the proxy's whole input from the current contents of the stores.
pub fn proxy_state(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
    node: model::Node,
) -> Mapped {
    Mapper::default().map(services, slices, node_name, node)
}

/// [`proxy_state`] for one sync after another: a Service whose object and slices are the
/// allocations the stores held at the last sync (a reflector store replaces only what changed)
/// gets the model it got then, shared, without being mapped again. At 10k Services mapping every
/// one took ~15 ms of each sync; the builder then also tells such a Service unchanged by pointer.
#[derive(Debug, Default)]
pub struct Mapper {
    /// The node the remembered models were mapped for ("local" endpoints depend on it).
    node_name: String,
    /// By the address of the Service object, which `Known` keeps alive (so it is not reused).
    known: HashMap<usize, Known>,
}

#[derive(Debug)]
struct Known {
    service: Arc<Service>,
    /// The slices it was mapped with, in mapping order.
    slices: Vec<Arc<EndpointSlice>>,
    mapped: Result<Option<Arc<model::Service>>, MappingError>,
}

impl Mapper {
    pub fn map(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node_name: &str,
        node: model::Node,
    ) -> Mapped {
        if self.node_name != node_name {
            self.known.clear();
            node_name.clone_into(&mut self.node_name);
        }
        // Index slices by the Service they name, so the cost is linear in the number of objects.
        // Keys and the sort borrow from the objects: at 10k Services, owned keys made of each
        // comparison two allocations.
        let mut by_service: HashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> = HashMap::new();
        for slice in slices {
            if let Some(key) = slice_service(slice) {
                by_service.entry(key).or_default().push(slice);
            }
        }
        let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
        sorted.sort_by(|a, b| names(a).cmp(&names(b)));
        let mut state = model::ProxyState {
            node,
            services: Vec::with_capacity(sorted.len()),
        };
        let mut invalid = Vec::new();
        let mut known = HashMap::with_capacity(sorted.len());
        for service in sorted {
            let mut own_slices = by_service.remove(&names(service)).unwrap_or_default();
            // By name: the stores list in no particular order, and endpoint order is the
            // model's (and the ruleset's) order.
            own_slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let address = Arc::as_ptr(service) as usize;
            let entry = match self.known.remove(&address) {
                Some(entry)
                    if Arc::ptr_eq(&entry.service, service)
                        && entry.slices.len() == own_slices.len()
                        && entry
                            .slices
                            .iter()
                            .zip(&own_slices)
                            .all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    entry
                }
                _ => {
                    let borrowed: Vec<&EndpointSlice> =
                        own_slices.iter().map(|s| s.as_ref()).collect();
                    let mapped =
                        map_service(service, &borrowed, node_name).map(|m| m.map(Arc::new));
                    Known {
                        service: Arc::clone(service),
                        slices: own_slices.into_iter().cloned().collect(),
                        mapped,
                    }
                }
            };
            match &entry.mapped {
                Ok(Some(mapped)) => state.services.push(Arc::clone(mapped)),
                Ok(None) => {}
                Err(err) => invalid.push(err.clone()),
            }
            known.insert(address, entry);
        }
        // Only what the stores hold now is remembered.
        self.known = known;
        Mapped { state, invalid }
    }
}

/// Why a Service is not ours to proxy, or `None` when it is.
pub fn not_proxied(service: &Service) -> Option<&'static str> {
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Some("claimed by another proxy");
    }
    let Some(spec) = service.spec.as_ref() else {
        return Some("no spec");
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("ExternalName");
    }
    // Upstream `ShouldSkipService` looks at `clusterIP` only; the API server keeps it equal to
    // the first of `clusterIPs`.
    match spec.cluster_ip.as_deref() {
        Some("None") => Some("headless"),
        None | Some("") => Some("no cluster IP"),
        Some(_) => None,
    }
}

/// `(namespace, name)` of the Service an EndpointSlice belongs to, or `None` when the slice is not
/// for us: without the `kubernetes.io/service-name` label (upstream refuses those), of a headless
/// Service, or claimed by another proxy.
fn slice_service(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL) {
        return None;
    }
    let name = labels.get(SERVICE_NAME_LABEL).filter(|n| !n.is_empty())?;
    Some((slice.metadata.namespace.as_deref()?, name))
}

/// `(namespace, name)` of a Service, borrowed.
fn names(service: &Service) -> (&str, &str) {
    (
        service.metadata.namespace.as_deref().unwrap_or_default(),
        service.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Maps one Service with its slices. `Ok(None)`: not ours to proxy.
pub fn map_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Result<Option<model::Service>, MappingError> {
    if not_proxied(service).is_some() {
        return Ok(None);
    }
    let Some(spec) = service.spec.as_ref() else {
        return Ok(None);
    };
    let key = ServiceKey::of(service);
    let bad_ip = |field: &'static str, value: &str| MappingError::BadIp {
        service: key.clone(),
        field,
        value: value.to_owned(),
    };

    // `clusterIPs` holds one address per family, primary first; `clusterIP` is its first element
    // and the only field older objects have.
    let cluster_ip_strings: Vec<&String> = match spec.cluster_ips.as_ref() {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    let mut cluster_ips = Vec::with_capacity(cluster_ip_strings.len());
    for value in cluster_ip_strings {
        cluster_ips.push(
            value
                .parse::<IpAddr>()
                .map_err(|_| bad_ip("clusterIP", value))?,
        );
    }
    let mut external_ips = Vec::new();
    for value in spec.external_ips.iter().flatten() {
        external_ips.push(value.parse().map_err(|_| bad_ip("externalIP", value))?);
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for entry in ingress.into_iter().flatten() {
        // Hostname-only ingress has nothing to program; `ipMode: Proxy` means the load balancer
        // delivers to the node itself rather than to the VIP, so the VIP must not be captured
        // (KEP-1860).
        let Some(value) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        load_balancer_ips.push(
            value
                .parse()
                .map_err(|_| bad_ip("loadBalancer ingress IP", value))?,
        );
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(seconds) => {
                    u32::try_from(seconds).map_err(|_| MappingError::NegativeAffinityTimeout {
                        service: key.clone(),
                        seconds,
                    })?
                }
            };
            model::SessionAffinity::ClientIp { timeout_seconds }
        }
        _ => model::SessionAffinity::None,
    };

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    // `apihelpers.ExternallyAccessible`: the external policy only means something for traffic
    // that can arrive from outside.
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP" && !external_ips.is_empty());
    let external_traffic_policy =
        if externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local") {
            model::TrafficPolicy::Local
        } else {
            model::TrafficPolicy::Cluster
        };
    // `apiservice.NeedsHealthCheck`: LoadBalancer with the Local external policy; a zero port
    // (not yet allocated) serves nothing.
    let health_check_node_port =
        if type_ == "LoadBalancer" && external_traffic_policy == model::TrafficPolicy::Local {
            spec.health_check_node_port
                .map(|port| port_number(&key, "", "healthCheckNodePort", port))
                .transpose()?
                .filter(|&p| p != 0)
        } else {
            None
        };
    let internal_traffic_policy = if spec.internal_traffic_policy.as_deref() == Some("Local") {
        model::TrafficPolicy::Local
    } else {
        model::TrafficPolicy::Cluster
    };

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let name = port.name.clone().unwrap_or_default();
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let protocol =
            parse_protocol(protocol_name).ok_or_else(|| MappingError::UnsupportedProtocol {
                service: key.clone(),
                port: name.clone(),
                protocol: protocol_name.to_owned(),
            })?;
        let number = port_number(&key, &name, "port", port.port)?;
        let node_port = port
            .node_port
            .map(|p| port_number(&key, &name, "nodePort", p))
            .transpose()?
            .filter(|&p| p != 0);
        let endpoints = endpoints_for(slices, &name, protocol, node_name);
        ports.push(model::ServicePort {
            name,
            protocol,
            port: number,
            node_port,
            endpoints,
        });
    }

    Ok(Some(model::Service {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        cluster_ips,
        external_ips,
        load_balancer_ips,
        session_affinity,
        external_traffic_policy,
        health_check_node_port,
        internal_traffic_policy,
        ports,
    }))
}

fn parse_protocol(name: &str) -> Option<model::Protocol> {
    match name {
        "TCP" => Some(model::Protocol::Tcp),
        "UDP" => Some(model::Protocol::Udp),
        "SCTP" => Some(model::Protocol::Sctp),
        _ => None,
    }
}

/// An API port number as `u16`. Zero passes here; the model refuses it where it matters.
fn port_number(
    service: &ServiceKey,
    port: &str,
    field: &'static str,
    value: i32,
) -> Result<u16, MappingError> {
    u16::try_from(value).map_err(|_| MappingError::PortOutOfRange {
        service: service.clone(),
        port: port.to_owned(),
        field,
        value,
    })
}

/// The endpoints serving service port `name`/`protocol`, from every slice of the Service.
///
/// As upstream: a slice port matches by name and protocol; ports without a name (nil, as opposed
/// to "") or without a number are ignored; only an endpoint's first address counts; addresses
/// that do not belong to the slice's `addressType` are ignored; FQDN slices carry nothing to
/// program. Duplicates (an endpoint moving between slices) collapse to one, preferring the copy
/// on this node and then the readier one, so that the result does not depend on slice order.
fn endpoints_for(
    slices: &[&EndpointSlice],
    name: &str,
    protocol: model::Protocol,
    node_name: &str,
) -> Vec<model::Endpoint> {
    let mut found: BTreeMap<(IpAddr, u16), model::Endpoint> = BTreeMap::new();
    for slice in slices {
        let family_v4 = match slice.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            _ => continue,
        };
        for slice_port in slice.ports.iter().flatten() {
            let (Some(port_name), Some(number)) = (&slice_port.name, slice_port.port) else {
                continue;
            };
            let slice_protocol = slice_port.protocol.as_deref().unwrap_or("TCP");
            if port_name != name || parse_protocol(slice_protocol) != Some(protocol) {
                continue;
            }
            let Ok(number) = u16::try_from(number) else {
                continue;
            };
            if number == 0 {
                continue;
            }
            for endpoint in slice.endpoints.iter().flatten() {
                let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .filter(|ip| ip.is_ipv4() == family_v4)
                else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                // Upstream: nil ready and nil serving mean true, nil terminating means false.
                let candidate = model::Endpoint {
                    ip,
                    port: number,
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    local: !node_name.is_empty()
                        && endpoint.node_name.as_deref() == Some(node_name),
                };
                let rank = |e: &model::Endpoint| (e.local, e.ready, e.serving, !e.terminating);
                found
                    .entry((ip, number))
                    .and_modify(|existing| {
                        if rank(&candidate) > rank(existing) {
                            *existing = candidate.clone();
                        }
                    })
                    .or_insert(candidate);
            }
        }
    }
    found.into_values().collect()
}

/// The node's addresses from its status when `--node-ip` was not given: InternalIP first, then
/// ExternalIP, as kube-proxy picks its primary IPs.
pub fn node_ips(node: &Node) -> Vec<IpAddr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of_type = |kind: &str| -> Vec<IpAddr> {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    let internal = of_type("InternalIP");
    if internal.is_empty() {
        of_type("ExternalIP")
    } else {
        internal
    }
}

/// Whether load balancers may send traffic to this node (upstream `ProxyHealthServer.SyncNode`):
/// not once it is being deleted, nor once the cluster autoscaler has marked it for deletion.
pub fn node_eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// The node-level model.
///
/// `nodeport_cidrs` is `--nodeport-addresses`: empty means the node's own IPs (nftables mode's
/// default, "primary"); a CIDR covering everything (`0.0.0.0/0`, `::/0`) means every local
/// address; otherwise the local addresses inside the CIDRs. Loopback never accepts NodePorts
/// (upstream's nftables mode does not support them there). With no address known at all, every
/// local address, rather than silently no NodePort at all.
pub fn node_model(
    node_ips: &[IpAddr],
    nodeport_cidrs: &[IpNet],
    local_addresses: &[IpAddr],
    cluster_cidrs: &[IpNet],
) -> model::Node {
    let node_port_addresses = if nodeport_cidrs.iter().any(|c| c.prefix_len() == 0) {
        model::NodePortAddresses::AllLocal
    } else {
        let candidates = if nodeport_cidrs.is_empty() {
            node_ips.to_vec()
        } else {
            local_addresses
                .iter()
                .copied()
                .filter(|ip| nodeport_cidrs.iter().any(|c| c.contains(ip)))
                .collect()
        };
        let mut ips: Vec<IpAddr> = candidates
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() && nodeport_cidrs.is_empty() {
            model::NodePortAddresses::AllLocal
        } else {
            model::NodePortAddresses::Only(ips)
        }
    };
    model::Node {
        node_port_addresses,
        cluster_cidrs: cluster_cidrs.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str = "node-a";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn service(value: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(value).expect("test Service"))
    }

    fn slice(value: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(value).expect("test EndpointSlice"))
    }

    /// A ClusterIP Service `ns/web` with one port `http` 80 -> the slice's 8080.
    fn web(spec: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "metadata": { "namespace": "ns", "name": "web" },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }],
            },
        });
        merge(&mut base["spec"], spec);
        base
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        if let (Some(base), serde_json::Value::Object(patch)) = (base.as_object_mut(), patch) {
            for (k, v) in patch {
                base.insert(k, v);
            }
        }
    }

    fn web_slice(name: &str, endpoints: serde_json::Value) -> serde_json::Value {
        json!({
            "metadata": { "namespace": "ns", "name": name,
                          "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": endpoints,
        })
    }

    fn node() -> model::Node {
        model::Node {
            node_port_addresses: model::NodePortAddresses::AllLocal,
            cluster_cidrs: vec![],
        }
    }

    fn map(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> Mapped {
        let services: Vec<_> = services.into_iter().map(service).collect();
        let slices: Vec<_> = slices.into_iter().map(slice).collect();
        proxy_state(&services, &slices, NODE, node())
    }

    fn one(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> model::Service {
        let mapped = map(services, slices);
        assert!(mapped.invalid.is_empty(), "{:?}", mapped.invalid);
        assert_eq!(
            mapped.state.services.len(),
            1,
            "{:?}",
            mapped.state.services
        );
        model::Service::clone(&mapped.state.services[0])
    }

    /// A Service `ns/NAME` like [`web`] with its own cluster IP and one slice `NAME-1`.
    fn named(name: &str, i: u8) -> (Arc<Service>, Arc<EndpointSlice>) {
        let mut svc = web(json!({ "clusterIP": format!("10.96.1.{i}"),
                                  "clusterIPs": [format!("10.96.1.{i}")] }));
        svc["metadata"]["name"] = json!(name);
        let mut eps = web_slice(
            &format!("{name}-1"),
            json!([{ "addresses": [format!("10.244.1.{i}")] }]),
        );
        eps["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
        (service(svc), slice(eps))
    }

    #[test]
    fn the_mapper_reuses_what_did_not_change_and_maps_what_did() {
        let (a, a_slice) = named("a", 1);
        let (b, b_slice) = named("b", 2);
        let mut mapper = Mapper::default();
        let first = mapper.map(
            &[a.clone(), b.clone()],
            &[a_slice.clone(), b_slice.clone()],
            NODE,
            node(),
        );
        assert_eq!(first.state.services.len(), 2);

        // b's slice is replaced (the store's new object for a watch event): only b is mapped
        // again, and the result is what a fresh mapping gives.
        let mut edited = EndpointSlice::clone(&b_slice);
        edited.endpoints.as_mut().expect("endpoints")[0].addresses = vec!["10.244.9.9".into()];
        let b_edited = Arc::new(edited);
        let services = [b.clone(), a.clone()];
        let slices = [b_edited.clone(), a_slice.clone()];
        let second = mapper.map(&services, &slices, NODE, node());
        assert!(Arc::ptr_eq(
            &first.state.services[0],
            &second.state.services[0]
        ));
        assert!(!Arc::ptr_eq(
            &first.state.services[1],
            &second.state.services[1]
        ));
        assert_eq!(
            second.state.services[1].ports[0].endpoints[0].ip,
            ip("10.244.9.9")
        );
        assert_eq!(second, proxy_state(&services, &slices, NODE, node()));

        // A Service object replaced by an equal one is mapped again, to an equal model.
        let a_again = Arc::new(Service::clone(&a));
        let third = mapper.map(&[a_again, b.clone()], &slices, NODE, node());
        assert!(!Arc::ptr_eq(
            &second.state.services[0],
            &third.state.services[0]
        ));
        assert_eq!(third, second);

        // A slice gone is noticed although the Service object is the same.
        let fourth = mapper.map(std::slice::from_ref(&b), &[], NODE, node());
        assert!(fourth.state.services[0].ports[0].endpoints.is_empty());
    }

    #[test]
    fn slices_map_in_name_order_whatever_order_the_store_lists_them() {
        let svc = service(web(json!({})));
        let one = slice(web_slice("web-1", json!([{ "addresses": ["10.244.0.1"] }])));
        let two = slice(web_slice("web-2", json!([{ "addresses": ["10.244.0.2"] }])));
        let forward = proxy_state(
            std::slice::from_ref(&svc),
            &[one.clone(), two.clone()],
            NODE,
            node(),
        );
        let backward = proxy_state(&[svc], &[two, one], NODE, node());
        assert_eq!(forward, backward);
        let ips: Vec<IpAddr> = forward.state.services[0].ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip)
            .collect();
        assert_eq!(ips, [ip("10.244.0.1"), ip("10.244.0.2")]);
    }

    #[test]
    fn services_not_ours_are_left_out_silently() {
        let cases = [
            (
                "headless",
                web(json!({ "clusterIP": "None", "clusterIPs": ["None"] })),
            ),
            (
                "external name",
                web(
                    json!({ "type": "ExternalName", "externalName": "example.com",
                            "clusterIP": null, "clusterIPs": null }),
                ),
            ),
            (
                "no cluster IP yet",
                web(json!({ "clusterIP": "", "clusterIPs": null })),
            ),
            (
                "no spec",
                json!({ "metadata": { "namespace": "ns", "name": "web" } }),
            ),
            ("other proxy", {
                let mut s = web(json!({}));
                s["metadata"]["labels"] = json!({ SERVICE_PROXY_NAME_LABEL: "other" });
                s
            }),
        ];
        for (what, svc) in cases {
            let mapped = map(vec![svc], vec![]);
            assert!(mapped.state.services.is_empty(), "{what}: {mapped:?}");
            assert!(mapped.invalid.is_empty(), "{what}: {mapped:?}");
        }
    }

    #[test]
    fn slices_not_ours_are_ignored() {
        let eps = json!([{ "addresses": ["10.244.0.5"] }]);
        let mut unlabelled = web_slice("a", eps.clone());
        unlabelled["metadata"]["labels"] = json!({});
        let mut headless = web_slice("b", eps.clone());
        headless["metadata"]["labels"][HEADLESS_LABEL] = json!("");
        let mut other = web_slice("c", eps.clone());
        other["metadata"]["labels"][SERVICE_PROXY_NAME_LABEL] = json!("other");
        let mut other_service = web_slice("d", eps.clone());
        other_service["metadata"]["labels"][SERVICE_NAME_LABEL] = json!("api");
        let mut other_namespace = web_slice("e", eps.clone());
        other_namespace["metadata"]["namespace"] = json!("elsewhere");
        let mut fqdn = web_slice("f", json!([{ "addresses": ["web.example.com"] }]));
        fqdn["addressType"] = json!("FQDN");
        let svc = one(
            vec![web(json!({}))],
            vec![
                unlabelled,
                headless,
                other,
                other_service,
                other_namespace,
                fqdn,
            ],
        );
        assert_eq!(svc.ports[0].endpoints, vec![]);
    }

    #[test]
    fn a_cluster_ip_service_maps_with_its_endpoints() {
        let svc = one(
            vec![web(json!({}))],
            vec![web_slice(
                "web-1",
                json!([
                    { "addresses": ["10.244.0.5"], "nodeName": NODE, "conditions": { "ready": true } },
                    { "addresses": ["10.244.1.7"], "nodeName": "node-b" },
                ]),
            )],
        );
        assert_eq!(
            svc,
            model::Service {
                namespace: "ns".into(),
                name: "web".into(),
                cluster_ips: vec![ip("10.96.0.10")],
                external_ips: vec![],
                load_balancer_ips: vec![],
                session_affinity: model::SessionAffinity::None,
                external_traffic_policy: model::TrafficPolicy::Cluster,
                health_check_node_port: None,
                internal_traffic_policy: model::TrafficPolicy::Cluster,
                ports: vec![model::ServicePort {
                    name: "http".into(),
                    protocol: model::Protocol::Tcp,
                    port: 80,
                    node_port: None,
                    endpoints: vec![
                        model::Endpoint::ready(ip("10.244.0.5"), 8080, true),
                        model::Endpoint::ready(ip("10.244.1.7"), 8080, false),
                    ],
                }],
            }
        );
        assert_eq!(svc.validate(), Ok(()));
    }

    #[test]
    fn endpoint_conditions_follow_upstream_defaults() {
        // (conditions, expected (ready, serving, terminating))
        let cases = [
            (json!(null), (true, true, false)),
            (json!({}), (true, true, false)),
            (json!({ "ready": false }), (false, true, false)),
            (
                json!({ "ready": false, "serving": true, "terminating": true }),
                (false, true, true),
            ),
            (
                json!({ "ready": false, "serving": false, "terminating": true }),
                (false, false, true),
            ),
        ];
        for (conditions, (ready, serving, terminating)) in cases {
            let svc = one(
                vec![web(json!({}))],
                vec![web_slice(
                    "s",
                    json!([{ "addresses": ["10.244.0.5"], "conditions": conditions }]),
                )],
            );
            let ep = &svc.ports[0].endpoints[0];
            assert_eq!(
                (ep.ready, ep.serving, ep.terminating),
                (ready, serving, terminating),
                "{conditions}"
            );
            assert!(!ep.local, "no nodeName is not local");
        }
    }

    #[test]
    fn slice_ports_match_service_ports_by_name_and_protocol() {
        let svc = web(json!({
            "ports": [
                { "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 },
                { "name": "dns", "port": 53, "protocol": "UDP" },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                { "name": "sctp", "port": 9, "protocol": "SCTP" },
            ],
            "type": "NodePort",
        }));
        let slice = json!({
            "metadata": { "namespace": "ns", "name": "web-x",
                          "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "ports": [
                { "name": "http", "port": 8080 },
                { "name": "dns", "port": 5353, "protocol": "UDP" },
                // Same name, other protocol: belongs to no service port.
                { "name": "dns-tcp", "port": 5354, "protocol": "UDP" },
                { "name": "sctp", "port": 9999, "protocol": "SCTP" },
                // Nil name and nil number are ignored, as upstream does.
                { "port": 1 },
                { "name": "http" },
            ],
            "endpoints": [{ "addresses": ["10.244.0.5", "10.244.0.6"] }],
        });
        let mapped = one(vec![svc], vec![slice]);
        let got: Vec<_> = mapped
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.protocol,
                    p.port,
                    p.node_port,
                    p.endpoints
                        .iter()
                        .map(|e| (e.ip, e.port))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let ep = |port| vec![(ip("10.244.0.5"), port)];
        assert_eq!(
            got,
            vec![
                ("http", model::Protocol::Tcp, 80, Some(30080), ep(8080)),
                ("dns", model::Protocol::Udp, 53, None, ep(5353)),
                ("dns-tcp", model::Protocol::Tcp, 53, None, vec![]),
                ("sctp", model::Protocol::Sctp, 9, None, ep(9999)),
            ]
        );
    }

    #[test]
    fn an_unnamed_single_port_matches_an_empty_slice_port_name() {
        let svc = web(json!({ "ports": [{ "port": 80 }] }));
        let mut s = web_slice("s", json!([{ "addresses": ["10.244.0.5"] }]));
        s["ports"] = json!([{ "name": "", "port": 8080, "protocol": "TCP" }]);
        let mapped = one(vec![svc], vec![s]);
        assert_eq!(mapped.ports[0].name, "");
        assert_eq!(mapped.ports[0].endpoints.len(), 1);
    }

    #[test]
    fn endpoints_from_several_slices_merge_and_deduplicate() {
        let a = web_slice(
            "a",
            json!([
                { "addresses": ["10.244.0.5"], "conditions": { "ready": false }, "nodeName": "node-b" },
                { "addresses": ["10.244.0.6"] },
            ]),
        );
        // The same endpoint in another slice (moving between slices), here ready and local.
        let b = web_slice(
            "b",
            json!([{ "addresses": ["10.244.0.5"], "nodeName": NODE }]),
        );
        for slices in [vec![a.clone(), b.clone()], vec![b, a]] {
            let svc = one(vec![web(json!({}))], slices);
            assert_eq!(
                svc.ports[0].endpoints,
                vec![
                    model::Endpoint::ready(ip("10.244.0.5"), 8080, true),
                    model::Endpoint::ready(ip("10.244.0.6"), 8080, false),
                ]
            );
        }
    }

    #[test]
    fn dual_stack_families_come_from_the_address_type() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
        }));
        let v4 = web_slice("v4", json!([{ "addresses": ["10.244.0.5"] }]));
        let mut v6 = web_slice("v6", json!([{ "addresses": ["fd00:244::5"] }]));
        v6["addressType"] = json!("IPv6");
        // An address of the wrong family for its slice is ignored.
        let mut wrong = web_slice("wrong", json!([{ "addresses": ["fd00:244::9"] }]));
        wrong["addressType"] = json!("IPv4");
        let mapped = one(vec![svc], vec![v4, v6, wrong]);
        assert_eq!(
            mapped.cluster_ips,
            vec![ip("10.96.0.10"), ip("fd00:96::10")]
        );
        let eps: Vec<_> = mapped.ports[0].endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(eps, vec![ip("10.244.0.5"), ip("fd00:244::5")]);
        assert_eq!(mapped.validate(), Ok(()));
    }

    #[test]
    fn older_objects_with_only_cluster_ip_still_map() {
        let mapped = one(vec![web(json!({ "clusterIPs": null }))], vec![]);
        assert_eq!(mapped.cluster_ips, vec![ip("10.96.0.10")]);
    }

    #[test]
    fn external_addresses_affinity_and_policies() {
        // (what, spec patch, status, check)
        type Check = fn(&model::Service);
        let cases: Vec<(&str, serde_json::Value, serde_json::Value, Check)> = vec![
            (
                "externalIPs on a ClusterIP service make the external policy count",
                json!({ "externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local" }),
                json!(null),
                |s| {
                    assert_eq!(s.external_ips, vec![ip("192.0.2.10")]);
                    assert_eq!(s.external_traffic_policy, model::TrafficPolicy::Local);
                    assert_eq!(s.health_check_node_port, None);
                },
            ),
            (
                "the external policy means nothing for internal-only services",
                json!({ "externalTrafficPolicy": "Local" }),
                json!(null),
                |s| assert_eq!(s.external_traffic_policy, model::TrafficPolicy::Cluster),
            ),
            (
                "load balancer with local policy gets its health check port",
                json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                        "healthCheckNodePort": 32000,
                        "ports": [{ "name": "http", "port": 80, "nodePort": 30080 }] }),
                json!({ "loadBalancer": { "ingress": [
                    { "ip": "198.51.100.7" },
                    { "hostname": "lb.example.com" },
                    { "ip": "198.51.100.8", "ipMode": "Proxy" },
                    { "ip": "198.51.100.9", "ipMode": "VIP" },
                ] } }),
                |s| {
                    assert_eq!(
                        s.load_balancer_ips,
                        vec![ip("198.51.100.7"), ip("198.51.100.9")]
                    );
                    assert_eq!(s.external_traffic_policy, model::TrafficPolicy::Local);
                    assert_eq!(s.health_check_node_port, Some(32000));
                    assert_eq!(s.ports[0].node_port, Some(30080));
                },
            ),
            (
                "a NodePort service never needs a health check",
                json!({ "type": "NodePort", "externalTrafficPolicy": "Local",
                        "healthCheckNodePort": 32000 }),
                json!(null),
                |s| {
                    assert_eq!(s.external_traffic_policy, model::TrafficPolicy::Local);
                    assert_eq!(s.health_check_node_port, None);
                },
            ),
            (
                "ClientIP affinity defaults to three hours",
                json!({ "sessionAffinity": "ClientIP" }),
                json!(null),
                |s| {
                    assert_eq!(
                        s.session_affinity,
                        model::SessionAffinity::ClientIp {
                            timeout_seconds: 10_800
                        }
                    )
                },
            ),
            (
                "ClientIP affinity with its timeout",
                json!({ "sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } } }),
                json!(null),
                |s| {
                    assert_eq!(
                        s.session_affinity,
                        model::SessionAffinity::ClientIp {
                            timeout_seconds: 60
                        }
                    )
                },
            ),
            (
                "internal traffic policy Local",
                json!({ "internalTrafficPolicy": "Local" }),
                json!(null),
                |s| assert_eq!(s.internal_traffic_policy, model::TrafficPolicy::Local),
            ),
        ];
        for (what, spec, status, check) in cases {
            let mut svc = web(spec);
            svc["status"] = status;
            let mapped = map(vec![svc], vec![]);
            assert!(mapped.invalid.is_empty(), "{what}: {:?}", mapped.invalid);
            assert_eq!(mapped.state.services.len(), 1, "{what}");
            check(&mapped.state.services[0]);
            assert_eq!(mapped.state.services[0].validate(), Ok(()), "{what}");
        }
    }

    #[test]
    fn an_invalid_service_is_reported_and_the_others_still_map() {
        let cases = [
            (json!({ "clusterIPs": ["10.96.0.300"] }), "BadIp"),
            (json!({ "externalIPs": ["nope"] }), "BadIp"),
            (
                json!({ "ports": [{ "name": "x", "port": 80, "protocol": "QUIC" }] }),
                "UnsupportedProtocol",
            ),
            (
                json!({ "ports": [{ "name": "x", "port": 70000 }] }),
                "PortOutOfRange",
            ),
            (
                json!({ "ports": [{ "name": "x", "port": 80, "nodePort": -1 }] }),
                "PortOutOfRange",
            ),
            (
                json!({ "sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": -5 } } }),
                "NegativeAffinityTimeout",
            ),
        ];
        for (patch, variant) in cases {
            let mut bad = web(patch.clone());
            bad["metadata"]["name"] = json!("bad");
            let good = web(json!({}));
            let mapped = map(vec![bad, good], vec![]);
            assert_eq!(mapped.invalid.len(), 1, "{patch}");
            let err = &mapped.invalid[0];
            assert!(format!("{err:?}").starts_with(variant), "{patch}: {err:?}");
            assert_eq!(err.service().to_string(), "ns/bad");
            assert!(err.to_string().contains("ns/bad"), "{err}");
            let names: Vec<_> = mapped
                .state
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, vec!["web"], "{patch}");
        }
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let mut other = web(json!({ "clusterIPs": ["10.96.0.11"], "clusterIP": "10.96.0.11" }));
        other["metadata"]["name"] = json!("api");
        let slices = vec![
            web_slice("a", json!([{ "addresses": ["10.244.0.6"] }])),
            web_slice("b", json!([{ "addresses": ["10.244.0.5"] }])),
        ];
        let forward = map(vec![web(json!({})), other.clone()], slices.clone());
        let backward = map(
            vec![other, web(json!({}))],
            slices.into_iter().rev().collect(),
        );
        assert_eq!(forward, backward);
        assert_eq!(forward.state.services[0].name, "api");
    }

    #[test]
    fn node_ips_and_eligibility_come_from_the_node() {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": NODE },
            "status": { "addresses": [
                { "type": "Hostname", "address": NODE },
                { "type": "ExternalIP", "address": "203.0.113.4" },
                { "type": "InternalIP", "address": "192.0.2.4" },
            ] },
        }))
        .expect("test Node");
        assert_eq!(node_ips(&node), vec![ip("192.0.2.4")]);
        assert!(node_eligible(&node));
        let mut tainted = node.clone();
        tainted.spec = Some(
            serde_json::from_value(json!({ "taints": [
                { "key": TO_BE_DELETED_TAINT, "effect": "NoSchedule" }
            ] }))
            .expect("test NodeSpec"),
        );
        assert!(!node_eligible(&tainted));
        let mut deleting = node;
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2025-01-01T00:00:00Z")).expect("test time"));
        assert!(!node_eligible(&deleting));
    }

    #[test]
    fn node_port_addresses_follow_nodeport_addresses() {
        let net = |s: &str| -> IpNet { s.parse().expect("test CIDR") };
        let local = [
            ip("127.0.0.1"),
            ip("192.0.2.4"),
            ip("10.244.0.1"),
            ip("fd00::4"),
        ];
        let node_ips = [ip("192.0.2.4")];
        let only =
            |ips: &[&str]| model::NodePortAddresses::Only(ips.iter().map(|s| ip(s)).collect());
        let cases = [
            ("default: the node IPs", vec![], only(&["192.0.2.4"])),
            (
                "everything",
                vec![net("0.0.0.0/0")],
                model::NodePortAddresses::AllLocal,
            ),
            (
                "local addresses in the CIDRs, never loopback",
                vec![net("10.0.0.0/8"), net("127.0.0.0/8"), net("fd00::/64")],
                only(&["10.244.0.1", "fd00::4"]),
            ),
            (
                "CIDRs matching nothing",
                vec![net("198.51.100.0/24")],
                only(&[]),
            ),
        ];
        for (what, cidrs, expected) in cases {
            let got = node_model(&node_ips, &cidrs, &local, &[net("10.244.0.0/16")]);
            assert_eq!(got.node_port_addresses, expected, "{what}");
            assert_eq!(got.cluster_cidrs, vec![net("10.244.0.0/16")]);
        }
        assert_eq!(
            node_model(&[], &[], &local, &[]).node_port_addresses,
            model::NodePortAddresses::AllLocal,
            "no node IP known"
        );
    }
}
