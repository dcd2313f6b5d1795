//! Status: the PodStatus the kubelet would report, computed purely from the pod's spec,
//! what the runtime holds, and what the worker remembers about failed starts.
//!
//! Reasons, messages and orderings are the kubelet's (`generateAPIPodStatus`, `getPhase`,
//! `GenerateContainersReadyCondition`), since users and tools read them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, PodCondition, PodIP, PodSpec, PodStatus,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::attempts::{Attempts, StartFailure};
use super::lifecycle::{is_sidecar, should_restart};
use super::observed::{ContainerRecord, Exit, PodRuntime, RunState};
use super::probes::Verdicts;
use super::qos;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn parse(phase: Option<&str>) -> Option<Self> {
        match phase? {
            "Pending" => Some(Phase::Pending),
            "Running" => Some(Phase::Running),
            "Succeeded" => Some(Phase::Succeeded),
            "Failed" => Some(Phase::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// Facts about the node and the pod's worker that the status shows.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    /// The runtime's name for container IDs (`containerd://<id>`).
    pub runtime_name: &'a str,
    pub host_ips: &'a [String],
    pub host_network: bool,
    pub now: Timestamp,
    /// The probes' verdicts, by container ID (see `super::probes`).
    pub probes: &'a Verdicts,
    /// What running containers run with, by container ID, where it differs from the
    /// allotment in the spec (an in-place resize under way; see `super::resize`).
    pub running_with: &'a BTreeMap<String, ResourceRequirements>,
}

/// No probe results: what a container without probes, or not yet probed, has.
pub static NO_PROBES: std::sync::LazyLock<Verdicts> = std::sync::LazyLock::new(Verdicts::new);

/// No container runs with other resources than its allotment.
pub static NOT_RESIZED: BTreeMap<String, ResourceRequirements> = BTreeMap::new();

fn time(t: Option<Timestamp>) -> Option<Time> {
    t.map(Time)
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

fn terminated(record: &ContainerRecord, exit: &Exit, runtime_name: &str) -> ContainerState {
    let reason = if !exit.reason.is_empty() {
        exit.reason.clone()
    } else if exit.code == 0 {
        "Completed".to_owned()
    } else {
        "Error".to_owned()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(reason),
            message: (!exit.message.is_empty()).then(|| exit.message.clone()),
            started_at: time(exit.started_at),
            finished_at: time(exit.finished_at),
            container_id: Some(format!("{runtime_name}://{}", record.id)),
            signal: None,
        }),
        ..ContainerState::default()
    }
}

/// What a container is to its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    App,
    /// Started once, never restarted, never ready (see `ephemeral`).
    Ephemeral,
}

