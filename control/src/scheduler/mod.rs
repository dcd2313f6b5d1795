//! Scheduler: places pods that ask for this scheduler on nodes, one pod at a time — pop the
//! queue, filter every node, score the feasible ones, pick, assume in the cache, and bind
//! in a background task so the next pod does not wait for the API server. One task owns the
//! cache and the queue; the pod and node watchers, binding results and backoff timers all
//! arrive in its one `select!` loop, so there are no locks. Invariant: nothing is scheduled
//! before both watchers have listed everything (a partial node list would misplace pods).
//!
//! ```text
//!  pod watcher ──► cache (bound pods) / queue (pending pods)
//!  node watcher ─► cache (nodes) ──► queue.move_all on relevant changes
//!  PDB watcher ──► budgets (which victims preemption prefers to spare)
//!  loop: queue.pop ─► filters ─► scores ─► cache.assume ─► spawn bind ─► confirm / forget
//!                          └─► no fit: preemption ─► nominate, evict victims (background)
//!                              queue.unschedulable, PodScheduled=False, FailedScheduling
//! ```
//!
//! Filters see, besides a node's bound and assumed pods, the pods nominated to it with at
//! least the priority of the pod at hand (`nominated`), so room freed by preemption goes to
//! the pod that asked for it.
//!
//! Next, each in its own module: PodTopologySpread and inter-pod affinity.

pub mod bind;
pub mod budgets;
pub mod cache;
pub mod diagnosis;
pub mod filters;
pub mod nominated;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod scores;

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::bind::Writer;
use self::budgets::Budgets;
use self::cache::Cache;
use self::filters::Rejection;
use self::nominated::Nominations;
use self::preemption::{Decision, Preemptor, View};
use self::queue::Queue;
use self::resources::{Demand, NodeUsage};
use self::scores::Feasible;

/// How long shutdown waits for bindings already sent.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours (`default-scheduler` by default).
    pub scheduler_name: String,
    /// Reporting instance for events; upstream uses `<scheduler>-<hostname>`.
    pub instance: Option<String>,
}

/// `namespace/name`, the key of a pod in the queue and the cache.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn is_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// What a background task reports back to the loop.
#[derive(Debug)]
enum Outcome {
    Bound {
        key: String,
        result: Result<(), bind::Error>,
    },
    Recorded,
    /// Victims evicted for the pod `key`; those in `failed` are still there.
    Evicted {
        key: String,
        failed: Vec<String>,
    },
}

/// A relist in progress: objects are collected until `InitDone`, then replace the state at
/// once, so objects missing from the list are known to be gone.
#[derive(Debug, Default)]
struct Relist<K> {
    buffer: Option<Vec<K>>,
    done_once: bool,
}

#[derive(Debug)]
struct Scheduler {
    config: Config,
    cache: Cache,
    queue: Queue,
    nominations: Nominations,
    budgets: Budgets,
    writer: Writer,
    tasks: JoinSet<Outcome>,
    pods: Relist<Pod>,
    nodes: Relist<Node>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, scheduling on
    /// a frozen view would be wrong, so the scheduler stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
}

