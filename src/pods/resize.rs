//! In-place resize (KEP 1287): the cpu and memory the node has allotted each of a pod's
//! containers, and bringing running containers to a changed allotment without recreating
//! the pod.
//!
//! A resize arrives as a change of the spec's container resources (the API's `resize`
//! subresource). The node grants it when the pod's new requests fit beside what the other
//! pods hold; otherwise it keeps the old allotment, says why in the `PodResizePending`
//! condition (reason `Deferred`) and looks again at every sync, as the kubelet retries
//! deferred resizes. Containers are created with the allotment, not the spec, and the status
//! reports it. The allotment is kept in the pod's directory, so that an agent restart
//! neither loses a granted resize nor grants a pending one.
//!
//! A running container is brought to its allotment through CRI `UpdateContainerResources`,
//! or restarted where its `resizePolicy` says `RestartContainer` for a resource whose cgroup
//! value changes. What each container runs with is the annotation it was created with, or
//! what a later update gave it (kept here by container ID).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{
    Container, PodCondition, PodSpec, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::admission;
use crate::quantity;

/// The allotment's file in the pod's directory.
const FILE: &str = "allocation.json";
/// The resources a resize can change.
const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// The condition types of a resize, which the agent owns on the pod.
pub const PENDING: &str = "PodResizePending";
pub const IN_PROGRESS: &str = "PodResizeInProgress";

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// The init or app container of `spec` named `name`.
pub fn container<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    containers(spec).find(|c| c.name == name)
}

/// A container's requests and limits, without its claims (which never change in place).
pub fn requirements(container: &Container) -> ResourceRequirements {
    let resources = container.resources.clone().unwrap_or_default();
    ResourceRequirements {
        limits: resources.limits.filter(|m| !m.is_empty()),
        requests: resources.requests.filter(|m| !m.is_empty()),
        ..ResourceRequirements::default()
    }
}

/// Whether two resource lists hold the same amounts (`0.1` and `100m` are the same).
fn same_amounts(
    a: Option<&BTreeMap<String, Quantity>>,
    b: Option<&BTreeMap<String, Quantity>>,
) -> bool {
    let parsed = |list: Option<&BTreeMap<String, Quantity>>| -> BTreeMap<String, Option<i128>> {
        list.into_iter()
            .flatten()
            .map(|(name, q)| (name.clone(), quantity::parse(&q.0).map(|m| m.0)))
            .collect()
    };
    parsed(a) == parsed(b)
}

pub fn same(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    same_amounts(a.requests.as_ref(), b.requests.as_ref())
        && same_amounts(a.limits.as_ref(), b.limits.as_ref())
}

/// What the node granted a pod's containers, and what updates gave its running containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Container name → the requests and limits granted.
    pub containers: BTreeMap<String, ResourceRequirements>,
    /// Container ID → what an in-place update gave that container after its creation.
    #[serde(default)]
    pub updated: BTreeMap<String, ResourceRequirements>,
}

impl Allocation {
    /// What the spec asks for: the allotment of a pod first seen, or of a granted resize.
    pub fn of(spec: &PodSpec) -> Self {
        Self {
            containers: containers(spec)
                .map(|c| (c.name.clone(), requirements(c)))
                .collect(),
            updated: BTreeMap::new(),
        }
    }

    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes it whole or not at all (a new file renamed over the old).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let temporary = dir.join(format!("{FILE}.new"));
        std::fs::write(&temporary, serde_json::to_vec(self)?)?;
        std::fs::rename(temporary, dir.join(FILE))
    }

    /// Whether the spec asks any container for other amounts than it was granted.
    pub fn differs(&self, spec: &PodSpec) -> bool {
        containers(spec).any(|c| {
            self.containers
                .get(&c.name)
                .is_some_and(|granted| !same(granted, &requirements(c)))
        })
    }

    /// Takes the spec's amounts as granted, keeping what running containers have.
    pub fn grant(&mut self, spec: &PodSpec) {
        self.containers = Self::of(spec).containers;
    }

    /// The spec with each container's granted requests and limits in place of the asked ones.
    pub fn apply(&self, spec: &mut PodSpec) {
        let all = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for container in all {
            let Some(granted) = self.containers.get(&container.name) else {
                continue;
            };
            let resources = container.resources.get_or_insert_with(Default::default);
            resources.requests = granted.requests.clone();
            resources.limits = granted.limits.clone();
        }
    }
}

/// Why a resize waits: the `PodResizePending` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub reason: &'static str,
    pub message: String,
}

/// cpu (milli-cores) and memory (milli-bytes) of a pod's effective requests: what it holds
/// of the node.
pub fn held(spec: &PodSpec) -> BTreeMap<String, i128> {
    admission::requests(spec)
        .into_iter()
        .filter(|(name, _)| RESIZABLE.contains(&name.as_str()))
        .collect()
}

