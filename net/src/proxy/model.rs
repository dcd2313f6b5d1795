//! The proxy model: what the Service proxy must program, in plain types with no Kubernetes API types.
//!
//! Invariants: a [`Service`] that passes [`Service::validate`] can be rendered without producing a
//! ruleset `nft` would refuse (names are nft-safe identifiers, ports are non-zero and unique, IPs are
//! unicast), so one bad Service is skipped with a typed [`ServiceError`] and never breaks the others.
//! The model is dual-stack ready: every address is an [`IpAddr`], and the ruleset keeps the families
//! apart (an IPv4 cluster IP only ever reaches IPv4 endpoints).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API server accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// The transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The lower-case name nft and chain names use (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node; for external traffic the client address is kept (no masquerade).
    Local,
}

/// `sessionAffinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionAffinity {
    #[default]
    None,
    /// `ClientIP`: a client sticks to the endpoint it was given as long as it opens a new connection
    /// within `timeout_seconds` of its previous one (the stock default is 10800).
    ClientIp { timeout_seconds: u32 },
}

/// One endpoint (an address of an EndpointSlice) for one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The target port this endpoint serves the service port on.
    pub port: u16,
    /// `conditions.ready`: serving and not terminating.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Whether the endpoint's `nodeName` is this node (used by the `Local` traffic policies).
    pub local: bool,
}

impl Endpoint {
    /// A ready endpoint, the common case.
    pub fn ready(ip: IpAddr, port: u16, local: bool) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            local,
        }
    }

    /// Upstream's fallback set: still serving but on its way out. Such endpoints take traffic only
    /// when a service has no ready endpoints at all (KEP-1669, ProxyTerminatingEndpoints).
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// One port of a service, with the endpoints that serve it. Kube-proxy programs per service port,
/// and so do we: each gets its own chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's `name`; may be empty when the service has a single port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<Endpoint>,
}

/// A Service, reduced to what the proxy needs. Headless services (no cluster IP) are not given
/// to the proxy; nor are services claimed by another proxy (`service.kubernetes.io/service-proxy-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `clusterIPs`: at most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub session_affinity: SessionAffinity,
    pub external_traffic_policy: TrafficPolicy,
    /// Served by the agent's health-check HTTP server, not by the ruleset.
    pub health_check_node_port: Option<u16>,
    pub internal_traffic_policy: TrafficPolicy,
    pub ports: Vec<ServicePort>,
}

/// Which node addresses accept NodePort traffic (`--nodeport-addresses`, resolved to addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address except loopback (`fib daddr type local`).
    AllLocal,
    /// Only these addresses.
    Only(Vec<IpAddr>),
}

/// Node-level settings the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node_port_addresses: NodePortAddresses,
    /// `--cluster-cidr`: traffic to a ClusterIP from outside these ranges is masqueraded so that
    /// replies come back through this node. Empty means "unknown": no such masquerade (as upstream
    /// without a local-traffic detector).
    pub cluster_cidrs: Vec<IpNet>,
}

/// The whole desired state: the proxy's input, treated as current state, never as change events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyState {
    pub node: Node,
    /// Shared, so that a Service unchanged since the last sync is the same allocation: the
    /// mapper hands it out again and the builder tells it unchanged by pointer, without a copy
    /// or a comparison (at 10k Services those were most of a sync).
    pub services: Vec<Arc<Service>>,
}

impl ProxyState {
    pub fn new(node: Node, services: impl IntoIterator<Item = Service>) -> ProxyState {
        ProxyState {
            node,
            services: services.into_iter().map(Arc::new).collect(),
        }
    }
}

