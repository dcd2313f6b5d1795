//! Dispatch: watches the pods bound to this node and keeps one worker per pod, feeding
//! each the newest version of its pod; relists the runtime on every runtime event (and
//! every second, as a safety net) to wake the workers whose containers changed, and starts workers for runtime objects of pods the
//! API no longer has (orphans), so that they are removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::admission::{self, Rejection, Usage};
use super::metadata::{CONTAINER_NAME, PodKey};
use super::worker::{self, Inbox, Shared};
use super::{housekeeping, log_rotation};
use crate::node::runtime::error_chain;

/// How often the runtime is relisted to notice container state changes.
const RELIST: Duration = Duration::from_secs(1);
/// How often the eviction manager measures the node and the pods (the kubelet's 10 s).
const HOUSEKEEPING: Duration = Duration::from_secs(10);

struct Handle {
    desired: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    evict: watch::Sender<Option<Rejection>>,
}

struct Dispatcher {
    shared: Arc<Shared>,
    workers: HashMap<String, Handle>,
    /// This node as the API has it, for admission.
    node: Option<Node>,
    /// Pods admitted and not finished, by UID: what they take of the node.
    admitted: HashMap<String, Pod>,
    /// New pods waiting for the Node object before they can be admitted.
    pending: Vec<Pod>,
    tasks: JoinSet<String>,
    cancel: CancellationToken,
    /// Runtime object states at the last relist, by object ID: (pod UID, state).
    states: HashMap<String, (String, i32)>,
    /// Running containers at the last relist, by pod UID: (name, ID).
    running: HashMap<String, Vec<(String, String)>>,
    /// Pods told to go by the eviction manager.
    evicted: HashSet<String>,
}

impl Dispatcher {
    fn spawn(&mut self, key: PodKey, pod: Option<Arc<Pod>>, rejection: Option<Rejection>) {
        let (desired, receiver) = watch::channel(pod);
        let (evict, evicted) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let inbox = Inbox {
            desired: receiver,
            wake: wake.clone(),
            rejection,
            evicted,
        };
        let uid = key.uid.clone();
        let (shared, cancel) = (self.shared.clone(), self.cancel.child_token());
        let task_uid = uid.clone();
        self.tasks.spawn(async move {
            worker::run(key, shared, inbox, cancel).await;
            task_uid
        });
        self.workers.insert(
            uid,
            Handle {
                desired,
                wake,
                evict,
            },
        );
    }

    fn apply(&mut self, pod: Pod) {
        let key = PodKey::of(&pod);
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if finished || pod.metadata.deletion_timestamp.is_some() {
            self.admitted.remove(&key.uid);
        }
        if let Some(handle) = self.workers.get(&key.uid) {
            if self.admitted.contains_key(&key.uid) {
                self.admitted.insert(key.uid.clone(), pod.clone());
            }
            handle.desired.send_replace(Some(Arc::new(pod)));
            return;
        }
        if finished || pod.metadata.deletion_timestamp.is_some() {
            self.spawn(key, Some(Arc::new(pod)), None);
            return;
        }
        self.pending.push(pod);
        self.admit_pending();
    }

