//! Lifecycle: the pure decision of what to do next for one pod, given what is desired and
//! what the runtime holds. The worker executes the actions and asks again, until there is
//! nothing left to do; the same inputs always give the same plan.
//!
//! A pod's stage only moves forward:
//! ```text
//!   Syncing ──(deleted, or every container done for good)──> Terminating
//!   Terminating ──(nothing runs any more)──> Terminated { removed }
//!   Terminated { removed: false } ──(deleted)──> Terminated { removed: true }
//! ```
//! While syncing, the sandbox comes first, then init containers one at a time in order,
//! then all app containers. Upstream reference: kubelet's `computePodActions`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerRestartRule, PodSpec};
use k8s_openapi::jiff::Timestamp;

use super::attempts::Attempts;
use super::observed::{ContainerRecord, PodRuntime, RunState};
use super::status::{self, Phase};

/// The shortest grace period a kill gets, as with the kubelet.
pub const MIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Syncing,
    Terminating { grace: Duration, remove: bool },
    Terminated { removed: bool },
}

/// What the API says about the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desire {
    Run,
    /// Deleted with this grace period (from `deletionGracePeriodSeconds`).
    Delete {
        grace: Duration,
    },
    /// No longer in the API at all (force-deleted): stop at once.
    Gone,
}

/// One step of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod's sandbox; `replaces` names a dead one (SandboxChanged).
    CreateSandbox {
        attempt: u32,
        replaces: Option<String>,
    },
    /// Ensure the image, then create and start the container.
    StartContainer {
        name: String,
        attempt: u32,
        restart: bool,
    },
    KillContainer {
        id: String,
        name: String,
        grace: Duration,
    },
    RemoveContainer {
        id: String,
    },
    StopSandbox {
        id: String,
    },
    RemoveSandbox {
        id: String,
    },
    /// Delete the API object with grace 0: everything of the pod is gone from the node.
    DeletePod,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub stage: Stage,
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes (a backoff expires).
    pub wake_at: Option<Timestamp>,
}

/// Decides the next actions.
pub fn step(
    stage: Stage,
    desire: Desire,
    spec: &PodSpec,
    runtime: &PodRuntime,
    attempts: &Attempts,
    now: Timestamp,
) -> Plan {
    let stage = advance(stage, desire, spec, runtime, attempts, now);
    let (actions, wake_at) = match stage {
        Stage::Syncing => sync(spec, runtime, attempts, now),
        Stage::Terminating { grace, remove } => (terminate(spec, runtime, grace, remove), None),
        Stage::Terminated { removed } => (
            cleanup(
                runtime,
                matches!(desire, Desire::Delete { .. } | Desire::Gone),
                removed,
            ),
            None,
        ),
    };
    // Terminating ends once nothing is left to stop; removal ends with the API object's
    // deletion, the last action.
    let stage = match stage {
        Stage::Terminating { remove: false, .. } if actions.is_empty() => {
            Stage::Terminated { removed: false }
        }
        Stage::Terminating { .. } | Stage::Terminated { removed: false }
            if actions == [Action::DeletePod] =>
        {
            Stage::Terminated { removed: true }
        }
        other => other,
    };
    Plan {
        stage,
        actions,
        wake_at,
    }
}

fn advance(
    stage: Stage,
    desire: Desire,
    spec: &PodSpec,
    runtime: &PodRuntime,
    attempts: &Attempts,
    now: Timestamp,
) -> Stage {
    match (stage, desire) {
        (Stage::Syncing, Desire::Delete { grace }) => Stage::Terminating {
            grace: grace.max(MIN_GRACE),
            remove: true,
        },
        (Stage::Syncing, Desire::Gone) => Stage::Terminating {
            grace: MIN_GRACE,
            remove: true,
        },
        (Stage::Syncing, Desire::Run) => match status::phase(spec, runtime, attempts, now) {
            Phase::Succeeded | Phase::Failed => Stage::Terminating {
                grace: MIN_GRACE,
                remove: false,
            },
            _ => Stage::Syncing,
        },
        // A deletion while stopping a finished pod: remove it too once stopped.
        (Stage::Terminating { grace, .. }, Desire::Delete { .. } | Desire::Gone) => {
            Stage::Terminating {
                grace,
                remove: true,
            }
        }
        (other, _) => other,
    }
}

