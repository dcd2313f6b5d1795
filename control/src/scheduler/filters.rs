//! Filters: whether a pod may go to a node, as upstream's default filter plugins decide, run
//! in upstream's order (NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodePorts,
//! NodeResourcesFit) and stopping at the first that rejects, so each node contributes one
//! plugin's reasons to the FailedScheduling message. Pure functions of the pod, the node and
//! what the node's pods use; the reason strings are upstream's, word for word.
//!
//! Not yet: PodTopologySpread, inter-pod affinity, volume filters, pod-level resources.

use k8s_openapi::api::core::v1::{Node, PodSpec, Taint, Toleration};

use nodus_api::selection;

use super::resources::{self, Demand, NodeUsage};

/// How final a rejection is: upstream's status codes. Preemption only considers nodes
/// whose rejection is `Unschedulable` (removing pods might help there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    UnschedulableAndUnresolvable,
}

/// Why one node was rejected: the plugin and its upstream reason strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub plugin: &'static str,
    pub code: Code,
    pub reasons: Vec<String>,
}

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const REASON_TAINT: &str = "node(s) had untolerated taint(s)";
pub const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";

const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

fn reject(plugin: &'static str, code: Code, reason: &str) -> Result<(), Rejection> {
    Err(Rejection {
        plugin,
        code,
        reasons: vec![reason.to_owned()],
    })
}

/// Runs every filter in upstream's order; the first rejection wins.
pub fn run(
    pod: &PodSpec,
    demand: &Demand,
    node: &Node,
    usage: &NodeUsage,
) -> Result<(), Rejection> {
    node_unschedulable(pod, node)?;
    node_name(pod, node)?;
    taint_toleration(pod, node)?;
    node_affinity(pod, node)?;
    node_ports(demand, usage)?;
    node_resources_fit(demand, node, usage)
}

/// NodeUnschedulable: a cordoned node takes only pods that tolerate the unschedulable taint.
pub fn node_unschedulable(pod: &PodSpec, node: &Node) -> Result<(), Rejection> {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    if cordoned
        && !tolerations(pod)
            .iter()
            .any(|t| selection::tolerates(t, &taint))
    {
        return reject(
            "NodeUnschedulable",
            Code::UnschedulableAndUnresolvable,
            REASON_UNSCHEDULABLE,
        );
    }
    Ok(())
}

/// NodeName: a pod that names a node fits only that node.
pub fn node_name(pod: &PodSpec, node: &Node) -> Result<(), Rejection> {
    match pod.node_name.as_deref().filter(|n| !n.is_empty()) {
        Some(wanted) if Some(wanted) != node.metadata.name.as_deref() => reject(
            "NodeName",
            Code::UnschedulableAndUnresolvable,
            REASON_NODE_NAME,
        ),
        _ => Ok(()),
    }
}

/// TaintToleration: every NoSchedule and NoExecute taint (including those the node's
/// conditions imply, see `effective_taints`) must be tolerated. Upstream no longer names the
/// taint in the message.
pub fn taint_toleration(pod: &PodSpec, node: &Node) -> Result<(), Rejection> {
    let tolerations = tolerations(pod);
    let untolerated = effective_taints(node).iter().any(|taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerations.iter().any(|t| selection::tolerates(t, taint))
    });
    if untolerated {
        return reject(
            "TaintToleration",
            Code::UnschedulableAndUnresolvable,
            REASON_TAINT,
        );
    }
    Ok(())
}

/// The node's taints plus those upstream's node lifecycle controller derives from its
/// conditions (TaintNodesByCondition): Ready=False gives `not-ready`, Ready=Unknown gives
/// `unreachable`, and the pressure conditions their own taints, all NoSchedule. nodus-control
/// has no node lifecycle controller yet, so the scheduler derives them itself; once the
/// controller writes them, the duplicates are skipped here. A node that has never reported
/// Ready counts as not ready, as the kubelet registers it with the not-ready taint.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.as_slice())
        .unwrap_or_default();
    let status_of = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.as_str())
    };
    let mut derived = Vec::new();
    match status_of("Ready") {
        Some("True") => {}
        Some("Unknown") => derived.push("node.kubernetes.io/unreachable"),
        _ => derived.push("node.kubernetes.io/not-ready"),
    }
    for (kind, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if status_of(kind) == Some("True") {
            derived.push(key);
        }
    }
    for key in derived {
        if !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        }
    }
    taints
}

