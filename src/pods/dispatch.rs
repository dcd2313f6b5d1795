//! Dispatch: watches the pods bound to this node and keeps one worker per pod, feeding
//! each the newest version of its pod; relists the runtime on every runtime event (and
//! every second, as a safety net) to wake the workers whose containers changed, and starts workers for runtime objects of pods the
//! API no longer has (orphans), so that they are removed. Static pods from the manifest
//! directory get workers as API pods do, and mirror pods in the API for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use super::static_pods::{is_mirror, is_static};
use super::worker::{self, Inbox, Shared};
use super::{housekeeping, log_rotation, mirror, static_pods};
use crate::node::runtime::error_chain;

/// How often the runtime is relisted to notice container state changes.
const RELIST: Duration = Duration::from_secs(1);
/// How often the eviction manager measures the node and the pods (the kubelet's 10 s).
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Pause before trying a failed mirror pod change again.
const MIRROR_RETRY: Duration = Duration::from_secs(5);

struct Handle {
    desired: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    evict: watch::Sender<Option<Rejection>>,
    /// For a static pod: its live mirror pod, where its status goes.
    mirror: watch::Sender<Option<Arc<Pod>>>,
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
    /// Static pods from the manifest directory, by UID.
    static_pods: HashMap<String, Pod>,
    /// Mirror pods in the API, by `namespace/name`.
    mirrors: HashMap<String, Pod>,
    /// Mirror pod creations and deletions under way: (key, what was done if it worked).
    mirror_ops: JoinSet<(String, Option<MirrorDone>)>,
    /// Keys with a change under way (`None`) or failed and waiting until then.
    mirror_busy: HashMap<String, Option<Instant>>,
}

impl Dispatcher {
    fn spawn(&mut self, key: PodKey, pod: Option<Arc<Pod>>, rejection: Option<Rejection>) {
        let (desired, receiver) = watch::channel(pod);
        let (evict, evicted) = watch::channel(None);
        let (mirror, mirror_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let inbox = Inbox {
            desired: receiver,
            wake: wake.clone(),
            rejection,
            evicted,
            mirror: mirror_rx,
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
                mirror,
            },
        );
        self.sync_mirrors();
    }