/// Whether the node can grant `spec`'s requests beside what the other pods hold; both and
/// `allocatable` in milli-units.
pub fn fits(
    spec: &PodSpec,
    others: &BTreeMap<String, i128>,
    allocatable: &BTreeMap<String, i128>,
) -> Result<(), Pending> {
    match admission::insufficient(&held(spec), others, allocatable) {
        None => Ok(()),
        Some((_, message)) => Err(Pending {
            reason: "Deferred",
            message,
        }),
    }
}

/// What every admitted pod of the node holds (its granted requests), by pod UID: resizes
/// and admission count granted amounts, not what specs ask for.
#[derive(Debug, Default)]
pub struct Holdings(Mutex<HashMap<String, BTreeMap<String, i128>>>);

impl Holdings {
    pub fn set(&self, uid: &str, requests: BTreeMap<String, i128>) {
        self.lock().insert(uid.to_owned(), requests);
    }

    pub fn remove(&self, uid: &str) {
        self.lock().remove(uid);
    }

    pub fn get(&self, uid: &str) -> Option<BTreeMap<String, i128>> {
        self.lock().get(uid).cloned()
    }

    /// The sum of what every pod but `uid` holds.
    pub fn others(&self, uid: &str) -> BTreeMap<String, i128> {
        let mut total = BTreeMap::new();
        for (_, requests) in self.lock().iter().filter(|(other, _)| *other != uid) {
            for (name, value) in requests {
                *total.entry(name.clone()).or_default() += value;
            }
        }
        total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, i128>>> {
        // A panic elsewhere while holding it leaves plain data behind, still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running container, with what it runs with when that is known.
#[derive(Debug, Clone)]
pub struct Running<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub current: Option<ResourceRequirements>,
}

/// What one running container needs to reach its allotment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Its cgroups change: update them in place.
    Update { id: String, name: String },
    /// Its resize policy asks for a restart for a resource whose cgroup value changes.
    Restart { id: String, name: String },
    /// The cgroups stay as they are (`2m` → `1m` cpu: both the least cpu shares there
    /// are); only what it runs with is recorded.
    Record { id: String },
}

/// The cgroup values of a container with `resources`: (cpu shares, cpu quota, memory limit).
fn cgroup_values(container: &Container, resources: &ResourceRequirements) -> (i64, i64, i64) {
    let mut with = container.clone();
    with.resources = Some(resources.clone());
    let linux = super::container::linux_resources(&with);
    (
        linux.cpu_shares,
        linux.cpu_quota,
        linux.memory_limit_in_bytes,
    )
}

fn restarts_for(container: &Container, resource: &str) -> bool {
    container
        .resize_policy
        .iter()
        .flatten()
        .any(|p| p.resource_name == resource && p.restart_policy == "RestartContainer")
}

/// The steps that bring each running container of `spec` (the allotment applied) to its
/// allotment. A container whose current resources are unknown (made by an older agent)
/// is taken to have its allotment.
pub fn steps(spec: &PodSpec, running: &[Running<'_>]) -> Vec<Step> {
    let mut out = Vec::new();
    for container in running {
        let Some(current) = &container.current else {
            continue;
        };
        let Some(spec_container) = self::container(spec, container.name) else {
            continue;
        };
        let granted = requirements(spec_container);
        if same(current, &granted) {
            continue;
        }
        let (id, name) = (container.id.to_owned(), container.name.to_owned());
        let before = cgroup_values(spec_container, current);
        let after = cgroup_values(spec_container, &granted);
        let cpu_changes = (before.0, before.1) != (after.0, after.1);
        let memory_changes = before.2 != after.2;
        if (cpu_changes && restarts_for(spec_container, "cpu"))
            || (memory_changes && restarts_for(spec_container, "memory"))
        {
            out.push(Step::Restart { id, name });
        } else if cpu_changes || memory_changes {
            out.push(Step::Update { id, name });
        } else {
            out.push(Step::Record { id });
        }
    }
    out
}

/// Running containers' ids: an update recorded for any other is dropped.
pub fn forget_gone(allocation: &mut Allocation, running: &HashSet<&str>) -> bool {
    let before = allocation.updated.len();
    allocation
        .updated
        .retain(|id, _| running.contains(id.as_str()));
    allocation.updated.len() != before
}

/// Where a pod's resize stands, for its conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// A resize the node has not granted, and the spec generation that asked for it.
    pub pending: Option<(i64, Pending)>,
    /// Why bringing a container to its allotment failed (tried again at the next sync).
    pub error: Option<String>,
    /// Some running container is not at its allotment yet.
    pub in_progress: bool,
}

/// The resize conditions of the pod's status; a condition that holds keeps the time it
/// began (and its probe time, so that an unchanged status is not posted again).
pub fn conditions(
    progress: &Progress,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> Vec<PodCondition> {
    let since = |kind: &str, reason: Option<&str>| {
        previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind))
            .filter(|c| c.status == "True" && c.reason.as_deref() == reason)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now))
    };
    let condition = |kind: &str, reason: Option<&str>, message: Option<String>| {
        let at = since(kind, reason);
        PodCondition {
            type_: kind.to_owned(),
            status: "True".into(),
            reason: reason.map(str::to_owned),
            message,
            last_probe_time: Some(at.clone()),
            last_transition_time: Some(at),
            ..PodCondition::default()
        }
    };
    let mut out = Vec::new();
    if let Some((_, pending)) = &progress.pending {
        out.push(condition(
            PENDING,
            Some(pending.reason),
            Some(pending.message.clone()),
        ));
    }
    if let Some(error) = &progress.error {
        out.push(condition(IN_PROGRESS, Some("Error"), Some(error.clone())));
    } else if progress.in_progress {
        out.push(condition(IN_PROGRESS, None, None));
    }
    out
}

