//! Status: the node's reported status (addresses, capacity, allocatable, system info,
//! conditions), built as a pure function of what was observed, and the task that posts it.
//!
//! Posting follows the kubelet with a Lease: the status is written when something in it
//! changed, and at least every [`REPORT_INTERVAL`] otherwise; liveness itself is the
//! Lease's job, so an unchanged status costs the API server nothing.
//!
//! Extended resources that someone else advertises in the node's capacity (an operator's
//! `PATCH .../status` adding `example.com/dongle`) are read back from the Node at each
//! update and copied into allocatable, as the kubelet does; allocatable ones no longer in
//! capacity are dropped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{GetParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::conditions::{self, Condition, Observation};
use super::machine::{self, Machine};
use super::runtime::{RuntimeState, error_chain};
use crate::config::{Reserved, Signal, Thresholds};

/// How often the status is recomputed (the kubelet's nodeStatusUpdateFrequency).
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(10);
/// The longest an unchanged status goes unposted (the kubelet's nodeStatusReportFrequency).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The kubernetes version whose kubelet behaviour nodus implements, with nodus's own
/// version as semver build metadata (ignored by version-skew comparisons).
pub fn kubelet_version() -> String {
    format!("v1.37.2+nodus.{}", env!("CARGO_PKG_VERSION"))
}

/// Everything fixed for the agent's lifetime that the status needs.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub machine: Machine,
    pub hostname: String,
    pub node_ips: Vec<IpAddr>,
    pub max_pods: u32,
    pub port: u16,
    pub thresholds: Thresholds,
    /// `--kube-reserved` plus `--system-reserved`.
    pub reserved: Reserved,
    /// The filesystem whose usage is `nodefs` (the agent's root directory).
    pub nodefs_path: PathBuf,
}

/// The status without timestamps: two reports are equal exactly when posting one after
/// the other would tell the API server nothing new.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub addresses: Vec<NodeAddress>,
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub node_info: NodeSystemInfo,
    pub conditions: Vec<Condition>,
    pub port: u16,
}

impl NodeFacts {
    /// Observes the machine now and builds the report.
    pub fn observe(&self, runtime: &RuntimeState) -> Report {
        let nodefs = machine::fs_usage(&self.nodefs_path);
        let observation = Observation {
            runtime: runtime.health.clone(),
            memory: machine::memory_usage(),
            nodefs,
            pids: machine::pid_usage(),
        };
        self.report(
            &observation,
            nodefs.map_or(0, |fs| fs.capacity_bytes),
            runtime,
        )
    }

    /// The report for an observation (pure).
    pub fn report(
        &self,
        observation: &Observation,
        nodefs_capacity: u64,
        runtime: &RuntimeState,
    ) -> Report {
        let (capacity, allocatable) = self.resources(nodefs_capacity);
        Report {
            addresses: self.addresses(),
            capacity,
            allocatable,
            node_info: self.node_info(runtime),
            conditions: conditions::evaluate(observation, &self.thresholds),
            port: self.port,
        }
    }

