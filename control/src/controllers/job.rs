//! Job controller: every Job runs pods from its template until enough succeed
//! (`completions`, or any one without it) or it fails (`backoffLimit`,
//! `activeDeadlineSeconds`), at most `parallelism` at a time, none while suspended; finished
//! pods are counted exactly once through the `batch.kubernetes.io/job-tracking` finalizer;
//! a finished Job with `ttlSecondsAfterFinished` is deleted that long after.
//!
//! Invariants: level-triggered — events only name Jobs (or orphaned pods whose finalizer
//! must go), and each sync recomputes from the stores with the pure steps of [`plan`];
//! nothing syncs before the Job and Pod watches have listed once; one key is synced by one
//! task at a time; pods are created or deleted only when the store shows the previous
//! sync's writes ([`Expectations`]); a finalizer removal the store does not show yet is
//! expected ([`tracking::Removals`]) so that no pod is counted twice; status writes are
//! conditional on the resourceVersion read, and a conflict ends the sync to start over; the
//! interim FailureTarget / SuccessCriteriaMet condition is written before the terminal
//! Failed / Complete; a Job with a malformed selector or an unknown completion mode is
//! skipped alone, said once per generation; a Job whose `spec.managedBy` names another
//! controller is left alone. Upstream: `pkg/controller/job/job_controller.go` and
//! `pkg/controller/ttlafterfinished`.
//!
//! Simplified or not done: the pod failure backoff (10 s doubling to 10 min, [`backoff`]) is
//! kept in memory and timed from the pod's finish as upstream, but forgotten on restart;
//! `podFailurePolicy` rules are not evaluated (every failed pod counts against
//! backoffLimit), nor `successPolicy`, `backoffLimitPerIndex` / `maxFailedIndexes`;
//! adopted pods get the tracking finalizer by a second patch after the adoption, not in
//! the same one; finished Jobs expire with propagationPolicy Background ([`ttl`]).
//!
//! ```text
//!  Job watch ─┐                          ┌─ claim pods (+ finalizer on adopted ones)
//!  Pod watch ─┴─► queue: Job | orphan ───┤  assess ─► delete (done) / manage (create, delete)
//!     (all phases)  dedup, backoff       │  track: status ─► remove finalizers ─► status
//!                                        └─ finished: TTL delete; orphan: drop finalizer
//! ```

pub mod backoff;
pub mod failure_policy;
pub mod indexes;
pub mod per_index;
pub mod plan;
pub(crate) mod pod_control;
pub mod pods;
pub(crate) mod retry;
pub mod tracking;
pub mod ttl;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::backoff::Record;
use self::plan::{Finish, Manage, Suspension, View};
use self::pod_control::Notes;
use self::pods::has_finalizer;
use self::tracking::Removals;
use super::chain;
use super::owner::{self, ClaimError, ObjectKey, claim_all, controlled_by, controller_of, selects};
use super::queue::{Backoff, Queue};
use super::replicaset::expectations::Expectations;
use super::replicaset::pods::is_ready;
use super::replicaset::seen;

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "job-controller";
/// Keys synced at once (upstream's `--concurrent-job-syncs` is 5).
const WORKERS: usize = 4;
/// Upstream's `syncJobBatchPeriod`: pod events and status updates wake their Job this much
/// later, so that a burst of them makes one sync.
const BATCH: Duration = Duration::from_secs(1);
/// Upstream's `DefaultJobApiBackOff` and `MaxJobApiBackOff`.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};
/// Finalizer patches in flight at once for one sync.
const CONCURRENT_PATCHES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("claiming pods for Job {job}")]
    Claim {
        job: ObjectKey,
        #[source]
        source: ClaimError,
    },
    #[error("adding the tracking finalizer to pod {pod} adopted by Job {job}")]
    Adopt {
        job: ObjectKey,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("Job {job} has no uid or template to make pods from")]
    NoTemplate { job: ObjectKey },
    #[error("creating a pod for Job {job}")]
    Create {
        job: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod} of Job {job}")]
    Delete {
        job: ObjectKey,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the tracking finalizer from pod {pod}")]
    Finalizer {
        pod: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of Job {job}")]
    Status {
        job: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Job {job} after its ttlSecondsAfterFinished")]
    Expire {
        job: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// The Job changed or went since the store showed it: its watch event brings the news,
    /// and it is synced again without backing off.
    #[error("Job {job} changed since it was read")]
    Stale { job: ObjectKey },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. })
    }
}