/// The status of one container of the spec.
fn container_status(
    spec: &PodSpec,
    container: &Container,
    role: Role,
    runtime: &PodRuntime,
    attempts: &Attempts,
    ctx: &Context<'_>,
) -> ContainerStatus {
    let name = container.name.as_str();
    let latest = runtime.latest(name);
    let entry = attempts.get(name);
    let failure = entry.and_then(|e| e.failure.as_ref());
    let image = container.image.clone().unwrap_or_default();

    // Why it waits, when nothing of it runs: a failed start wins over the generic reasons.
    let failure_state = failure.map(|failure| match failure.kind {
        StartFailure::Pull if attempts.in_pull_back_off(name, ctx.now) => waiting(
            "ImagePullBackOff",
            Some(format!(
                "Back-off pulling image \"{}\": {}",
                failure.image, failure.message
            )),
        ),
        kind => waiting(kind.reason(), Some(failure.message.clone())),
    });

    let mut status = ContainerStatus {
        name: name.to_owned(),
        image: image.clone(),
        image_id: String::new(),
        restart_count: latest.map_or(0, |c| i32::try_from(c.attempt).unwrap_or(i32::MAX)),
        ready: false,
        started: Some(false),
        ..ContainerStatus::default()
    };
    let Some(latest) = latest else {
        // As upstream: in a pod with init containers, every container not yet created
        // waits with PodInitializing (init containers too); otherwise ContainerCreating.
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        status.state = Some(failure_state.unwrap_or_else(|| waiting(reason, None)));
        return status;
    };
    status.container_id = Some(format!("{}://{}", ctx.runtime_name, latest.id));
    if role != Role::Ephemeral {
        // As the kubelet: the allotment (the spec here carries it), and for a running
        // container what its cgroups were given.
        let allotted = container.resources.clone().unwrap_or_default();
        status.allocated_resources = allotted.requests.clone().filter(|r| !r.is_empty());
        let mut resources = allotted;
        if let (RunState::Running { .. }, Some(current)) =
            (&latest.state, ctx.running_with.get(&latest.id))
        {
            resources.requests = current.requests.clone();
            resources.limits = current.limits.clone();
        }
        status.resources = Some(resources);
    }
    if !latest.image.is_empty() {
        status.image = latest.image.clone();
    }
    status.image_id = latest.image_id.clone();
    let previous_state = runtime.previous(name).and_then(|p| match &p.state {
        RunState::Exited(exit) => Some(terminated(p, exit, ctx.runtime_name)),
        _ => None,
    });

    match &latest.state {
        RunState::Running { started_at } => {
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(*started_at),
                }),
                ..ContainerState::default()
            });
            // Without a verdict yet, a probed container is neither started nor ready.
            let verdict = ctx.probes.get(&latest.id);
            let unprobed_start = container.startup_probe.is_none();
            status.started = Some(verdict.map_or(unprobed_start, |v| v.started));
            status.ready = role != Role::Ephemeral
                && verdict.map_or(unprobed_start && container.readiness_probe.is_none(), |v| {
                    v.ready
                });
            status.last_state = previous_state;
        }
        RunState::Exited(exit) => {
            let this = terminated(latest, exit, ctx.runtime_name);
            let restarts = role != Role::Ephemeral
                && should_restart(spec, container, exit.code, role == Role::Init);
            match (
                restarts,
                attempts.blocked_until(name, true, ctx.now),
                failure_state,
            ) {
                (true, _, Some(failed_restart)) => {
                    status.state = Some(failed_restart);
                    status.last_state = Some(this);
                }
                (true, Some(_), None) => {
                    let delay = entry
                        .and_then(|e| e.restarts)
                        .map_or(0, |b| b.delay.as_secs());
                    status.state = Some(waiting(
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {delay}s restarting failed container={name} pod={}_{}({})",
                            ctx.pod_name, ctx.namespace, ctx.uid
                        )),
                    ));
                    status.last_state = Some(this);
                }
                _ => {
                    status.state = Some(this);
                    status.last_state = previous_state;
                    // An init container that finished its work counts as ready, as upstream's
                    // prober reports it; an app container that exited never is.
                    status.ready = role == Role::Init && exit.code == 0;
                }
            }
        }
        RunState::Created | RunState::Unknown => {
            status.state = Some(waiting("ContainerCreating", None));
            status.last_state = previous_state;
        }
    }
    status
}

/// A pod's container statuses, by kind.
#[derive(Debug)]
pub struct Statuses {
    /// In spec order.
    pub init: Vec<ContainerStatus>,
    /// Sorted by name.
    pub apps: Vec<ContainerStatus>,
    /// In spec order.
    pub ephemeral: Vec<ContainerStatus>,
}

/// The status of every container of the spec.
pub fn container_statuses(
    spec: &PodSpec,
    runtime: &PodRuntime,
    attempts: &Attempts,
    ctx: &Context<'_>,
) -> Statuses {
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(spec, c, Role::Init, runtime, attempts, ctx))
        .collect();
    let mut apps: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(spec, c, Role::App, runtime, attempts, ctx))
        .collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    let ephemeral = super::ephemeral::of(spec)
        .iter()
        .map(|c| container_status(spec, c, Role::Ephemeral, runtime, attempts, ctx))
        .collect();
    Statuses {
        init,
        apps,
        ephemeral,
    }
}

fn exit_code(state: Option<&ContainerState>) -> Option<i32> {
    state?.terminated.as_ref().map(|t| t.exit_code)
}

/// Init containers that have not yet done their part: regular ones not succeeded,
/// sidecars not started.
fn incomplete_init<'a>(spec: &'a PodSpec, statuses: &[ContainerStatus]) -> Vec<&'a str> {
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| {
            let status = statuses.iter().find(|s| s.name == c.name);
            if is_sidecar(c) {
                status.is_none_or(|s| s.started != Some(true))
            } else {
                exit_code(status.and_then(|s| s.state.as_ref())) != Some(0)
            }
        })
        .map(|c| c.name.as_str())
        .collect()
}