    fn addresses(&self) -> Vec<NodeAddress> {
        let mut addresses: Vec<NodeAddress> = self
            .node_ips
            .iter()
            .map(|ip| NodeAddress {
                type_: "InternalIP".into(),
                address: ip.to_string(),
            })
            .collect();
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.hostname.clone(),
        });
        addresses
    }

    /// Capacity, and allocatable as the kubelet computes it: capacity less the reserved
    /// resources, less huge pages (for memory) and less the hard eviction thresholds, so pods
    /// never fill the node into them.
    fn resources(
        &self,
        nodefs_capacity: u64,
    ) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
        let machine = &self.machine;
        let threshold = |signal: Signal, capacity: u64| {
            self.thresholds.get(signal).map_or(0, |q| q.of(capacity))
        };
        let hugepages_total: u64 = machine.hugepages.iter().map(|(_, bytes)| bytes).sum();

        let mut capacity = BTreeMap::from([
            ("cpu".to_owned(), machine.cpus.to_string()),
            ("memory".to_owned(), machine.memory_bytes.to_string()),
            ("ephemeral-storage".to_owned(), nodefs_capacity.to_string()),
            ("pods".to_owned(), self.max_pods.to_string()),
        ]);
        for (name, bytes) in &machine.hugepages {
            capacity.insert(name.clone(), bytes.to_string());
        }
        let mut allocatable = capacity.clone();
        let reserved = self.reserved;
        let milli_cpu = (u64::from(machine.cpus) * 1000).saturating_sub(reserved.milli_cpu);
        allocatable.insert(
            "cpu".into(),
            if milli_cpu % 1000 == 0 {
                (milli_cpu / 1000).to_string()
            } else {
                format!("{milli_cpu}m")
            },
        );
        allocatable.insert(
            "memory".into(),
            machine
                .memory_bytes
                .saturating_sub(reserved.memory_bytes)
                .saturating_sub(hugepages_total)
                .saturating_sub(threshold(Signal::MemoryAvailable, machine.memory_bytes))
                .to_string(),
        );
        allocatable.insert(
            "ephemeral-storage".into(),
            nodefs_capacity
                .saturating_sub(reserved.ephemeral_bytes)
                .saturating_sub(threshold(Signal::NodefsAvailable, nodefs_capacity))
                .to_string(),
        );
        let quantities = |map: BTreeMap<String, String>| {
            map.into_iter().map(|(k, v)| (k, Quantity(v))).collect()
        };
        (quantities(capacity), quantities(allocatable))
    }

    fn node_info(&self, runtime: &RuntimeState) -> NodeSystemInfo {
        let machine = &self.machine;
        NodeSystemInfo {
            architecture: machine.architecture.clone(),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: runtime
                .version
                .as_ref()
                .map(|v| v.node_info())
                .unwrap_or_default(),
            kernel_version: machine.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version(),
            machine_id: machine.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: machine.os_image.clone(),
            system_uuid: machine.system_uuid.clone(),
            ..NodeSystemInfo::default()
        }
    }
}

/// Upstream's `IsExtendedResourceName`: a domain-prefixed name outside `kubernetes.io`,
/// and not a quota's `requests.` form.
pub fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

/// The extended resources in the Node's capacity that nodus does not report itself.
pub fn foreign_extended(
    held: &NodeStatus,
    own: &BTreeMap<String, Quantity>,
) -> BTreeMap<String, Quantity> {
    held.capacity
        .iter()
        .flatten()
        .filter(|(name, _)| is_extended_resource(name) && !own.contains_key(*name))
        .map(|(name, quantity)| (name.clone(), quantity.clone()))
        .collect()
}

/// Extended resources in the Node's allocatable that its capacity no longer has.
pub fn stale_allocatable(held: &NodeStatus) -> Vec<String> {
    let capacity = held.capacity.as_ref();
    held.allocatable
        .iter()
        .flatten()
        .map(|(name, _)| name)
        .filter(|name| {
            is_extended_resource(name) && capacity.is_none_or(|c| !c.contains_key(*name))
        })
        .cloned()
        .collect()
}

impl Report {
    /// Adds extended resources advertised by others to allocatable (whole: nothing is
    /// reserved of them). Not to capacity: that is theirs, and a post of a stale copy
    /// would bring back a resource they had just removed.
    pub fn with_extended(mut self, extended: &BTreeMap<String, Quantity>) -> Self {
        for (name, quantity) in extended {
            self.allocatable.insert(name.clone(), quantity.clone());
        }
        self
    }

    /// The NodeStatus to post at `now`. A condition keeps its lastTransitionTime while its
    /// status stays the same as in `previous` (what the API server last held).
    pub fn to_status(&self, previous: &[NodeCondition], now: Timestamp) -> NodeStatus {
        let conditions = self
            .conditions
            .iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let transition = previous
                    .iter()
                    .find(|p| p.type_ == c.kind && p.status == status)
                    .and_then(|p| p.last_transition_time.clone())
                    .unwrap_or(Time(now));
                NodeCondition {
                    type_: c.kind.into(),
                    status: status.into(),
                    reason: Some(c.reason.into()),
                    message: Some(c.message.clone()),
                    last_heartbeat_time: Some(Time(now)),
                    last_transition_time: Some(transition),
                }
            })
            .collect();
        NodeStatus {
            addresses: Some(self.addresses.clone()),
            capacity: Some(self.capacity.clone()),
            allocatable: Some(self.allocatable.clone()),
            node_info: Some(self.node_info.clone()),
            conditions: Some(conditions),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.port),
                }),
            }),
            ..NodeStatus::default()
        }
    }

    pub fn ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status)
    }
}

