//! Worker: one task per pod that drives it toward what the API says, level-triggered.
//!
//! Each pass reads the latest desired pod (updates collapse: only the newest matters),
//! observes the runtime, asks [`lifecycle::step`] what to do, does it, and reports the
//! status when it changed. It sleeps until the pod changes, the runtime reports a change
//! for it, or a backoff expires. Slow work (pulls, graceful stops) belongs to this pod's
//! task alone, so one pod never delays another; a deletion aborts the waits of a start in
//! progress (pulls, postStart hooks), never a runtime call.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodCondition, PodSpec, PodStatus, Secret, Service,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use nodus_cri::Runtime;
use nodus_cri::api::{ContainerConfig, PodSandboxConfig};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::Rejection;
use super::attempts::{Attempts, Failure, StartFailure};
use super::container::{self, HostFiles};
use super::env::{self, Downward, Sources};
use super::events::{self, Events};
use super::images::{self, Images, Presence};
use super::lifecycle::{self, Action, Desire, Stage};
use super::metadata::PodKey;
use super::observed::{self, PodRuntime, RunState, Sandbox};
use super::resize::{self, Allocation};
use super::sandbox::{self, NodeDns};
use super::status::{self, Context};
use super::{
    cgroups, ephemeral, hooks, host_files, probes, pull_secrets, qos, service_env, static_pods,
};
use crate::backoff::Backoff;
use crate::node::runtime::{RuntimeState, error_chain};
use crate::volumes::{self, PodVolumes};

/// The longest a worker sleeps without looking again (a safety net behind the events).
const RESYNC: Duration = Duration::from_secs(10);
/// Pause after a runtime error, before the next pass.
const ERROR_RETRY: Duration = Duration::from_secs(2);
/// Pause before repeating exactly the actions of the previous pass: they made no
/// difference (a stop the runtime has not finished, a call that keeps failing), and
/// repeating them at once would only spin.
const REPEAT_DELAY: Duration = Duration::from_secs(1);
/// How often a running pod's configMap, secret, downwardAPI and projected volumes are
/// refreshed from their sources (and tokens renewed when due).
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// Retry delays after a failed volume set-up.
const VOLUME_RETRY_INITIAL: Duration = Duration::from_secs(1);
const VOLUME_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a container start waits for the first list of Services (its environment needs it).
const SERVICES_WAIT: Duration = Duration::from_secs(10);
/// The attempts key for the sandbox itself.
const SANDBOX: &str = "";
/// The longest a postStart hook may run before it counts as failed.
const POST_START_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Why the worker stopped a pod for good.
struct Stopped {
    failure: Rejection,
    /// An eviction: upstream marks the pod with the DisruptionTarget condition.
    disruption: bool,
}

/// A ready sandbox and what runs in it (container name → ID), for starting containers.
struct Started {
    sandbox: Sandbox,
    running: std::collections::HashMap<String, String>,
}

