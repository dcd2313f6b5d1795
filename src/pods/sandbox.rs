//! Sandbox: the CRI `PodSandboxConfig` for a pod — identity, hostname, DNS, host ports,
//! namespaces, sysctls, security context and cgroup parent.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodSecurityContext, PodSpec};
use nodus_cri::api::{
    DnsConfig, Int64Value, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};

use super::metadata::{PodKey, TERMINATION_GRACE_PERIOD};
use super::{cgroups, qos};

/// The node's DNS settings for pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDns {
    /// `--cluster-dns`: the cluster DNS service's IPs; empty when there is none.
    pub cluster_dns: Vec<String>,
    /// `--cluster-domain`, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The host's resolver (from `--resolv-conf`), for `dnsPolicy: Default`.
    pub host: DnsConfig,
}

/// Parses resolv.conf.
pub fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_owned)),
            Some("search") => dns.searches = words.map(str::to_owned).collect(),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

/// The pod's DNS configuration by `dnsPolicy` (see the API reference for DNSPolicy).
pub fn dns_config(pod: &Pod, spec: &PodSpec, node: &NodeDns) -> DnsConfig {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let cluster_first = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = match spec.dns_policy.as_deref() {
        Some("None") => DnsConfig::default(),
        _ if cluster_first && !node.cluster_dns.is_empty() => {
            let domain = &node.cluster_domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            searches.extend(node.host.searches.iter().cloned());
            DnsConfig {
                servers: node.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // ClusterFirst without a cluster DNS falls back to the host's, as the kubelet does.
        _ => node.host.clone(),
    };
    if let Some(extra) = &spec.dns_config {
        dns.servers
            .extend(extra.nameservers.iter().flatten().cloned());
        dns.searches
            .extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.clone() else {
                continue;
            };
            let rendered = match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.clone(),
            };
            dns.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            dns.options.push(rendered);
        }
    }
    dns.servers.dedup();
    dns.searches.dedup();
    dns
}