/// Posts the node's status until cancelled: every [`UPDATE_INTERVAL`], and at once when
/// the runtime's state changes, but only when the report changed or has grown stale.
pub async fn report(
    api: Api<Node>,
    node: Node,
    facts: NodeFacts,
    mut runtime: watch::Receiver<RuntimeState>,
    cancel: CancellationToken,
) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut held = node.status.and_then(|s| s.conditions).unwrap_or_default();
    let mut last: Option<(Report, Instant)> = None;
    let mut ticker = tokio::time::interval(UPDATE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runtime_open = true;
    let mut extended = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            changed = runtime.changed(), if runtime_open => runtime_open = changed.is_ok(),
        }
        let state = runtime.borrow_and_update().clone();
        let own = facts.observe(&state);
        // Read from the API server's cache (resourceVersion 0), as the kubelet does.
        let mut stale = Vec::new();
        match api.get_with(&name, &GetParams::any()).await {
            Ok(node) => {
                let held_status = node.status.unwrap_or_default();
                extended = foreign_extended(&held_status, &own.capacity);
                stale = stale_allocatable(&held_status);
            }
            Err(err) => debug!(node = %name, error = %error_chain(&err), "reading the node failed"),
        }
        let report = own.with_extended(&extended);
        if stale.is_empty()
            && last
                .as_ref()
                .is_some_and(|(posted, at)| *posted == report && at.elapsed() < REPORT_INTERVAL)
        {
            continue;
        }
        let status = report.to_status(&held, Timestamp::now());
        let mut body = json!({ "status": status });
        for resource in &stale {
            // A null in a strategic-merge map deletes the key.
            body["status"]["allocatable"][resource] = Value::Null;
        }
        let patch = Patch::Strategic(body);
        match api
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            Ok(node) => {
                if last
                    .as_ref()
                    .is_none_or(|(posted, _)| posted.ready() != report.ready())
                {
                    info!(node = %name, ready = report.ready(), "node status posted");
                } else {
                    debug!(node = %name, "node status posted");
                }
                held = node.status.and_then(|s| s.conditions).unwrap_or_default();
                last = Some((report, Instant::now()));
            }
            Err(err) => {
                warn!(node = %name, error = %error_chain(&err), "posting node status failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nodus_cri::{RuntimeCondition, RuntimeStatus, RuntimeVersion};

    use super::super::conditions::RuntimeHealth;
    use super::super::machine::{FsUsage, MemoryUsage};
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            machine: Machine {
                machine_id: "m".into(),
                system_uuid: String::new(),
                boot_id: "b".into(),
                kernel_version: "6.1.0".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                architecture: "amd64".into(),
                cpus: 2,
                memory_bytes: 8 << 30,
                hugepages: vec![("hugepages-2Mi".into(), 64 << 20)],
            },
            hostname: "worker-1".into(),
            node_ips: vec!["192.0.2.2".parse().expect("ip")],
            max_pods: 110,
            port: 10250,
            thresholds: Thresholds::kubelet_defaults(),
            reserved: Reserved::default(),
            nodefs_path: "/".into(),
        }
    }

    fn ready_runtime() -> RuntimeState {
        let ok = |kind: &str| RuntimeCondition {
            kind: kind.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        RuntimeState {
            health: RuntimeHealth::Reported(RuntimeStatus {
                conditions: vec![
                    ok(RuntimeStatus::RUNTIME_READY),
                    ok(RuntimeStatus::NETWORK_READY),
                ],
            }),
            version: Some(RuntimeVersion {
                runtime_name: "containerd".into(),
                runtime_version: "1.6.20".into(),
                runtime_api_version: "v1".into(),
            }),
        }
    }

    fn observation(runtime: &RuntimeState) -> Observation {
        Observation {
            runtime: runtime.health.clone(),
            memory: Some(MemoryUsage {
                total_bytes: 8 << 30,
                available_bytes: 6 << 30,
            }),
            nodefs: Some(FsUsage {
                capacity_bytes: 1000 << 20,
                available_bytes: 500 << 20,
                inodes: 100,
                inodes_free: 50,
            }),
            pids: None,
        }
    }

    #[test]
    fn capacity_and_allocatable_as_the_kubelet_computes_them() {
        let runtime = ready_runtime();
        let report = facts().report(&observation(&runtime), 1000 << 20, &runtime);
        let q = |map: &BTreeMap<String, Quantity>, k: &str| map[k].0.clone();
        assert_eq!(q(&report.capacity, "cpu"), "2");
        assert_eq!(q(&report.capacity, "pods"), "110");
        assert_eq!(q(&report.capacity, "memory"), (8u64 << 30).to_string());
        assert_eq!(
            q(&report.capacity, "hugepages-2Mi"),
            (64u64 << 20).to_string()
        );
        // memory: capacity - huge pages - 100Mi eviction threshold
        assert_eq!(
            q(&report.allocatable, "memory"),
            ((8u64 << 30) - (64 << 20) - (100 << 20)).to_string()
        );
        // ephemeral storage: capacity - 10%
        assert_eq!(
            q(&report.allocatable, "ephemeral-storage"),
            (1000u64 << 20).saturating_sub(104857600).to_string()
        );
        assert_eq!(q(&report.allocatable, "cpu"), "2");
        assert_eq!(
            report.node_info.container_runtime_version,
            "containerd://1.6.20"
        );

        // Reservations come off allocatable, not capacity.
        let mut reserving = facts();
        reserving.reserved = Reserved::parse("cpu=250m,memory=1Gi,ephemeral-storage=100Mi")
            .expect("valid reservation");
        let reserved = reserving.report(&observation(&runtime), 1000 << 20, &runtime);
        assert_eq!(q(&reserved.capacity, "cpu"), "2");
        assert_eq!(q(&reserved.allocatable, "cpu"), "1750m");
        assert_eq!(
            q(&reserved.allocatable, "memory"),
            ((8u64 << 30) - (1 << 30) - (64 << 20) - (100 << 20)).to_string()
        );
        assert_eq!(
            q(&reserved.allocatable, "ephemeral-storage"),
            ((1000u64 << 20) - (100 << 20) - 104857600).to_string()
        );
        assert_eq!(report.node_info.kubelet_version, kubelet_version());
        assert_eq!(report.addresses[0].type_, "InternalIP");
        assert_eq!(report.addresses[1].address, "worker-1");
    }

    fn q(map: &BTreeMap<String, Quantity>, k: &str) -> String {
        map[k].0.clone()
    }

    #[test]
    fn extended_resources_others_advertise_become_allocatable_and_leave_with_capacity() {
        let runtime = ready_runtime();
        let own = facts().report(&observation(&runtime), 1000 << 20, &runtime);
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect::<BTreeMap<_, _>>()
        };
        let held = NodeStatus {
            capacity: Some(quantities(&[
                ("cpu", "2"),
                ("example.com/dongle", "4"),
                ("kubernetes.io/native", "1"),
                ("requests.example.com/x", "1"),
            ])),
            allocatable: Some(quantities(&[("cpu", "2"), ("example.com/gone", "1")])),
            ..NodeStatus::default()
        };
        let extended = foreign_extended(&held, &own.capacity);
        assert_eq!(extended, quantities(&[("example.com/dongle", "4")]));
        assert_eq!(
            stale_allocatable(&held),
            vec!["example.com/gone".to_owned()]
        );
        let report = own.clone().with_extended(&extended);
        assert_eq!(q(&report.allocatable, "example.com/dongle"), "4");
        assert!(!report.capacity.contains_key("example.com/dongle"));
        assert_eq!(q(&report.allocatable, "cpu"), q(&own.allocatable, "cpu"));
        assert_ne!(report, own, "a new resource is a change worth posting");
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_changes() {
        let runtime = ready_runtime();
        let report = facts().report(&observation(&runtime), 1000 << 20, &runtime);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        let first = report.to_status(&[], t0).conditions.expect("conditions");
        let second = report.to_status(&first, t1).conditions.expect("conditions");
        for c in &second {
            assert_eq!(
                c.last_transition_time,
                Some(Time(t0)),
                "{} unchanged",
                c.type_
            );
            assert_eq!(c.last_heartbeat_time, Some(Time(t1)));
        }

        let down = RuntimeState {
            health: RuntimeHealth::Unreachable("gone".into()),
            ..ready_runtime()
        };
        let report = facts().report(&observation(&down), 1000 << 20, &down);
        assert!(!report.ready());
        let third = report
            .to_status(&second, t1)
            .conditions
            .expect("conditions");
        let ready = third.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.clone()),
            ("False", Some(Time(t1)))
        );
        let memory = third
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .expect("MemoryPressure");
        assert_eq!(memory.last_transition_time, Some(Time(t0)));
    }

    #[test]
    fn equal_observations_give_equal_reports() {
        let runtime = ready_runtime();
        let facts = facts();
        let mut obs = observation(&runtime);
        let a = facts.report(&obs, 1000 << 20, &runtime);
        obs.memory = Some(MemoryUsage {
            total_bytes: 8 << 30,
            available_bytes: 5 << 30,
        });
        assert_eq!(
            a,
            facts.report(&obs, 1000 << 20, &runtime),
            "usage alone is not a change"
        );
    }
}