/// What every worker shares: clients and node facts.
pub struct Shared {
    pub client: Client,
    pub runtime: Runtime,
    pub images: Images,
    pub events: Events,
    pub runtime_state: watch::Receiver<RuntimeState>,
    pub node_name: String,
    pub node_hostname: String,
    pub host_ips: Vec<String>,
    pub dns: NodeDns,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub allocatable_milli_cpu: i128,
    pub allocatable_memory: i128,
    /// Every Service, for the containers' service variables.
    pub services: Store<Service>,
    /// The hard eviction thresholds (`--eviction-hard`).
    pub thresholds: crate::config::Thresholds,
    /// When containers' logs are rotated.
    pub log_limits: super::log_rotation::Limits,
    /// The kubelet role's figures.
    pub metrics: Arc<crate::metrics::Kubelet>,
    /// The static pod manifest directory and how often it is read besides inotify.
    pub static_pods: Option<(PathBuf, Duration)>,
    /// Which sysctls pods may set (admission).
    pub sysctls: super::sysctls::Allowlist,
    /// What each admitted pod holds of the node's cpu and memory (in-place resize).
    pub holdings: resize::Holdings,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node_name", &self.node_name)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// The worker's inputs from the dispatcher.
#[derive(Debug)]
pub struct Inbox {
    /// The pod as the API has it; `None` once it is gone from the API.
    pub desired: watch::Receiver<Option<Arc<Pod>>>,
    /// Rung when the runtime reports a change in one of the pod's containers.
    pub wake: Arc<Notify>,
    /// Set when admission refused the pod: it fails with this reason and never runs.
    pub rejection: Option<Rejection>,
    /// Set by the eviction manager: the pod is stopped and fails with this reason.
    pub evicted: watch::Receiver<Option<Rejection>>,
    /// For a static pod: its live mirror pod in the API, which gets the status.
    pub mirror: watch::Receiver<Option<Arc<Pod>>>,
}

struct Worker {
    key: PodKey,
    shared: Arc<Shared>,
    stage: Stage,
    attempts: Attempts,
    /// The last pod seen, kept for its spec once the API no longer has it.
    last_pod: Option<Arc<Pod>>,
    /// The last status this worker posted, and the UID of the API pod it went to.
    posted: Option<PodStatus>,
    posted_to: Option<String>,
    /// For a static pod: its mirror pod, if the API has one.
    mirror: Option<Arc<Pod>>,
    /// The actions of the previous pass.
    last_actions: Vec<Action>,
    rejection: Option<Rejection>,
    /// Set once the worker stopped the pod for good (evicted, or past its deadline).
    stopped: Option<Stopped>,
    /// The worker's own bell (rung by the runtime relist and by the prober).
    wake: Arc<Notify>,
    prober: Option<Prober>,
    volumes: PodVolumes,
    /// When the volumes were last set up, and when a failed set-up may be tried again.
    volumes_checked: Option<std::time::Instant>,
    volume_retry: Backoff,
    volume_retry_at: Option<Timestamp>,
    /// When this worker first saw the pod: the start of its start-up duration.
    seen_at: std::time::Instant,
    /// What the node granted the pod's containers (in-place resize), once read or made.
    allocation: Option<Allocation>,
    /// Whether `allocation` is in the pod's directory as it is.
    allocation_saved: bool,
    resize: resize::Progress,
}

/// Runs one pod's worker until the pod is gone from both the runtime and the API.
pub async fn run(key: PodKey, shared: Arc<Shared>, mut inbox: Inbox, cancel: CancellationToken) {
    let volumes = PodVolumes::new(shared.root_dir.join("pods").join(&key.uid));
    let mut worker = Worker {
        key,
        shared,
        stage: Stage::Syncing,
        attempts: Attempts::default(),
        last_pod: None,
        posted: None,
        posted_to: None,
        mirror: None,
        last_actions: Vec::new(),
        rejection: inbox.rejection.take(),
        stopped: None,
        wake: inbox.wake.clone(),
        prober: None,
        volumes,
        volumes_checked: None,
        volume_retry: Backoff::new(VOLUME_RETRY_INITIAL, VOLUME_RETRY_MAX),
        volume_retry_at: None,
        seen_at: std::time::Instant::now(),
        allocation: None,
        allocation_saved: false,
        resize: resize::Progress::default(),
    };
    if let Some(rejection) = worker.rejection.clone() {
        // Nothing of a rejected pod ever runs; it only reports its failure.
        worker.stage = Stage::Terminated { removed: false };
        let pod = inbox.desired.borrow().clone();
        if let Some(pod) = pod {
            let message = rejection
                .message
                .trim_start_matches("Pod was rejected: ")
                .to_owned();
            worker
                .shared
                .events
                .warning(events::reference(&pod, None), &rejection.reason, message);
        }
    }
    loop {
        let desired = inbox.desired.borrow_and_update().clone();
        if desired.is_some() {
            worker.last_pod = desired.clone();
        }
        worker.mirror = inbox.mirror.borrow_and_update().clone();
        let eviction = inbox.evicted.borrow_and_update().clone();
        if let Some(eviction) = eviction {
            worker.evict(eviction, desired.as_deref());
        }
        let pass = worker
            .pass(desired.as_deref(), &mut inbox.desired, &cancel)
            .await;
        let wait = match pass {
            Ok(Pass::Again) => continue,
            Ok(Pass::Finished) => {
                debug!(pod = %worker.key, "pod worker finished");
                return;
            }
            Ok(Pass::Idle(wake_at)) => wake_at
                .map(|at| duration_until(at).min(RESYNC))
                .unwrap_or(RESYNC),
            Err(err) => {
                warn!(pod = %worker.key, error = %error_chain(&err), "pod sync failed; retrying");
                ERROR_RETRY
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = inbox.desired.changed() => {}
            _ = inbox.wake.notified() => {}
            _ = inbox.evicted.changed() => {}
            Ok(()) = inbox.mirror.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn duration_until(at: Timestamp) -> Duration {
    let now = Timestamp::now();
    if at <= now {
        return Duration::ZERO;
    }
    Duration::try_from(at.duration_since(now)).unwrap_or(RESYNC)
}

enum Pass {
    /// Actions were taken: look again at once.
    Again,
    /// Nothing to do until something changes, or until the given time.
    Idle(Option<Timestamp>),
    /// The pod is gone everywhere.
    Finished,
}

fn desire(pod: Option<&Pod>) -> Desire {
    match pod {
        None => Desire::Gone,
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30);
            Desire::Delete {
                grace: Duration::from_secs(grace.max(0) as u64),
            }
        }
        Some(_) => Desire::Run,
    }
}

impl Worker {
    fn pod_dir(&self) -> PathBuf {
        self.shared.root_dir.join("pods").join(&self.key.uid)
    }

    fn log_dir(&self) -> PathBuf {
        self.shared.pod_logs_dir.join(self.key.log_dir_name())
    }

    fn runtime_name(&self) -> String {
        self.shared
            .runtime_state
            .borrow()
            .version
            .as_ref()
            .map_or_else(|| "containerd".to_owned(), |v| v.runtime_name.clone())
    }

    async fn pass(
        &mut self,
        desired: Option<&Pod>,
        updates: &mut watch::Receiver<Option<Arc<Pod>>>,
        cancel: &CancellationToken,
    ) -> Result<Pass, nodus_cri::Error> {
        let Some(pod) = desired
            .cloned()
            .or_else(|| self.last_pod.as_deref().cloned())
        else {
            // An orphan found in the runtime: no spec, only removal.
            let runtime = observed::observe(&self.shared.runtime, &self.key).await?;
            return self.remove_orphan(runtime).await;
        };
        let mut spec = pod.spec.clone().unwrap_or_default();
        // Containers run with what the node granted, which a waiting resize leaves
        // behind the spec.
        self.allocate(desired, &mut spec);
        let mut runtime = observed::observe(&self.shared.runtime, &self.key).await?;
        self.read_termination_messages(&spec, &mut runtime);
        self.mark_startup_pending(&spec, &mut runtime);
        let now = Timestamp::now();
        let deadline = desired.and_then(|pod| self.active_deadline(pod));
        if let (Some(pod), Some(at)) = (desired, deadline)
            && at <= now
        {
            self.exceed_deadline(pod);
        }
        let desire = desire(desired);
        let mut plan = lifecycle::step(self.stage, desire, &spec, &runtime, &self.attempts, now);
        if let Some(at) = deadline.filter(|at| *at > now) {
            plan.wake_at = Some(plan.wake_at.map_or(at, |w| w.min(at)));
        }
        // The sandbox's own retry backoff (after a failed RunPodSandbox).
        if let Some(until) = self.attempts.blocked_until(SANDBOX, false, now)
            && plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::CreateSandbox { .. }))
        {
            plan.actions
                .retain(|a| !matches!(a, Action::CreateSandbox { .. }));
            plan.wake_at = Some(plan.wake_at.map_or(until, |w| w.min(until)));
        }
        if plan.stage != self.stage {
            debug!(pod = %self.key, from = ?self.stage, to = ?plan.stage, "pod stage");
            self.stage = plan.stage;
        }
        if let Some(pod) = desired
            && self.stage == Stage::Syncing
            && self.rejection.is_none()
        {
            self.volumes_pass(pod, &mut plan, now).await;
            self.probes_pass(pod, &spec, &runtime, &mut plan);
            self.actuate(pod, &spec, &runtime, &mut plan).await;
        } else {
            // Probes run only while the pod runs.
            self.prober = None;
        }
        if desired.is_some() && !matches!(self.stage, Stage::Terminated { removed: true }) {
            self.report(&pod, &spec, &runtime, now).await;
        }
        if let Some(change) = self.attempts.status_changes_at(now) {
            plan.wake_at = Some(plan.wake_at.map_or(change, |w| w.min(change)));
        }
        if plan.actions.is_empty() {
            self.last_actions.clear();
            if matches!(self.stage, Stage::Terminated { .. }) {
                self.shared.holdings.remove(&self.key.uid);
            }
            if matches!(self.stage, Stage::Terminated { .. })
                && desired.is_none()
                && runtime.is_empty()
            {
                self.remove_host_state(&spec);
                return Ok(Pass::Finished);
            }
            return Ok(Pass::Idle(plan.wake_at));
        }
        if plan.actions == self.last_actions {
            self.last_actions.clear();
            let retry =
                k8s_openapi::jiff::SignedDuration::try_from(REPEAT_DELAY).unwrap_or_default();
            return Ok(Pass::Idle(now.checked_add(retry).ok()));
        }
        self.last_actions = plan.actions.clone();
        let syncing = self.stage == Stage::Syncing;
        // Starts only come with a ready sandbox already in `runtime` (a new sandbox ends the pass).
        let sandbox = runtime.sandbox().cloned().map(|sandbox| Started {
            running: runtime
                .running()
                .filter(|c| c.sandbox_id == sandbox.id)
                .map(|c| (c.name.clone(), c.id.clone()))
                .collect(),
            sandbox,
        });
        // A deletion arriving mid-start (a long pull, a postStart hook) aborts the waits of
        // the start, never a runtime call in flight: containerd 1.6 leaves the task of a
        // cancelled StartContainer created while CRI reports the container exited, and then
        // refuses to remove the sandbox, so the pod would stay Terminating for good.
        let abort = cancel.child_token();
        let key = self.key.clone();
        let work = self.execute(&pod, &spec, plan.actions, sandbox, &abort);
        if syncing {
            let mut watch = updates.clone();
            let watcher = async {
                deleted(&mut watch).await;
                debug!(pod = %key, "pod deleted while starting; aborting the start's waits");
                abort.cancel();
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = work => {}
                _ = watcher => {}
            }
        } else {
            work.await;
        }
        Ok(Pass::Again)
    }

    /// In-place resize, first half: grants a change of the spec's resources when it fits
    /// beside the other pods, and puts the allotment in `spec` for this pass.
    fn allocate(&mut self, desired: Option<&Pod>, spec: &mut PodSpec) {
        let dir = self.pod_dir();
        let mut allocation = self.allocation.take().unwrap_or_else(|| {
            match Allocation::load(&dir) {
                Ok(Some(allocation)) => {
                    self.allocation_saved = true;
                    allocation
                }
                Ok(None) => Allocation::of(spec),
                Err(err) => {
                    warn!(pod = %self.key, error = %err, "unreadable resource allocation; taking the spec's");
                    Allocation::of(spec)
                }
            }
        });
        let running = desired.filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && self.stage == Stage::Syncing
                && self.rejection.is_none()
                && self.stopped.is_none()
        });
        if let Some(pod) = running {
            let generation = pod.metadata.generation.unwrap_or(0);
            if !allocation.differs(spec) {
                self.resize.pending = None;
            } else {
                let others = self.shared.holdings.others(&self.key.uid);
                let allocatable = BTreeMap::from([
                    ("cpu".to_owned(), self.shared.allocatable_milli_cpu),
                    ("memory".to_owned(), self.shared.allocatable_memory * 1000),
                ]);
                match resize::fits(spec, &others, &allocatable) {
                    Ok(()) => {
                        allocation.grant(spec);
                        self.allocation_saved = false;
                        self.resize.pending = None;
                        info!(pod = %self.key, generation, "pod resize granted");
                        self.shared.events.normal(
                            events::reference(pod, None),
                            "ResizeStarted",
                            resize::summary("Pod resize started", spec, generation, None),
                        );
                    }
                    Err(pending) => {
                        let again =
                            self.resize.pending.as_ref().is_some_and(|(g, p)| {
                                *g == generation && p.reason == pending.reason
                            });
                        if !again {
                            let prefix = format!("Pod resize {}", pending.reason);
                            self.shared.events.warning(
                                events::reference(pod, None),
                                &format!("Resize{}", pending.reason),
                                resize::summary(&prefix, spec, generation, Some(&pending.message)),
                            );
                        }
                        self.resize.pending = Some((generation, pending));
                    }
                }
            }
            if !self.allocation_saved {
                match allocation.save(&dir) {
                    Ok(()) => self.allocation_saved = true,
                    Err(err) => {
                        warn!(pod = %self.key, error = %err, "saving the resource allocation failed")
                    }
                }
            }
        }
        allocation.apply(spec);
        if running.is_some() {
            self.shared.holdings.set(&self.key.uid, resize::held(spec));
        }
        self.allocation = Some(allocation);
    }

    /// In-place resize, second half: brings the running containers to their allotment,
    /// updating their cgroups through CRI or restarting them as their resize policy says.
    async fn actuate(
        &mut self,
        pod: &Pod,
        spec: &PodSpec,
        runtime: &PodRuntime,
        plan: &mut lifecycle::Plan,
    ) {
        let (Some(mut allocation), Some(sandbox)) = (self.allocation.take(), runtime.sandbox())
        else {
            return;
        };
        let running: Vec<&observed::ContainerRecord> = runtime
            .containers
            .iter()
            .filter(|c| c.sandbox_id == sandbox.id && matches!(c.state, RunState::Running { .. }))
            .collect();
        let ids: HashSet<&str> = running.iter().map(|c| c.id.as_str()).collect();
        let mut changed = resize::forget_gone(&mut allocation, &ids);
        let current: Vec<resize::Running<'_>> = running
            .iter()
            .map(|c| resize::Running {
                id: &c.id,
                name: &c.name,
                current: allocation.updated.get(&c.id).cloned().or_else(|| {
                    c.created_with
                        .as_deref()
                        .and_then(|json| serde_json::from_str(json).ok())
                }),
            })
            .collect();
        let steps = resize::steps(spec, &current);
        let generation = pod.metadata.generation.unwrap_or(0);
        let class = qos::class(spec);
        let after = qos::pod_resources(spec);
        let actuating = steps
            .iter()
            .any(|s| !matches!(s, resize::Step::Record { .. }));
        if actuating {
            // The pod's cgroup first makes room for both the old and the new amounts: a
            // cgroup v1 parent may not have a smaller cpu quota than a child.
            let mut before_spec = spec.clone();
            let before_allocation = resize::Allocation {
                containers: current
                    .iter()
                    .filter_map(|c| Some((c.name.to_owned(), c.current.clone()?)))
                    .collect(),
                updated: Default::default(),
            };
            before_allocation.apply(&mut before_spec);
            let room = qos::pod_resources(&before_spec).covering(after);
            if let Err(err) = cgroups::update_pod(class, &self.key.uid, &room) {
                warn!(pod = %self.key, error = %err, "resizing the pod cgroup failed");
            }
        }
        let mut error = None;
        let mut restarting = false;
        for step in &steps {
            match step {
                resize::Step::Record { id } | resize::Step::Update { id, .. } => {
                    let Some(container) = current
                        .iter()
                        .find(|c| c.id == id)
                        .and_then(|c| resize::container(spec, c.name))
                    else {
                        continue;
                    };
                    if let resize::Step::Update { name, .. } = step {
                        let linux = container::linux_resources(container);
                        if let Err(err) = self
                            .shared
                            .runtime
                            .update_container_resources(id, linux)
                            .await
                        {
                            warn!(pod = %self.key, container = %name, error = %err, "resizing a container failed");
                            error = Some(err.runtime_message());
                            continue;
                        }
                        debug!(pod = %self.key, container = %name, "container resized in place");
                    }
                    allocation
                        .updated
                        .insert(id.clone(), resize::requirements(container));
                    changed = true;
                }
                resize::Step::Restart { id, name } => {
                    restarting = true;
                    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
                    plan.actions.push(Action::KillContainer {
                        id: id.clone(),
                        name: name.clone(),
                        grace: Duration::from_secs(grace.max(0) as u64),
                    });
                }
            }
        }
        if let Some(message) = &error
            && self.resize.error.as_ref() != Some(message)
        {
            self.shared.events.warning(
                events::reference(pod, None),
                "ResizeError",
                resize::summary("Pod resize error", spec, generation, Some(message)),
            );
        }
        let was_in_progress = self.resize.in_progress;
        self.resize.in_progress = error.is_some() || restarting;
        if (!steps.is_empty() || was_in_progress) && !self.resize.in_progress {
            // Every container has its new amounts: the pod's cgroup takes the new totals.
            if let Err(err) = cgroups::update_pod(class, &self.key.uid, &after) {
                warn!(pod = %self.key, error = %err, "resizing the pod cgroup failed");
            }
            info!(pod = %self.key, generation, "pod resize completed");
            self.shared.events.normal(
                events::reference(pod, None),
                "ResizeCompleted",
                resize::summary("Pod resize completed", spec, generation, None),
            );
        }
        self.resize.error = error;
        if changed {
            match allocation.save(&self.pod_dir()) {
                Ok(()) => self.allocation_saved = true,
                Err(err) => {
                    warn!(pod = %self.key, error = %err, "saving the resource allocation failed")
                }
            }
        }
        self.allocation = Some(allocation);
    }

    /// Keeps the prober told which containers run (starting it for a pod with probes), and
    /// turns a failed liveness or startup probe into a kill of that container, after which
    /// the restart policy applies as for any exit.
    fn probes_pass(
        &mut self,
        pod: &Pod,
        spec: &PodSpec,
        runtime: &PodRuntime,
        plan: &mut lifecycle::Plan,
    ) {
        let containers: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .collect();
        let probed = containers.iter().any(|c| {
            c.startup_probe.is_some() || c.liveness_probe.is_some() || c.readiness_probe.is_some()
        });
        if !probed {
            return;
        }
        let prober = self.prober.get_or_insert_with(|| {
            Prober::start(probes::Context {
                runtime: self.shared.runtime.clone(),
                events: self.shared.events.clone(),
                pod: Arc::new(pod.clone()),
                wake: self.wake.clone(),
            })
        });
        let pod_ip = runtime
            .sandbox()
            .and_then(|s| s.ips.first())
            .and_then(|ip| ip.parse().ok())
            .or_else(|| {
                (spec.host_network == Some(true))
                    .then(|| self.shared.host_ips.first()?.parse().ok())
                    .flatten()
            });
        let running: Vec<probes::Target> = runtime
            .containers
            .iter()
            .filter(|c| matches!(c.state, RunState::Running { .. }))
            .filter_map(|c| {
                let container = containers.iter().find(|s| s.name == c.name)?;
                let started = *prober
                    .started
                    .entry(c.id.clone())
                    .or_insert_with(tokio::time::Instant::now);
                Some(probes::Target {
                    id: c.id.clone(),
                    container: (*container).clone(),
                    started,
                })
            })
            .collect();
        prober
            .started
            .retain(|id, _| running.iter().any(|t| &t.id == id));
        let targets = probes::Targets {
            pod_ip,
            containers: running,
        };
        prober.targets.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                *t = targets.clone();
            }
            changed
        });
        let verdicts = prober.verdicts.borrow().clone();
        for target in &targets.containers {
            let Some(restart) = verdicts.get(&target.id).and_then(|v| v.restart.clone()) else {
                continue;
            };
            if !prober.restarted.insert(target.id.clone()) {
                continue;
            }
            self.shared.events.normal(
                events::reference(pod, Some(&target.container.name)),
                "Killing",
                restart.reason,
            );
            let grace = restart
                .grace_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30);
            plan.actions.push(Action::KillContainer {
                id: target.id.clone(),
                name: target.container.name.clone(),
                grace: Duration::from_secs(grace.max(0) as u64),
            });
        }
    }

    /// The eviction manager chose this pod: stop its containers with the eviction's short
    /// grace, then keep it failed with the eviction's reason. Once only.
    fn evict(&mut self, eviction: Rejection, pod: Option<&Pod>) {
        if self.rejection.is_some() || self.stopped.as_ref().is_some_and(|s| s.disruption) {
            return;
        }
        if let Some(pod) = pod {
            self.shared.events.warning(
                events::reference(pod, None),
                "Evicted",
                eviction.message.clone(),
            );
        }
        let grace = Duration::from_secs(super::eviction::GRACE_SECONDS);
        self.stop_for_good(eviction, grace, true);
    }

    /// Stops the pod's containers with `grace` (unless it is stopping already) and keeps it
    /// failed with `failure`'s reason.
    fn stop_for_good(&mut self, failure: Rejection, grace: Duration, disruption: bool) {
        if self.stage == Stage::Syncing {
            self.stage = Stage::Terminating {
                grace,
                remove: false,
            };
        }
        self.stopped = Some(Stopped {
            failure,
            disruption,
        });
    }

    /// When the pod's activeDeadlineSeconds runs out, counted from its start time.
    fn active_deadline(&self, pod: &Pod) -> Option<Timestamp> {
        let seconds = pod.spec.as_ref()?.active_deadline_seconds?;
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or_else(|| self.posted.as_ref()?.start_time.as_ref())?;
        started
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .ok()
    }

    /// The pod ran past its deadline: stop it (with its own grace period) and fail it with
    /// the kubelet's reason. Once only.
    fn exceed_deadline(&mut self, pod: &Pod) {
        if self.stopped.is_some() || self.rejection.is_some() || self.stage != Stage::Syncing {
            return;
        }
        let message = "Pod was active on the node longer than the specified deadline";
        self.shared.events.normal(
            events::reference(pod, None),
            "DeadlineExceeded",
            message.into(),
        );
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let failure = Rejection {
            reason: "DeadlineExceeded".into(),
            message: message.into(),
        };
        self.stop_for_good(failure, Duration::from_secs(grace.max(0) as u64), false);
    }

    /// Sets up the pod's volumes before anything of it starts, and refreshes them while it
    /// runs. Until a first set-up succeeds, creating the sandbox or a container waits, with a
    /// FailedMount event each try, as upstream's "unable to attach or mount volumes".
    async fn volumes_pass(&mut self, pod: &Pod, plan: &mut lifecycle::Plan, now: Timestamp) {
        let has_volumes = pod
            .spec
            .as_ref()
            .is_some_and(|s| s.volumes.as_ref().is_some_and(|v| !v.is_empty()));
        if !has_volumes {
            return;
        }
        let due = !self.volumes.ready()
            || self
                .volumes_checked
                .is_none_or(|t| t.elapsed() >= VOLUME_REFRESH);
        let retry_later = self.volume_retry_at.filter(|at| *at > now);
        if due && retry_later.is_none() {
            let ctx = volumes::Context {
                client: self.shared.client.clone(),
                downward: Downward {
                    node_name: self.shared.node_name.clone(),
                    host_ips: self.shared.host_ips.clone(),
                    pod_ips: Vec::new(),
                    allocatable_milli_cpu: self.shared.allocatable_milli_cpu,
                    allocatable_memory: self.shared.allocatable_memory,
                },
            };
            match self.volumes.set_up(&ctx, pod).await {
                Ok(()) => {
                    self.volumes_checked = Some(std::time::Instant::now());
                    self.volume_retry.reset();
                    self.volume_retry_at = None;
                }
                Err(err) => {
                    warn!(pod = %self.key, error = %err, "setting up volumes failed");
                    self.shared.events.warning(
                        events::reference(pod, None),
                        "FailedMount",
                        err.to_string(),
                    );
                    let delay =
                        k8s_openapi::jiff::SignedDuration::try_from(self.volume_retry.next_delay())
                            .unwrap_or_default();
                    self.volume_retry_at = now.checked_add(delay).ok();
                }
            }
        }
        if !self.volumes.ready() {
            plan.actions.retain(|a| {
                !matches!(
                    a,
                    Action::CreateSandbox { .. } | Action::StartContainer { .. }
                )
            });
            if let Some(at) = self.volume_retry_at {
                plan.wake_at = Some(plan.wake_at.map_or(at, |w| w.min(at)));
            }
        }
    }

    async fn remove_orphan(&mut self, runtime: PodRuntime) -> Result<Pass, nodus_cri::Error> {
        if runtime.is_empty() {
            let _ = cgroups::remove(&cgroups::pod_cgroup("BestEffort", &self.key.uid));
            let _ = cgroups::remove(&cgroups::pod_cgroup("Burstable", &self.key.uid));
            let _ = cgroups::remove(&cgroups::pod_cgroup("Guaranteed", &self.key.uid));
            if let Err(err) = volumes::tear_down(&self.pod_dir()) {
                warn!(pod = %self.key, error = %err, "removing the orphan's volumes failed");
            }
            let _ = std::fs::remove_dir_all(self.log_dir());
            return Ok(Pass::Finished);
        }
        info!(pod = %self.key, "removing the runtime objects of a pod that no longer exists");
        let plan = lifecycle::step(
            self.stage,
            Desire::Gone,
            &PodSpec::default(),
            &runtime,
            &self.attempts,
            Timestamp::now(),
        );
        self.stage = plan.stage;
        let orphan = Pod::default();
        self.execute(
            &orphan,
            &PodSpec::default(),
            plan.actions,
            None,
            &CancellationToken::new(),
        )
        .await;
        Ok(Pass::Again)
    }

    /// Running containers with a startup probe the prober has not seen pass (yet).
    fn mark_startup_pending(&self, spec: &PodSpec, runtime: &mut PodRuntime) {
        let verdicts = self
            .prober
            .as_ref()
            .map(|p| p.verdicts.borrow().clone())
            .unwrap_or_default();
        let probed: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter(|c| c.startup_probe.is_some())
            .map(|c| c.name.as_str())
            .collect();
        runtime.startup_pending = runtime
            .containers
            .iter()
            .filter(|c| probed.contains(&c.name.as_str()))
            .filter(|c| verdicts.get(&c.id).is_none_or(|v| !v.started))
            .map(|c| c.id.clone())
            .collect();
    }

    /// Exit messages come from the file the container wrote at its terminationMessagePath,
    /// or from the end of its log under FallbackToLogsOnError.
    fn read_termination_messages(&self, spec: &PodSpec, runtime: &mut PodRuntime) {
        for record in &mut runtime.containers {
            let RunState::Exited(exit) = &mut record.state else {
                continue;
            };
            let container = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .find(|c| c.name == record.name);
            let path = self.termination_log(&record.name, record.attempt);
            let mut message = host_files::read_termination_message(&path);
            let fallback = container.and_then(|c| c.termination_message_policy.as_deref())
                == Some("FallbackToLogsOnError");
            if message.is_empty() && fallback && exit.code != 0 {
                let log = self
                    .log_dir()
                    .join(&record.name)
                    .join(format!("{}.log", record.attempt));
                message = host_files::tail_log(&log);
            }
            if !message.is_empty() {
                exit.message = message;
            }
        }
    }

    fn termination_log(&self, name: &str, attempt: u32) -> PathBuf {
        self.pod_dir()
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    async fn report(&mut self, pod: &Pod, spec: &PodSpec, runtime: &PodRuntime, now: Timestamp) {
        let verdicts = self
            .prober
            .as_ref()
            .map(|p| p.verdicts.borrow().clone())
            .unwrap_or_default();
        // A static pod's status goes to its mirror pod; without one it waits.
        let (target, api_status) = if static_pods::is_static(pod) {
            let Some(mirror) = &self.mirror else {
                return;
            };
            (
                mirror.metadata.uid.clone().unwrap_or_default(),
                mirror.status.clone(),
            )
        } else {
            (self.key.uid.clone(), pod.status.clone())
        };
        let previous = self.posted.clone().or(api_status.clone());
        let runtime_name = self.runtime_name();
        let ctx = Context {
            pod_name: &self.key.name,
            namespace: &self.key.namespace,
            uid: &self.key.uid,
            runtime_name: &runtime_name,
            host_ips: &self.shared.host_ips,
            host_network: spec.host_network == Some(true),
            now,
            probes: &verdicts,
            running_with: self
                .allocation
                .as_ref()
                .map_or(&status::NOT_RESIZED, |a| &a.updated),
        };
        let mut status = status::pod_status(spec, runtime, &self.attempts, previous.as_ref(), &ctx);
        if let Some(failure) = self
            .rejection
            .as_ref()
            .or(self.stopped.as_ref().map(|s| &s.failure))
        {
            status.phase = Some("Failed".into());
            status.reason = Some(failure.reason.clone());
            status.message = Some(failure.message.clone());
        }
        if let Some(eviction) = self
            .stopped
            .as_ref()
            .filter(|s| s.disruption)
            .map(|s| &s.failure)
        {
            // Upstream marks a pod the kubelet stops for node pressure as disrupted.
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(PodCondition {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                    reason: Some("TerminationByKubelet".into()),
                    message: Some(eviction.message.clone()),
                    last_transition_time: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
                    ),
                    ..PodCondition::default()
                });
        }
        let resizing = resize::conditions(&self.resize, previous.as_ref(), now);
        if !resizing.is_empty() {
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .extend(resizing);
        }
        // The spec generation this status reflects, on the status and on the conditions
        // nodus owns, as the kubelet reports it (KEP-5067): clients wait on it after an update.
        let generation = if static_pods::is_static(pod) {
            self.mirror.as_ref().and_then(|m| m.metadata.generation)
        } else {
            pod.metadata.generation
        };
        status.observed_generation = generation;
        for condition in status.conditions.iter_mut().flatten() {
            condition.observed_generation = generation;
        }
        // Conditions other agents own (scheduler, readiness gates, the eviction API's
        // DisruptionTarget) are kept; a DisruptionTarget of nodus's own replaces theirs, as
        // the kubelet's "shared" condition.
        let ours = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
            resize::PENDING,
            resize::IN_PROGRESS,
        ];
        if let (Some(conditions), Some(api)) = (
            status.conditions.as_mut(),
            api_status.as_ref().and_then(|s| s.conditions.as_ref()),
        ) {
            let disrupted_here = conditions.iter().any(|c| c.type_ == "DisruptionTarget");
            conditions.extend(
                api.iter()
                    .filter(|c| !ours.contains(&c.type_.as_str()))
                    .filter(|c| !(disrupted_here && c.type_ == "DisruptionTarget"))
                    .cloned(),
            );
        }
        if let Some(conditions) = status.conditions.as_mut() {
            status::apply_readiness_gates(spec, conditions, previous.as_ref(), now);
        }
        let same_target = self.posted_to.as_deref() == Some(target.as_str());
        if (same_target && Some(&status) == self.posted.as_ref())
            || (self.posted.is_none() && Some(&status) == api_status.as_ref())
        {
            return;
        }
        self.announce_back_off(pod, previous.as_ref(), &status);
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.key.namespace);
        // The UID makes the patch a precondition: a new pod of the same name is never touched.
        let patch = json!({ "metadata": { "uid": target }, "status": status });
        match api
            .patch_status(
                &self.key.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                debug!(pod = %self.key, phase = status.phase.as_deref().unwrap_or_default(), "pod status posted");
                let running =
                    |s: Option<&PodStatus>| s.and_then(|s| s.phase.as_deref()) == Some("Running");
                // Only a start this worker saw: a pod adopted running after a restart is not one.
                if running(Some(&status))
                    && !running(self.posted.as_ref())
                    && !running(api_status.as_ref())
                {
                    self.shared.metrics.pod_started(self.seen_at.elapsed());
                }
                self.posted = Some(status);
                self.posted_to = Some(target);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
                debug!(pod = %self.key, "pod gone or replaced; status not posted");
            }
            Err(err) => {
                warn!(pod = %self.key, error = %error_chain(&err), "posting pod status failed")
            }
        }
    }

    /// BackOff events when a container enters CrashLoopBackOff or ImagePullBackOff.
    fn announce_back_off(&self, pod: &Pod, previous: Option<&PodStatus>, status: &PodStatus) {
        let waiting = |s: Option<&PodStatus>, name: &str| -> Option<String> {
            s?.container_statuses
                .iter()
                .flatten()
                .chain(s?.init_container_statuses.iter().flatten())
                .find(|c| c.name == name)?
                .state
                .as_ref()?
                .waiting
                .as_ref()?
                .reason
                .clone()
        };
        for c in status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
        {
            let now = waiting(Some(status), &c.name);
            if now == waiting(previous, &c.name) {
                continue;
            }
            let reference = events::reference(pod, Some(&c.name));
            match now.as_deref() {
                Some("CrashLoopBackOff") => self.shared.events.warning(
                    reference,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {}_{}({})",
                        c.name, self.key.name, self.key.namespace, self.key.uid
                    ),
                ),
                Some("ImagePullBackOff") => {
                    self.shared.events.normal(
                        reference.clone(),
                        "BackOff",
                        format!("Back-off pulling image \"{}\"", c.image),
                    );
                    self.shared.events.warning(
                        reference,
                        "Failed",
                        "Error: ImagePullBackOff".into(),
                    );
                }
                _ => {}
            }
        }
    }

    async fn execute(
        &mut self,
        pod: &Pod,
        spec: &PodSpec,
        actions: Vec<Action>,
        started: Option<Started>,
        abort: &CancellationToken,
    ) {
        let mut starts = Vec::new();
        let mut others = Vec::new();
        for action in actions {
            match action {
                Action::StartContainer {
                    name,
                    attempt,
                    restart,
                } => starts.push((name, attempt, restart)),
                other => others.push(other),
            }
        }
        let this = &*self;
        let results = join_all(
            others
                .into_iter()
                .map(|action| this.execute_one(pod, action)),
        )
        .await;
        for (what, result, created) in results {
            if let Err(err) = result {
                warn!(pod = %self.key, action = what, error = %error_chain(&err), "runtime call failed");
            }
            match created {
                Some(Ok(())) => self.attempts.started(SANDBOX, false, Timestamp::now()),
                Some(Err(failure)) => self.attempts.failed(SANDBOX, failure, Timestamp::now()),
                None => {}
            }
        }
        if starts.is_empty() {
            return;
        }
        // The sandbox's configuration is part of every create call.
        let Some(Started { sandbox, running }) = started else {
            return;
        };
        let sandbox_config = self.sandbox_config(pod, spec, sandbox.attempt);
        let now = Timestamp::now();
        let outcomes = join_all(starts.into_iter().map(|(name, attempt, restart)| {
            let sandbox_config = &sandbox_config;
            let sandbox_id = sandbox.id.clone();
            let pod_ips = sandbox.ips.clone();
            let this = &*self;
            let running = &running;
            async move {
                let ephemeral = ephemeral::of(spec);
                let container = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                    .chain(ephemeral.iter())
                    .find(|c| c.name == name)
                    .cloned();
                let Some(container) = container else {
                    return (name, restart, Some(Ok(())));
                };
                // An ephemeral container with a target joins its process namespace.
                let target =
                    ephemeral::target(spec, &name).map(|t| running.get(&t).cloned().ok_or(t));
                let prepare = this.prepare_container(
                    pod,
                    spec,
                    &container,
                    attempt,
                    sandbox_config,
                    &pod_ips,
                    target,
                );
                // Aborted before the runtime was asked for anything: nothing to record.
                let config = tokio::select! {
                    config = prepare => config,
                    _ = abort.cancelled() => return (name, restart, None),
                };
                let result = match config {
                    Ok(config) => {
                        this.run_container(
                            pod,
                            spec,
                            &container,
                            config,
                            &sandbox_id,
                            sandbox_config,
                            &pod_ips,
                            abort,
                        )
                        .await
                    }
                    Err(failure) => Err(failure),
                };
                (name, restart, Some(result))
            }
        }))
        .await;
        for (name, restart, result) in outcomes {
            match result {
                Some(Ok(())) => self.attempts.started(&name, restart, now),
                Some(Err(failure)) => self.attempts.failed(&name, failure, now),
                None => {}
            }
        }
    }

    fn sandbox_config(&self, pod: &Pod, spec: &PodSpec, attempt: u32) -> PodSandboxConfig {
        sandbox::config(
            pod,
            spec,
            attempt,
            &self.shared.node_hostname,
            &self.shared.dns,
            &self.log_dir().to_string_lossy(),
        )
    }

    /// Runs one action; for a sandbox creation also says how it went, for its backoff.
    async fn execute_one(
        &self,
        pod: &Pod,
        action: Action,
    ) -> (
        &'static str,
        Result<(), nodus_cri::Error>,
        Option<Result<(), Failure>>,
    ) {
        let runtime = &self.shared.runtime;
        let ignore_missing = |r: Result<(), nodus_cri::Error>| match r {
            Err(err) if err.is_not_found() => Ok(()),
            other => other,
        };
        match action {
            Action::CreateSandbox { attempt, replaces } => {
                let spec = pod.spec.clone().unwrap_or_default();
                if replaces.is_some() {
                    self.shared.events.normal(
                        events::reference(pod, None),
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.".into(),
                    );
                }
                let _ = std::fs::create_dir_all(self.log_dir());
                let class = super::qos::class(&spec);
                if let Err(err) =
                    cgroups::configure_pod(class, &self.key.uid, &super::qos::pod_resources(&spec))
                {
                    // The containers' own limits still hold; only the pod-wide cap is missing.
                    warn!(pod = %self.key, error = %err, "configuring the pod cgroup failed");
                }
                let config = self.sandbox_config(pod, &spec, attempt);
                match runtime.run_pod_sandbox(config, "").await {
                    Ok(id) => {
                        self.shared.metrics.sandbox_started();
                        let hosts = if spec.host_network == Some(true) {
                            let node_hosts =
                                std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                            Some(host_files::node_etc_hosts(&node_hosts, &spec))
                        } else if let Ok(status) = runtime.pod_sandbox_status(&id).await {
                            let ip = status.network.map(|n| n.ip).unwrap_or_default();
                            Some(host_files::etc_hosts(
                                &sandbox::hostname(pod, &spec, &self.shared.node_hostname),
                                &ip,
                                &spec,
                                &self.key.namespace,
                                &self.shared.dns.cluster_domain,
                            ))
                        } else {
                            None
                        };
                        if let Some(hosts) = hosts
                            && let Err(err) =
                                host_files::write(&self.pod_dir().join("etc-hosts"), &hosts)
                        {
                            warn!(pod = %self.key, error = %err, "writing /etc/hosts for the pod failed");
                        }
                        ("RunPodSandbox", Ok(()), Some(Ok(())))
                    }
                    Err(err) => {
                        self.shared.events.warning(
                            events::reference(pod, None),
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {}", err.runtime_message()),
                        );
                        let failure = Failure {
                            kind: StartFailure::Create,
                            message: err.runtime_message(),
                            image: String::new(),
                        };
                        ("RunPodSandbox", Err(err), Some(Err(failure)))
                    }
                }
            }
            Action::KillContainer { id, name, grace } => {
                if pod.metadata.name.is_some() {
                    self.shared.events.normal(
                        events::reference(pod, Some(&name)),
                        "Killing",
                        format!("Stopping container {name}"),
                    );
                }
                let grace = self.pre_stop(pod, &id, &name, grace).await;
                (
                    "StopContainer",
                    ignore_missing(runtime.stop_container(&id, grace).await),
                    None,
                )
            }
            Action::RemoveContainer { id } => (
                "RemoveContainer",
                ignore_missing(runtime.remove_container(&id).await),
                None,
            ),
            Action::StopSandbox { id } => (
                "StopPodSandbox",
                ignore_missing(runtime.stop_pod_sandbox(&id).await),
                None,
            ),
            Action::RemoveSandbox { id } => (
                "RemovePodSandbox",
                ignore_missing(runtime.remove_pod_sandbox(&id).await),
                None,
            ),
            Action::DeletePod => {
                // A static pod has no API object of its own; its mirror goes with the manifest.
                if pod.metadata.name.is_some() && !static_pods::is_static(pod) {
                    self.delete_pod().await;
                }
                ("DeletePod", Ok(()), None)
            }
            // Starts need the sandbox's configuration and run together in `execute`.
            Action::StartContainer { .. } => ("StartContainer", Ok(()), None),
        }
    }

    async fn delete_pod(&self) {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.key.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.key.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&self.key.name, &params).await {
            Ok(_) => info!(pod = %self.key, "pod terminated and removed"),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(err) => {
                warn!(pod = %self.key, error = %error_chain(&err), "deleting the pod object failed")
            }
        }
    }

    /// Everything a container start waits for before the runtime creates it: the image,
    /// its environment's sources, its mounts. The result is the runtime's container config.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_container(
        &self,
        pod: &Pod,
        spec: &PodSpec,
        container: &Container,
        attempt: u32,
        sandbox_config: &PodSandboxConfig,
        pod_ips: &[String],
        target: Option<Result<String, String>>,
    ) -> Result<ContainerConfig, Failure> {
        let events = &self.shared.events;
        let reference = events::reference(pod, Some(&container.name));
        let image = container.image.clone().unwrap_or_default();
        let failure = start_failure(container);
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| images::default_policy(&image).to_owned());
        let auth = pull_secrets::credentials(&self.pull_secrets(spec).await, &image);
        let pulled = self
            .shared
            .images
            .ensure(&image, &policy, auth, sandbox_config, || {
                events.normal(
                    reference.clone(),
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                );
            })
            .await;
        match pulled {
            Ok(Presence::AlreadyPresent) => events.normal(
                reference.clone(),
                "Pulled",
                format!("Container image \"{image}\" already present on machine and can be accessed by the pod"),
            ),
            Ok(Presence::Pulled { took, size }) => events.normal(
                reference.clone(),
                "Pulled",
                format!("Successfully pulled image \"{image}\" in {took:.3?}. Image size: {size} bytes."),
            ),
            Err(images::Error::NeverPull { .. }) => {
                let message = format!("Container image \"{image}\" is not present with pull policy of Never");
                events.warning(reference.clone(), "ErrImageNeverPull", message.clone());
                return Err(failure(StartFailure::NeverPull, message));
            }
            Err(images::Error::Pull { message, .. }) => {
                events.warning(reference.clone(), "Failed", format!("Failed to pull image \"{image}\": {message}"));
                events.warning(reference.clone(), "Failed", "Error: ErrImagePull".into());
                return Err(failure(StartFailure::Pull, message));
            }
        }
        let config_error = |message: String| {
            events.warning(reference.clone(), "Failed", format!("Error: {message}"));
            failure(StartFailure::Config, message)
        };

        if let Ok(Some(info)) = self.shared.images.inspect(&image).await {
            let uid = info.uid.map(|u| u.value);
            container::verify_non_root(spec, container, uid, &info.username).map_err(|reason| {
                config_error(format!(
                    "{reason} (pod: \"{}\", container: {})",
                    self.key, container.name
                ))
            })?;
        }
        let mut sources = self.env_sources(container).await.map_err(config_error)?;
        sources.services = self
            .service_variables(pod, spec)
            .await
            .map_err(config_error)?;
        let downward = Downward {
            node_name: self.shared.node_name.clone(),
            host_ips: self.shared.host_ips.clone(),
            pod_ips: if spec.host_network == Some(true) {
                self.shared.host_ips.clone()
            } else {
                pod_ips.to_vec()
            },
            allocatable_milli_cpu: self.shared.allocatable_milli_cpu,
            allocatable_memory: self.shared.allocatable_memory,
        };
        let env = env::resolve(container, pod, &sources, &downward)
            .map_err(|e| config_error(e.to_string()))?;
        let (command, args) = env::expand_command(container, &env);
        let volume_mounts = self
            .volumes
            .container_mounts(spec, container, &env)
            .map_err(config_error)?;

        let termination_log = self.termination_log(&container.name, attempt);
        // Writable for whatever user the container runs as, as the kubelet makes it (0666).
        host_files::write(&termination_log, "")
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&termination_log, std::fs::Permissions::from_mode(0o666))
            })
            .map_err(|e| config_error(format!("preparing the termination message file: {e}")))?;
        let etc_hosts = self.pod_dir().join("etc-hosts");
        let host = HostFiles {
            termination_log: Some(termination_log.to_string_lossy().into_owned()),
            etc_hosts: etc_hosts
                .exists()
                .then(|| etc_hosts.to_string_lossy().into_owned()),
            volume_mounts,
        };
        let mut config =
            container::config(pod, spec, container, attempt, env, command, args, &host);
        match target {
            None => {}
            Some(Ok(target_id)) => container::share_pid_with(&mut config, target_id),
            Some(Err(target)) => {
                return Err(config_error(format!(
                    "the target container {target} of ephemeral container {} is not running",
                    container.name
                )));
            }
        }
        Ok(config)
    }

    /// Creates and starts a prepared container, then runs its postStart hook. Only the hook
    /// may be aborted: the runtime calls always complete (see `pass`).
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        pod: &Pod,
        spec: &PodSpec,
        container: &Container,
        config: ContainerConfig,
        sandbox_id: &str,
        sandbox_config: &PodSandboxConfig,
        pod_ips: &[String],
        abort: &CancellationToken,
    ) -> Result<(), Failure> {
        let events = &self.shared.events;
        let reference = events::reference(pod, Some(&container.name));
        let failure = start_failure(container);
        let runtime = &self.shared.runtime;
        let id = runtime
            .create_container(sandbox_id, config, sandbox_config.clone())
            .await
            .map_err(|err| {
                events.warning(
                    reference.clone(),
                    "Failed",
                    format!("Error: {}", err.runtime_message()),
                );
                failure(StartFailure::Create, err.runtime_message())
            })?;
        events.normal(
            reference.clone(),
            "Created",
            format!("Created container: {}", container.name),
        );
        runtime.start_container(&id).await.map_err(|err| {
            events.warning(
                reference.clone(),
                "Failed",
                format!("Error: {}", err.runtime_message()),
            );
            failure(StartFailure::Run, err.runtime_message())
        })?;
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == container.name);
        self.shared
            .metrics
            .container_started(if init { "init_container" } else { "container" });
        events.normal(
            reference.clone(),
            "Started",
            format!("Started container {}", container.name),
        );
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let pod_ip = pod_ips.first().cloned().unwrap_or_default();
            let grace = Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64,
            );
            // Upstream bounds the hook only by the runtime; a day keeps a stuck hook from
            // holding this pod's start forever without cutting any real one short.
            let outcome = tokio::select! {
                outcome = hooks::run(runtime, &id, container, &pod_ip, hook, POST_START_LIMIT) => outcome,
                // The pod's deletion kills the container anyway.
                _ = abort.cancelled() => Ok(()),
            };
            if let Err(err) = outcome {
                // The hook's output stays in the log: upstream keeps it out of the event,
                // which any reader of the namespace's events would see.
                warn!(pod = %self.key, container = %container.name, error = %err, "postStart hook failed; killing the container");
                events.warning(
                    reference,
                    "FailedPostStartHook",
                    "PostStartHook failed".into(),
                );
                if let Err(err) = runtime.stop_container(&id, grace).await {
                    warn!(pod = %self.key, container = %container.name, error = %err, "stopping the container after its failed postStart hook failed");
                }
            }
        }
        Ok(())
    }

    /// The pod's image pull secrets that exist (a missing one is skipped, as upstream).
    async fn pull_secrets(&self, spec: &PodSpec) -> Vec<Secret> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.key.namespace);
        let mut secrets = Vec::new();
        for reference in spec.image_pull_secrets.iter().flatten() {
            match api.get_opt(&reference.name).await {
                Ok(Some(secret)) => secrets.push(secret),
                Ok(None) => {
                    debug!(pod = %self.key, secret = %reference.name, "image pull secret not found")
                }
                Err(err) => {
                    warn!(pod = %self.key, secret = %reference.name, error = %error_chain(&err), "reading an image pull secret failed")
                }
            }
        }
        secrets
    }

    /// Runs the container's preStop hook, if any, within the grace period; returns what is
    /// left of it for the stop (at least the minimum the kubelet gives).
    async fn pre_stop(&self, pod: &Pod, id: &str, name: &str, grace: Duration) -> Duration {
        let spec = pod.spec.clone().unwrap_or_default();
        let container = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name);
        let Some((container, handler)) =
            container.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
        else {
            return grace;
        };
        let started = std::time::Instant::now();
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        if let Err(err) =
            hooks::run(&self.shared.runtime, id, container, &pod_ip, handler, grace).await
        {
            self.shared.events.warning(
                events::reference(pod, Some(name)),
                "FailedPreStopHook",
                format!("PreStopHook failed: {err}"),
            );
        }
        grace
            .saturating_sub(started.elapsed())
            .max(lifecycle::MIN_GRACE)
    }

    /// The service variables for the pod's containers; waits briefly for the first list of
    /// Services, and fails (a config error, retried) rather than start without them.
    async fn service_variables(
        &self,
        pod: &Pod,
        spec: &PodSpec,
    ) -> Result<Vec<(String, String)>, String> {
        let store = &self.shared.services;
        // A static pod may have to run before there is an API server to list Services from
        // (as upstream, it starts with what is known, possibly nothing).
        if static_pods::is_static(pod) && store.wait_until_ready().now_or_never().is_none() {
            return Ok(Vec::new());
        }
        tokio::time::timeout(SERVICES_WAIT, store.wait_until_ready())
            .await
            .map_err(|_| {
                "services have not yet been read at least once, cannot construct envvars".to_owned()
            })?
            .map_err(|_| "the service list is not available".to_owned())?;
        let services = store.state();
        Ok(service_env::variables(
            services.iter().map(|s| s.as_ref()),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            spec.enable_service_links != Some(false),
        ))
    }

    /// Reads the ConfigMaps and Secrets the container's environment names.
    async fn env_sources(&self, container: &Container) -> Result<Sources, String> {
        let (config_maps, secrets) = env::references(container);
        let mut sources = Sources::default();
        let cm_api: Api<ConfigMap> =
            Api::namespaced(self.shared.client.clone(), &self.key.namespace);
        for name in config_maps {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => {
                    sources.config_maps.insert(name, cm);
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(format!(
                        "reading configmap \"{name}\": {}",
                        error_chain(&err)
                    ));
                }
            }
        }
        let secret_api: Api<Secret> =
            Api::namespaced(self.shared.client.clone(), &self.key.namespace);
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(secret)) => {
                    sources.secrets.insert(name, secret);
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(format!("reading secret \"{name}\": {}", error_chain(&err)));
                }
            }
        }
        Ok(sources)
    }

    /// Removes what the pod left on the host: its volumes and files, logs and cgroup.
    fn remove_host_state(&self, spec: &PodSpec) {
        if let Err(err) = volumes::tear_down(&self.pod_dir()) {
            warn!(pod = %self.key, error = %err, "removing the pod's volumes failed");
        }
        for path in [self.log_dir()] {
            if let Err(err) = std::fs::remove_dir_all(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                warn!(pod = %self.key, path = %path.display(), error = %err, "removing pod files failed");
            }
        }
        let cgroup = cgroups::pod_cgroup(super::qos::class(spec), &self.key.uid);
        if let Err(err) = cgroups::remove(&cgroup) {
            warn!(pod = %self.key, cgroup, error = %err, "removing the pod cgroup failed");
        }
    }
}