    fn apply(&mut self, pod: Pod) {
        if is_mirror(&pod) {
            // Not a pod to run: the API's copy of a static pod (here or on another node).
            self.mirrors.insert(mirror::key(&pod), pod);
            self.sync_mirrors();
            return;
        }
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
    /// Static pods do not wait: they must run before there is an API server to ask (the
    /// kubelet admits them against a node it makes up, and may preempt others for them).
    fn admit_pending(&mut self) {
        let node = self.node.clone();
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
            for (uid, other) in &self.admitted {
                // A pod's granted resize counts, not one its spec asks for and waits on.
                let held = self.shared.holdings.get(uid);
                used.add_holding(&other.spec.clone().unwrap_or_default(), held.as_ref());
            }
            let spec = pod.spec.clone().unwrap_or_default();
            let rejection = match &node {
                Some(node) => admission::admit(&spec, node, &used)
                    .and_then(|()| sysctl_admission(&self.shared.sysctls, &spec))
                    .err(),
                None if is_static(&pod) => None,
                None => {
                    self.pending.push(pod);
                    continue;
                }
            };
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

    /// The manifest directory's pods changed: new ones start, removed ones stop.
    fn set_static(&mut self, pods: Vec<Pod>) {
        let fresh: HashMap<String, Pod> = pods
            .into_iter()
            .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
            .collect();
        let removed: Vec<String> = self
            .static_pods
            .keys()
            .filter(|uid| !fresh.contains_key(*uid))
            .cloned()
            .collect();
        let added: Vec<Pod> = fresh
            .iter()
            .filter(|(uid, _)| !self.static_pods.contains_key(*uid))
            .map(|(_, p)| p.clone())
            .collect();
        self.static_pods = fresh;
        for uid in removed {
            debug!(uid, "static pod removed");
            self.gone(&uid);
        }
        for pod in added {
            debug!(pod = %PodKey::of(&pod), "static pod added");
            self.apply(pod);
        }
        self.sync_mirrors();
    }

    /// Hands each static pod's worker its live mirror, and starts the mirror pod changes
    /// that are due.
    fn sync_mirrors(&mut self) {
        for (uid, pod) in &self.static_pods {
            let Some(handle) = self.workers.get(uid) else {
                continue;
            };
            let live = self
                .mirrors
                .get(&mirror::key(pod))
                .filter(|m| mirror::mirrors(m, pod));
            handle.mirror.send_if_modified(|current| {
                let version = |p: Option<&Pod>| {
                    p.map(|p| (p.metadata.uid.clone(), p.metadata.resource_version.clone()))
                };
                if version(current.as_deref()) == version(live) {
                    return false;
                }
                *current = live.map(|m| Arc::new(m.clone()));
                true
            });
        }
        let node = self
            .node
            .as_ref()
            .and_then(|n| Some((n.metadata.name.as_deref()?, n.metadata.uid.as_deref()?)));
        let statics: Vec<&Pod> = self.static_pods.values().collect();
        let ops = mirror::reconcile(&statics, &self.mirrors, node);
        let now = Instant::now();
        for op in ops {
            let key = op.key();
            match self.mirror_busy.get(&key) {
                Some(None) => continue,
                Some(Some(retry_at)) if *retry_at > now => continue,
                _ => {}
            }
            self.mirror_busy.insert(key.clone(), None);
            let client = self.shared.client.clone();
            self.mirror_ops.spawn(async move {
                let done = mirror_op(client, op).await;
                (key, done)
            });
        }
    }

    /// Records a finished mirror pod change at once, so that the next sync does not repeat
    /// it before the watch shows it; a failed one waits before it is tried again.
    fn mirror_done(&mut self, key: String, done: Option<MirrorDone>) {
        match done {
            None => {
                self.mirror_busy
                    .insert(key, Some(Instant::now() + MIRROR_RETRY));
                return;
            }
            Some(MirrorDone::Created(pod)) => {
                self.mirrors.entry(key.clone()).or_insert(*pod);
            }
            Some(MirrorDone::Deleted(uid)) => {
                if self
                    .mirrors
                    .get(&key)
                    .and_then(|m| m.metadata.uid.as_deref())
                    == Some(&uid)
                {
                    self.mirrors.remove(&key);
                }
            }
        }
        self.mirror_busy.remove(&key);
        self.sync_mirrors();
    }

    fn gone(&mut self, uid: &str) {
        self.admitted.remove(uid);
        self.pending
            .retain(|p| p.metadata.uid.as_deref() != Some(uid));
        if let Some(handle) = self.workers.get(uid) {
            handle.desired.send_replace(None);
        }
    }

    /// Wakes the workers of pods whose runtime objects changed, and (with `orphans`) starts
    /// workers for runtime objects of pods nobody works on.
    async fn relist(&mut self, orphans: bool) {
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
            if orphans && !self.workers.contains_key(&uid) && !pending {
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

/// After a task event, when to relist again: containerd's CRI plugin updates a container's
/// state some time after the task event it reacts to (more under load), and a relist that
/// still sees the old state would leave the change to the next 1 s tick.
const EVENT_FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
];

/// Follows the runtime's task events and rings `changed` for each (and a few times
/// shortly after, see [`EVENT_FOLLOW_UPS`]), so that a container exit is relisted at once
/// rather than at the next tick. Resubscribes with backoff when the runtime goes away; the
/// periodic relist covers whatever happened meanwhile.
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
                let mut follow_ups: Vec<tokio::time::Instant> = Vec::new();
                loop {
                    let next_follow_up = follow_ups.first().copied();
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = async {
                            match next_follow_up {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        } => {
                            follow_ups.remove(0);
                            changed.notify_one();
                            continue;
                        }
                        next = events.next() => next,
                    };
                    match next {
                        Some(Ok(event)) => {
                            backoff.reset();
                            debug!(topic = %event.topic, "runtime event");
                            changed.notify_one();
                            let now = tokio::time::Instant::now();
                            follow_ups = EVENT_FOLLOW_UPS.iter().map(|d| now + *d).collect();
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

/// A mirror pod change that went through.
enum MirrorDone {
    Created(Box<Pod>),
    /// The mirror pod with this UID is gone (or was already).
    Deleted(String),
}

/// Creates or deletes one mirror pod; `None` when that failed.
async fn mirror_op(client: kube::Client, op: mirror::Op) -> Option<MirrorDone> {
    use kube::api::{DeleteParams, PostParams, Preconditions};
    let key = op.key();
    let creating = matches!(op, mirror::Op::Create(_));
    let result = match op {
        mirror::Op::Create(pod) => {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            api.create(&PostParams::default(), &pod)
                .await
                .map(|created| MirrorDone::Created(Box::new(created)))
        }
        mirror::Op::Delete {
            namespace,
            name,
            uid,
        } => {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let gone = MirrorDone::Deleted(uid);
            match api.delete(&name, &params).await {
                Ok(_) => Ok(gone),
                // Already gone, or replaced: the watch shows what is.
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(gone),
                Err(err) => Err(err),
            }
        }
    };
    match result {
        Ok(done) => {
            debug!(pod = key, "mirror pod changed");
            Some(done)
        }
        // A mirror made a moment ago (the watch has not shown it yet), or a pod of the
        // same name that is no mirror: look again later.
        Err(kube::Error::Api(s)) if creating && s.is_already_exists() => {
            debug!(pod = key, "a pod of the mirror's name exists");
            None
        }
        Err(err) => {
            warn!(pod = key, error = %error_chain(&err), "changing the mirror pod failed");
            None
        }
    }
}

/// Runs the pod role until cancelled.
/// The sysctl half of admission: a forbidden sysctl rejects the pod as the kubelet does.
fn sysctl_admission(
    allowlist: &super::sysctls::Allowlist,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<(), Rejection> {
    allowlist.check(spec).map_err(|message| Rejection {
        reason: "SysctlForbidden".into(),
        message: format!("Pod was rejected: {message}"),
    })
}

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
        static_pods: HashMap::new(),
        mirrors: HashMap::new(),
        mirror_ops: JoinSet::new(),
        mirror_busy: HashMap::new(),
    };
    let (static_tx, mut static_rx) = watch::channel(None);
    // Without a manifest directory there are no static pods to wait for.
    let mut static_read = dispatcher.shared.static_pods.is_none();
    let mut static_open = !static_read;
    if let Some((dir, every)) = dispatcher.shared.static_pods.clone() {
        tokio::spawn(static_pods::follow(
            dir,
            dispatcher.shared.node_name.clone(),
            every,
            static_tx,
            cancel.child_token(),
        ));
    }
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
                Some(Ok(Event::Delete(pod))) if is_mirror(&pod) => {
                    // Only that mirror: its successor may be known already.
                    let key = mirror::key(&pod);
                    if dispatcher.mirrors.get(&key).map(|m| &m.metadata.uid) == Some(&pod.metadata.uid) {
                        dispatcher.mirrors.remove(&key);
                    }
                    dispatcher.sync_mirrors();
                }
                Some(Ok(Event::Delete(pod))) => dispatcher.gone(pod.metadata.uid.as_deref().unwrap_or_default()),
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitDone)) => {
                    // After a (re)list, pods that were not listed are gone; static pods
                    // never came from the API.
                    let stale: Vec<String> = dispatcher
                        .workers
                        .iter()
                        .filter(|(uid, h)| {
                            !listed.contains(*uid)
                                && !dispatcher.static_pods.contains_key(*uid)
                                && h.desired.borrow().is_some()
                        })
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    for uid in stale {
                        dispatcher.gone(&uid);
                    }
                    dispatcher.mirrors.retain(|_, m| {
                        m.metadata.uid.as_ref().is_some_and(|uid| listed.contains(uid))
                    });
                    dispatcher.sync_mirrors();
                    synced = true;
                }
                Some(Err(err)) => warn!(error = %error_chain(&err), "watching pods failed; retrying"),
                None => break,
            },
            node = node_stream.next() => match node {
                Some(Ok(node)) => {
                    dispatcher.node = Some(node);
                    dispatcher.admit_pending();
                    dispatcher.sync_mirrors();
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
            Some(done) = dispatcher.mirror_ops.join_next() => {
                if let Ok((key, done)) = done {
                    dispatcher.mirror_done(key, done);
                }
            }
            changed = static_rx.changed(), if static_open => match changed {
                Ok(()) => {
                    let pods = static_rx.borrow_and_update().clone();
                    if let Some(pods) = pods {
                        dispatcher.set_static(pods);
                        static_read = true;
                    }
                }
                Err(_) => static_open = false,
            },
            // Only once the API's view is complete (pods listed, node known) and the manifests
            // read can a runtime object without a pod be told from one whose pod is on its way;
            // until then the relist only wakes workers.
            _ = relist.tick() => {
                let complete = synced && dispatcher.node.is_some() && static_read;
                dispatcher.relist(complete).await;
                dispatcher.sync_mirrors();
            }
            _ = runtime_changed.notified() => {
                let complete = synced && dispatcher.node.is_some() && static_read;
                dispatcher.relist(complete).await;
            }
            _ = housekeeping.tick(), if synced => dispatcher.housekeeping().await,
        }
    }
    // Workers stop with the token; pods keep running in the runtime for the next start.
    while dispatcher.tasks.join_next().await.is_some() {}
}