/// What the queue holds: a Job to sync, or a pod whose tracking finalizer no live Job
/// will remove.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Job(ObjectKey),
    Orphan(ObjectKey),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Job(job) => write!(f, "Job {job}"),
            Key::Orphan(pod) => write!(f, "orphaned pod {pod}"),
        }
    }
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("Job controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("Job controller stopped"),
        Err(err) => error!(error = %chain(&err), "the Job controller stopped"),
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (jobs, job_writer) = reflector::store::<Job>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let job_events = watcher(Api::<Job>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(job_writer);
    // Every phase: finished pods are what a Job counts.
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer);
    let mut job_events = pin!(job_events);
    let mut pod_events = pin!(pod_events);
    let mut c = Controller {
        notes: Notes::new(client, REPORTER),
        jobs,
        pods,
        listed: (false, false),
        queue: Queue::new(BACKOFF),
        expectations: Expectations::default(),
        removals: Removals::default(),
        backoffs: HashMap::new(),
        pod_owners: HashMap::new(),
        skipped: HashMap::new(),
        generations: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.0 && c.listed.1;
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = job_events.next() => match event {
                Some(Ok(event)) => c.on_job(event),
                Some(Err(err)) => warn!(error = %chain(&err), "Job watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Job" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "Job syncs").await;
    result
}

/// One sync of one Job, with everything it reads taken from the stores when it started.
struct Work {
    key: ObjectKey,
    job: Arc<Job>,
    selector: Selector,
    /// The pods of the namespace, every phase.
    pods: Vec<Arc<Pod>>,
    /// The previous sync's creates and deletes are all seen.
    satisfied: bool,
    expected_removals: HashSet<String>,
    backoff: Record,
}

/// What one task reports.
#[derive(Debug)]
struct Outcome {
    key: Key,
    /// Pods created (by name) and deleted (name, uid) that the store must show.
    created: Vec<String>,
    deleted: Vec<(String, String)>,
    /// Uids of pods whose tracking finalizer was removed.
    removed: Vec<String>,
    backoff: Option<Record>,
    /// When to sync again (a deadline, a TTL, the failure backoff).
    recheck_at: Option<Timestamp>,
    result: Result<(), Error>,
}

impl Outcome {
    fn new(key: Key) -> Self {
        Outcome {
            key,
            created: Vec::new(),
            deleted: Vec::new(),
            removed: Vec::new(),
            backoff: None,
            recheck_at: None,
            result: Ok(()),
        }
    }

    fn recheck(&mut self, at: Timestamp) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |t| t.min(at)));
    }

    fn recheck_in(&mut self, now: Timestamp, after: Duration) {
        if let Ok(at) = now.checked_add(after) {
            self.recheck(at);
        }
    }
}

struct Controller {
    notes: Notes,
    jobs: Store<Job>,
    pods: Store<Pod>,
    /// Whether the Job and Pod watches have listed once.
    listed: (bool, bool),
    queue: Queue<Key>,
    expectations: Expectations<ObjectKey>,
    removals: Removals,
    backoffs: HashMap<ObjectKey, Record>,
    /// The Job controlling each pod when last seen: a pod that loses or changes its
    /// controller must reach the old one too.
    pod_owners: HashMap<ObjectKey, ObjectKey>,
    /// Jobs skipped, with the generation said so about.
    skipped: HashMap<ObjectKey, Option<i64>>,
    /// Each Job's generation when last seen: a spec change syncs at once, a status change
    /// is batched.
    generations: HashMap<ObjectKey, Option<i64>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, Key>,
}