/// Runs the scheduler until `cancel`, then waits up to `GRACE` for bindings in flight.
pub async fn run(client: Client, config: Config, cancel: CancellationToken) -> Result<(), Error> {
    let writer = Writer::new(
        client.clone(),
        &config.scheduler_name,
        config.instance.clone(),
    );
    // Terminal pods use nothing and are never scheduled: like upstream's informer, do not
    // watch them (one that finishes arrives as a deletion).
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
    );
    let nodes = watch(Api::<Node>::all(client.clone()), watcher::Config::default());
    // Only preemption reads budgets, and only to prefer some victims: scheduling does not
    // wait for them to be listed.
    let budgets = watch(
        Api::<PodDisruptionBudget>::all(client),
        watcher::Config::default(),
    );
    let mut pods = pin!(pods);
    let mut nodes = pin!(nodes);
    let mut budgets = pin!(budgets);
    let mut scheduler = Scheduler::new(config, writer);
    info!(scheduler = %scheduler.config.scheduler_name, "scheduler starting");
    let result = loop {
        let now = Instant::now();
        let synced = scheduler.synced();
        let ready = synced && scheduler.queue.has_ready(now);
        let wake = scheduler.queue.next_wakeup();
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = pods.next() => match event {
                Some(Ok(event)) => scheduler.on_pod(event),
                Some(Err(err)) => warn!(error = %err, "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            event = nodes.next() => match event {
                Some(Ok(event)) => scheduler.on_node(event),
                Some(Err(err)) => warn!(error = %err, "node watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "node" }),
            },
            event = budgets.next() => match event {
                Some(Ok(event)) => scheduler.budgets.on_event(event),
                Some(Err(err)) => warn!(error = %err, "PodDisruptionBudget watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "PodDisruptionBudget" }),
            },
            Some(done) = scheduler.tasks.join_next(), if !scheduler.tasks.is_empty() => match done {
                Ok(outcome) => scheduler.on_outcome(outcome),
                Err(err) => warn!(error = %err, "scheduler task failed"),
            },
            _ = sleep_until(wake.unwrap_or(now)), if synced && !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => scheduler.schedule_one(),
        }
    };
    info!(in_flight = scheduler.tasks.len(), "scheduler stopping");
    let drain = async { while scheduler.tasks.join_next().await.is_some() {} };
    if timeout(GRACE, drain).await.is_err() {
        warn!("bindings still in flight at shutdown were abandoned");
    }
    result
}

/// A watch stream that relists and retries with kube-runtime's default backoff.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

impl Scheduler {
    fn new(config: Config, writer: Writer) -> Self {
        Self {
            config,
            cache: Cache::default(),
            queue: Queue::default(),
            nominations: Nominations::default(),
            budgets: Budgets::default(),
            writer,
            tasks: JoinSet::new(),
            pods: Relist::default(),
            nodes: Relist::default(),
        }
    }

    /// Both watchers have listed everything at least once.
    fn synced(&self) -> bool {
        self.pods.done_once && self.nodes.done_once
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        let now = Instant::now();
        match event {
            Event::Init => self.pods.buffer = Some(Vec::new()),
            Event::InitApply(pod) => match self.pods.buffer.as_mut() {
                Some(buffer) => buffer.push(pod),
                None => self.apply_pod(pod, now),
            },
            Event::InitDone => {
                let listed = self.pods.buffer.take().unwrap_or_default();
                self.pods.done_once = true;
                self.cache.replace_pods(
                    listed
                        .iter()
                        .filter(|p| is_bound(p) && !is_terminal(p))
                        .map(|p| (pod_key(p), p)),
                );
                let mut wanted = std::collections::HashSet::new();
                for pod in listed {
                    let key = pod_key(&pod);
                    if !is_bound(&pod) && queue::wants(&pod, &self.config.scheduler_name) {
                        wanted.insert(key.clone());
                    }
                    self.apply_pod(pod, now);
                }
                self.queue
                    .retain(|key| wanted.contains(key) || self.cache.contains(key));
                self.nominations.retain(|key| wanted.contains(key));
                // Pods may have gone while the watch was down, freeing room.
                self.queue.move_all(now);
                debug!(pending = self.queue.len(), "pods listed");
            }
            Event::Apply(pod) => self.apply_pod(pod, now),
            Event::Delete(pod) => {
                let key = pod_key(&pod);
                self.queue.remove(&key);
                self.nominations.remove(&key);
                if self.cache.delete_pod(&key) {
                    self.queue.move_all(now);
                }
            }
        }
    }

    fn apply_pod(&mut self, pod: Pod, now: Instant) {
        let key = pod_key(&pod);
        if is_bound(&pod) {
            self.queue.remove(&key);
            self.nominations.remove(&key);
            if is_terminal(&pod) {
                if self.cache.delete_pod(&key) {
                    self.queue.move_all(now);
                }
            } else {
                self.cache.apply_pod(&key, &pod);
            }
        } else if queue::wants(&pod, &self.config.scheduler_name) {
            // An assumed pod's own updates (ours, before the binding shows) must not queue it
            // a second time.
            if !self.cache.contains(&key) {
                self.nominations.observe(&key, &pod);
                self.queue.upsert(&key, pod, now);
            }
        } else {
            self.queue.remove(&key);
            self.nominations.remove(&key);
        }
    }

    fn on_node(&mut self, event: Event<Node>) {
        let now = Instant::now();
        match event {
            Event::Init => self.nodes.buffer = Some(Vec::new()),
            Event::InitApply(node) => match self.nodes.buffer.as_mut() {
                Some(buffer) => buffer.push(node),
                None => {
                    if self.cache.apply_node(node) {
                        self.queue.move_all(now);
                    }
                }
            },
            Event::InitDone => {
                let listed = self.nodes.buffer.take().unwrap_or_default();
                self.nodes.done_once = true;
                if self.cache.replace_nodes(listed) {
                    self.queue.move_all(now);
                }
                debug!(nodes = self.cache.node_count(), "nodes listed");
            }
            Event::Apply(node) => {
                if self.cache.apply_node(node) {
                    self.queue.move_all(now);
                }
            }
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.cache.delete_node(name);
                }
            }
        }
    }

    /// One scheduling attempt for the next ready pod.
    fn schedule_one(&mut self) {
        let now = Instant::now();
        let Some((key, pod)) = self.queue.pop(now) else {
            return;
        };
        if self.cache.contains(&key) {
            self.queue.remove(&key);
            return;
        }
        let Some(spec) = pod.spec.as_ref() else {
            self.queue.remove(&key);
            return;
        };
        let demand = Demand::of(spec);
        let priority = spec.priority.unwrap_or(0);
        // Nodes that pods of at least this priority are nominated to, seen with their
        // requests; nominations are rare, so this is usually empty.
        let with_nominated: std::collections::HashMap<&str, NodeUsage> = self
            .nominations
            .nodes()
            .filter_map(|name| {
                let (_, usage) = self.cache.node(name)?;
                let usage = self.nominations.usage_for(name, usage, &key, priority);
                Some((name, usage.into_owned()))
            })
            .collect();
        let mut feasible = Vec::new();
        let mut rejections: Vec<(String, Rejection)> = Vec::new();
        for (node, usage) in self.cache.nodes() {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let usage = with_nominated.get(name).unwrap_or(usage);
            match filters::run(spec, &demand, node, usage) {
                Ok(()) => feasible.push(Feasible { node, usage }),
                Err(rejection) => rejections.push((name.to_owned(), rejection)),
            }
        }
        // A pod that preempted goes where it made room, if that node takes it now (as
        // upstream evaluates the nominated node first).
        let nominated = self.nominations.node_of(&key);
        let chosen = feasible
            .iter()
            .position(|f| f.node.metadata.name.as_deref() == nominated && nominated.is_some())
            .or_else(|| scores::pick(spec, &demand, &feasible))
            .and_then(|i| feasible[i].node.metadata.name.clone());
        drop(feasible);
        match chosen {
            Some(node) => {
                if let Err(err) = self.cache.assume(&key, &node, demand) {
                    // contains() was checked above; reaching here means a bug, not a race.
                    warn!(pod = %key, error = %err, "assume failed");
                    self.queue.retry(&key, now);
                    return;
                }
                debug!(pod = %key, %node, "assumed; binding");
                let writer = self.writer.clone();
                self.tasks.spawn(async move {
                    let result = writer.bind(&pod, &node).await;
                    if result.is_ok() {
                        info!(pod = %key, %node, "bound");
                        writer.scheduled(&pod, &node).await;
                    }
                    Outcome::Bound { key, result }
                });
            }
            None => self.preempt_or_park(key, pod, demand, priority, &rejections, now),
        }
    }

    /// No node fits: try preemption, then park the pod and say why (and, after preempting,
    /// where it is nominated) while the victims are evicted in the background.
    fn preempt_or_park(
        &mut self,
        key: String,
        pod: Arc<Pod>,
        demand: Demand,
        priority: i32,
        rejections: &[(String, Rejection)],
        now: Instant,
    ) {
        let total = self.cache.node_count();
        let decision = if total == 0 {
            Decision::NoCandidate(Vec::new())
        } else {
            let preemptor = Preemptor {
                key: &key,
                pod: &pod,
                demand: &demand,
                priority,
            };
            let view = View {
                cache: &self.cache,
                nominations: &self.nominations,
                budgets: &self.budgets,
            };
            preemption::decide(preemptor, view, rejections)
        };
        let message = diagnosis::message(
            total,
            rejections.iter().map(|(_, r)| r),
            &decision.describe(total),
        );
        info!(pod = %key, %message, "unschedulable");
        self.queue.unschedulable(&key, now);
        let Decision::Preempt { node, victims } = decision else {
            self.record_failure(pod, bind::REASON_UNSCHEDULABLE, message);
            return;
        };
        self.nominations.set(
            &key,
            &node,
            priority,
            demand,
            victims.iter().map(|v| v.key.clone()).collect(),
        );
        let writer = self.writer.clone();
        self.tasks.spawn(async move {
            writer
                .failed(
                    &pod,
                    bind::REASON_UNSCHEDULABLE,
                    &message,
                    Some(node.as_str()),
                )
                .await;
            let evictions = victims
                .iter()
                .map(|victim| writer.preempt(victim, &pod, &node));
            let results = futures::future::join_all(evictions).await;
            let mut failed = Vec::new();
            for (victim, result) in victims.iter().zip(results) {
                if let Err(err) = result {
                    warn!(error = %error_chain(&err), "eviction failed");
                    failed.push(victim.key.clone());
                }
            }
            Outcome::Evicted { key, failed }
        });
    }

    fn record_failure(&mut self, pod: Arc<Pod>, reason: &'static str, message: String) {
        let writer = self.writer.clone();
        self.tasks.spawn(async move {
            writer.failed(&pod, reason, &message, None).await;
            Outcome::Recorded
        });
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let now = Instant::now();
        let (key, result) = match outcome {
            Outcome::Bound { key, result } => (key, result),
            Outcome::Recorded => return,
            Outcome::Evicted { key, failed } => {
                if !failed.is_empty() {
                    // Not waiting for pods that stay: the next attempt decides afresh.
                    self.nominations.forget_victims(&key, &failed);
                    self.queue.retry(&key, now);
                }
                return;
            }
        };
        match result {
            Ok(()) => {
                // Err only if the watcher already showed the pod gone; nothing to do then.
                let _ = self.cache.finish_binding(&key);
                self.queue.remove(&key);
                self.nominations.remove(&key);
            }
            Err(err) => {
                let _ = self.cache.forget(&key);
                // The assumed pod's room is free again.
                self.queue.move_all(now);
                if err.pod_gone() || err.already_bound() {
                    debug!(pod = %key, error = %err, "binding refused; the watcher has the pod's fate");
                    self.queue.remove(&key);
                    return;
                }
                warn!(pod = %key, error = %err, "binding failed; retrying after backoff");
                let pod = self.queue.pod(&key);
                self.queue.retry(&key, now);
                if let Some(pod) = pod {
                    let message = format!("Binding rejected: {}", error_chain(&err));
                    self.record_failure(pod, bind::REASON_SCHEDULER_ERROR, message);
                }
            }
        }
    }
}