fn restart_policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

/// Whether an exited container of the pod is started again.
pub fn should_restart(
    spec: &PodSpec,
    container: &Container,
    exit_code: i32,
    is_init: bool,
) -> bool {
    if is_sidecar(container) {
        return true;
    }
    if !is_init {
        // Container restart rules (beta upstream, on by default): the first rule whose exit
        // codes match decides; then the container's own policy, then the pod's.
        let rules = container.restart_policy_rules.iter().flatten();
        if let Some(rule) = rules.into_iter().find(|r| rule_matches(r, exit_code)) {
            return rule.action == "Restart";
        }
        match container.restart_policy.as_deref() {
            Some("Always") => return true,
            Some("OnFailure") => return exit_code != 0,
            Some("Never") => return false,
            _ => {}
        }
    }
    match restart_policy(spec) {
        "Never" => false,
        // Init containers run to success: under Always they are retried like OnFailure.
        "OnFailure" => exit_code != 0,
        _ if is_init => exit_code != 0,
        _ => true,
    }
}

fn rule_matches(rule: &ContainerRestartRule, exit_code: i32) -> bool {
    let Some(codes) = &rule.exit_codes else {
        return false;
    };
    let listed = codes.values.iter().flatten().any(|&v| v == exit_code);
    match codes.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    }
}

/// An init container with `restartPolicy: Always` is a sidecar: started in order with the
/// init containers, then kept running alongside the app containers.
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

fn next_attempt(runtime: &PodRuntime, name: &str) -> u32 {
    runtime.latest(name).map_or(0, |c| c.attempt + 1)
}