fn tolerations(pod: &PodSpec) -> &[Toleration] {
    pod.tolerations.as_deref().unwrap_or_default()
}

/// NodeAffinity: `spec.nodeSelector` must match, and so must one of the required node
/// affinity terms if there are any.
pub fn node_affinity(pod: &PodSpec, node: &Node) -> Result<(), Rejection> {
    if selection::node_matches(pod, node) {
        Ok(())
    } else {
        reject(
            "NodeAffinity",
            Code::UnschedulableAndUnresolvable,
            REASON_AFFINITY,
        )
    }
}

/// NodePorts: a wanted host port conflicts with one in use on the same protocol and port
/// when either side binds all addresses or both bind the same one.
pub fn node_ports(demand: &Demand, usage: &NodeUsage) -> Result<(), Rejection> {
    let conflict = demand.host_ports.iter().any(|want| {
        usage.host_ports.iter().any(|used| {
            used.protocol == want.protocol
                && used.port == want.port
                && (used.ip == want.ip || used.ip == "0.0.0.0" || want.ip == "0.0.0.0")
        })
    });
    if conflict {
        return reject("NodePorts", Code::Unschedulable, REASON_PORTS);
    }
    Ok(())
}

/// Resources the fit filter compares besides cpu, memory and ephemeral-storage: upstream's
/// scalar resources (extended and prefixed resources, huge pages, attachable volumes).
fn is_scalar(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

/// NodeResourcesFit: the pod count, then every requested resource against what is left of
/// the node's allocatable. All shortfalls are reported; the rejection is final (preemption
/// cannot help) when a request exceeds the whole allocatable.
pub fn node_resources_fit(
    demand: &Demand,
    node: &Node,
    usage: &NodeUsage,
) -> Result<(), Rejection> {
    let allocatable = resources::allocatable(node);
    let mut reasons = Vec::new();
    let mut unresolvable = false;
    let allowed_pods = allocatable.get("pods").copied().unwrap_or(0) / 1000;
    if i128::try_from(usage.pods).unwrap_or(i128::MAX) + 1 > allowed_pods {
        reasons.push("Too many pods".to_owned());
    }
    let mut scalars: Vec<&String> = demand.requests.keys().filter(|n| is_scalar(n)).collect();
    scalars.sort();
    let names = ["cpu", "memory", "ephemeral-storage"]
        .into_iter()
        .chain(scalars.into_iter().map(String::as_str));
    for name in names {
        let wanted = demand.get(name);
        if wanted <= 0 {
            continue;
        }
        let capacity = allocatable.get(name).copied().unwrap_or(0);
        if wanted > capacity - usage.get(name) {
            reasons.push(format!("Insufficient {name}"));
            unresolvable |= wanted > capacity;
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Rejection {
        plugin: "NodeResourcesFit",
        code: if unresolvable {
            Code::UnschedulableAndUnresolvable
        } else {
            Code::Unschedulable
        },
        reasons,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        Affinity, ContainerPort, NodeAffinity, NodeCondition, NodeSelector,
        NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::super::resources::tests::container;
    use super::*;

    pub(crate) fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    ("disk".into(), "ssd".into()),
                    ("gen".into(), "5".into()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), Quantity(cpu.into())),
                    ("memory".into(), Quantity(memory.into())),
                    ("pods".into(), Quantity(pods.into())),
                ])),
                conditions: Some(vec![condition("Ready", "True")]),
                ..NodeStatus::default()
            }),
        }
    }

    fn condition(kind: &str, status: &str) -> NodeCondition {
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            ..NodeCondition::default()
        }
    }

    pub(crate) fn pod(cpu: &str, memory: &str) -> PodSpec {
        PodSpec {
            containers: vec![container("c", &[("cpu", cpu), ("memory", memory)])],
            ..PodSpec::default()
        }
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Toleration {
            key: some(key),
            operator: some(operator),
            value: some(value),
            effect: some(effect),
            toleration_seconds: None,
        }
    }

    fn reasons(result: Result<(), Rejection>) -> Vec<String> {
        result.err().map(|r| r.reasons).unwrap_or_default()
    }

    #[test]
    fn node_unschedulable() {
        let mut cordoned = node("n", "1", "1Gi", "10");
        cordoned.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..NodeSpec::default()
        });
        let cases = [
            (
                "schedulable node",
                node("n", "1", "1Gi", "10"),
                vec![],
                true,
            ),
            ("cordoned", cordoned.clone(), vec![], false),
            (
                "tolerates the unschedulable taint",
                cordoned.clone(),
                vec![toleration(TAINT_UNSCHEDULABLE, "Exists", "", "NoSchedule")],
                true,
            ),
            (
                "NoExecute toleration does not count",
                cordoned,
                vec![toleration(TAINT_UNSCHEDULABLE, "Exists", "", "NoExecute")],
                false,
            ),
        ];
        for (name, node, tolerations, fits) in cases {
            let spec = PodSpec {
                tolerations: Some(tolerations),
                ..pod("0", "0")
            };
            let result = super::node_unschedulable(&spec, &node);
            assert_eq!(result.is_ok(), fits, "{name}");
            if !fits {
                assert_eq!(reasons(result), vec![REASON_UNSCHEDULABLE], "{name}");
            }
        }
    }

    #[test]
    fn node_name() {
        for (wanted, fits) in [(None, true), (Some("n"), true), (Some("other"), false)] {
            let spec = PodSpec {
                node_name: wanted.map(str::to_owned),
                ..pod("0", "0")
            };
            let result = super::node_name(&spec, &node("n", "1", "1Gi", "10"));
            assert_eq!(result.is_ok(), fits, "{wanted:?}");
        }
    }

    #[test]
    fn taint_toleration() {
        let with_taints = |taints: Vec<Taint>| {
            let mut n = node("n", "1", "1Gi", "10");
            n.spec = Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            });
            n
        };
        let not_ready = {
            let mut n = node("n", "1", "1Gi", "10");
            n.status.as_mut().expect("status").conditions = Some(vec![condition("Ready", "False")]);
            n
        };
        let unknown = {
            let mut n = node("n", "1", "1Gi", "10");
            n.status.as_mut().expect("status").conditions =
                Some(vec![condition("Ready", "Unknown")]);
            n
        };
        let never_reported = {
            let mut n = node("n", "1", "1Gi", "10");
            n.status.as_mut().expect("status").conditions = None;
            n
        };
        let pressure = {
            let mut n = node("n", "1", "1Gi", "10");
            n.status.as_mut().expect("status").conditions = Some(vec![
                condition("Ready", "True"),
                condition("DiskPressure", "True"),
            ]);
            n
        };
        let cases = [
            ("no taints", node("n", "1", "1Gi", "10"), vec![], true),
            (
                "NoSchedule untolerated",
                with_taints(vec![taint("k", "v", "NoSchedule")]),
                vec![],
                false,
            ),
            (
                "NoExecute untolerated",
                with_taints(vec![taint("k", "v", "NoExecute")]),
                vec![],
                false,
            ),
            (
                "PreferNoSchedule only affects scores",
                with_taints(vec![taint("k", "v", "PreferNoSchedule")]),
                vec![],
                true,
            ),
            (
                "Equal toleration with the value",
                with_taints(vec![taint("k", "v", "NoSchedule")]),
                vec![toleration("k", "Equal", "v", "NoSchedule")],
                true,
            ),
            (
                "Equal toleration with another value",
                with_taints(vec![taint("k", "v", "NoSchedule")]),
                vec![toleration("k", "Equal", "w", "")],
                false,
            ),
            (
                "Exists with empty key tolerates everything",
                with_taints(vec![
                    taint("k", "v", "NoSchedule"),
                    taint("j", "", "NoExecute"),
                ]),
                vec![toleration("", "Exists", "", "")],
                true,
            ),
            (
                "toleration for the wrong effect",
                with_taints(vec![taint("k", "v", "NoExecute")]),
                vec![toleration("k", "Exists", "", "NoSchedule")],
                false,
            ),
            (
                "Ready=False implies not-ready",
                not_ready.clone(),
                vec![],
                false,
            ),
            (
                "not-ready tolerated",
                not_ready.clone(),
                vec![toleration(
                    "node.kubernetes.io/not-ready",
                    "Exists",
                    "",
                    "NoSchedule",
                )],
                true,
            ),
            (
                "the default NoExecute toleration does not cover NoSchedule",
                not_ready,
                vec![toleration(
                    "node.kubernetes.io/not-ready",
                    "Exists",
                    "",
                    "NoExecute",
                )],
                false,
            ),
            (
                "Ready=Unknown implies unreachable",
                unknown.clone(),
                vec![],
                false,
            ),
            (
                "unreachable tolerated",
                unknown,
                vec![toleration(
                    "node.kubernetes.io/unreachable",
                    "Exists",
                    "",
                    "",
                )],
                true,
            ),
            ("never reported Ready", never_reported, vec![], false),
            ("disk pressure", pressure.clone(), vec![], false),
            (
                "disk pressure tolerated",
                pressure,
                vec![toleration(
                    "node.kubernetes.io/disk-pressure",
                    "Exists",
                    "",
                    "NoSchedule",
                )],
                true,
            ),
        ];
        for (name, node, tolerations, fits) in cases {
            let spec = PodSpec {
                tolerations: Some(tolerations),
                ..pod("0", "0")
            };
            let result = super::taint_toleration(&spec, &node);
            assert_eq!(result.is_ok(), fits, "{name}");
            if !fits {
                assert_eq!(reasons(result), vec![REASON_TAINT], "{name}");
            }
        }
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn required(terms: Vec<NodeSelectorTerm>) -> Option<Affinity> {
        Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        })
    }

    fn expressions(list: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(list),
            match_fields: None,
        }
    }

    #[test]
    fn node_affinity() {
        let n = node("n", "1", "1Gi", "10");
        let selector = |k: &str, v: &str| Some(BTreeMap::from([(k.to_owned(), v.to_owned())]));
        // (name, nodeSelector, affinity, fits)
        type Case = (
            &'static str,
            Option<BTreeMap<String, String>>,
            Option<Affinity>,
            bool,
        );
        let cases: Vec<Case> = vec![
            ("nothing asked", None, None, true),
            ("selector matches", selector("disk", "ssd"), None, true),
            ("selector differs", selector("disk", "hdd"), None, false),
            ("selector label missing", selector("zone", "a"), None, false),
            (
                "In",
                None,
                required(vec![expressions(vec![requirement(
                    "disk",
                    "In",
                    &["hdd", "ssd"],
                )])]),
                true,
            ),
            (
                "In misses",
                None,
                required(vec![expressions(vec![requirement("disk", "In", &["hdd"])])]),
                false,
            ),
            (
                "NotIn",
                None,
                required(vec![expressions(vec![requirement(
                    "disk",
                    "NotIn",
                    &["hdd"],
                )])]),
                true,
            ),
            (
                "NotIn hits",
                None,
                required(vec![expressions(vec![requirement(
                    "disk",
                    "NotIn",
                    &["ssd"],
                )])]),
                false,
            ),
            (
                "NotIn on a missing label",
                None,
                required(vec![expressions(vec![requirement(
                    "zone",
                    "NotIn",
                    &["a"],
                )])]),
                true,
            ),
            (
                "Exists",
                None,
                required(vec![expressions(vec![requirement("gen", "Exists", &[])])]),
                true,
            ),
            (
                "Exists misses",
                None,
                required(vec![expressions(vec![requirement("zone", "Exists", &[])])]),
                false,
            ),
            (
                "DoesNotExist",
                None,
                required(vec![expressions(vec![requirement(
                    "zone",
                    "DoesNotExist",
                    &[],
                )])]),
                true,
            ),
            (
                "DoesNotExist misses",
                None,
                required(vec![expressions(vec![requirement(
                    "gen",
                    "DoesNotExist",
                    &[],
                )])]),
                false,
            ),
            (
                "Gt",
                None,
                required(vec![expressions(vec![requirement("gen", "Gt", &["4"])])]),
                true,
            ),
            (
                "Gt equal",
                None,
                required(vec![expressions(vec![requirement("gen", "Gt", &["5"])])]),
                false,
            ),
            (
                "Lt",
                None,
                required(vec![expressions(vec![requirement("gen", "Lt", &["6"])])]),
                true,
            ),
            (
                "Lt not a number",
                None,
                required(vec![expressions(vec![requirement("disk", "Lt", &["6"])])]),
                false,
            ),
            (
                "Gt with two values is invalid",
                None,
                required(vec![expressions(vec![requirement(
                    "gen",
                    "Gt",
                    &["1", "2"],
                )])]),
                false,
            ),
            (
                "expressions in a term are ANDed",
                None,
                required(vec![expressions(vec![
                    requirement("disk", "In", &["ssd"]),
                    requirement("gen", "Lt", &["5"]),
                ])]),
                false,
            ),
            (
                "terms are ORed",
                None,
                required(vec![
                    expressions(vec![requirement("disk", "In", &["hdd"])]),
                    expressions(vec![requirement("gen", "In", &["5"])]),
                ]),
                true,
            ),
            (
                "an empty term matches nothing",
                None,
                required(vec![expressions(vec![])]),
                false,
            ),
            (
                "matchFields metadata.name",
                None,
                required(vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![requirement("metadata.name", "In", &["n"])]),
                }]),
                true,
            ),
            (
                "matchFields other name",
                None,
                required(vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![requirement("metadata.name", "In", &["m"])]),
                }]),
                false,
            ),
            (
                "selector and affinity must both match",
                selector("disk", "hdd"),
                required(vec![expressions(vec![requirement("gen", "Exists", &[])])]),
                false,
            ),
        ];
        for (name, node_selector, affinity, fits) in cases {
            let spec = PodSpec {
                node_selector,
                affinity,
                ..pod("0", "0")
            };
            let result = super::node_affinity(&spec, &n);
            assert_eq!(result.is_ok(), fits, "{name}");
            if !fits {
                assert_eq!(reasons(result), vec![REASON_AFFINITY], "{name}");
            }
        }
    }

    fn with_port(protocol: &str, ip: &str, port: i32) -> PodSpec {
        let mut spec = pod("0", "0");
        spec.containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: (!ip.is_empty()).then(|| ip.to_owned()),
            protocol: Some(protocol.into()),
            ..ContainerPort::default()
        }]);
        spec
    }

    #[test]
    fn node_ports() {
        let mut usage = NodeUsage::default();
        usage.add(&Demand::of(&with_port("TCP", "", 8080)));
        usage.add(&Demand::of(&with_port("TCP", "10.0.0.1", 9090)));
        let cases = [
            (
                "same port on all addresses",
                with_port("TCP", "", 8080),
                false,
            ),
            (
                "same port on one address",
                with_port("TCP", "10.0.0.2", 8080),
                false,
            ),
            ("other protocol", with_port("UDP", "", 8080), true),
            ("other port", with_port("TCP", "", 8081), true),
            (
                "specific address taken",
                with_port("TCP", "10.0.0.1", 9090),
                false,
            ),
            (
                "another specific address",
                with_port("TCP", "10.0.0.2", 9090),
                true,
            ),
            (
                "all addresses vs a specific one",
                with_port("TCP", "0.0.0.0", 9090),
                false,
            ),
            ("no host port", pod("0", "0"), true),
        ];
        for (name, spec, fits) in cases {
            let result = super::node_ports(&Demand::of(&spec), &usage);
            assert_eq!(result.is_ok(), fits, "{name}");
            if !fits {
                assert_eq!(reasons(result), vec![REASON_PORTS], "{name}");
            }
        }
    }

    #[test]
    fn node_resources_fit() {
        let mut n = node("n", "2", "1Gi", "3");
        n.status
            .as_mut()
            .and_then(|s| s.allocatable.as_mut())
            .expect("allocatable")
            .insert("example.com/gpu".into(), Quantity("1".into()));
        let used = |specs: &[PodSpec]| {
            let mut usage = NodeUsage::default();
            for spec in specs {
                usage.add(&Demand::of(spec));
            }
            usage
        };
        let gpu = PodSpec {
            containers: vec![container("c", &[("example.com/gpu", "1")])],
            ..PodSpec::default()
        };
        let cases: Vec<(&str, PodSpec, NodeUsage, Vec<&str>, Code)> = vec![
            (
                "fits",
                pod("1", "512Mi"),
                used(&[]),
                vec![],
                Code::Unschedulable,
            ),
            (
                "cpu left over is not enough",
                pod("1", "0"),
                used(&[pod("1500m", "0")]),
                vec!["Insufficient cpu"],
                Code::Unschedulable,
            ),
            (
                "more than the node has",
                pod("3", "0"),
                used(&[]),
                vec!["Insufficient cpu"],
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "every shortfall is listed",
                pod("1500m", "768Mi"),
                used(&[pod("1", "512Mi")]),
                vec!["Insufficient cpu", "Insufficient memory"],
                Code::Unschedulable,
            ),
            (
                "pod count",
                pod("0", "0"),
                used(&[pod("0", "0"), pod("0", "0"), pod("0", "0")]),
                vec!["Too many pods"],
                Code::Unschedulable,
            ),
            (
                "extended resource fits",
                gpu.clone(),
                used(&[]),
                vec![],
                Code::Unschedulable,
            ),
            (
                "extended resource taken",
                gpu.clone(),
                used(std::slice::from_ref(&gpu)),
                vec!["Insufficient example.com/gpu"],
                Code::Unschedulable,
            ),
            (
                "ephemeral-storage the node does not report",
                PodSpec {
                    containers: vec![container("c", &[("ephemeral-storage", "1Gi")])],
                    ..PodSpec::default()
                },
                used(&[]),
                vec!["Insufficient ephemeral-storage"],
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "init container peak counts",
                PodSpec {
                    init_containers: Some(vec![container("i", &[("cpu", "2500m")])]),
                    ..pod("100m", "0")
                },
                used(&[]),
                vec!["Insufficient cpu"],
                Code::UnschedulableAndUnresolvable,
            ),
        ];
        for (name, spec, usage, want, code) in cases {
            let result = super::node_resources_fit(&Demand::of(&spec), &n, &usage);
            match result {
                Ok(()) => assert!(want.is_empty(), "{name}: fitted"),
                Err(rejection) => {
                    assert_eq!(rejection.reasons, want, "{name}");
                    assert_eq!(rejection.code, code, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_first_failing_filter_gives_the_reason() {
        let mut n = node("n", "1", "1Gi", "10");
        n.spec = Some(NodeSpec {
            taints: Some(vec![taint("k", "v", "NoSchedule")]),
            ..NodeSpec::default()
        });
        // Both the taint and the resources reject; upstream reports only the taint.
        let spec = pod("4", "0");
        let rejection =
            run(&spec, &Demand::of(&spec), &n, &NodeUsage::default()).expect_err("rejected");
        assert_eq!(rejection.plugin, "TaintToleration");
        assert_eq!(rejection.reasons, vec![REASON_TAINT]);
    }
}