/// The identity of a service port, `namespace/name:port`, as logs and errors show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Why a service is skipped. Each variant names the service (`namespace/name`) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service {service}: {field} {value:?} is not a DNS label")]
    BadName {
        service: String,
        field: &'static str,
        value: String,
    },
    #[error("service {service}: port name {value:?} is not an IANA service name")]
    BadPortName { service: String, value: String },
    #[error("service {service}: has no cluster IP (headless services are not proxied)")]
    NoClusterIp { service: String },
    #[error("service {service}: {field} {ip} is not a usable unicast address")]
    BadIp {
        service: String,
        field: &'static str,
        ip: IpAddr,
    },
    #[error("service {service}: more than one cluster IP of the same family ({ip})")]
    DuplicateFamily { service: String, ip: IpAddr },
    #[error("service {service}: has no ports")]
    NoPorts { service: String },
    #[error("service {service}: port {port:?} has port number 0")]
    ZeroPort { service: String, port: String },
    #[error("service {service}: port {port:?} has node port 0")]
    ZeroNodePort { service: String, port: String },
    #[error("service {service}: port {port:?} duplicates {protocol}/{number}")]
    DuplicatePort {
        service: String,
        port: String,
        protocol: Protocol,
        number: u16,
    },
    #[error("service {service}: port name {port:?} is used twice")]
    DuplicatePortName { service: String, port: String },
    #[error("service {service}: more than one port, so port {port:?} needs a name")]
    UnnamedPort { service: String, port: u16 },
    #[error("service {service}: port {port:?} has endpoint {ip} with port 0")]
    ZeroEndpointPort {
        service: String,
        port: String,
        ip: IpAddr,
    },
    #[error("service {service}: port {port:?} has endpoint {ip}, not a usable unicast address")]
    BadEndpointIp {
        service: String,
        port: String,
        ip: IpAddr,
    },
    #[error("service {service}: session affinity timeout {seconds}s is outside 1..=86400")]
    BadAffinityTimeout { service: String, seconds: u32 },
    #[error("service {service}: healthCheckNodePort needs externalTrafficPolicy Local")]
    HealthCheckWithoutLocal { service: String },
    #[error("service {service}: {ip} {protocol}/{port} is already taken by {owner}")]
    Conflict {
        service: String,
        ip: String,
        protocol: Protocol,
        port: u16,
        owner: String,
    },
}

impl Service {
    /// `namespace/name`, as errors show it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks everything the ruleset relies on. A service that fails is skipped as a whole: a
    /// partial service (some ports programmed, some not) would be harder to reason about.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let service = self.id();
        // Names end up in nft identifiers; a DNS label keeps them to `[a-z0-9-]`, which nft
        // accepts and which cannot inject anything into the rendered text.
        for (field, value, max) in [("namespace", &self.namespace, 63), ("name", &self.name, 63)] {
            if !is_dns_label(value, max) {
                return Err(ServiceError::BadName {
                    service,
                    field,
                    value: value.clone(),
                });
            }
        }
        if self.cluster_ips.is_empty() {
            return Err(ServiceError::NoClusterIp { service });
        }
        let mut families = BTreeSet::new();
        for &ip in &self.cluster_ips {
            check_unicast(ip).map_err(|()| ServiceError::BadIp {
                service: service.clone(),
                field: "cluster IP",
                ip,
            })?;
            if !families.insert(ip.is_ipv4()) {
                return Err(ServiceError::DuplicateFamily { service, ip });
            }
        }
        for (field, ips) in [
            ("external IP", &self.external_ips),
            ("load-balancer IP", &self.load_balancer_ips),
        ] {
            for &ip in ips {
                check_unicast(ip).map_err(|()| ServiceError::BadIp {
                    service: service.clone(),
                    field,
                    ip,
                })?;
            }
        }
        if let SessionAffinity::ClientIp { timeout_seconds } = self.session_affinity
            && !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&timeout_seconds)
        {
            return Err(ServiceError::BadAffinityTimeout {
                service,
                seconds: timeout_seconds,
            });
        }
        if self.health_check_node_port.is_some()
            && self.external_traffic_policy != TrafficPolicy::Local
        {
            return Err(ServiceError::HealthCheckWithoutLocal { service });
        }
        self.validate_ports(&service)
    }

    fn validate_ports(&self, service: &str) -> Result<(), ServiceError> {
        let service = service.to_owned();
        if self.ports.is_empty() {
            return Err(ServiceError::NoPorts { service });
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for p in &self.ports {
            if p.name.is_empty() {
                if self.ports.len() > 1 {
                    return Err(ServiceError::UnnamedPort {
                        service,
                        port: p.port,
                    });
                }
            } else if !is_port_name(&p.name) {
                return Err(ServiceError::BadPortName {
                    service,
                    value: p.name.clone(),
                });
            }
            if !names.insert(p.name.as_str()) {
                return Err(ServiceError::DuplicatePortName {
                    service,
                    port: p.name.clone(),
                });
            }
            if p.port == 0 {
                return Err(ServiceError::ZeroPort {
                    service,
                    port: p.name.clone(),
                });
            }
            if !numbers.insert((p.protocol, p.port)) {
                return Err(ServiceError::DuplicatePort {
                    service,
                    port: p.name.clone(),
                    protocol: p.protocol,
                    number: p.port,
                });
            }
            if let Some(node_port) = p.node_port {
                if node_port == 0 {
                    return Err(ServiceError::ZeroNodePort {
                        service,
                        port: p.name.clone(),
                    });
                }
                if !node_ports.insert((p.protocol, node_port)) {
                    return Err(ServiceError::DuplicatePort {
                        service,
                        port: p.name.clone(),
                        protocol: p.protocol,
                        number: node_port,
                    });
                }
            }
            for ep in &p.endpoints {
                if ep.port == 0 {
                    return Err(ServiceError::ZeroEndpointPort {
                        service,
                        port: p.name.clone(),
                        ip: ep.ip,
                    });
                }
                check_unicast(ep.ip).map_err(|()| ServiceError::BadEndpointIp {
                    service: service.clone(),
                    port: p.name.clone(),
                    ip: ep.ip,
                })?;
            }
        }
        Ok(())
    }
}

