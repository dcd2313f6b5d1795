//! CronJob controller: every CronJob makes a Job for each time its schedule comes round, in
//! its time zone, as its concurrency policy allows (Allow, Forbid while one runs, Replace
//! the running ones), keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`,
//! and deletes finished Jobs beyond its history limits. Upstream: `pkg/controller/cronjob`.
//!
//! Invariants: level-triggered — events only name CronJobs, and each sync decides from the
//! CronJob and its Jobs in the stores ([`plan`], pure); a scheduled time makes at most one
//! Job, named after the time ([`plan::job_name`]), so a sync repeated after a lost status
//! write finds the Job and does not make another; nothing syncs before both watches have
//! listed once; a CronJob with an invalid schedule or time zone gets a Warning event and is
//! left until it changes; each CronJob is queued again for its next scheduled time; status is
//! written only when it changed, conditional on the resourceVersion read.
//!
//! ```text
//!  CronJob watch ─┐                          ┌─ history: delete finished Jobs beyond limits
//!  Job watch ─────┴─► queue of CronJobs ─────┤  active: drop finished and gone Jobs
//!   (controller refs)   (next scheduled time) └─ schedule: create the due Job, write status
//! ```

pub mod plan;
pub mod schedule;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::plan::Due;
use self::schedule::Schedule;
use super::owner::{ObjectKey, controlled_by, controller_of};
use super::queue::{Backoff, Ending, Queue, Tasks};
use super::replicaset::api_message;
use super::{chain, namespace_terminating};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "cronjob-controller";
/// CronJobs synced at once (upstream's `--concurrent-cron-job-syncs` is 5).
const WORKERS: usize = 4;
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sync task panicked (a bug): the key is retried with backoff.
    #[error("the sync task failed")]
    Task,
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("reading job {job} of CronJob {cronjob}")]
    ReadJob {
        cronjob: ObjectKey,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting job {job} of CronJob {cronjob}")]
    DeleteJob {
        cronjob: ObjectKey,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating a job for CronJob {cronjob}")]
    CreateJob {
        cronjob: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of CronJob {cronjob}")]
    Status {
        cronjob: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// The CronJob changed or went since the store showed it: its watch event brings it back.
    #[error("CronJob {cronjob} changed since it was read")]
    Stale { cronjob: ObjectKey },
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("CronJob controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("CronJob controller stopped"),
        Err(err) => error!(error = %chain(&err), "the CronJob controller stopped"),
    }
}

/// The CronJob controlling a Job, if its controller is one.
fn cronjob_of(job: &Job) -> Option<ObjectKey> {
    let reference = controller_of(&job.metadata)?;
    (reference.kind == "CronJob" && reference.api_version == "batch/v1").then(|| {
        ObjectKey::new(
            job.metadata.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

type Finished = Result<Option<Duration>, Error>;

struct Controller {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    listed: (bool, bool),
    queue: Queue<ObjectKey>,
    tasks: Tasks<ObjectKey, Finished>,
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (cronjobs, cj_writer) = reflector::store::<CronJob>();
    let (jobs, job_writer) = reflector::store::<Job>();
    let cj_events = watcher(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cj_writer);
    let job_events = watcher(Api::<Job>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(job_writer);
    let mut cj_events = pin!(cj_events);
    let mut job_events = pin!(job_events);
    let mut c = Controller {
        client,
        cronjobs,
        jobs,
        listed: (false, false),
        queue: Queue::new(BACKOFF),
        tasks: Tasks::default(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.0 && c.listed.1;
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = cj_events.next() => match event {
                Some(Ok(event)) => c.on_cronjob(event),
                Some(Err(err)) => warn!(error = %chain(&err), "CronJob watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "CronJob" }),
            },
            event = job_events.next() => match event {
                Some(Ok(event)) => c.on_job(event),
                Some(Err(err)) => warn!(error = %chain(&err), "Job watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Job" }),
            },
            Some((key, done)) = c.tasks.next(), if !c.tasks.is_empty() => c.finish(key, done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    c.tasks.drain("CronJob syncs").await;
    result
}

impl Controller {
    fn mark_all(&mut self) {
        for cj in self.cronjobs.state() {
            self.queue.add(ObjectKey::of(cj.as_ref()));
        }
    }

    fn on_cronjob(&mut self, event: Event<CronJob>) {
        match event {
            Event::Apply(cj) | Event::InitApply(cj) => self.queue.add(ObjectKey::of(&cj)),
            Event::Delete(cj) => self.queue.remove(&ObjectKey::of(&cj)),
            Event::Init => {}
            Event::InitDone => {
                self.listed.0 = true;
                self.mark_all();
            }
        }
    }

    fn on_job(&mut self, event: Event<Job>) {
        match event {
            Event::Apply(job) | Event::Delete(job) | Event::InitApply(job) => {
                if let Some(key) = cronjob_of(&job) {
                    self.queue.add(key);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.1 = true;
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(cronjob) = self
            .cronjobs
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            // Gone: its Jobs are the garbage collector's.
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let uid = cronjob.metadata.uid.as_deref();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| j.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
            .filter(|j| controlled_by(&j.metadata, uid))
            .collect();
        let client = self.client.clone();
        self.tasks
            .spawn(key, async move { sync(&client, &cronjob, &jobs).await });
    }

    fn finish(&mut self, key: ObjectKey, done: Result<Finished, tokio::task::JoinError>) {
        let now = Instant::now();
        let result = match done {
            Ok(result) => result,
            Err(err) => {
                warn!(cronjob = %key, error = %err, "a CronJob sync task failed");
                Err(Error::Task)
            }
        };
        let ending = match &result {
            Ok(recheck) => Ending::Done { recheck: *recheck },
            Err(Error::Stale { .. }) => Ending::Stale { retry: STALE_RETRY },
            Err(_) => Ending::Failed,
        };
        if let Some(delay) = self.queue.settle(key.clone(), ending, now)
            && let Err(err) = &result
        {
            warn!(cronjob = %key, error = %chain(err), retry_in = ?delay, "syncing CronJob failed");
        }
    }
}

/// Records an event on the CronJob; a failure is logged, never retried.
async fn event(client: &Client, cronjob: &CronJob, type_: EventType, reason: &str, note: String) {
    let note = Note {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    // A recorder per event: kube's would fold repeats of a reason into the first note.
    let recorder = Recorder::new(client.clone(), Reporter::from(REPORTER));
    if let Err(err) = recorder.publish(&note, &cronjob.object_ref(&())).await {
        debug!(cronjob = %ObjectKey::of(cronjob), error = %chain(&err), "recording an event failed");
    }
}

/// One sync's view: the CronJob as it will be written, and what it started from.
struct Sync<'a> {
    client: &'a Client,
    cronjob: &'a CronJob,
    key: ObjectKey,
    status: CronJobStatus,
    jobs_api: Api<Job>,
}

impl Sync<'_> {
    async fn note(&self, type_: EventType, reason: &str, note: String) {
        event(self.client, self.cronjob, type_, reason, note).await;
    }

    fn drop_active(&mut self, uid: Option<&str>) {
        if let Some(list) = self.status.active.as_mut() {
            list.retain(|r| r.uid.as_deref() != uid);
        }
    }

    /// Deletes a Job in the background (its pods follow) and drops it from the active list.
    async fn delete_job(&mut self, job: &Job) -> Result<(), Error> {
        let name = job.name_any();
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match self.jobs_api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                let note = format!("Deleted job: {}", api_message(&source));
                self.note(EventType::Warning, "FailedDelete", note).await;
                return Err(Error::DeleteJob {
                    cronjob: self.key.clone(),
                    job: name,
                    source,
                });
            }
        }
        self.drop_active(job.metadata.uid.as_deref());
        let note = format!("Deleted job {name}");
        self.note(EventType::Normal, "SuccessfulDelete", note).await;
        Ok(())
    }

    /// Writes the status if it changed; the resourceVersion read makes it conditional.
    async fn write(&self) -> Result<(), Error> {
        if !plan::status_changed(self.cronjob.status.as_ref(), &self.status) {
            return Ok(());
        }
        let mut updated = self.cronjob.clone();
        updated.status = Some(self.status.clone());
        let api: Api<CronJob> = Api::namespaced(self.client.clone(), &self.key.namespace);
        match api
            .replace_status(&self.key.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Err(Error::Stale {
                cronjob: self.key.clone(),
            }),
            Err(source) => Err(Error::Status {
                cronjob: self.key.clone(),
                source,
            }),
        }
    }
}

/// One sync of one CronJob (upstream's `sync` and `syncCronJob`); the time to look at it
/// again, if any.
async fn sync(
    client: &Client,
    cronjob: &CronJob,
    jobs: &[Arc<Job>],
) -> Result<Option<Duration>, Error> {
    let key = ObjectKey::of(cronjob);
    let mut s = Sync {
        client,
        cronjob,
        key: key.clone(),
        status: cronjob.status.clone().unwrap_or_default(),
        jobs_api: Api::namespaced(client.clone(), &key.namespace),
    };
    let jobs: Vec<&Job> = jobs.iter().map(AsRef::as_ref).collect();
    for job in plan::beyond_history(cronjob, &jobs) {
        // A failed delete is said in an event and retried at the next sync.
        let _ = s.delete_job(job).await;
    }
    let mut seen = cronjob.clone();
    seen.status = Some(s.status.clone());
    let active = plan::active(&seen, &jobs);
    s.status = active.status;
    for (reason, note) in active.normal {
        s.note(EventType::Normal, reason, note).await;
    }
    for (reason, note) in active.warnings {
        s.note(EventType::Warning, reason, note).await;
    }
    // The store may lag: a Job is gone only when the API server says so.
    for gone in active.unseen {
        let name = gone.name.clone().unwrap_or_default();
        match s.jobs_api.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let note = format!("Active job went missing: {name}");
                s.note(EventType::Normal, "MissingJob", note).await;
                s.drop_active(gone.uid.as_deref());
            }
            Err(source) => {
                return Err(Error::ReadJob {
                    cronjob: key,
                    job: name,
                    source,
                });
            }
        }
    }
    let wait = schedule_due(&mut s, Timestamp::now()).await;
    s.write().await?;
    wait
}

/// The scheduling half of a sync: creates the Job due, if any, into `s.status`; the time to
/// look again.
async fn schedule_due(s: &mut Sync<'_>, now: Timestamp) -> Result<Option<Duration>, Error> {
    let cronjob = s.cronjob;
    if cronjob.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let spec = &cronjob.spec;
    let zone = match plan::zone(cronjob) {
        Ok(zone) => zone,
        Err(err) => {
            let name = spec.time_zone.clone().unwrap_or_default();
            let note = format!("invalid timeZone: {name:?}: {err}");
            s.note(EventType::Warning, "UnknownTimeZone", note).await;
            return Ok(None);
        }
    };
    if spec.suspend == Some(true) {
        return Ok(None);
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(schedule) => schedule,
        Err(err) => {
            let note = format!("unparseable schedule: {:?} : {err}", spec.schedule);
            s.note(EventType::Warning, "UnparseableSchedule", note)
                .await;
            return Ok(None);
        }
    };
    let mut seen = cronjob.clone();
    seen.status = Some(s.status.clone());
    let due = match plan::due(&seen, now, &schedule, &zone, true) {
        Ok(due) => due,
        Err(err) => {
            let note = format!("invalid schedule: {} : {err}", spec.schedule);
            s.note(EventType::Warning, "InvalidSchedule", note).await;
            return Ok(None);
        }
    };
    if due.missed > plan::MANY_MISSED {
        let note = format!(
            "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            due.missed
        );
        s.note(EventType::Warning, "TooManyMissedTimes", note).await;
    }
    let next = plan::requeue_after(&seen, now, &schedule, &zone);
    let Due {
        latest: Some(scheduled),
        ..
    } = due
    else {
        return Ok(next);
    };
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled + jiff::SignedDuration::from_secs(deadline) < now
    {
        let note = format!(
            "Missed scheduled time to start a job: {}",
            scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
        );
        s.note(EventType::Warning, "MissSchedule", note).await;
        return Ok(next);
    }
    let name = plan::job_name(cronjob, scheduled);
    let listed = s
        .status
        .active
        .iter()
        .flatten()
        .any(|r| r.name.as_deref() == Some(name.as_str()));
    let last = s.status.last_schedule_time.as_ref().map(|t| t.0);
    if listed || last == Some(scheduled) {
        return Ok(next);
    }
    let active: Vec<_> = s.status.active.clone().unwrap_or_default();
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            let note = "Not starting job because prior execution is running and concurrency policy is Forbid";
            s.note(EventType::Normal, "JobAlreadyActive", note.into())
                .await;
            return Ok(next);
        }
        Some("Replace") => {
            for reference in active {
                let job_name = reference.name.clone().unwrap_or_default();
                match s.jobs_api.get_opt(&job_name).await {
                    Ok(Some(job)) => s.delete_job(&job).await?,
                    Ok(None) => s.drop_active(reference.uid.as_deref()),
                    Err(source) => {
                        let note = format!("Get job: {}", api_message(&source));
                        s.note(EventType::Warning, "FailedGet", note).await;
                        return Err(Error::ReadJob {
                            cronjob: s.key.clone(),
                            job: job_name,
                            source,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    let Some(wanted) = plan::job_for(cronjob, scheduled, &zone) else {
        return Ok(None);
    };
    let made = match s.jobs_api.create(&PostParams::default(), &wanted).await {
        Ok(made) => {
            let note = format!("Created job {}", made.name_any());
            s.note(EventType::Normal, "SuccessfulCreate", note).await;
            made
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Made by an earlier sync whose status write was lost, or by someone else.
            let existing = s
                .jobs_api
                .get(&name)
                .await
                .map_err(|source| Error::ReadJob {
                    cronjob: s.key.clone(),
                    job: name.clone(),
                    source,
                })?;
            if !controlled_by(&existing.metadata, cronjob.metadata.uid.as_deref()) {
                return Ok(None);
            }
            let uid = existing.metadata.uid.as_deref();
            if s.status
                .active
                .iter()
                .flatten()
                .any(|r| r.uid.as_deref() == uid)
            {
                return Ok(None);
            }
            info!(cronjob = %s.key, job = %name, "job already exists");
            existing
        }
        Err(err) if namespace_terminating(&err) => return Ok(None),
        Err(source) => {
            let note = format!("Error creating job: {}", api_message(&source));
            s.note(EventType::Warning, "FailedCreate", note).await;
            // The sync still writes what it learned (finished and gone Jobs).
            return Err(Error::CreateJob {
                cronjob: s.key.clone(),
                source,
            });
        }
    };
    s.status
        .active
        .get_or_insert_with(Vec::new)
        .push(plan::job_ref(&made));
    s.status.last_schedule_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        scheduled,
    ));
    Ok(next)
}
