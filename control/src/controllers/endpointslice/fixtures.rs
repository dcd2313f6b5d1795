//! Test fixtures: Services, pods and nodes for the desired-state and plan tables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::desired::NodeInfo;

pub const NS: &str = "shop";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// An IPv4 ClusterIP Service labelled `team: blue`, uid `uid-<name>`.
pub fn service(name: &str, selector: &[(&str, &str)], ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(map(&[("team", "blue")])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(map(selector)),
            ports: Some(ports),
            cluster_ip: Some("10.96.0.10".into()),
            ip_families: Some(vec!["IPv4".into()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn tcp(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn named(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        target_port: Some(IntOrString::String(target.into())),
        ..tcp(name, port, 0)
    }
}

/// A running, ready pod on `node-1` with IP `ip` (none, and Pending, if empty).
pub fn pod(name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    let has_ip = !ip.is_empty();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(map(labels)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            containers: vec![Container {
                name: "main".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(if has_ip { "Running" } else { "Pending" }.into()),
            pod_ip: Some(ip.into()).filter(|_| has_ip),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]).filter(|_| has_ip),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if has_ip { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn add_port(mut pod: Pod, name: &str, port: i32, protocol: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                name: Some(name.into()),
                container_port: port,
                protocol: Some(protocol.into()),
                ..ContainerPort::default()
            });
    }
    pod
}

pub fn with_port(pod: Pod, name: &str, port: i32) -> Pod {
    add_port(pod, name, port, "TCP")
}

pub fn with_udp_port(pod: Pod, name: &str, port: i32) -> Pod {
    add_port(pod, name, port, "UDP")
}

pub fn with_phase(mut pod: Pod, phase: &str) -> Pod {
    if let Some(status) = pod.status.as_mut() {
        status.phase = Some(phase.into());
    }
    pod
}

pub fn on_node(mut pod: Pod, node: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.into());
    }
    pod
}

pub fn ready(mut pod: Pod, ready: bool) -> Pod {
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        conditions[0].status = if ready { "True" } else { "False" }.into();
    }
    pod
}

pub fn terminating(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    pod
}

/// Adds a second IP (of the other family) to the pod.
pub fn dual(mut pod: Pod, ip: &str) -> Pod {
    if let Some(ips) = pod.status.as_mut().and_then(|s| s.pod_ips.as_mut()) {
        ips.push(PodIP { ip: ip.into() });
    }
    pod
}

/// The nodes: `node-1` without a zone, `zoned` in `zone-a`; any other is unknown.
pub fn nodes(name: &str) -> Option<NodeInfo> {
    match name {
        "node-1" => Some(NodeInfo::default()),
        "zoned" => Some(NodeInfo {
            zone: Some("zone-a".into()),
        }),
        _ => None,
    }
}
