//! Admission: whether a pod bound to this node may run here, checked once when the agent
//! first sees it, against the node and the pods already admitted — the kubelet's
//! `GeneralPredicates` (resources, host ports, node selector and affinity) and its
//! NoExecute taint check. A pod that does not fit fails at once with the kubelet's reason
//! instead of waiting forever.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PodSpec};

use nodus_api::selection;

use crate::quantity;

/// Why a pod was refused: the pod's `status.reason` and `status.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// What admitted pods use of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests in milli-units by resource name (`cpu`, `memory`, ...).
    pub requests: BTreeMap<String, i128>,
    pub pods: i128,
    /// (protocol, host IP, port) of every host port in use.
    pub host_ports: Vec<(String, String, i32)>,
}

/// A pod's effective requests: the larger of the sum of its app containers' and the
/// largest init container's (sidecars count with the apps), plus its overhead.
pub fn requests(spec: &PodSpec) -> BTreeMap<String, i128> {
    super::qos::pod_totals(spec, super::qos::Side::Requests)
}

/// The host ports a pod asks for.
pub fn host_ports(spec: &PodSpec) -> Vec<(String, String, i32)> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|port| *port > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port))
        })
        .collect()
}

impl Usage {
    pub fn add(&mut self, spec: &PodSpec) {
        self.add_holding(spec, None);
    }

    /// Adds a pod whose granted cpu and memory (`held`, after an in-place resize) may
    /// differ from what its spec asks.
    pub fn add_holding(&mut self, spec: &PodSpec, held: Option<&BTreeMap<String, i128>>) {
        let mut counted = requests(spec);
        if let Some(held) = held {
            counted.retain(|name, _| name != "cpu" && name != "memory");
            counted.extend(held.iter().map(|(name, value)| (name.clone(), *value)));
        }
        for (name, value) in counted {
            *self.requests.entry(name).or_default() += value;
        }
        self.pods += 1;
        self.host_ports.extend(host_ports(spec));
    }
}

fn rejected(reason: &str, message: String) -> Rejection {
    Rejection {
        reason: reason.to_owned(),
        message,
    }
}

/// The first resource of `requests` that does not fit beside `used` in `allocatable` (all
/// in milli-units), with the kubelet's message for it.
pub fn insufficient(
    requests: &BTreeMap<String, i128>,
    used: &BTreeMap<String, i128>,
    allocatable: &BTreeMap<String, i128>,
) -> Option<(String, String)> {
    requests.iter().find_map(|(name, &requested)| {
        let used_now = used.get(name).copied().unwrap_or(0);
        let capacity = allocatable.get(name).copied().unwrap_or(0);
        if requested == 0 || used_now + requested <= capacity {
            return None;
        }
        // cpu is reported in milli-cores, everything else in whole units.
        let shown = |v: i128| if name == "cpu" { v } else { v / 1000 };
        Some((
            name.clone(),
            format!(
                "Node didn't have enough resource: {name}, requested: {}, used: {}, capacity: {}",
                shown(requested),
                shown(used_now),
                shown(capacity)
            ),
        ))
    })
}