/// The Job controlling the pod, if its controller is one.
fn job_of(pod: &Pod) -> Option<ObjectKey> {
    let reference = controller_of(&pod.metadata)?;
    (reference.kind == "Job" && reference.api_version == "batch/v1").then(|| {
        ObjectKey::new(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

impl Controller {
    fn job(&self, key: &ObjectKey) -> Option<Arc<Job>> {
        self.jobs
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    fn mark_all(&mut self) {
        for job in self.jobs.state() {
            self.queue.add(Key::Job(ObjectKey::of(job.as_ref())));
        }
        let orphans: Vec<Key> = self
            .pods
            .state()
            .iter()
            .filter(|p| self.orphaned(p))
            .map(|p| Key::Orphan(ObjectKey::of(p.as_ref())))
            .collect();
        for key in orphans {
            self.queue.add(key);
        }
    }

    /// Whether no live Job will remove the pod's tracking finalizer.
    fn orphaned(&self, pod: &Pod) -> bool {
        has_finalizer(pod)
            && tracking::is_orphan(pod, job_of(pod).and_then(|k| self.job(&k)).as_deref())
    }

    /// Pods with the tracking finalizer controlled by the Job with this uid.
    fn queue_pods_of(&mut self, namespace: Option<&str>, uid: Option<&str>) {
        let keys: Vec<Key> = self
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == namespace)
            .filter(|p| has_finalizer(p) && controlled_by(&p.metadata, uid))
            .map(|p| Key::Orphan(ObjectKey::of(p.as_ref())))
            .collect();
        for key in keys {
            self.queue.add(key);
        }
    }

    fn on_job(&mut self, event: Event<Job>) {
        match event {
            Event::InitApply(job) => {
                let key = ObjectKey::of(&job);
                self.generations
                    .insert(key.clone(), job.metadata.generation);
                self.queue.add(Key::Job(key));
            }
            Event::Apply(job) => {
                let key = ObjectKey::of(&job);
                let before = self
                    .generations
                    .insert(key.clone(), job.metadata.generation);
                if before == Some(job.metadata.generation) {
                    // Upstream's batching of status updates (most often this controller's
                    // own): a sync right away could read a pod store that lags them.
                    self.queue.add_after(Key::Job(key), Instant::now() + BATCH);
                } else {
                    self.queue.add(Key::Job(key));
                }
                // Upstream's cleanupPodFinalizers: a backup, as a Job finishes only once
                // its pods are counted (after a relist, the orphan scan does it).
                if plan::is_finished(&job) {
                    let (namespace, uid) =
                        (job.metadata.namespace.clone(), job.metadata.uid.clone());
                    self.queue_pods_of(namespace.as_deref(), uid.as_deref());
                }
            }
            Event::Delete(job) => {
                let key = ObjectKey::of(&job);
                self.expectations.forget(&key);
                self.removals.forget(&key);
                self.backoffs.remove(&key);
                self.skipped.remove(&key);
                self.generations.remove(&key);
                self.queue.remove(&Key::Job(key));
                self.queue_pods_of(
                    job.metadata.namespace.as_deref(),
                    job.metadata.uid.as_deref(),
                );
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.0 = true;
                self.mark_all();
            }
        }
    }

    /// Jobs of the pod's namespace whose selector picks it: those that may adopt it.
    fn adopters(&self, pod: &Pod) -> Vec<ObjectKey> {
        let namespace = pod.metadata.namespace.as_deref();
        self.jobs
            .state()
            .iter()
            .filter(|j| j.metadata.namespace.as_deref() == namespace)
            .filter(|j| {
                j.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| owner::selector(s).ok())
                    .is_some_and(|s| !s.selects_all() && selects(&s, pod.metadata.labels.as_ref()))
            })
            .map(|j| ObjectKey::of(j.as_ref()))
            .collect()
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        let later = Instant::now() + BATCH;
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                if !has_finalizer(&pod) {
                    self.removals
                        .observe(pod.metadata.uid.as_deref().unwrap_or_default());
                }
                let pod_key = ObjectKey::of(&pod);
                let owner = job_of(&pod);
                let before = match &owner {
                    Some(owner) => self.pod_owners.insert(pod_key.clone(), owner.clone()),
                    None => self.pod_owners.remove(&pod_key),
                };
                if let Some(before) = before.filter(|b| Some(b) != owner.as_ref()) {
                    self.queue.add_after(Key::Job(before), later);
                }
                if self.listed.0 && self.orphaned(&pod) {
                    self.queue.add(Key::Orphan(pod_key));
                }
                match owner {
                    Some(owner) => self.queue.add_after(Key::Job(owner), later),
                    None => {
                        for key in self.adopters(&pod) {
                            self.queue.add_after(Key::Job(key), later);
                        }
                    }
                }
            }
            Event::Delete(pod) => {
                self.removals
                    .observe(pod.metadata.uid.as_deref().unwrap_or_default());
                let pod_key = ObjectKey::of(&pod);
                self.queue.remove(&Key::Orphan(pod_key.clone()));
                let before = self.pod_owners.remove(&pod_key);
                for owner in before.into_iter().chain(job_of(&pod)) {
                    self.expectations.observe_gone(&owner, &pod_key.name);
                    self.queue.add_after(Key::Job(owner), later);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.1 = true;
                self.pod_owners = self
                    .pods
                    .state()
                    .iter()
                    .filter_map(|p| Some((ObjectKey::of(p.as_ref()), job_of(p)?)))
                    .collect();
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        match key.clone() {
            Key::Job(job) => self.work_job(key, job, now),
            Key::Orphan(pod) => self.work_orphan(key, pod),
        }
    }

    /// Done with a key that needs no task.
    fn settle(&mut self, key: &Key) {
        self.queue.done(key);
        self.queue.forget(key);
    }

    fn work_orphan(&mut self, key: Key, pod_key: ObjectKey) {
        let pod = self
            .pods
            .get(&ObjectRef::new(&pod_key.name).within(&pod_key.namespace));
        let Some(pod) = pod.filter(|p| self.orphaned(p)) else {
            self.settle(&key);
            return;
        };
        let client = self.notes.client().clone();
        let handle = self.tasks.spawn(async move {
            let mut out = Outcome::new(Key::Orphan(pod_key.clone()));
            let api: Api<Pod> = Api::namespaced(client, &pod_key.namespace);
            let (_, err) = remove_finalizers(&api, &[pod.as_ref()]).await;
            if let Some(err) = err {
                out.result = Err(err);
            } else {
                debug!(pod = %pod_key, "removed the tracking finalizer of an orphaned pod");
            }
            out
        });
        self.running.insert(handle.id(), key);
    }

    fn work_job(&mut self, key: Key, job_key: ObjectKey, now: Instant) {
        let Some(job) = self.job(&job_key) else {
            // Gone: its pods are the garbage collector's, their finalizers the orphan path's.
            self.expectations.forget(&job_key);
            self.removals.forget(&job_key);
            self.backoffs.remove(&job_key);
            self.skipped.remove(&job_key);
            self.generations.remove(&job_key);
            self.settle(&key);
            return;
        };
        if !plan::managed_here(&job) {
            debug!(job = %job_key, "left to the controller its spec.managedBy names");
            self.settle(&key);
            return;
        }
        let selector = match self.check(&job) {
            Ok(selector) => {
                self.skipped.remove(&job_key);
                selector
            }
            Err((reason, why)) => {
                self.skip(key, job, reason, why);
                return;
            }
        };
        let store = &self.pods;
        let satisfied = self
            .expectations
            .satisfied(&job_key, now, |name| seen(store, &job_key.namespace, name));
        if !satisfied {
            debug!(job = %job_key, "waiting for the pod watch to show the last sync's writes");
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(job_key.namespace.as_str()))
            .collect();
        let work = Work {
            key: job_key.clone(),
            job,
            selector,
            pods,
            satisfied,
            expected_removals: self.removals.of(&job_key),
            backoff: self.backoffs.get(&job_key).copied().unwrap_or_default(),
        };
        let notes = self.notes.clone();
        let handle = self.tasks.spawn(async move {
            let mut out = Outcome::new(Key::Job(work.key.clone()));
            out.result = reconcile(&notes, work, &mut out).await;
            out
        });
        self.running.insert(handle.id(), key);
    }

    /// The Job's selector, or why the Job cannot be synced (event reason and message).
    fn check(&self, job: &Job) -> Result<Selector, (&'static str, String)> {
        if !plan::known_completion_mode(job) {
            return Err((
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown".into(),
            ));
        }
        if plan::is_indexed(job) && plan::completions(job).is_none() {
            return Err((
                "InvalidSpec",
                "an Indexed Job needs spec.completions; no pods are managed".into(),
            ));
        }
        let invalid = |why: String| {
            (
                "InvalidSelector",
                format!("invalid selector, no pods are managed: {why}"),
            )
        };
        let Some(selector) = job.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            return Err(invalid("spec.selector is not set".into()));
        };
        match owner::selector(selector) {
            // One that slipped through would adopt every pod of the namespace.
            Ok(s) if s.selects_all() => Err(invalid("it selects every pod".into())),
            Ok(s) => Ok(s),
            Err(err) => Err(invalid(err.to_string())),
        }
    }

    /// A Job that cannot be synced: said once per generation, then left alone until it
    /// changes.
    fn skip(&mut self, key: Key, job: Arc<Job>, reason: &'static str, why: String) {
        self.settle(&key);
        let job_key = ObjectKey::of(job.as_ref());
        let generation = job.metadata.generation;
        if self.skipped.insert(job_key.clone(), generation) == Some(generation) {
            return;
        }
        warn!(job = %job_key, reason, "skipping Job: {why}");
        // Not in `running`: the event task holds no claim on the key.
        let notes = self.notes.clone();
        let _ = self.tasks.spawn(async move {
            let owner = job.object_ref(&());
            notes
                .record(&owner, EventType::Warning, reason, "Sync", why)
                .await;
            Outcome::new(key)
        });
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let outcome = match done {
            Ok((id, outcome)) if self.running.remove(&id).is_some() => outcome,
            // An event task, not a sync.
            Ok(_) => return,
            Err(err) => {
                if let Some(key) = self.running.remove(&err.id()) {
                    retry::after_panic(&mut self.queue, key, &err, now);
                }
                return;
            }
        };
        let Outcome {
            key,
            created,
            deleted,
            removed,
            backoff,
            recheck_at,
            result,
        } = outcome;
        if let Key::Job(job) = &key {
            let writes = (created, deleted);
            retry::expect_writes(
                &mut self.queue,
                &mut self.expectations,
                (job, &key),
                writes,
                now,
            );
            self.removals.expect(job, removed);
            if let Some(record) = backoff {
                self.backoffs.insert(job.clone(), record);
            }
        }
        self.queue.done(&key);
        if let Some(at) = recheck_at {
            retry::recheck(&mut self.queue, &key, at, Duration::ZERO, now);
        }
        retry::after_sync(
            &mut self.queue,
            key,
            result,
            |e: &Error| !e.backs_off(),
            now,
        );
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// One sync of one Job: upstream's `syncJob`.
async fn reconcile(notes: &Notes, work: Work, out: &mut Outcome) -> Result<(), Error> {
    let Work {
        key,
        job,
        selector,
        pods,
        satisfied,
        expected_removals,
        backoff,
    } = work;
    let client = notes.client().clone();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &key.namespace);
    let pods_api: Api<Pod> = Api::namespaced(client, &key.namespace);
    if plan::is_finished(&job) {
        return expire(&jobs_api, &job, &key, out).await;
    }
    let owner = job.object_ref(&());
    let uid = job.metadata.uid.as_deref();
    let owned: HashSet<String> = pods
        .iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .map(|p| uid_of(p))
        .collect();
    let mut claimed = claim_all(&pods_api, &jobs_api, job.as_ref(), &selector, pods)
        .await
        .map_err(|source| Error::Claim {
            job: key.clone(),
            source,
        })?;
    // Upstream's adoption adds the tracking finalizer in the same patch.
    for pod in claimed.iter_mut() {
        if owned.contains(&uid_of(pod)) || has_finalizer(pod) {
            continue;
        }
        let patch = tracking::add_patch(&uid_of(pod));
        match pods_api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(patched) => *pod = Arc::new(patched),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_invalid() => {}
            Err(source) => {
                return Err(Error::Adopt {
                    job: key,
                    pod: pod.name_any(),
                    source,
                });
            }
        }
    }

    let refs: Vec<&Pod> = claimed.iter().map(AsRef::as_ref).collect();
    let now = Timestamp::now();
    let view = View {
        job: &job,
        pods: &refs,
        expected_removals: &expected_removals,
        now,
    };
    let a = plan::assess(&view, backoff);
    let mut status = a.status.clone();
    let mut active = count(a.active.len());
    let mut ready = a.ready;
    let mut terminating = a.terminating;
    let mut finish = a.finish.clone();
    let mut failure = None;
    if let Some(deadline) = a.deadline_in {
        out.recheck_in(now, deadline);
    }
    if finish.is_some() {
        // A done Job's active pods go keeping their finalizer: they count as failed.
        let deletes = delete_pods(notes, &pods_api, &owner, &key, &a.active, false, out).await;
        if deletes.deleted != active || !satisfied {
            // Pods may still appear, or keep running: not done yet.
            finish = None;
        }
        active -= deletes.deleted;
        terminating += deletes.deleted;
        ready -= deletes.ready;
        failure = deletes.error;
    } else {
        let manage = satisfied && job.metadata.deletion_timestamp.is_none();
        if manage {
            match plan::manage(&job, &a, &refs, now) {
                Manage::Nothing => {}
                Manage::Delete(doomed) => {
                    info!(job = %key, deleting = doomed.len(), "deleting pods");
                    let deletes =
                        delete_pods(notes, &pods_api, &owner, &key, &doomed, true, out).await;
                    active -= deletes.deleted;
                    terminating += deletes.deleted;
                    ready -= deletes.ready;
                    failure = deletes.error;
                }
                Manage::Create {
                    count,
                    indexes,
                    failure_counts,
                } => {
                    info!(job = %key, creating = count, "creating pods");
                    let batch = Batch {
                        count,
                        indexes: &indexes,
                        failure_counts: &failure_counts,
                    };
                    let (created, err) =
                        create_pods(notes, &pods_api, &owner, &job, &key, batch, out).await;
                    active += created;
                    failure = err;
                }
                Manage::Wait(wait) => {
                    debug!(job = %key, wait = ?wait, "pod failure backoff holds creation");
                    out.recheck_in(now, wait);
                }
            }
        }
        if plan::complete(&job, a.succeeded, active) {
            finish = Some(Finish::success());
        } else if manage
            && let Some(change) = plan::suspension(&mut status, plan::suspended(&job), now)
        {
            let (reason, note) = match change {
                Suspension::Suspended => ("Suspended", "Job suspended"),
                Suspension::Resumed => ("Resumed", "Job resumed"),
            };
            notes
                .record(&owner, EventType::Normal, reason, "Sync", note.into())
                .await;
        }
    }
    status.active = Some(active);
    status.ready = Some(ready);
    status.terminating = Some(terminating);

    // Upstream's trackJobStatusAndRemoveFinalizers.
    let tracking = plan::track(&view, &mut status, &a, finish.as_ref());
    let mut latest = job.as_ref().clone();
    if plan::normalized(&status) != plan::normalized(&latest.status.clone().unwrap_or_default()) {
        latest = write_status(&jobs_api, &latest, status.clone(), &key).await?;
    }
    out.backoff = Some(a.backoff);
    let (removed, removal_error) = remove_finalizers(&pods_api, &tracking.remove).await;
    let mut with_finalizer = tracking.with_finalizer;
    for uid in &removed {
        with_finalizer.remove(uid);
    }
    out.removed.extend(removed);
    tracking::clean_uncounted(&mut status, &with_finalizer);
    let finished = !tracking.reached_max
        && finish
            .as_ref()
            .is_some_and(|f| plan::enact(&mut status, f, terminating, now));
    if plan::normalized(&status) != plan::normalized(&latest.status.clone().unwrap_or_default()) {
        write_status(&jobs_api, &latest, status.clone(), &key).await?;
    }
    if finished && let Some(f) = &finish {
        record_finished(notes, &owner, &job, &status, f).await;
    }
    match (removal_error, failure) {
        (Some(err), _) | (None, Some(err)) => Err(err),
        (None, None) => Ok(()),
    }
}

/// The events of a Job that just finished.
async fn record_finished(
    notes: &Notes,
    owner: &ObjectReference,
    job: &Job,
    status: &k8s_openapi::api::batch::v1::JobStatus,
    finish: &Finish,
) {
    match finish {
        Finish::Success { .. } => {
            let succeeded = status.succeeded.unwrap_or(0);
            if plan::completions(job).is_some_and(|total| succeeded > total) {
                let note = "Too many succeeded pods running after completion count reached";
                notes
                    .record(
                        owner,
                        EventType::Warning,
                        "TooManySucceededPods",
                        "Sync",
                        note.into(),
                    )
                    .await;
            }
            notes
                .record(
                    owner,
                    EventType::Normal,
                    "Completed",
                    "Sync",
                    "Job completed".into(),
                )
                .await;
        }
        Finish::Failure {
            reason, message, ..
        } => {
            notes
                .record(owner, EventType::Warning, reason, "Sync", message.clone())
                .await;
        }
    }
}

/// Writes the status through the status subresource, conditional on the resourceVersion
/// of `job`; returns the Job as stored.
async fn write_status(
    api: &Api<Job>,
    job: &Job,
    status: k8s_openapi::api::batch::v1::JobStatus,
    key: &ObjectKey,
) -> Result<Job, Error> {
    let mut updated = job.clone();
    updated.status = Some(status);
    match api
        .replace_status(&key.name, &PostParams::default(), &updated)
        .await
    {
        Ok(stored) => Ok(stored),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
            Err(Error::Stale { job: key.clone() })
        }
        Err(source) => Err(Error::Status {
            job: key.clone(),
            source,
        }),
    }
}

/// What a round of deletes did.
struct Deletes {
    deleted: i32,
    /// How many of the deleted pods were ready.
    ready: i32,
    error: Option<Error>,
}

/// Deletes `pods`, all at once; with `uncounted`, each loses its tracking finalizer first so
/// that it counts as nothing (upstream's `deleteJobPods`), else it keeps it and is counted
/// as failed (`deleteActivePods`). A pod already gone counts as deleted.
async fn delete_pods(
    notes: &Notes,
    api: &Api<Pod>,
    owner: &ObjectReference,
    key: &ObjectKey,
    pods: &[&Pod],
    uncounted: bool,
    out: &mut Outcome,
) -> Deletes {
    let results = join_all(pods.iter().map(|pod| async move {
        if uncounted && has_finalizer(pod) {
            let (removed, err) = remove_finalizers(api, &[*pod]).await;
            if let Some(err) = err {
                return (removed, Err(err));
            }
            let deleted = pod_control::delete(api, notes, owner, pod).await;
            return (
                removed,
                deleted.map_err(|source| Error::Delete {
                    job: key.clone(),
                    pod: pod.name_any(),
                    source,
                }),
            );
        }
        let deleted = pod_control::delete(api, notes, owner, pod).await;
        (
            Vec::new(),
            deleted.map_err(|source| Error::Delete {
                job: key.clone(),
                pod: pod.name_any(),
                source,
            }),
        )
    }))
    .await;
    let mut deletes = Deletes {
        deleted: 0,
        ready: 0,
        error: None,
    };
    for (pod, (removed, result)) in pods.iter().zip(results) {
        out.removed.extend(removed);
        match result {
            Ok(_) => {
                deletes.deleted += 1;
                if is_ready(pod) {
                    deletes.ready += 1;
                }
                out.deleted.push((pod.name_any(), uid_of(pod)));
            }
            Err(err) => {
                deletes.error.get_or_insert(err);
            }
        }
    }
    deletes
}

/// The pods one sync creates: `count` of them, or one per index for an Indexed Job, with
/// the failure counts of their index where the Job has per-index backoff limits.
struct Batch<'a> {
    count: usize,
    indexes: &'a [i32],
    failure_counts: &'a [(i32, i32)],
}

/// Creates a batch of pods in slow-start batches; returns how many were made.
async fn create_pods(
    notes: &Notes,
    api: &Api<Pod>,
    owner: &ObjectReference,
    job: &Job,
    key: &ObjectKey,
    batch: Batch<'_>,
    out: &mut Outcome,
) -> (i32, Option<Error>) {
    let Some(base) = pods::template(job) else {
        return (0, Some(Error::NoTemplate { job: key.clone() }));
    };
    let batch: Vec<Pod> = if batch.indexes.is_empty() {
        vec![base; batch.count]
    } else {
        batch
            .indexes
            .iter()
            .enumerate()
            .map(|(i, ix)| {
                let mut pod = pods::for_index(&base, &key.name, *ix);
                if let Some(counts) = batch.failure_counts.get(i) {
                    per_index::annotate(&mut pod, *counts);
                }
                pod
            })
            .collect()
    };
    let creation = pod_control::create_all(api, notes, owner, batch).await;
    let created = count_created(&creation.created);
    out.created.extend(creation.created);
    let error = creation.error.map(|source| Error::Create {
        job: key.clone(),
        source,
    });
    (created, error)
}

fn count_created(names: &[String]) -> i32 {
    count(names.len())
}

/// Removes the tracking finalizer from `pods`, some at a time; returns the uids of those
/// without it now (gone or replaced ones included: nothing holds them) and the first
/// failure.
async fn remove_finalizers(api: &Api<Pod>, pods: &[&Pod]) -> (Vec<String>, Option<Error>) {
    // Owned inputs: a stream over borrowed pods makes the task's future not `Send`.
    let targets: Vec<(String, String, ObjectKey)> = pods
        .iter()
        .map(|p| (uid_of(p), p.name_any(), ObjectKey::of(*p)))
        .collect();
    let results: Vec<(String, Result<(), Error>)> = futures::stream::iter(targets)
        .map(move |(uid, name, key)| async move {
            let patch = tracking::remove_patch(&uid);
            let result = match api
                .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => Ok(()),
                // Gone, or (422) recreated under the name: not holding it either way.
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_invalid() => Ok(()),
                Err(source) => Err(Error::Finalizer { pod: key, source }),
            };
            (uid, result)
        })
        .buffer_unordered(CONCURRENT_PATCHES)
        .collect()
        .await;
    let mut removed = Vec::new();
    let mut first = None;
    for (uid, result) in results {
        match result {
            Ok(()) => removed.push(uid),
            Err(err) => {
                first.get_or_insert(err);
            }
        }
    }
    (removed, first)
}