/// An error and its causes on one line, each said once.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::scheduler::filters::tests::{node, pod as spec};

    /// One request the scheduler sent: method, path, JSON body.
    type Sent = (String, String, Value);

    /// A stand-in API server that records every request and answers as the real one would
    /// for bindings, status patches and events; bindings of the pods in `fail` get a 500.
    #[derive(Clone)]
    struct ApiDouble {
        sent: mpsc::UnboundedSender<Sent>,
        fail: Arc<HashSet<String>>,
    }

    impl tower::Service<http::Request<Body>> for ApiDouble {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let double = self.clone();
            Box::pin(async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let _ = double
                    .sent
                    .send((method.clone(), path.clone(), body.clone()));
                let failing = path
                    .strip_suffix("/binding")
                    .and_then(|p| p.rsplit('/').next())
                    .is_some_and(|name| double.fail.contains(name));
                let (code, reply) = match (method.as_str(), path.as_str()) {
                    ("POST", p) if p.ends_with("/binding") && failing => (
                        500,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "etcd unavailable", "reason": "InternalError", "code": 500}),
                    ),
                    ("POST", p) if p.ends_with("/binding") => (
                        201,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    ),
                    ("PATCH", p) if p.ends_with("/status") => (
                        200,
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
                    ),
                    ("POST", p) if p.contains("/events") => (201, body),
                    ("DELETE", p) if p.contains("/pods/") => (
                        200,
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
                    ),
                    _ => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 404}),
                    ),
                };
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response");
                Ok(response)
            })
        }
    }

    fn scheduler(fail: &[&str]) -> (Scheduler, mpsc::UnboundedReceiver<Sent>) {
        let (sent, received) = mpsc::unbounded_channel();
        let double = ApiDouble {
            sent,
            fail: Arc::new(fail.iter().map(|s| (*s).to_owned()).collect()),
        };
        let client = Client::new(double, "default");
        let config = Config {
            scheduler_name: "default-scheduler".into(),
            instance: Some("default-scheduler-test".into()),
        };
        let writer = Writer::new(client, &config.scheduler_name, config.instance.clone());
        (Scheduler::new(config, writer), received)
    }

    fn pending(name: &str, cpu: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(spec(cpu, "0")),
            status: None,
        }
    }

    fn bound(name: &str, cpu: &str, node: &str) -> Pod {
        let mut pod = pending(name, cpu);
        pod.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..spec(cpu, "0")
        });
        pod
    }

    fn list<K>(objects: Vec<K>) -> Vec<Event<K>> {
        std::iter::once(Event::Init)
            .chain(objects.into_iter().map(Event::InitApply))
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }

    /// Runs every background task to completion, feeding the outcomes back.
    async fn settle(s: &mut Scheduler) {
        while let Some(done) = s.tasks.join_next().await {
            s.on_outcome(done.expect("task ran"));
        }
    }

    fn drain(received: &mut mpsc::UnboundedReceiver<Sent>) -> Vec<Sent> {
        std::iter::from_fn(|| received.try_recv().ok()).collect()
    }

    fn bindings(sent: &[Sent]) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = sent
            .iter()
            .filter(|(method, path, _)| method == "POST" && path.ends_with("/binding"))
            .map(|(_, _, body)| {
                (
                    body["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    body["target"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        found.sort();
        found
    }

    fn event_notes(sent: &[Sent], reason: &str) -> Vec<String> {
        let mut notes: Vec<String> = sent
            .iter()
            .filter(|(method, path, body)| {
                method == "POST" && path.contains("/events") && body["reason"] == reason
            })
            .map(|(_, _, body)| body["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        notes.sort();
        notes
    }

    #[tokio::test(start_paused = true)]
    async fn schedules_back_to_back_then_reports_and_retries_what_does_not_fit() {
        let (mut s, mut received) = scheduler(&[]);
        for event in list(vec![
            node("a", "1", "1Gi", "110"),
            node("b", "1", "1Gi", "110"),
        ]) {
            s.on_node(event);
        }
        assert!(!s.synced(), "pods not listed yet");
        for event in list(vec![
            pending("p1", "1"),
            pending("p2", "1"),
            pending("p3", "1"),
            bound("elsewhere", "0", "a"),
        ]) {
            s.on_pod(event);
        }
        assert!(s.synced());

        for _ in 0..3 {
            s.schedule_one();
        }
        settle(&mut s).await;
        let sent = drain(&mut received);
        // p2 did not go to a: p1's assumption already filled it.
        assert_eq!(
            bindings(&sent),
            vec![("p1".into(), "a".into()), ("p2".into(), "b".into())]
        );
        assert_eq!(
            event_notes(&sent, "Scheduled"),
            vec![
                "Successfully assigned default/p1 to a",
                "Successfully assigned default/p2 to b"
            ]
        );
        let message = "0/2 nodes are available: 2 Insufficient cpu. \
                       preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.";
        assert_eq!(event_notes(&sent, "FailedScheduling"), vec![message]);
        let patch = sent
            .iter()
            .find(|(method, path, _)| {
                method == "PATCH" && path == "/api/v1/namespaces/default/pods/p3/status"
            })
            .map(|(_, _, body)| body["status"]["conditions"][0].clone())
            .expect("condition patched");
        assert_eq!(patch["reason"], "Unschedulable");
        assert_eq!(patch["message"], message);

        // The watcher confirms p1; it still counts once.
        s.on_pod(Event::Apply(bound("p1", "1", "a")));
        assert_eq!(s.cache.usage("a").map(|u| u.get("cpu")), Some(1000));
        assert!(!s.queue.has_ready(Instant::now()), "p3 waits for an event");

        // p2 goes away: p3 is retried once its 1 s backoff is over, and lands on b.
        s.on_pod(Event::Delete(bound("p2", "1", "b")));
        assert!(!s.queue.has_ready(Instant::now()));
        tokio::time::advance(queue::INITIAL_BACKOFF).await;
        assert!(s.queue.has_ready(Instant::now()));
        s.schedule_one();
        settle(&mut s).await;
        assert_eq!(
            bindings(&drain(&mut received)),
            vec![("p3".into(), "b".into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_binding_frees_the_node_and_backs_off() {
        let (mut s, mut received) = scheduler(&["doomed"]);
        for event in list(vec![node("a", "1", "1Gi", "110")]) {
            s.on_node(event);
        }
        for event in list(vec![pending("doomed", "1")]) {
            s.on_pod(event);
        }
        s.schedule_one();
        assert_eq!(
            s.cache.usage("a").map(|u| u.get("cpu")),
            Some(1000),
            "assumed"
        );
        settle(&mut s).await;
        assert_eq!(
            s.cache.usage("a").map(|u| u.get("cpu")),
            Some(0),
            "forgotten"
        );
        assert!(!s.cache.contains("default/doomed"));

        let sent = drain(&mut received);
        let notes = event_notes(&sent, "FailedScheduling");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("Binding rejected: binding pod default/doomed to node a"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("etcd unavailable"), "{}", notes[0]);

        assert!(!s.queue.has_ready(Instant::now()), "backing off");
        tokio::time::advance(queue::INITIAL_BACKOFF).await;
        assert!(s.queue.has_ready(Instant::now()));
    }

    fn with_priority(mut pod: Pod, priority: i32) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.priority = Some(priority);
        }
        pod
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_fits_nowhere_preempts_a_lower_priority_pod_and_takes_its_room() {
        let (mut s, mut received) = scheduler(&[]);
        for event in list(vec![node("a", "1", "1Gi", "110")]) {
            s.on_node(event);
        }
        let low = with_priority(bound("low", "1", "a"), 1);
        for event in list(vec![low.clone(), with_priority(pending("high", "1"), 10)]) {
            s.on_pod(event);
        }
        s.schedule_one();
        settle(&mut s).await;
        let sent = drain(&mut received);
        assert!(bindings(&sent).is_empty(), "no room yet");
        let status_patch = |name: &str| {
            sent.iter()
                .find(|(method, path, _)| {
                    method == "PATCH"
                        && path == &format!("/api/v1/namespaces/default/pods/{name}/status")
                })
                .map(|(_, _, body)| body["status"].clone())
                .unwrap_or_else(|| panic!("{name}'s status patched"))
        };
        assert_eq!(status_patch("high")["nominatedNodeName"], "a");
        assert_eq!(
            status_patch("high")["conditions"][0]["message"],
            "0/1 nodes are available: 1 Insufficient cpu. preemption: found a potential \
             placement for pod on node a, preempting 1 victims"
        );
        let disruption = &status_patch("low")["conditions"][0];
        assert_eq!(disruption["type"], "DisruptionTarget");
        assert_eq!(disruption["reason"], "PreemptionByScheduler");
        assert!(
            sent.iter().any(|(method, path, _)| method == "DELETE"
                && path == "/api/v1/namespaces/default/pods/low"),
            "victim deleted"
        );
        assert_eq!(
            event_notes(&sent, "Preempted"),
            vec!["Preempted by pod uid-high on node a"]
        );

        // Retried before the victim is gone: it waits, and evicts nothing more.
        s.queue.move_all(Instant::now());
        tokio::time::advance(queue::MAX_BACKOFF).await;
        s.schedule_one();
        settle(&mut s).await;
        let sent = drain(&mut received);
        assert!(
            !sent.iter().any(|(method, _, _)| method == "DELETE"),
            "no second round"
        );
        // (The event is a repeat, which the recorder sends as a series update.)
        let condition = sent
            .iter()
            .find(|(method, path, _)| {
                method == "PATCH" && path == "/api/v1/namespaces/default/pods/high/status"
            })
            .map(|(_, _, body)| body["status"]["conditions"][0]["message"].clone())
            .expect("the new reason written");
        assert!(
            condition.as_str().is_some_and(|m| m.ends_with(
                "preemption: not eligible due to a terminating pod on the nominated node."
            )),
            "{condition}"
        );

        // The victim goes: the pod lands where it made room.
        s.on_pod(Event::Delete(low));
        tokio::time::advance(queue::MAX_BACKOFF).await;
        s.schedule_one();
        settle(&mut s).await;
        assert_eq!(
            bindings(&drain(&mut received)),
            vec![("high".into(), "a".into())]
        );
        assert!(s.nominations.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn room_freed_for_a_nominated_pod_is_not_taken_by_a_lower_priority_one() {
        let (mut s, mut received) = scheduler(&[]);
        for event in list(vec![node("a", "1", "1Gi", "110")]) {
            s.on_node(event);
        }
        for event in list(vec![with_priority(pending("small", "1"), 5)]) {
            s.on_pod(event);
        }
        let mut nominated = with_priority(pending("big", "1"), 10);
        nominated.status = Some(k8s_openapi::api::core::v1::PodStatus {
            nominated_node_name: Some("a".into()),
            ..Default::default()
        });
        // Seen nominated (by an earlier run), but backing off: `small` comes first.
        s.nominations.observe("default/big", &nominated);
        s.schedule_one();
        settle(&mut s).await;
        let sent = drain(&mut received);
        assert!(bindings(&sent).is_empty(), "a is promised to big");
        assert_eq!(
            event_notes(&sent, "FailedScheduling"),
            vec![
                "0/1 nodes are available: 1 Insufficient cpu. \
                  preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
            ]
        );
    }

    #[tokio::test]
    async fn pods_for_other_schedulers_or_already_bound_are_not_queued() {
        let (mut s, _received) = scheduler(&[]);
        let mut other = pending("other", "0");
        other.spec.as_mut().expect("spec").scheduler_name = Some("custom".into());
        for event in list(vec![other, bound("running", "0", "a")]) {
            s.on_pod(event);
        }
        assert!(s.queue.is_empty());
        assert!(s.cache.contains("default/running"));
    }
}