/// Checks a pod against the node and what admitted pods use.
pub fn admit(spec: &PodSpec, node: &Node, used: &Usage) -> Result<(), Rejection> {
    // Checks no preemption could help come first, as upstream orders them.
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        return Err(rejected(
            "PodOSNotSupported",
            "Pod was rejected: Failed to admit pod as the OS field doesn't match node OS".into(),
        ));
    }
    if !selection::node_matches(spec, node) {
        return Err(rejected(
            "NodeAffinity",
            "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
        ));
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    if let Some(taint) = taints.iter().find(|t| {
        t.effect == "NoExecute" && !tolerations.iter().any(|tol| selection::tolerates(tol, t))
    }) {
        return Err(rejected(
            "Taint",
            format!(
                "Pod was rejected: Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.clone().unwrap_or_default()
            ),
        ));
    }
    let allocatable: BTreeMap<String, i128> = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, q)| quantity::parse(&q.0).map(|m| (name, m.0)))
        .collect();
    if let Some(&pods) = allocatable.get("pods")
        && used.pods * 1000 + 1000 > pods
    {
        return Err(rejected(
            "OutOfpods",
            format!(
                "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                used.pods,
                pods / 1000
            ),
        ));
    }
    if let Some((name, message)) = insufficient(&requests(spec), &used.requests, &allocatable) {
        return Err(rejected(
            &format!("OutOf{name}"),
            format!("Pod was rejected: {message}"),
        ));
    }
    let wanted = host_ports(spec);
    let conflict = wanted.iter().any(|(proto, ip, port)| {
        used.host_ports.iter().any(|(p, i, q)| {
            p == proto && q == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        })
    });
    if conflict {
        return Err(rejected(
            "NodePorts",
            "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, Container, ContainerPort, NodeAffinity, NodeSelector, NodeSelectorRequirement,
        NodeSelectorTerm, NodeSpec, NodeStatus, ResourceRequirements, Taint, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::*;

    fn node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(BTreeMap::from([
                    ("disk".into(), "ssd".into()),
                    ("gen".into(), "5".into()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("2".into())),
                    ("memory".into(), Quantity("1Gi".into())),
                    ("pods".into(), Quantity("3".into())),
                ])),
                ..NodeStatus::default()
            }),
        }
    }

    fn pod(cpu: &str, memory: &str) -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".into(), Quantity(cpu.into())),
                        ("memory".into(), Quantity(memory.into())),
                    ])),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }
    }

    #[test]
    fn resources_are_checked_against_allocatable_and_usage() {
        let node = node();
        assert_eq!(admit(&pod("1", "512Mi"), &node, &Usage::default()), Ok(()));
        let err = admit(&pod("3", "1Mi"), &node, &Usage::default()).expect_err("too much cpu");
        assert_eq!(err.reason, "OutOfcpu");
        assert_eq!(
            err.message,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 3000, used: 0, capacity: 2000"
        );
        let mut used = Usage::default();
        used.add(&pod("500m", "768Mi"));
        let err = admit(&pod("100m", "512Mi"), &node, &used).expect_err("too much memory");
        assert_eq!(err.reason, "OutOfmemory");
        used.add(&pod("0", "0"));
        used.add(&pod("0", "0"));
        assert_eq!(
            admit(&pod("0", "0"), &node, &used)
                .expect_err("full")
                .reason,
            "OutOfpods"
        );
    }

    #[test]
    fn a_pod_for_another_os_is_rejected() {
        let mut windows = pod("0", "0");
        windows.os = Some(k8s_openapi::api::core::v1::PodOS {
            name: "windows".into(),
        });
        let err = admit(&windows, &node(), &Usage::default()).expect_err("windows");
        assert_eq!(err.reason, "PodOSNotSupported");
        let mut linux = pod("0", "0");
        linux.os = Some(k8s_openapi::api::core::v1::PodOS {
            name: "linux".into(),
        });
        assert_eq!(admit(&linux, &node(), &Usage::default()), Ok(()));
    }

    #[test]
    fn init_containers_count_by_their_largest() {
        let mut spec = pod("500m", "0");
        let mut big = spec.containers[0].clone();
        big.name = "init".into();
        big.resources
            .as_mut()
            .expect("resources")
            .requests
            .as_mut()
            .expect("requests")
            .insert("cpu".into(), Quantity("1500m".into()));
        spec.init_containers = Some(vec![big]);
        assert_eq!(requests(&spec).get("cpu"), Some(&1500));
    }

    #[test]
    fn node_selector_affinity_and_taints() {
        let node = node();
        let mut spec = pod("0", "0");
        spec.node_selector = Some(BTreeMap::from([("disk".into(), "hdd".into())]));
        assert_eq!(
            admit(&spec, &node, &Usage::default())
                .expect_err("selector")
                .reason,
            "NodeAffinity"
        );
        spec.node_selector = None;
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "gen".into(),
                            operator: "Gt".into(),
                            values: Some(vec!["4".into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
        assert_eq!(admit(&spec, &node, &Usage::default()), Ok(()));

        let mut tainted = node.clone();
        tainted.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "maintenance".into(),
                value: Some("yes".into()),
                effect: "NoExecute".into(),
                time_added: None,
            }]),
            ..NodeSpec::default()
        });
        assert_eq!(
            admit(&spec, &tainted, &Usage::default())
                .expect_err("taint")
                .reason,
            "Taint"
        );
        spec.tolerations = Some(vec![Toleration {
            key: Some("maintenance".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]);
        assert_eq!(admit(&spec, &tainted, &Usage::default()), Ok(()));
    }

    #[test]
    fn host_port_conflicts() {
        let with_port = |port| {
            let mut spec = pod("0", "0");
            spec.containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                ..ContainerPort::default()
            }]);
            spec
        };
        let mut used = Usage::default();
        used.add(&with_port(8080));
        assert_eq!(
            admit(&with_port(8080), &node(), &used)
                .expect_err("conflict")
                .reason,
            "NodePorts"
        );
        assert_eq!(admit(&with_port(8081), &node(), &used), Ok(()));
    }
}