/// The event message of a resize, as the kubelet words it: a prefix, then the pod's
/// containers with their resources, the spec generation and any error, as JSON.
pub fn summary(prefix: &str, spec: &PodSpec, generation: i64, error: Option<&str>) -> String {
    let list = |list: Option<&Vec<Container>>| -> Vec<serde_json::Value> {
        list.into_iter()
            .flatten()
            .map(|c| serde_json::json!({ "name": c.name, "resources": requirements(c) }))
            .collect()
    };
    let mut summary = serde_json::Map::new();
    let init = list(spec.init_containers.as_ref());
    if !init.is_empty() {
        summary.insert("initContainers".into(), init.into());
    }
    summary.insert("containers".into(), list(Some(&spec.containers)).into());
    summary.insert("generation".into(), generation.into());
    if let Some(error) = error {
        summary.insert("error".into(), error.into());
    }
    format!("{prefix}: {}", serde_json::Value::Object(summary))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ContainerResizePolicy;

    use super::*;

    fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
        let list = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect()
            })
        };
        ResourceRequirements {
            requests: list(requests),
            limits: list(limits),
            ..ResourceRequirements::default()
        }
    }

    fn container(name: &str, r: ResourceRequirements) -> Container {
        Container {
            name: name.into(),
            resources: Some(r),
            ..Container::default()
        }
    }

    fn spec(containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            ..PodSpec::default()
        }
    }

    #[test]
    fn a_changed_spec_differs_and_equal_amounts_do_not() {
        let first = spec(vec![container(
            "c",
            resources(&[("cpu", "100m")], &[("cpu", "200m")]),
        )]);
        let allocation = Allocation::of(&first);
        assert!(!allocation.differs(&first));
        let same_amounts = spec(vec![container(
            "c",
            resources(&[("cpu", "0.1")], &[("cpu", "200m")]),
        )]);
        assert!(!allocation.differs(&same_amounts));
        let resized = spec(vec![container(
            "c",
            resources(&[("cpu", "100m")], &[("cpu", "300m")]),
        )]);
        assert!(allocation.differs(&resized));
    }

    #[test]
    fn apply_puts_the_granted_amounts_in_the_spec_and_keeps_claims() {
        let granted = Allocation::of(&spec(vec![container(
            "c",
            resources(&[("memory", "64Mi")], &[]),
        )]));
        let mut asked = container("c", resources(&[("memory", "128Mi")], &[("memory", "1Gi")]));
        asked.resources.as_mut().expect("resources").claims = Some(vec![Default::default()]);
        let mut pod = spec(vec![asked]);
        granted.apply(&mut pod);
        let applied = pod.containers[0].resources.clone().expect("resources");
        assert_eq!(
            applied.requests,
            resources(&[("memory", "64Mi")], &[]).requests
        );
        assert_eq!(applied.limits, None);
        assert_eq!(applied.claims.map(|c| c.len()), Some(1));
    }

    #[test]
    fn the_allocation_survives_a_restart_of_the_agent() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert_eq!(Allocation::load(dir.path()).expect("readable"), None);
        let mut allocation =
            Allocation::of(&spec(vec![container("c", resources(&[("cpu", "1")], &[]))]));
        allocation
            .updated
            .insert("id1".into(), resources(&[("cpu", "2")], &[]));
        allocation.save(dir.path()).expect("saved");
        assert_eq!(
            Allocation::load(dir.path()).expect("readable"),
            Some(allocation)
        );
    }

    #[test]
    fn a_resize_fits_only_beside_what_the_others_hold() {
        let allocatable = BTreeMap::from([
            ("cpu".to_owned(), 2_000),
            ("memory".to_owned(), 1_000_000_000),
        ]);
        let others = BTreeMap::from([("cpu".to_owned(), 1_500)]);
        let small = spec(vec![container("c", resources(&[("cpu", "500m")], &[]))]);
        assert_eq!(fits(&small, &others, &allocatable), Ok(()));
        let large = spec(vec![container("c", resources(&[("cpu", "600m")], &[]))]);
        let pending = fits(&large, &others, &allocatable).expect_err("too large");
        assert_eq!(pending.reason, "Deferred");
        assert_eq!(
            pending.message,
            "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000"
        );
    }

    #[test]
    fn holdings_sum_every_other_pod() {
        let holdings = Holdings::default();
        holdings.set("a", BTreeMap::from([("cpu".to_owned(), 100)]));
        holdings.set("b", BTreeMap::from([("cpu".to_owned(), 200)]));
        holdings.set("c", BTreeMap::from([("cpu".to_owned(), 400)]));
        assert_eq!(holdings.others("b").get("cpu"), Some(&500));
        holdings.remove("a");
        assert_eq!(holdings.others("b").get("cpu"), Some(&400));
    }

    #[test]
    fn steps_update_restart_or_only_record() {
        let mut restart_memory = container(
            "m",
            resources(&[("memory", "64Mi")], &[("memory", "128Mi")]),
        );
        restart_memory.resize_policy = Some(vec![ContainerResizePolicy {
            resource_name: "memory".into(),
            restart_policy: "RestartContainer".into(),
        }]);
        let pod = spec(vec![
            container("cpu", resources(&[("cpu", "200m")], &[])),
            restart_memory,
            container("tiny", resources(&[("cpu", "1m")], &[("cpu", "5m")])),
            container("same", resources(&[("cpu", "1")], &[])),
        ]);
        let running = [
            Running {
                id: "1",
                name: "cpu",
                current: Some(resources(&[("cpu", "100m")], &[])),
            },
            Running {
                id: "2",
                name: "m",
                current: Some(resources(&[("memory", "64Mi")], &[("memory", "96Mi")])),
            },
            // 2m and 1m are both the least shares; 10m and 5m both the least quota.
            Running {
                id: "3",
                name: "tiny",
                current: Some(resources(&[("cpu", "2m")], &[("cpu", "10m")])),
            },
            Running {
                id: "4",
                name: "same",
                current: Some(resources(&[("cpu", "1")], &[])),
            },
            Running {
                id: "5",
                name: "unknown-to-us",
                current: None,
            },
        ];
        assert_eq!(
            steps(&pod, &running),
            vec![
                Step::Update {
                    id: "1".into(),
                    name: "cpu".into()
                },
                Step::Restart {
                    id: "2".into(),
                    name: "m".into()
                },
                Step::Record { id: "3".into() },
            ]
        );
    }

    #[test]
    fn a_memory_request_alone_restarts_nothing() {
        // On cgroup v1 a memory request sets no cgroup value: nothing to restart for.
        let mut c = container("c", resources(&[("memory", "64Mi")], &[]));
        c.resize_policy = Some(vec![ContainerResizePolicy {
            resource_name: "memory".into(),
            restart_policy: "RestartContainer".into(),
        }]);
        let pod = spec(vec![c]);
        let running = [Running {
            id: "1",
            name: "c",
            current: Some(resources(&[("memory", "32Mi")], &[])),
        }];
        assert_eq!(steps(&pod, &running), vec![Step::Record { id: "1".into() }]);
    }

    #[test]
    fn conditions_say_why_a_resize_waits_and_keep_their_start() {
        let at = |s| Timestamp::from_second(s).expect("a time");
        let progress = Progress {
            pending: Some((
                2,
                Pending {
                    reason: "Deferred",
                    message: "no room".into(),
                },
            )),
            error: None,
            in_progress: false,
        };
        let first = conditions(&progress, None, at(10));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].type_, PENDING);
        assert_eq!(first[0].reason.as_deref(), Some("Deferred"));
        let previous = PodStatus {
            conditions: Some(first.clone()),
            ..PodStatus::default()
        };
        // Still pending later: the same condition, not a new one.
        assert_eq!(conditions(&progress, Some(&previous), at(20)), first);
        let failing = Progress {
            error: Some("runc update failed".into()),
            in_progress: true,
            ..Progress::default()
        };
        let failed = conditions(&failing, Some(&previous), at(30));
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].type_.as_str(), failed[0].reason.as_deref()),
            (IN_PROGRESS, Some("Error"))
        );
        assert!(conditions(&Progress::default(), Some(&previous), at(40)).is_empty());
    }

    #[test]
    fn the_event_summary_lists_containers_and_generation() {
        let pod = spec(vec![container("c", resources(&[("cpu", "1")], &[]))]);
        assert_eq!(
            summary("Pod resize started", &pod, 2, None),
            r#"Pod resize started: {"containers":[{"name":"c","resources":{"requests":{"cpu":"1"}}}],"generation":2}"#
        );
    }
}