fn sync(
    spec: &PodSpec,
    runtime: &PodRuntime,
    attempts: &Attempts,
    now: Timestamp,
) -> (Vec<Action>, Option<Timestamp>) {
    let mut actions = Vec::new();
    let sandbox = match runtime.sandbox() {
        Some(sandbox) if sandbox.ready => sandbox,
        dead => {
            // No usable sandbox: stop whatever still runs in the old one, then start over.
            for container in runtime.running() {
                actions.push(Action::KillContainer {
                    id: container.id.clone(),
                    name: container.name.clone(),
                    grace: MIN_GRACE,
                });
            }
            if actions.is_empty() {
                actions.push(Action::CreateSandbox {
                    attempt: dead.map_or(0, |s| s.attempt + 1),
                    replaces: dead.map(|s| s.id.clone()),
                });
            }
            return (actions, None);
        }
    };
    let mut wake_at: Option<Timestamp> = None;
    let mut wake = |t: Timestamp| wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
    let in_sandbox = |name: &str| runtime.latest(name).filter(|c| c.sandbox_id == sandbox.id);

    // Containers created but never started (an interrupted start) are replaced.
    for container in &runtime.containers {
        if container.state == RunState::Created && container.sandbox_id == sandbox.id {
            actions.push(Action::RemoveContainer {
                id: container.id.clone(),
            });
        }
    }
    // Of the dead, only the newest and the one before it are kept (for status and
    // `logs --previous`), as the kubelet's container GC keeps one dead container per name.
    for container in &runtime.containers {
        let newer = runtime
            .containers
            .iter()
            .filter(|c| {
                c.name == container.name
                    && (c.attempt, c.created_at) > (container.attempt, container.created_at)
            })
            .count();
        if newer >= 2 && matches!(container.state, RunState::Exited(_)) {
            actions.push(Action::RemoveContainer {
                id: container.id.clone(),
            });
        }
    }
    if !actions.is_empty() {
        return (actions, None);
    }

    let mut start = |container: &Container, is_init: bool, actions: &mut Vec<Action>| -> bool {
        // Returns whether the container is done (init) or up (sidecar / app).
        let name = container.name.as_str();
        let latest = in_sandbox(name);
        let (restart, done) = match latest.map(|c| &c.state) {
            None => (false, false),
            Some(RunState::Running { .. }) => {
                // A sidecar is up once started: its startup probe, if any, has passed.
                let started = latest.is_some_and(|c| !runtime.startup_pending.contains(&c.id));
                return !is_init || (is_sidecar(container) && started);
            }
            Some(RunState::Created | RunState::Unknown) => return false,
            Some(RunState::Exited(exit)) => {
                if !should_restart(spec, container, exit.code, is_init) {
                    return is_init && exit.code == 0;
                }
                (true, false)
            }
        };
        debug_assert!(!done);
        match attempts.blocked_until(name, restart, now) {
            Some(until) => wake(until),
            None => actions.push(Action::StartContainer {
                name: name.to_owned(),
                attempt: next_attempt(runtime, name),
                restart,
            }),
        }
        false
    };

    for init in spec.init_containers.iter().flatten() {
        if !start(init, true, &mut actions) {
            // One init container at a time; a failed one under restartPolicy Never ends the
            // pod (the phase says Failed and the next step terminates it).
            return (actions, wake_at);
        }
    }
    for app in &spec.containers {
        start(app, false, &mut actions);
    }
    // Ephemeral containers start once, whatever becomes of them afterwards; only a start
    // that failed before the runtime made the container is tried again.
    for container in super::ephemeral::of(spec) {
        let name = container.name.as_str();
        if runtime.latest(name).is_some() {
            continue;
        }
        match attempts.blocked_until(name, false, now) {
            Some(until) => wake(until),
            None => actions.push(Action::StartContainer {
                name: name.to_owned(),
                attempt: 0,
                restart: false,
            }),
        }
    }
    (actions, wake_at)
}

/// Stops the pod in upstream's order: app (and ephemeral) containers first, then the
/// sidecars one at a time in reverse order, so that a sidecar's preStop hook can still
/// reach the sidecars started before it; then the sandbox, and the removal if asked.
fn terminate(spec: &PodSpec, runtime: &PodRuntime, grace: Duration, remove: bool) -> Vec<Action> {
    let sidecar_rank = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .position(|c| c.name == name && is_sidecar(c))
    };
    let kill = |c: &ContainerRecord| Action::KillContainer {
        id: c.id.clone(),
        name: c.name.clone(),
        grace,
    };
    let first: Vec<Action> = runtime
        .running()
        .filter(|c| sidecar_rank(&c.name).is_none())
        .map(kill)
        .collect();
    if !first.is_empty() {
        return first;
    }
    let last_sidecar = runtime.running().max_by_key(|c| sidecar_rank(&c.name));
    if let Some(sidecar) = last_sidecar {
        return vec![kill(sidecar)];
    }
    let stop: Vec<Action> = runtime
        .sandboxes
        .iter()
        .filter(|s| s.ready)
        .map(|s| Action::StopSandbox { id: s.id.clone() })
        .collect();
    if !stop.is_empty() {
        return stop;
    }
    if remove { removal(runtime) } else { Vec::new() }
}

/// Removes every sandbox (and with it, its containers), then the API object.
fn removal(runtime: &PodRuntime) -> Vec<Action> {
    let mut actions: Vec<Action> = runtime
        .sandboxes
        .iter()
        .map(|s| Action::RemoveSandbox { id: s.id.clone() })
        .collect();
    // Containers whose sandbox is already gone.
    actions.extend(
        runtime
            .containers
            .iter()
            .filter(|c| !runtime.sandboxes.iter().any(|s| s.id == c.sandbox_id))
            .map(|c| Action::RemoveContainer { id: c.id.clone() }),
    );
    if actions.is_empty() {
        actions.push(Action::DeletePod);
    }
    actions
}