/// A running prober for the pod: what it is told, what it says, and its lifetime (it stops
/// when this is dropped).
struct Prober {
    targets: watch::Sender<probes::Targets>,
    verdicts: watch::Receiver<probes::Verdicts>,
    /// When each running container was first seen running, for initial delays.
    started: std::collections::HashMap<String, tokio::time::Instant>,
    /// Containers already killed for a failed probe.
    restarted: std::collections::HashSet<String>,
    _stop: tokio_util::sync::DropGuard,
}

impl Prober {
    fn start(ctx: probes::Context) -> Prober {
        let (targets, targets_rx) = watch::channel(probes::Targets::default());
        let (verdicts_tx, verdicts) = watch::channel(probes::Verdicts::new());
        let cancel = CancellationToken::new();
        tokio::spawn(probes::run(ctx, targets_rx, verdicts_tx, cancel.clone()));
        Prober {
            targets,
            verdicts,
            started: Default::default(),
            restarted: Default::default(),
            _stop: cancel.drop_guard(),
        }
    }
}

/// Makes the failures of one container's start, which name its image.
fn start_failure(container: &Container) -> impl Fn(StartFailure, String) -> Failure + '_ {
    move |kind, message| Failure {
        kind,
        message,
        image: container.image.clone().unwrap_or_default(),
    }
}

/// Resolves once the pod carries a deletion timestamp or is gone.
async fn deleted(updates: &mut watch::Receiver<Option<Arc<Pod>>>) {
    loop {
        let gone = updates
            .borrow_and_update()
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        if gone || updates.changed().await.is_err() {
            return;
        }
    }
}