/// The hostname a pod's containers see.
pub fn hostname(pod: &Pod, spec: &PodSpec, node_hostname: &str) -> String {
    if spec.host_network == Some(true) {
        return node_hostname.to_owned();
    }
    // hostnameOverride (beta upstream) is the whole name: no subdomain, no truncation.
    if let Some(name) = spec.hostname_override.as_ref().filter(|n| !n.is_empty()) {
        return name.clone();
    }
    let name = spec
        .hostname
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    // A hostname is one DNS label: the kubelet truncates long pod names to 63 characters.
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

fn namespace_mode(host: bool, shared: NamespaceMode) -> i32 {
    if host {
        NamespaceMode::Node as i32
    } else {
        shared as i32
    }
}

/// The pod's supplemental groups, with its fsGroup first: volumes the fsGroup owns must be
/// readable by every container's user, as the kubelet arranges.
pub fn supplemental_groups(security: &PodSecurityContext) -> Vec<i64> {
    let mut groups: Vec<i64> = security.fs_group.into_iter().collect();
    for group in security.supplemental_groups.iter().flatten() {
        if !groups.contains(group) {
            groups.push(*group);
        }
    }
    groups
}

/// The namespaces a pod's containers share.
pub fn namespace_options(spec: &PodSpec) -> NamespaceOption {
    let pid_shared = if spec.share_process_namespace == Some(true) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    NamespaceOption {
        network: namespace_mode(spec.host_network == Some(true), NamespaceMode::Pod),
        pid: namespace_mode(spec.host_pid == Some(true), pid_shared),
        ipc: namespace_mode(spec.host_ipc == Some(true), NamespaceMode::Pod),
        ..NamespaceOption::default()
    }
}

fn protocol(name: Option<&str>) -> i32 {
    match name {
        Some("UDP") => Protocol::Udp as i32,
        Some("SCTP") => Protocol::Sctp as i32,
        _ => Protocol::Tcp as i32,
    }
}

/// The whole sandbox configuration.
pub fn config(
    pod: &Pod,
    spec: &PodSpec,
    attempt: u32,
    node_hostname: &str,
    dns: &NodeDns,
    log_dir: &str,
) -> PodSandboxConfig {
    let key = PodKey::of(pod);
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(key.labels());
    let mut annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.insert(
        TERMINATION_GRACE_PERIOD.to_owned(),
        spec.termination_grace_period_seconds
            .unwrap_or(30)
            .to_string(),
    );
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|port| *port > 0)?;
            Some(PortMapping {
                protocol: protocol(p.protocol.as_deref()),
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    let security = spec.security_context.clone().unwrap_or_default();
    let sysctls = security
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: key.name.clone(),
            uid: key.uid.clone(),
            namespace: key.namespace.clone(),
            attempt,
        }),
        // As the kubelet: a host-network pod shares the node's UTS namespace, and runc refuses
        // to set a hostname there ("unable to set hostname without a private UTS namespace").
        hostname: if spec.host_network == Some(true) {
            String::new()
        } else {
            hostname(pod, spec, node_hostname)
        },
        log_directory: log_dir.to_owned(),
        dns_config: Some(dns_config(pod, spec, dns)),
        port_mappings,
        labels,
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroups::pod_cgroup(qos::class(spec), &key.uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(spec)),
                run_as_user: security.run_as_user.map(|value| Int64Value { value }),
                run_as_group: security.run_as_group.map(|value| Int64Value { value }),
                supplemental_groups: supplemental_groups(&security),
                // The runtime refuses a privileged container in an unprivileged sandbox.
                privileged: any_privileged(spec),
                ..LinuxSandboxSecurityContext::default()
            }),
            sysctls,
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// Whether any container of the pod (init, app or ephemeral) asks to be privileged.
fn any_privileged(spec: &PodSpec) -> bool {
    let privileged = |sc: Option<&k8s_openapi::api::core::v1::SecurityContext>| {
        sc.and_then(|sc| sc.privileged) == Some(true)
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| privileged(c.security_context.as_ref()))
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| privileged(c.security_context.as_ref()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, PodDNSConfig, PodDNSConfigOption};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            ..Pod::default()
        }
    }

    fn node_dns() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host: parse_resolv_conf("nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"),
        }
    }

    #[test]
    fn cluster_first_dns_uses_the_cluster_resolver_and_search_path() {
        let spec = PodSpec::default();
        let dns = dns_config(&pod(spec.clone()), &spec, &node_dns());
        assert_eq!(dns.servers, vec!["10.96.0.10"]);
        assert_eq!(
            dns.searches,
            vec![
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn default_none_and_host_network_policies() {
        let host = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        assert_eq!(
            dns_config(&pod(host.clone()), &host, &node_dns()).servers,
            vec!["192.0.2.53"]
        );
        let with_host_net = PodSpec {
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            ..host
        };
        assert_eq!(
            dns_config(&pod(with_host_net.clone()), &with_host_net, &node_dns()).servers,
            vec!["10.96.0.10"]
        );
        let none = PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["1.2.3.4".into()]),
                searches: None,
                options: Some(vec![PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                }]),
            }),
            ..PodSpec::default()
        };
        let dns = dns_config(&pod(none.clone()), &none, &node_dns());
        assert_eq!(
            (dns.servers, dns.options),
            (vec!["1.2.3.4".to_owned()], vec!["ndots:2".to_owned()])
        );
        let no_cluster_dns = NodeDns {
            cluster_dns: vec![],
            ..node_dns()
        };
        let spec = PodSpec::default();
        assert_eq!(
            dns_config(&pod(spec.clone()), &spec, &no_cluster_dns).servers,
            vec!["192.0.2.53"]
        );
    }

    #[test]
    fn sandbox_carries_identity_ports_namespaces_and_cgroup() {
        let spec = PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "web".into(),
                ports: Some(vec![
                    ContainerPort {
                        container_port: 80,
                        host_port: Some(8080),
                        protocol: Some("TCP".into()),
                        ..ContainerPort::default()
                    },
                    ContainerPort {
                        container_port: 9090,
                        ..ContainerPort::default()
                    },
                ]),
                ..Default::default()
            }],
            host_pid: Some(true),
            ..PodSpec::default()
        };
        let config = config(
            &pod(spec.clone()),
            &spec,
            2,
            "node-1",
            &node_dns(),
            "/var/log/pods/shop_web-0_u1",
        );
        let metadata = config.metadata.expect("metadata");
        assert_eq!((metadata.name.as_str(), metadata.attempt), ("web-0", 2));
        assert_eq!(config.hostname, "web-0");
        assert_eq!(config.port_mappings.len(), 1, "only ports with a hostPort");
        assert_eq!(config.port_mappings[0].host_port, 8080);
        let linux = config.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/podu1");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.pid, NamespaceMode::Node as i32);
        assert_eq!(ns.network, NamespaceMode::Pod as i32);
        assert_eq!(
            config
                .labels
                .get("io.kubernetes.pod.uid")
                .map(String::as_str),
            Some("u1")
        );
    }

    #[test]
    fn a_host_network_sandbox_sets_no_hostname() {
        let spec = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        let host = config(&pod(spec.clone()), &spec, 0, "node-1", &node_dns(), "/l");
        assert_eq!(host.hostname, "");
        let spec = PodSpec::default();
        let own = config(&pod(spec.clone()), &spec, 0, "node-1", &node_dns(), "/l");
        assert_eq!(own.hostname, "web-0");
    }

    #[test]
    fn a_privileged_container_makes_a_privileged_sandbox() {
        let container = |privileged: Option<bool>| k8s_openapi::api::core::v1::Container {
            name: "c".into(),
            security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        };
        let privileged_of = |spec: PodSpec| {
            config(&pod(spec.clone()), &spec, 0, "n", &node_dns(), "/l")
                .linux
                .and_then(|l| l.security_context)
                .expect("a security context")
                .privileged
        };
        let plain = PodSpec {
            containers: vec![container(None), container(Some(false))],
            ..PodSpec::default()
        };
        assert!(!privileged_of(plain.clone()));
        let init = PodSpec {
            init_containers: Some(vec![container(Some(true))]),
            ..plain
        };
        assert!(privileged_of(init));
    }

    #[test]
    fn long_names_are_truncated_to_a_dns_label() {
        let mut long = pod(PodSpec::default());
        long.metadata.name = Some(format!("{}-x", "a".repeat(62)));
        assert_eq!(hostname(&long, &PodSpec::default(), "n").len(), 62);
    }
}