fn cleanup(runtime: &PodRuntime, deleted: bool, removed: bool) -> Vec<Action> {
    if removed || !deleted {
        return Vec::new();
    }
    removal(runtime)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;

    use super::super::attempts::{Failure, StartFailure};
    use super::super::observed::{ContainerRecord, Exit, Sandbox};
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Container::default()
        }
    }

    fn spec(init: &[&str], apps: &[&str], policy: &str) -> PodSpec {
        PodSpec {
            init_containers: (!init.is_empty())
                .then(|| init.iter().map(|n| container(n)).collect()),
            containers: apps.iter().map(|n| container(n)).collect(),
            restart_policy: Some(policy.into()),
            ..PodSpec::default()
        }
    }

    fn sandbox(id: &str, attempt: u32, ready: bool) -> Sandbox {
        Sandbox {
            id: id.into(),
            attempt,
            ready,
            created_at: i64::from(attempt),
            ips: vec!["10.244.0.5".into()],
        }
    }

    fn record(
        id: &str,
        name: &str,
        attempt: u32,
        sandbox: &str,
        state: RunState,
    ) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            attempt,
            sandbox_id: sandbox.into(),
            state,
            created_at: i64::from(attempt),
            image: "busybox".into(),
            image_id: "sha256:1".into(),
            created_with: None,
        }
    }

    fn running() -> RunState {
        RunState::Running {
            started_at: Some(at(0)),
        }
    }

    fn exited(code: i32) -> RunState {
        RunState::Exited(Exit {
            code,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: String::new(),
            started_at: Some(at(0)),
            finished_at: Some(at(1)),
        })
    }

    fn start(name: &str, attempt: u32, restart: bool) -> Action {
        Action::StartContainer {
            name: name.into(),
            attempt,
            restart,
        }
    }

    fn plan(spec: &PodSpec, runtime: &PodRuntime) -> Plan {
        step(
            Stage::Syncing,
            Desire::Run,
            spec,
            runtime,
            &Attempts::default(),
            at(5),
        )
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_first() {
        let plan = plan(&spec(&[], &["app"], "Always"), &PodRuntime::default());
        assert_eq!(
            plan.actions,
            vec![Action::CreateSandbox {
                attempt: 0,
                replaces: None
            }]
        );
        assert_eq!(plan.stage, Stage::Syncing);
    }

    #[test]
    fn init_containers_run_one_at_a_time_in_order_then_all_apps() {
        let spec = spec(&["i1", "i2"], &["a", "b"], "Always");
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![],
            ..PodRuntime::default()
        };
        assert_eq!(plan(&spec, &runtime).actions, vec![start("i1", 0, false)]);
        runtime
            .containers
            .push(record("c1", "i1", 0, "s", running()));
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![],
            "wait for i1 to finish"
        );
        runtime.containers[0].state = exited(0);
        assert_eq!(plan(&spec, &runtime).actions, vec![start("i2", 0, false)]);
        runtime
            .containers
            .push(record("c2", "i2", 0, "s", exited(0)));
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![start("a", 0, false), start("b", 0, false)]
        );
    }

    #[test]
    fn a_failed_init_container_is_retried_unless_the_policy_is_never() {
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![record("c1", "i1", 0, "s", exited(1))],
            ..PodRuntime::default()
        };
        assert_eq!(
            plan(&spec(&["i1"], &["a"], "Always"), &runtime).actions,
            vec![start("i1", 1, true)]
        );
        let never = plan(&spec(&["i1"], &["a"], "Never"), &runtime);
        assert!(
            matches!(never.stage, Stage::Terminating { remove: false, .. }),
            "the pod failed: {never:?}"
        );
        assert_eq!(
            never.actions,
            vec![Action::StopSandbox { id: "s".into() }],
            "and its sandbox is stopped"
        );
    }

    #[test]
    fn restart_policy_decides_what_restarts() {
        let spec_with = |policy| spec(&[], &["ok", "bad"], policy);
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![
                record("c1", "ok", 0, "s", exited(0)),
                record("c2", "bad", 0, "s", exited(2)),
            ],
            ..PodRuntime::default()
        };
        assert_eq!(
            plan(&spec_with("Always"), &runtime).actions,
            vec![start("ok", 1, true), start("bad", 1, true)]
        );
        assert_eq!(
            plan(&spec_with("OnFailure"), &runtime).actions,
            vec![start("bad", 1, true)]
        );
        let never = plan(&spec_with("Never"), &runtime);
        assert!(
            matches!(never.stage, Stage::Terminating { remove: false, .. }),
            "{never:?}"
        );
        assert_eq!(never.actions, vec![Action::StopSandbox { id: "s".into() }]);
    }

    #[test]
    fn crash_loop_waits_for_the_backoff_and_says_when_to_look_again() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![record("c1", "app", 1, "s", exited(1))],
            ..PodRuntime::default()
        };
        let mut attempts = Attempts::default();
        attempts.started("app", true, at(0));
        attempts.started("app", true, at(1));
        let plan = step(
            Stage::Syncing,
            Desire::Run,
            &spec,
            &runtime,
            &attempts,
            at(5),
        );
        assert_eq!(plan.actions, vec![]);
        assert_eq!(
            plan.wake_at,
            Some(at(21)),
            "second restart waits 20 s from the last"
        );
        let later = step(
            Stage::Syncing,
            Desire::Run,
            &spec,
            &runtime,
            &attempts,
            at(21),
        );
        assert_eq!(later.actions, vec![start("app", 2, true)]);
    }

    #[test]
    fn a_failed_pull_is_retried_after_its_backoff() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![],
            ..PodRuntime::default()
        };
        let mut attempts = Attempts::default();
        let failure = Failure {
            kind: StartFailure::Pull,
            message: "not found".into(),
            image: "nope".into(),
        };
        attempts.failed("app", failure, at(0));
        let plan = step(
            Stage::Syncing,
            Desire::Run,
            &spec,
            &runtime,
            &attempts,
            at(5),
        );
        assert_eq!((plan.actions.len(), plan.wake_at), (0, Some(at(10))));
        let retry = step(
            Stage::Syncing,
            Desire::Run,
            &spec,
            &runtime,
            &attempts,
            at(10),
        );
        assert_eq!(retry.actions, vec![start("app", 0, false)]);
    }

    #[test]
    fn a_dead_sandbox_is_replaced_after_its_containers_are_stopped() {
        let spec = spec(&[], &["app"], "Always");
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s0", 0, false)],
            containers: vec![record("c1", "app", 0, "s0", running())],
            ..PodRuntime::default()
        };
        let first = plan(&spec, &runtime);
        assert!(
            matches!(first.actions.as_slice(), [Action::KillContainer { id, .. }] if id == "c1")
        );
        runtime.containers[0].state = exited(137);
        let second = plan(&spec, &runtime);
        assert_eq!(
            second.actions,
            vec![Action::CreateSandbox {
                attempt: 1,
                replaces: Some("s0".into())
            }]
        );
        runtime.sandboxes.push(sandbox("s1", 1, true));
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![start("app", 1, false)],
            "restart count continues"
        );
    }

    #[test]
    fn sidecars_stop_after_the_apps_last_started_first() {
        let mut spec = spec(&["proxy", "logger"], &["app"], "Always");
        for init in spec.init_containers.as_mut().expect("init") {
            init.restart_policy = Some("Always".into());
        }
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![
                record("c1", "proxy", 0, "s", running()),
                record("c2", "logger", 0, "s", running()),
                record("c3", "app", 0, "s", running()),
            ],
            ..PodRuntime::default()
        };
        let grace = Duration::from_secs(30);
        let desire = Desire::Delete { grace };
        let attempts = Attempts::default();
        let killed = |runtime: &PodRuntime| -> Vec<String> {
            step(Stage::Syncing, desire, &spec, runtime, &attempts, at(0))
                .actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::KillContainer { name, .. } => Some(name),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(killed(&runtime), vec!["app"]);
        runtime.containers[2].state = exited(0);
        assert_eq!(killed(&runtime), vec!["logger"]);
        runtime.containers[1].state = exited(0);
        assert_eq!(killed(&runtime), vec!["proxy"]);
    }

    #[test]
    fn deletion_kills_with_grace_then_stops_removes_and_deletes() {
        let spec = spec(&[], &["app"], "Always");
        let grace = Duration::from_secs(30);
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![record("c1", "app", 0, "s", running())],
            ..PodRuntime::default()
        };
        let desire = Desire::Delete { grace };
        let attempts = Attempts::default();
        let p1 = step(Stage::Syncing, desire, &spec, &runtime, &attempts, at(0));
        assert_eq!(
            p1.stage,
            Stage::Terminating {
                grace,
                remove: true
            }
        );
        assert_eq!(
            p1.actions,
            vec![Action::KillContainer {
                id: "c1".into(),
                name: "app".into(),
                grace
            }]
        );
        runtime.containers[0].state = exited(0);
        let p2 = step(p1.stage, desire, &spec, &runtime, &attempts, at(1));
        assert_eq!(p2.actions, vec![Action::StopSandbox { id: "s".into() }]);
        runtime.sandboxes[0].ready = false;
        let p3 = step(p2.stage, desire, &spec, &runtime, &attempts, at(2));
        assert_eq!(p3.actions, vec![Action::RemoveSandbox { id: "s".into() }]);
        runtime = PodRuntime::default();
        let p4 = step(p3.stage, desire, &spec, &runtime, &attempts, at(3));
        assert_eq!(p4.actions, vec![Action::DeletePod]);
        let p5 = step(p4.stage, desire, &spec, &runtime, &attempts, at(4));
        assert_eq!(
            (p5.stage, p5.actions.len()),
            (Stage::Terminated { removed: true }, 0)
        );
    }

    #[test]
    fn only_the_two_newest_dead_containers_are_kept() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: (0..4)
                .map(|i| record(&format!("c{i}"), "app", i, "s", exited(1)))
                .collect(),
            ..PodRuntime::default()
        };
        let plan = plan(&spec, &runtime);
        assert_eq!(
            plan.actions,
            vec![
                Action::RemoveContainer { id: "c0".into() },
                Action::RemoveContainer { id: "c1".into() }
            ]
        );
    }

    #[test]
    fn stages_never_go_back() {
        let spec = spec(&[], &["app"], "Always");
        let runtime = PodRuntime::default();
        let attempts = Attempts::default();
        for stage in [
            Stage::Terminating {
                grace: MIN_GRACE,
                remove: false,
            },
            Stage::Terminated { removed: false },
            Stage::Terminated { removed: true },
        ] {
            let plan = step(stage, Desire::Run, &spec, &runtime, &attempts, at(0));
            assert_ne!(plan.stage, Stage::Syncing, "{stage:?}");
            assert!(!plan.actions.iter().any(|a| matches!(
                a,
                Action::CreateSandbox { .. } | Action::StartContainer { .. }
            )));
        }
    }

    #[test]
    fn a_finished_pod_deleted_later_is_removed() {
        let spec = spec(&[], &["app"], "Never");
        let runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, false)],
            containers: vec![record("c1", "app", 0, "s", exited(0))],
            ..PodRuntime::default()
        };
        let desire = Desire::Delete {
            grace: Duration::from_secs(30),
        };
        let plan = step(
            Stage::Terminated { removed: false },
            desire,
            &spec,
            &runtime,
            &Attempts::default(),
            at(0),
        );
        assert_eq!(plan.actions, vec![Action::RemoveSandbox { id: "s".into() }]);
    }

    #[test]
    fn ephemeral_containers_start_once_after_init_and_never_again() {
        let mut spec = spec(&["init"], &["app"], "Always");
        spec.ephemeral_containers = Some(vec![k8s_openapi::api::core::v1::EphemeralContainer {
            name: "debug".into(),
            image: Some("busybox".into()),
            ..Default::default()
        }]);
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![record("c1", "init", 0, "s", running())],
            ..PodRuntime::default()
        };
        assert_eq!(plan(&spec, &runtime).actions, vec![], "not while init runs");
        runtime.containers[0].state = exited(0);
        runtime
            .containers
            .push(record("c2", "app", 0, "s", running()));
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![start("debug", 0, false)],
            "beside the app once init is done"
        );
        runtime
            .containers
            .push(record("c3", "debug", 0, "s", exited(1)));
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![],
            "never again, whatever the pod's restart policy"
        );
    }

    #[test]
    fn container_restart_rules_and_policies_override_the_pods() {
        let with = |policy: Option<&str>, rules: serde_json::Value| -> Container {
            serde_json::from_value(serde_json::json!({
                "name": "app", "restartPolicy": policy, "restartPolicyRules": rules,
            }))
            .expect("container")
        };
        let never = spec(&[], &["app"], "Never");
        let always = spec(&[], &["app"], "Always");
        let on_42 = serde_json::json!([
            { "action": "Restart", "exitCodes": { "operator": "In", "values": [42] } }
        ]);
        // The first matching rule restarts; no match falls back to the container's policy.
        assert!(should_restart(
            &never,
            &with(Some("Never"), on_42.clone()),
            42,
            false
        ));
        assert!(!should_restart(
            &never,
            &with(Some("Never"), on_42),
            1,
            false
        ));
        let not_zero = serde_json::json!([
            { "action": "Restart", "exitCodes": { "operator": "NotIn", "values": [0] } }
        ]);
        assert!(should_restart(
            &never,
            &with(None, not_zero.clone()),
            3,
            false
        ));
        assert!(!should_restart(&never, &with(None, not_zero), 0, false));
        // The container's policy beats the pod's, both ways.
        assert!(should_restart(
            &never,
            &with(Some("Always"), serde_json::Value::Null),
            1,
            false
        ));
        assert!(!should_restart(
            &always,
            &with(Some("Never"), serde_json::Value::Null),
            1,
            false
        ));
        assert!(should_restart(
            &always,
            &with(None, serde_json::Value::Null),
            0,
            false
        ));
    }

    #[test]
    fn sidecars_start_before_apps_and_keep_running() {
        let mut spec = spec(&["side"], &["app"], "Never");
        spec.init_containers.as_mut().expect("init")[0].restart_policy = Some("Always".into());
        let mut runtime = PodRuntime {
            sandboxes: vec![sandbox("s", 0, true)],
            containers: vec![],
            ..PodRuntime::default()
        };
        assert_eq!(plan(&spec, &runtime).actions, vec![start("side", 0, false)]);
        runtime
            .containers
            .push(record("c1", "side", 0, "s", running()));
        // Running is not enough while its startup probe has not passed.
        runtime.startup_pending.insert("c1".into());
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![],
            "wait for the sidecar to start"
        );
        runtime.startup_pending.clear();
        assert_eq!(plan(&spec, &runtime).actions, vec![start("app", 0, false)]);
        runtime
            .containers
            .push(record("c2", "app", 0, "s", running()));
        runtime.containers[0].state = exited(1);
        assert_eq!(
            plan(&spec, &runtime).actions,
            vec![start("side", 1, true)],
            "sidecar restarts despite Never"
        );
    }
}