/// Rejects addresses that can never be a service or endpoint address.
fn check_unicast(ip: IpAddr) -> Result<(), ()> {
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(_) => false,
        };
    if bad { Err(()) } else { Ok(()) }
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IANA_SVC_NAME as the API server validates port names: at most 15 characters of `[a-z0-9-]`,
/// at least one letter, no leading/trailing or double hyphen.
fn is_port_name(s: &str) -> bool {
    is_dns_label(s, 15) && !s.contains("--") && s.bytes().any(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn service() -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec![ip("10.98.0.10")],
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
                node_port: Some(30080),
                endpoints: vec![Endpoint::ready(ip("10.99.0.2"), 8080, true)],
            }],
        }
    }

    #[test]
    fn a_plain_service_is_valid() {
        assert_eq!(service().validate(), Ok(()));
    }

    #[test]
    fn bad_services_are_rejected_with_the_reason() {
        type Mutation = Box<dyn Fn(&mut Service)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            (
                "odd name",
                Box::new(|s| s.name = "Web;flush ruleset".into()),
                "BadName",
            ),
            (
                "headless",
                Box::new(|s| s.cluster_ips.clear()),
                "NoClusterIp",
            ),
            ("zero port", Box::new(|s| s.ports[0].port = 0), "ZeroPort"),
            (
                "zero node port",
                Box::new(|s| s.ports[0].node_port = Some(0)),
                "ZeroNodePort",
            ),
            (
                "duplicate port",
                Box::new(|s| {
                    let mut p = s.ports[0].clone();
                    p.name = "other".into();
                    s.ports.push(p);
                }),
                "DuplicatePort",
            ),
            (
                "duplicate name",
                Box::new(|s| {
                    let mut p = s.ports[0].clone();
                    p.port = 81;
                    p.node_port = None;
                    s.ports.push(p);
                }),
                "DuplicatePortName",
            ),
            (
                "unnamed among many",
                Box::new(|s| {
                    let mut p = s.ports[0].clone();
                    p.name = String::new();
                    p.port = 81;
                    p.node_port = None;
                    s.ports.push(p);
                }),
                "UnnamedPort",
            ),
            (
                "bad port name",
                Box::new(|s| s.ports[0].name = "http/x".into()),
                "BadPortName",
            ),
            (
                "unspecified IP",
                Box::new(|s| s.cluster_ips = vec![ip("0.0.0.0")]),
                "BadIp",
            ),
            (
                "two IPv4 cluster IPs",
                Box::new(|s| s.cluster_ips.push(ip("10.98.0.11"))),
                "DuplicateFamily",
            ),
            (
                "multicast endpoint",
                Box::new(|s| s.ports[0].endpoints[0].ip = ip("224.0.0.1")),
                "BadEndpointIp",
            ),
            (
                "endpoint port 0",
                Box::new(|s| s.ports[0].endpoints[0].port = 0),
                "ZeroEndpointPort",
            ),
            (
                "affinity timeout",
                Box::new(|s| s.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 0 }),
                "BadAffinityTimeout",
            ),
            (
                "health check with cluster policy",
                Box::new(|s| s.health_check_node_port = Some(31000)),
                "HealthCheckWithoutLocal",
            ),
            ("no ports", Box::new(|s| s.ports.clear()), "NoPorts"),
        ];
        for (what, mutate, variant) in cases {
            let mut s = service();
            mutate(&mut s);
            let err = s.validate().expect_err(what);
            assert!(
                format!("{err:?}").starts_with(variant),
                "{what}: expected {variant}, got {err:?}"
            );
            assert!(err.to_string().contains("default/"), "{what}: {err}");
        }
    }

    #[test]
    fn dual_stack_cluster_ips_are_fine() {
        let mut s = service();
        s.cluster_ips.push(ip("fd00:98::10"));
        assert_eq!(s.validate(), Ok(()));
    }
}
