//! Resources: what a pod asks of a node (requests, host ports) and what the pods bound to a
//! node use, computed as upstream's scheduler computes them. All amounts are milli-units
//! (see `crate::quantity`), so cpu, memory and extended resources share one arithmetic.
//! Invariant: `NodeUsage::remove` undoes exactly one earlier `NodeUsage::add` of the same
//! demand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, PodSpec};

use crate::quantity;

/// Amounts in milli-units by resource name (`cpu`, `memory`, `example.com/gpu`, ...).
pub type Amounts = BTreeMap<String, i128>;

/// Upstream's `DefaultMilliCPURequest`: what scoring assumes for a container without a cpu
/// request, so that best-effort pods still spread (100m).
pub const DEFAULT_CPU: i128 = 100;
/// Upstream's `DefaultMemoryRequest` (200Mi), in milli-bytes.
pub const DEFAULT_MEMORY: i128 = 200 * 1024 * 1024 * 1000;

/// One host port a pod binds: protocol, host IP (`0.0.0.0` when unset) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

/// What one pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Effective requests (upstream's `PodRequests`): max(apps + sidecars, largest init
    /// container beside the sidecars started before it) + overhead.
    pub requests: Amounts,
    /// cpu and memory with the defaults above for containers that request none; used only
    /// for scoring, as upstream's `NonZeroRequested`.
    pub non_zero_cpu: i128,
    pub non_zero_memory: i128,
    pub host_ports: Vec<HostPort>,
}

impl Demand {
    pub fn of(spec: &PodSpec) -> Self {
        let requests = pod_total(spec, |c| container_requests(c, false));
        let non_zero = pod_total(spec, |c| container_requests(c, true));
        Self {
            requests,
            non_zero_cpu: non_zero.get("cpu").copied().unwrap_or(0),
            non_zero_memory: non_zero.get("memory").copied().unwrap_or(0),
            host_ports: host_ports(spec),
        }
    }

    pub fn get(&self, resource: &str) -> i128 {
        self.requests.get(resource).copied().unwrap_or(0)
    }
}

/// What the pods bound (or assumed) to one node use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub requested: Amounts,
    pub non_zero_cpu: i128,
    pub non_zero_memory: i128,
    pub pods: usize,
    pub host_ports: Vec<HostPort>,
}

impl NodeUsage {
    pub fn add(&mut self, demand: &Demand) {
        for (name, value) in &demand.requests {
            *self.requested.entry(name.clone()).or_default() += value;
        }
        self.non_zero_cpu += demand.non_zero_cpu;
        self.non_zero_memory += demand.non_zero_memory;
        self.pods += 1;
        self.host_ports.extend(demand.host_ports.iter().cloned());
    }

    pub fn remove(&mut self, demand: &Demand) {
        for (name, value) in &demand.requests {
            if let Some(slot) = self.requested.get_mut(name) {
                *slot -= value;
                if *slot == 0 {
                    self.requested.remove(name);
                }
            }
        }
        self.non_zero_cpu -= demand.non_zero_cpu;
        self.non_zero_memory -= demand.non_zero_memory;
        self.pods = self.pods.saturating_sub(1);
        for port in &demand.host_ports {
            if let Some(at) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(at);
            }
        }
    }

    pub fn get(&self, resource: &str) -> i128 {
        self.requested.get(resource).copied().unwrap_or(0)
    }
}

/// A node's allocatable resources; quantities that do not parse count as absent.
pub fn allocatable(node: &Node) -> Amounts {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(name, q)| {
            quantity::parse(&q.0)
                .map(|m| m.0)
                .map(|m| (name.clone(), m))
        })
        .collect()
}

fn container_requests(container: &Container, non_zero: bool) -> Amounts {
    let resources = container.resources.as_ref();
    let mut requests: Amounts = resources
        .and_then(|r| r.requests.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(name, q)| {
            quantity::parse(&q.0)
                .map(|m| m.0)
                .map(|m| (name.clone(), m))
        })
        .collect();
    // The API server defaults requests to limits; a pod admitted without that defaulting
    // (or read from a fixture) is treated the same way.
    for (name, q) in resources
        .and_then(|r| r.limits.as_ref())
        .into_iter()
        .flatten()
    {
        if !requests.contains_key(name)
            && let Some(m) = quantity::parse(&q.0).map(|m| m.0)
        {
            requests.insert(name.clone(), m);
        }
    }
    if non_zero {
        requests.entry("cpu".into()).or_insert(DEFAULT_CPU);
        requests.entry("memory".into()).or_insert(DEFAULT_MEMORY);
    }
    requests
}

fn add_into(total: &mut Amounts, more: &Amounts) {
    for (name, value) in more {
        *total.entry(name.clone()).or_default() += value;
    }
}

fn max_into(total: &mut Amounts, other: &Amounts) {
    for (name, value) in other {
        let slot = total.entry(name.clone()).or_insert(0);
        *slot = (*slot).max(*value);
    }
}

/// Upstream's `PodRequests`: [`containers_total`] plus the pod overhead.
fn pod_total(spec: &PodSpec, of: impl Fn(&Container) -> Amounts) -> Amounts {
    let mut total = containers_total(spec, of);
    for (name, q) in spec.overhead.iter().flatten() {
        if let Some(m) = quantity::parse(&q.0).map(|m| m.0) {
            *total.entry(name.clone()).or_default() += m;
        }
    }
    total
}