    /// Admits waiting pods in creation order, as the kubelet does, once the node is known.
    fn admit_pending(&mut self) {
        let Some(node) = self.node.clone() else {
            return;
        };
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        });
        for pod in pending {
            let key = PodKey::of(&pod);
            let mut used = Usage::default();
            for other in self.admitted.values() {
                used.add(&other.spec.clone().unwrap_or_default());
            }
            let spec = pod.spec.clone().unwrap_or_default();
            let rejection = admission::admit(&spec, &node, &used).err();
            match &rejection {
                None => {
                    self.admitted.insert(key.uid.clone(), pod.clone());
                }
                Some(r) => {
                    warn!(pod = %key, reason = %r.reason, message = %r.message, "pod rejected")
                }
            }
            self.spawn(key, Some(Arc::new(pod)), rejection);
        }
    }

    fn gone(&mut self, uid: &str) {
        self.admitted.remove(uid);
        self.pending
            .retain(|p| p.metadata.uid.as_deref() != Some(uid));
        if let Some(handle) = self.workers.get(uid) {
            handle.desired.send_replace(None);
        }
    }

    /// Wakes the workers of pods whose runtime objects changed, and starts workers for
    /// runtime objects of pods nobody works on.
    async fn relist(&mut self) {
        let runtime = &self.shared.runtime;
        let (sandboxes, containers) = match tokio::try_join!(
            runtime.list_pod_sandboxes(None),
            runtime.list_containers(None)
        ) {
            Ok(lists) => lists,
            Err(err) => {
                debug!(error = %error_chain(&err), "runtime relist failed");
                return;
            }
        };
        let mut states = HashMap::with_capacity(sandboxes.len() + containers.len());
        let mut keys: HashMap<String, PodKey> = HashMap::new();
        let objects = sandboxes
            .iter()
            .map(|s| (&s.id, &s.labels, s.state))
            .chain(containers.iter().map(|c| (&c.id, &c.labels, c.state + 100)));
        for (id, labels, state) in objects {
            let Some(key) = PodKey::from_labels(labels) else {
                continue;
            };
            states.insert(id.clone(), (key.uid.clone(), state));
            keys.entry(key.uid.clone()).or_insert(key);
        }
        self.running.clear();
        for c in &containers {
            if c.state != nodus_cri::api::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let (Some(key), Some(name)) =
                (PodKey::from_labels(&c.labels), c.labels.get(CONTAINER_NAME))
            else {
                continue;
            };
            self.running
                .entry(key.uid)
                .or_default()
                .push((name.clone(), c.id.clone()));
        }
        let mut changed: HashSet<&str> = HashSet::new();
        for (id, (uid, state)) in &states {
            if self.states.get(id).is_none_or(|(_, old)| old != state) {
                changed.insert(uid);
            }
        }
        for (id, (uid, _)) in &self.states {
            if !states.contains_key(id) {
                changed.insert(uid);
            }
        }
        for uid in changed {
            if let Some(handle) = self.workers.get(uid) {
                handle.wake.notify_one();
            }
        }
        for (uid, key) in keys {
            // A pod waiting for admission is known, not an orphan: its containers stay.
            let pending = self
                .pending
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
            if !self.workers.contains_key(&uid) && !pending {
                debug!(pod = %key, "runtime objects of a pod without a worker");
                self.spawn(key, None, None);
            }
        }
        self.states = states;
    }
}

impl Dispatcher {
    /// Rotates the logs of running containers that outgrew `--container-log-max-size`.
    async fn rotate_logs(&self) {
        let limits = self.shared.log_limits;
        let now = k8s_openapi::jiff::Timestamp::now();
        for (uid, pod) in &self.admitted {
            let Some(containers) = self.running.get(uid) else {
                continue;
            };
            let pod_dir = self
                .shared
                .pod_logs_dir
                .join(PodKey::of(pod).log_dir_name());
            for (name, id) in containers {
                let Some(live) = log_rotation::live_log(&pod_dir.join(name)) else {
                    continue;
                };
                match log_rotation::rotate_if_large(&live, limits, now) {
                    Ok(true) => {
                        if let Err(err) = self.shared.runtime.reopen_container_log(id).await {
                            warn!(container = %id, error = %error_chain(&err), "reopening a rotated log failed");
                        }
                        if let Err(err) = log_rotation::prune(&live, limits) {
                            warn!(log = %live.display(), error = %err, "pruning rotated logs failed");
                        }
                    }
                    Ok(false) => {}
                    Err(err) => {
                        debug!(log = %live.display(), error = %err, "checking a log's size failed")
                    }
                }
            }
        }
    }

    /// One round of the eviction manager: measures off the loop, then tells each chosen pod's
    /// worker to evict it and stops counting it as admitted.
    async fn housekeeping(&mut self) {
        let running: Vec<(Pod, Vec<(String, String)>)> = self
            .admitted
            .iter()
            .filter(|(uid, _)| !self.evicted.contains(*uid))
            .filter_map(|(uid, pod)| Some((pod.clone(), self.running.get(uid)?.clone())))
            .collect();
        let paths = housekeeping::Paths {
            root_dir: self.shared.root_dir.clone(),
            pod_logs_dir: self.shared.pod_logs_dir.clone(),
        };
        let thresholds = self.shared.thresholds.clone();
        let round = tokio::task::spawn_blocking(move || {
            housekeeping::round(
                &paths,
                &thresholds,
                running.iter().map(|(p, c)| (p, c.clone())).collect(),
            )
        })
        .await;
        let Ok(evictions) = round else {
            return;
        };
        self.rotate_logs().await;
        for (uid, eviction, signal) in evictions {
            if let Some(handle) = self.workers.get(&uid) {
                self.shared.metrics.evicted(signal);
                warn!(uid, message = %eviction.message, "evicting pod");
                handle.evict.send_replace(Some(eviction));
                self.evicted.insert(uid.clone());
                self.admitted.remove(&uid);
            }
        }
    }
}