/// A finished Job: deleted once its TTL runs out (upstream's TTL-after-finished controller).
async fn expire(
    api: &Api<Job>,
    job: &Job,
    key: &ObjectKey,
    out: &mut Outcome,
) -> Result<(), Error> {
    let Some(at) = ttl::expires_at(job) else {
        return Ok(());
    };
    if at > Timestamp::now() {
        out.recheck(at);
        return Ok(());
    }
    // The TTL may have changed since the store showed the Job.
    let fresh = api
        .get_opt(&key.name)
        .await
        .map_err(|source| Error::Expire {
            job: key.clone(),
            source,
        })?;
    let Some(fresh) = fresh.filter(|f| f.metadata.uid == job.metadata.uid) else {
        return Ok(());
    };
    match ttl::expires_at(&fresh) {
        None => return Ok(()),
        Some(at) if at > Timestamp::now() => {
            out.recheck(at);
            return Ok(());
        }
        Some(_) => {}
    }
    let params = DeleteParams {
        propagation_policy: Some(ttl::PROPAGATION),
        preconditions: Some(Preconditions {
            uid: fresh.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    info!(job = %key, "deleting finished Job: its ttlSecondsAfterFinished ran out");
    match api.delete(&key.name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(source) => Err(Error::Expire {
            job: key.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::{Value, json};

    use super::pods::FINALIZER;
    use super::pods::tests::job;
    use super::*;
    use crate::controllers::replicaset::api_double::{Double, failure};
    use crate::controllers::replicaset::pods::tests::pod;

    const PODS: &str = "/api/v1/namespaces/shop/pods";
    const JOB: &str = "/apis/batch/v1/namespaces/shop/jobs/pi";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn owned(mut p: Pod, finalizer: bool) -> Pod {
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "pi".into(),
            uid: "uid-pi".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p.metadata.labels = Some(BTreeMap::from([(
            pods::CONTROLLER_UID.to_owned(),
            "uid-pi".to_owned(),
        )]));
        if finalizer {
            p.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
        }
        p
    }

    /// Echoes writes back as the server would store them.
    fn echo(method: &str, path: &str, body: &Value, n: usize) -> (u16, Value) {
        let mut reply = body.clone();
        if method == "POST" && path == PODS {
            reply["metadata"]["name"] = json!(format!("pi-{n}"));
            reply["metadata"]["uid"] = json!(format!("uid-pi-{n}"));
        }
        if method == "PUT" && path == format!("{JOB}/status") {
            let version: u64 = body["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            reply["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        }
        if method == "DELETE" && path.starts_with("/apis/batch") {
            reply =
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
        } else if method == "PATCH" || method == "DELETE" {
            let name = path.rsplit('/').next().unwrap_or_default();
            reply = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}});
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    fn work(j: Job, pods: Vec<Pod>) -> Work {
        let selector = j
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map(|s| owner::selector(s).expect("valid"))
            .expect("a selector");
        Work {
            key: ObjectKey::new("shop", "pi"),
            job: Arc::new(j),
            selector,
            pods: pods.into_iter().map(Arc::new).collect(),
            satisfied: true,
            expected_removals: HashSet::new(),
            backoff: Record::default(),
        }
    }

    async fn sync(double: &Double, w: Work) -> (Outcome, Result<(), Error>) {
        let notes = Notes::new(Client::new(double.clone(), "shop"), REPORTER);
        let mut out = Outcome::new(Key::Job(ObjectKey::new("shop", "pi")));
        let result = reconcile(&notes, w, &mut out).await;
        (out, result)
    }

    fn reasons(double: &Double) -> Vec<String> {
        double
            .sent("POST", EVENTS)
            .iter()
            .map(|(_, _, e)| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_new_job_gets_tracked_pods_and_a_start() {
        let double = Double::new(echo);
        let (out, result) = sync(&double, work(job(Some(3), 2), Vec::new())).await;
        assert!(result.is_ok(), "{result:?}");
        let creates = double.sent("POST", PODS);
        assert_eq!(creates.len(), 2, "parallelism 2");
        let made = &creates[0].2["metadata"];
        assert_eq!(made["finalizers"], json!([FINALIZER]));
        assert_eq!(made["labels"][pods::JOB_NAME], "pi");
        assert_eq!(made["labels"][pods::LEGACY_CONTROLLER_UID], "uid-pi");
        assert_eq!(made["ownerReferences"][0]["kind"], "Job");
        assert_eq!(out.created.len(), 2);
        let statuses = double.sent("PUT", &format!("{JOB}/status"));
        assert_eq!(statuses.len(), 1);
        let status = &statuses[0].2["status"];
        assert_eq!(status["active"], 2);
        assert_eq!(status["ready"], 0);
        assert!(status["startTime"].is_string());
        assert_eq!(statuses[0].2["metadata"]["resourceVersion"], "7");
        assert_eq!(
            reasons(&double),
            vec!["SuccessfulCreate", "SuccessfulCreate"]
        );
    }

    #[tokio::test]
    async fn a_succeeded_pod_is_counted_then_released_then_the_job_completes() {
        let double = Double::new(echo);
        let mut j = job(Some(1), 1);
        j.status = Some(JobStatus {
            active: Some(1),
            start_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..JobStatus::default()
        });
        let done = owned(pod("pi-a", "n1", "Succeeded", None, 0), true);
        let (out, result) = sync(&double, work(j, vec![done])).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(double.sent("POST", PODS).is_empty(), "nothing more to run");

        // First the uid goes into uncountedTerminatedPods with SuccessCriteriaMet, then the
        // finalizer goes, then the count and Complete: never Complete alone.
        let statuses = double.sent("PUT", &format!("{JOB}/status"));
        assert_eq!(statuses.len(), 2);
        let first = &statuses[0].2["status"];
        assert_eq!(
            first["uncountedTerminatedPods"]["succeeded"],
            json!(["uid-pi-a"])
        );
        assert_eq!(first["conditions"][0]["type"], plan::SUCCESS_CRITERIA_MET);
        assert_eq!(first["conditions"].as_array().map(Vec::len), Some(1));
        let patches = double.sent("PATCH", &format!("{PODS}/pi-a"));
        assert_eq!(
            patches[0].2["metadata"]["$deleteFromPrimitiveList/finalizers"],
            json!([FINALIZER])
        );
        let second = &statuses[1].2;
        assert_eq!(
            second["metadata"]["resourceVersion"], "8",
            "after the first write"
        );
        let second = &second["status"];
        assert_eq!(second["succeeded"], 1);
        assert!(second["uncountedTerminatedPods"]["succeeded"].is_null());
        let types: Vec<&str> = second["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, vec![plan::SUCCESS_CRITERIA_MET, plan::COMPLETE]);
        assert!(second["completionTime"].is_string());
        assert_eq!(out.removed, vec!["uid-pi-a".to_owned()]);
        assert_eq!(reasons(&double), vec!["Completed"]);
    }

    #[tokio::test]
    async fn past_the_backoff_limit_pods_go_and_failed_follows_failure_target() {
        let double = Double::new(echo);
        let mut j = job(Some(3), 2);
        if let Some(spec) = j.spec.as_mut() {
            spec.backoff_limit = Some(0);
        }
        let bad = owned(pod("pi-bad", "n1", "Failed", None, 0), true);
        let running = owned(pod("pi-run", "n1", "Running", None, 0), true);
        let (_, result) = sync(&double, work(j.clone(), vec![bad, running])).await;
        assert!(result.is_ok(), "{result:?}");
        let deletes = double.sent("DELETE", PODS);
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].1, format!("{PODS}/pi-run"));
        // The deleted pod is terminating now: FailureTarget, not Failed yet.
        let statuses = double.sent("PUT", &format!("{JOB}/status"));
        let last = &statuses.last().expect("a status").2["status"];
        let types: Vec<&str> = last["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, vec![plan::FAILURE_TARGET]);
        assert_eq!(
            last["conditions"][0]["reason"],
            plan::BACKOFF_LIMIT_EXCEEDED
        );
        assert_eq!(last["failed"], 2);
        assert_eq!(last["active"], 0);
        assert_eq!(last["terminating"], 1);

        // Once nothing is terminating, Failed with the same words.
        let double = Double::new(echo);
        j.status = Some(JobStatus {
            failed: Some(2),
            start_time: Some(Time(Timestamp::UNIX_EPOCH)),
            conditions: Some(vec![JobCondition {
                type_: plan::FAILURE_TARGET.into(),
                status: "True".into(),
                reason: Some(plan::BACKOFF_LIMIT_EXCEEDED.into()),
                message: Some(plan::BACKOFF_LIMIT_MESSAGE.into()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        let (_, result) = sync(&double, work(j, Vec::new())).await;
        assert!(result.is_ok(), "{result:?}");
        let statuses = double.sent("PUT", &format!("{JOB}/status"));
        let last = &statuses.last().expect("a status").2["status"];
        assert_eq!(last["conditions"][1]["type"], plan::FAILED);
        assert_eq!(
            last["conditions"][1]["reason"],
            plan::BACKOFF_LIMIT_EXCEEDED
        );
        assert!(last["completionTime"].is_null());
        assert_eq!(reasons(&double), vec![plan::BACKOFF_LIMIT_EXCEEDED]);
    }

    #[tokio::test]
    async fn a_conflicting_status_write_is_stale_and_a_quota_refusal_stops_creation() {
        let quota = "exceeded quota: compute";
        let double = Double::new(move |method, path, body, n| match (method, path) {
            ("POST", PODS) if n >= 1 => failure(403, "Forbidden", quota),
            ("PUT", _) => failure(409, "Conflict", "the object has been modified"),
            _ => echo(method, path, body, n),
        });
        let (out, result) = sync(&double, work(job(Some(10), 10), Vec::new())).await;
        assert!(matches!(result, Err(Error::Stale { .. })), "{result:?}");
        assert_eq!(
            double.sent("POST", PODS).len(),
            3,
            "batches of 1, then 2: stopped"
        );
        assert_eq!(out.created.len(), 1);
        assert!(reasons(&double).contains(&"FailedCreate".to_owned()));
    }

    #[tokio::test]
    async fn suspending_deletes_pods_uncounted_and_clears_the_start() {
        let double = Double::new(echo);
        let mut j = job(Some(3), 2);
        if let Some(spec) = j.spec.as_mut() {
            spec.suspend = Some(true);
        }
        j.status = Some(JobStatus {
            active: Some(1),
            start_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..JobStatus::default()
        });
        let running = owned(pod("pi-run", "n1", "Running", None, 0), true);
        let (out, result) = sync(&double, work(j, vec![running])).await;
        assert!(result.is_ok(), "{result:?}");
        // The finalizer goes before the delete: a suspended Job's pods count for nothing.
        assert_eq!(double.sent("PATCH", PODS).len(), 1);
        assert_eq!(double.sent("DELETE", PODS).len(), 1);
        assert_eq!(out.removed, vec!["uid-pi-run".to_owned()]);
        let statuses = double.sent("PUT", &format!("{JOB}/status"));
        let status = &statuses[0].2["status"];
        assert_eq!(status["conditions"][0]["type"], plan::SUSPENDED);
        assert_eq!(status["conditions"][0]["status"], "True");
        assert!(status["startTime"].is_null());
        assert!(status["failed"].is_null());
        assert!(reasons(&double).contains(&"Suspended".to_owned()));
    }

    #[tokio::test]
    async fn an_expired_job_is_reread_and_deleted_in_the_background() {
        let finished_at = Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(120))
            .expect("in range");
        let mut j = job(Some(1), 1);
        if let Some(spec) = j.spec.as_mut() {
            spec.ttl_seconds_after_finished = Some(60);
        }
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: plan::COMPLETE.into(),
                status: "True".into(),
                last_transition_time: Some(Time(finished_at)),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        let stored = serde_json::to_value(&j).expect("json");
        let double = Double::new(move |method, path, body, n| match (method, path) {
            ("GET", JOB) => (200, stored.clone()),
            _ => echo(method, path, body, n),
        });
        let (_, result) = sync(&double, work(j, Vec::new())).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(double.sent("GET", JOB).len(), 1);
        let deletes = double.sent("DELETE", JOB);
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].2["propagationPolicy"], "Background");
        assert_eq!(deletes[0].2["preconditions"]["uid"], "uid-pi");
    }

    #[test]
    fn only_stale_skips_backoff_and_pods_name_their_job() {
        assert!(
            !Error::Stale {
                job: ObjectKey::new("shop", "pi")
            }
            .backs_off()
        );
        assert!(
            Error::NoTemplate {
                job: ObjectKey::new("shop", "pi")
            }
            .backs_off()
        );
        let p = owned(pod("pi-a", "n1", "Running", None, 0), false);
        assert_eq!(job_of(&p), Some(ObjectKey::new("shop", "pi")));
        assert_eq!(job_of(&pod("x", "n1", "Running", None, 0)), None);
    }
}