/// What the containers of a pod take at their peak, by `of` (requests or limits): app
/// containers plus sidecars (restartable init containers), or the peak of the init phase if
/// higher — upstream's `AggregateContainerRequests` / `AggregateContainerLimits`.
pub fn containers_total(spec: &PodSpec, of: impl Fn(&Container) -> Amounts) -> Amounts {
    let mut apps = Amounts::new();
    for container in &spec.containers {
        add_into(&mut apps, &of(container));
    }
    let mut sidecars = Amounts::new();
    let mut init_peak = Amounts::new();
    for init in spec.init_containers.iter().flatten() {
        let own = of(init);
        if init.restart_policy.as_deref() == Some("Always") {
            add_into(&mut sidecars, &own);
            max_into(&mut init_peak, &sidecars);
        } else {
            // A regular init container runs beside the sidecars started before it.
            let mut running = sidecars.clone();
            add_into(&mut running, &own);
            max_into(&mut init_peak, &running);
        }
    }
    add_into(&mut apps, &sidecars);
    max_into(&mut apps, &init_peak);
    apps
}

/// The host ports of the app containers and sidecars (regular init containers have exited
/// before the ports matter), as upstream's NodePorts plugin collects them.
fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|port| *port > 0)?;
            Some(HostPort {
                protocol: p
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".into()),
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    pub(crate) fn container(name: &str, requests: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: Some(
                    requests
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                        .collect(),
                ),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    fn sidecar(name: &str, requests: &[(&str, &str)]) -> Container {
        Container {
            restart_policy: Some("Always".into()),
            ..container(name, requests)
        }
    }

    #[test]
    fn effective_requests_follow_upstream() {
        struct Case {
            name: &'static str,
            containers: Vec<Container>,
            init: Vec<Container>,
            overhead: Option<(&'static str, &'static str)>,
            cpu: i128,
            memory: i128,
        }
        let cases = [
            Case {
                name: "apps add up",
                containers: vec![
                    container("a", &[("cpu", "100m"), ("memory", "1Mi")]),
                    container("b", &[("cpu", "200m")]),
                ],
                init: vec![],
                overhead: None,
                cpu: 300,
                memory: 1024 * 1024 * 1000,
            },
            Case {
                name: "largest init container wins over apps",
                containers: vec![container("a", &[("cpu", "100m")])],
                init: vec![
                    container("i1", &[("cpu", "500m")]),
                    container("i2", &[("cpu", "300m")]),
                ],
                overhead: None,
                cpu: 500,
                memory: 0,
            },
            Case {
                name: "sidecars count with apps and beside later init containers",
                containers: vec![container("a", &[("cpu", "100m")])],
                init: vec![
                    sidecar("s", &[("cpu", "200m")]),
                    container("i", &[("cpu", "250m")]),
                ],
                overhead: None,
                cpu: 450,
                memory: 0,
            },
            Case {
                name: "overhead is added on top",
                containers: vec![container("a", &[("cpu", "100m")])],
                init: vec![],
                overhead: Some(("cpu", "50m")),
                cpu: 150,
                memory: 0,
            },
        ];
        for case in cases {
            let spec = PodSpec {
                containers: case.containers,
                init_containers: Some(case.init),
                overhead: case
                    .overhead
                    .map(|(k, v)| BTreeMap::from([(k.to_owned(), Quantity(v.to_owned()))])),
                ..PodSpec::default()
            };
            let demand = Demand::of(&spec);
            assert_eq!(demand.get("cpu"), case.cpu, "{}: cpu", case.name);
            assert_eq!(demand.get("memory"), case.memory, "{}: memory", case.name);
        }
    }

    #[test]
    fn non_zero_requests_default_missing_cpu_and_memory() {
        let spec = PodSpec {
            containers: vec![container("a", &[("cpu", "250m")]), container("b", &[])],
            ..PodSpec::default()
        };
        let demand = Demand::of(&spec);
        assert_eq!(demand.non_zero_cpu, 350);
        assert_eq!(demand.non_zero_memory, 2 * DEFAULT_MEMORY);
        assert_eq!(demand.get("memory"), 0);
    }

    #[test]
    fn usage_add_then_remove_is_identity() {
        let mut spec = PodSpec {
            containers: vec![container("a", &[("cpu", "250m"), ("example.com/gpu", "1")])],
            ..PodSpec::default()
        };
        spec.containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            ..ContainerPort::default()
        }]);
        let demand = Demand::of(&spec);
        assert_eq!(
            demand.host_ports,
            vec![HostPort {
                protocol: "TCP".into(),
                ip: "0.0.0.0".into(),
                port: 8080
            }]
        );
        let mut usage = NodeUsage::default();
        usage.add(&demand);
        usage.add(&demand);
        assert_eq!(usage.get("example.com/gpu"), 2000);
        assert_eq!(usage.pods, 2);
        usage.remove(&demand);
        usage.remove(&demand);
        assert_eq!(usage, NodeUsage::default());
    }
}