/// Follows the runtime's task events and rings `changed` for each, so that a container
/// exit is relisted at once rather than at the next tick. Resubscribes with backoff when
/// the runtime goes away; the periodic relist covers whatever happened meanwhile.
async fn follow_events(
    runtime: nodus_cri::Runtime,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match runtime.task_events().await {
            Ok(events) => {
                let mut events = std::pin::pin!(events);
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return,
                        next = events.next() => next,
                    };
                    match next {
                        Some(Ok(event)) => {
                            backoff.reset();
                            debug!(topic = %event.topic, "runtime event");
                            changed.notify_one();
                        }
                        Some(Err(err)) => {
                            debug!(error = %error_chain(&err), "runtime event stream failed");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(err) => debug!(error = %error_chain(&err), "subscribing to runtime events failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Runs the pod role until cancelled.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let runtime_changed = Arc::new(Notify::new());
    tokio::spawn(follow_events(
        shared.runtime.clone(),
        runtime_changed.clone(),
        cancel.child_token(),
    ));
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let node_config =
        watcher::Config::default().fields(&format!("metadata.name={}", shared.node_name));
    let mut node_stream = watcher::watcher(nodes, node_config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut dispatcher = Dispatcher {
        shared,
        workers: HashMap::new(),
        node: None,
        admitted: HashMap::new(),
        pending: Vec::new(),
        tasks: JoinSet::new(),
        cancel: cancel.clone(),
        states: HashMap::new(),
        running: HashMap::new(),
        evicted: HashSet::new(),
    };
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listed: HashSet<String> = HashSet::new();
    let mut synced = false;
    let mut relist = tokio::time::interval(RELIST);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            event = stream.next() => match event {
                Some(Ok(Event::Apply(pod))) => dispatcher.apply(pod),
                Some(Ok(Event::InitApply(pod))) => {
                    listed.extend(pod.metadata.uid.clone());
                    dispatcher.apply(pod);
                }
                Some(Ok(Event::Delete(pod))) => dispatcher.gone(pod.metadata.uid.as_deref().unwrap_or_default()),
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitDone)) => {
                    // After a (re)list, pods that were not listed are gone.
                    let stale: Vec<String> = dispatcher
                        .workers
                        .iter()
                        .filter(|(uid, h)| !listed.contains(*uid) && h.desired.borrow().is_some())
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    for uid in stale {
                        dispatcher.gone(&uid);
                    }
                    synced = true;
                }
                Some(Err(err)) => warn!(error = %error_chain(&err), "watching pods failed; retrying"),
                None => break,
            },
            node = node_stream.next() => match node {
                Some(Ok(node)) => {
                    dispatcher.node = Some(node);
                    dispatcher.admit_pending();
                }
                Some(Err(err)) => warn!(error = %error_chain(&err), "watching the node failed; retrying"),
                None => break,
            },
            Some(done) = dispatcher.tasks.join_next() => {
                if let Ok(uid) = done {
                    dispatcher.workers.remove(&uid);
                    dispatcher.admitted.remove(&uid);
                    dispatcher.evicted.remove(&uid);
                }
            }
            // Only once the API's view is complete (pods listed, node known) can a runtime
            // object without a pod be told from one whose pod is still on its way.
            _ = relist.tick(), if synced && dispatcher.node.is_some() => dispatcher.relist().await,
            _ = runtime_changed.notified(), if synced && dispatcher.node.is_some() => dispatcher.relist().await,
            _ = housekeeping.tick(), if synced => dispatcher.housekeeping().await,
        }
    }
    // Workers stop with the token; pods keep running in the runtime for the next start.
    while dispatcher.tasks.join_next().await.is_some() {}
}