/// Holds Ready at False while a readiness gate's condition (set by someone else) is
/// missing or not True, with upstream's reason and message. `conditions` holds the pod's
/// whole set, other agents' included; `previous` gives the transition time to keep.
pub fn apply_readiness_gates(
    spec: &PodSpec,
    conditions: &mut [PodCondition],
    previous: Option<&PodStatus>,
    now: Timestamp,
) {
    let unready: Vec<String> = spec
        .readiness_gates
        .iter()
        .flatten()
        .filter_map(
            |gate| match conditions.iter().find(|c| c.type_ == gate.condition_type) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate \"{}\" does not exist.",
                    gate.condition_type
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                    gate.condition_type, c.status
                )),
                Some(_) => None,
            },
        )
        .collect();
    if unready.is_empty() {
        return;
    }
    let Some(ready) = conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready" && c.status == "True")
    else {
        // Unready containers already explain it.
        return;
    };
    let kept = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|old| {
            old.iter()
                .find(|o| o.type_ == "Ready" && o.status == "False")
        })
        .and_then(|o| o.last_transition_time.clone());
    *ready = PodCondition {
        last_transition_time: Some(kept.unwrap_or(Time(now))),
        ..condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(unready.join(", ")),
        )
    };
}

/// The kubelet's `getPhase`.
pub fn phase_of(spec: &PodSpec, init: &[ContainerStatus], apps: &[ContainerStatus]) -> Phase {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut pending_init = 0;
    let mut failed_init = 0;
    for container in spec.init_containers.iter().flatten() {
        let status = init.iter().find(|s| s.name == container.name);
        if is_sidecar(container) {
            if status.is_none_or(|s| s.started != Some(true)) {
                pending_init += 1;
            }
            continue;
        }
        let Some(state) = status.and_then(|s| s.state.as_ref()) else {
            pending_init += 1;
            continue;
        };
        let last = status.and_then(|s| exit_code(s.last_state.as_ref()));
        match (exit_code(Some(state)), state.waiting.is_some(), last) {
            (Some(0), _, _) => {}
            (Some(_), _, _) => failed_init += 1,
            (None, true, Some(code)) if code != 0 => failed_init += 1,
            _ => pending_init += 1,
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded, mut restarting) = (0, 0, 0, 0, 0);
    for status in apps {
        let Some(state) = status.state.as_ref() else {
            continue;
        };
        let code = exit_code(Some(state)).or_else(|| exit_code(status.last_state.as_ref()));
        if state.running.is_some() {
            running += 1;
        } else if let Some(code) = code {
            stopped += 1;
            if state.terminated.is_some() && code == 0 {
                succeeded += 1;
            }
            let container = spec.containers.iter().find(|c| c.name == status.name);
            if container.is_some_and(|c| should_restart(spec, c, code, false)) {
                restarting += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return Phase::Failed;
    }
    if pending_init > 0 || waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    // All app containers stopped: the pod runs on while any of them will be restarted (the
    // pod's policy or the container's own, see `should_restart`).
    if stopped > 0 {
        return if restarting > 0 {
            Phase::Running
        } else if stopped == succeeded {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
    }
    Phase::Pending
}

/// The phase alone, for the lifecycle.
pub fn phase(spec: &PodSpec, runtime: &PodRuntime, attempts: &Attempts, now: Timestamp) -> Phase {
    let ctx = Context {
        pod_name: "",
        namespace: "",
        uid: "",
        runtime_name: "",
        host_ips: &[],
        host_network: false,
        now,
        probes: &NO_PROBES,
        running_with: &NOT_RESIZED,
    };
    let Statuses { init, apps, .. } = container_statuses(spec, runtime, attempts, &ctx);
    phase_of(spec, &init, &apps)
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        ..PodCondition::default()
    }
}

/// The whole status. `previous` is what the API server holds: its phase never goes back
/// from terminal, and conditions keep their transition times while unchanged.
pub fn pod_status(
    spec: &PodSpec,
    runtime: &PodRuntime,
    attempts: &Attempts,
    previous: Option<&PodStatus>,
    ctx: &Context<'_>,
) -> PodStatus {
    let Statuses {
        init,
        apps,
        ephemeral,
    } = container_statuses(spec, runtime, attempts, ctx);
    let mut phase = phase_of(spec, &init, &apps);
    if let Some(old) = previous
        .and_then(|p| Phase::parse(p.phase.as_deref()))
        .filter(|p| p.is_terminal())
    {
        phase = old;
    }
    let sandbox = runtime.sandbox();
    let pod_ips: Vec<String> = if ctx.host_network {
        ctx.host_ips.to_vec()
    } else {
        sandbox
            .filter(|s| s.ready)
            .map(|s| s.ips.clone())
            .unwrap_or_default()
    };

    let incomplete = incomplete_init(spec, &init);
    let unready: Vec<&str> = apps
        .iter()
        .chain(init.iter().filter(|s| {
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == s.name && is_sidecar(c))
        }))
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let completed = phase == Phase::Succeeded;
    let network_ready =
        sandbox.is_some_and(|s| s.ready) && (ctx.host_network || !pod_ips.is_empty());

    let mut conditions = vec![condition(
        "PodReadyToStartContainers",
        network_ready,
        None,
        None,
    )];
    conditions.push(if completed {
        condition("Initialized", true, Some("PodCompleted"), None)
    } else if incomplete.is_empty() {
        condition("Initialized", true, None, None)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    });
    for kind in ["Ready", "ContainersReady"] {
        conditions.push(if completed {
            condition(kind, false, Some("PodCompleted"), None)
        } else if unready.is_empty() && phase == Phase::Running {
            condition(kind, true, None, None)
        } else {
            let names = if unready.is_empty() {
                apps.iter().map(|s| s.name.as_str()).collect()
            } else {
                unready.clone()
            };
            condition(
                kind,
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    names.join(" ")
                )),
            )
        });
    }
    conditions.push(condition("PodScheduled", true, None, None));

    let old_conditions = previous.and_then(|p| p.conditions.as_ref());
    for c in &mut conditions {
        let kept = old_conditions
            .and_then(|old| {
                old.iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
            })
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or(Time(ctx.now)));
    }

    PodStatus {
        phase: Some(phase.as_str().to_owned()),
        conditions: Some(conditions),
        host_ip: ctx.host_ips.first().cloned(),
        host_ips: Some(
            ctx.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        ),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty())
            .then(|| pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: Some(
            previous
                .and_then(|p| p.start_time.clone())
                .unwrap_or(Time(ctx.now)),
        ),
        qos_class: Some(qos::class(spec).to_owned()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(apps),
        ephemeral_container_statuses: (!ephemeral.is_empty()).then_some(ephemeral),
        reason: previous.and_then(|p| p.reason.clone()),
        message: previous.and_then(|p| p.message.clone()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::attempts::Failure;
    use super::super::observed::Sandbox;
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn ctx() -> Context<'static> {
        Context {
            pod_name: "web",
            namespace: "default",
            uid: "u1",
            runtime_name: "containerd",
            host_ips: &[],
            host_network: false,
            now: at(100),
            probes: &NO_PROBES,
            running_with: &NOT_RESIZED,
        }
    }

    fn spec(init: &[&str], apps: &[&str], policy: &str) -> PodSpec {
        let container = |n: &&str| Container {
            name: (*n).into(),
            image: Some("busybox".into()),
            ..Container::default()
        };
        PodSpec {
            init_containers: (!init.is_empty()).then(|| init.iter().map(container).collect()),
            containers: apps.iter().map(container).collect(),
            restart_policy: Some(policy.into()),
            ..PodSpec::default()
        }
    }

    fn record(id: &str, name: &str, attempt: u32, state: RunState) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            attempt,
            sandbox_id: "s".into(),
            state,
            created_at: i64::from(attempt),
            image: "docker.io/library/busybox:latest".into(),
            image_id: "sha256:abc".into(),
            created_with: None,
        }
    }

    fn exited(code: i32) -> RunState {
        RunState::Exited(Exit {
            code,
            reason: String::new(),
            message: String::new(),
            started_at: Some(at(1)),
            finished_at: Some(at(2)),
        })
    }

    fn running() -> RunState {
        RunState::Running {
            started_at: Some(at(1)),
        }
    }

    fn with_sandbox(containers: Vec<ContainerRecord>) -> PodRuntime {
        PodRuntime {
            sandboxes: vec![Sandbox {
                id: "s".into(),
                attempt: 0,
                ready: true,
                created_at: 0,
                ips: vec!["10.244.0.7".into()],
            }],
            containers,
            ..PodRuntime::default()
        }
    }

    fn reason(status: &ContainerStatus) -> String {
        let state = status.state.clone().unwrap_or_default();
        state
            .waiting
            .and_then(|w| w.reason)
            .or(state.terminated.and_then(|t| t.reason))
            .unwrap_or_else(|| "Running".into())
    }

    #[test]
    fn phases_follow_the_kubelets_rules() {
        let cases: &[(&str, Vec<RunState>, Phase)] = &[
            ("Always", vec![running(), running()], Phase::Running),
            ("Always", vec![exited(0), exited(1)], Phase::Running),
            ("OnFailure", vec![exited(0), exited(0)], Phase::Succeeded),
            ("OnFailure", vec![exited(0), exited(3)], Phase::Running),
            ("Never", vec![exited(0), exited(3)], Phase::Failed),
            ("Never", vec![exited(0), running()], Phase::Running),
        ];
        for (policy, states, expected) in cases {
            let spec = spec(&[], &["a", "b"], policy);
            let runtime = with_sandbox(
                states
                    .iter()
                    .zip(["a", "b"])
                    .map(|(state, name)| record(name, name, 0, state.clone()))
                    .collect(),
            );
            let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
            assert_eq!(
                status.phase.as_deref(),
                Some(expected.as_str()),
                "{policy} {states:?}"
            );
        }
    }

    #[test]
    fn a_new_pod_with_init_containers_is_pending_with_pod_initializing() {
        let spec = spec(&["init"], &["app"], "Always");
        let status = pod_status(
            &spec,
            &PodRuntime::default(),
            &Attempts::default(),
            None,
            &ctx(),
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let init = &status.init_container_statuses.expect("init statuses")[0];
        assert_eq!(reason(init), "PodInitializing");
        let app = &status.container_statuses.expect("statuses")[0];
        assert_eq!(reason(app), "PodInitializing");
        let conditions = status.conditions.expect("conditions");
        let initialized = conditions
            .iter()
            .find(|c| c.type_ == "Initialized")
            .expect("Initialized");
        assert_eq!(
            initialized.message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
    }

    #[test]
    fn running_pod_is_ready_with_ids_ips_and_qos() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = with_sandbox(vec![record("c1", "app", 0, running())]);
        let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        let app = &status.container_statuses.expect("statuses")[0];
        assert!(app.ready);
        assert_eq!(app.container_id.as_deref(), Some("containerd://c1"));
        assert_eq!(app.image_id, "sha256:abc");
        for c in status.conditions.expect("conditions") {
            assert_eq!(c.status, "True", "{}", c.type_);
        }
    }

    #[test]
    fn crash_loop_shows_back_off_with_the_last_termination() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = with_sandbox(vec![
            record("c0", "app", 0, exited(1)),
            record("c1", "app", 1, exited(1)),
        ]);
        let mut attempts = Attempts::default();
        attempts.started("app", true, at(95));
        attempts.started("app", true, at(96));
        let status = pod_status(&spec, &runtime, &attempts, None, &ctx());
        let app = &status.container_statuses.expect("statuses")[0];
        assert_eq!(reason(app), "CrashLoopBackOff");
        let message = app
            .state
            .clone()
            .and_then(|s| s.waiting)
            .and_then(|w| w.message)
            .expect("message");
        assert_eq!(
            message,
            "back-off 20s restarting failed container=app pod=web_default(u1)"
        );
        assert_eq!(app.restart_count, 1);
        assert_eq!(
            app.last_state
                .clone()
                .and_then(|s| s.terminated)
                .map(|t| t.exit_code),
            Some(1)
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn pull_failures_show_err_image_pull_then_back_off() {
        let spec = spec(&[], &["app"], "Always");
        let mut attempts = Attempts::default();
        let failure = Failure {
            kind: StartFailure::Pull,
            message: "not found".into(),
            image: "nope:1".into(),
        };
        attempts.failed("app", failure, at(99));
        let runtime = with_sandbox(vec![]);
        let reason_at = |now| {
            let mut ctx = ctx();
            ctx.now = now;
            let status = pod_status(&spec, &runtime, &attempts, None, &ctx);
            assert_eq!(status.phase.as_deref(), Some("Pending"));
            reason(&status.container_statuses.expect("statuses")[0])
        };
        assert_eq!(reason_at(at(99)), "ErrImagePull", "right after the failure");
        assert_eq!(attempts.status_changes_at(at(99)), Some(at(100)));
        assert_eq!(
            reason_at(at(100)),
            "ImagePullBackOff",
            "while waiting for the retry"
        );
        assert_eq!(reason_at(at(200)), "ErrImagePull", "the retry is due");
    }

    #[test]
    fn succeeded_pods_report_pod_completed_and_stay_terminal() {
        let spec = spec(&[], &["app"], "OnFailure");
        let runtime = with_sandbox(vec![record("c1", "app", 0, exited(0))]);
        let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let conditions = status.conditions.clone().expect("conditions");
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
        let app = &status.container_statuses.clone().expect("statuses")[0];
        assert_eq!(reason(app), "Completed");

        // Even if the runtime lost the containers, a terminal phase is never left.
        let gone = pod_status(
            &spec,
            &PodRuntime::default(),
            &Attempts::default(),
            Some(&status),
            &ctx(),
        );
        assert_eq!(gone.phase.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn init_containers_that_succeeded_are_ready_and_failed_ones_are_not() {
        let spec = spec(&["init1", "init2"], &["app"], "Never");
        let runtime = with_sandbox(vec![
            record("i1", "init1", 0, exited(0)),
            record("i2", "init2", 0, exited(0)),
            record("c1", "app", 0, exited(0)),
        ]);
        let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let init = status
            .init_container_statuses
            .clone()
            .expect("init statuses");
        assert!(init.iter().all(|c| c.ready), "{init:?}");
        let app = &status.container_statuses.clone().expect("statuses")[0];
        assert!(!app.ready, "an exited app container is not ready");

        let runtime = with_sandbox(vec![record("i1", "init1", 0, exited(1))]);
        let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        let init = status
            .init_container_statuses
            .clone()
            .expect("init statuses");
        assert!(!init[0].ready, "a failed init container is not ready");
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_conditions_are_true() {
        let mut spec = spec(&[], &["app"], "Always");
        spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
            condition_type: "example.com/gate".into(),
        }]);
        let runtime = with_sandbox(vec![record("c1", "app", 0, running())]);
        let status = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        let ready = |conditions: &[PodCondition]| {
            let c = conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .expect("Ready");
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let mut conditions = status.conditions.clone().expect("conditions");
        apply_readiness_gates(&spec, &mut conditions, None, at(0));
        assert_eq!(
            ready(&conditions),
            (
                "False".into(),
                Some("ReadinessGatesNotReady".into()),
                Some("corresponding condition of pod readiness gate \"example.com/gate\" does not exist.".into())
            )
        );
        let gate = |status: &str| PodCondition {
            type_: "example.com/gate".into(),
            status: status.into(),
            ..PodCondition::default()
        };
        let mut conditions = status.conditions.clone().expect("conditions");
        conditions.push(gate("False"));
        apply_readiness_gates(&spec, &mut conditions, None, at(0));
        assert_eq!(
            ready(&conditions).2.as_deref(),
            Some(
                "the status of pod readiness gate \"example.com/gate\" is not \"True\", but False"
            )
        );
        let mut conditions = status.conditions.clone().expect("conditions");
        conditions.push(gate("True"));
        apply_readiness_gates(&spec, &mut conditions, None, at(0));
        assert_eq!(ready(&conditions).0, "True");
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = with_sandbox(vec![record("c1", "app", 0, running())]);
        let first = pod_status(&spec, &runtime, &Attempts::default(), None, &ctx());
        let mut later = ctx();
        later.now = at(500);
        let second = pod_status(&spec, &runtime, &Attempts::default(), Some(&first), &later);
        assert_eq!(first.conditions, second.conditions);
        assert_eq!(first.start_time, second.start_time);
    }
}
