//! Deployment controller: every Deployment rolls its pods out through ReplicaSets — one new
//! ReplicaSet per template (named `<deployment>-<pod-template-hash>`), old ones scaled down
//! as the new one comes up (RollingUpdate) or before it starts (Recreate) — and reports the
//! rollout in its status.
//!
//! Invariants: level-triggered — events only name Deployments, and each sync recomputes
//! from the stores with upstream's steps (claim ReplicaSets; a Deployment being deleted only
//! reports; pause conditions; a paused or scaled Deployment only rescales, proportionally;
//! otherwise its strategy's rollout step, then history cleanup, then status); nothing syncs
//! before the Deployment and ReplicaSet watches have listed once; one Deployment is synced by
//! one task at a time; every write is conditional on the resourceVersion read, and a
//! conflict ends the sync to start over from fresher stores; the arithmetic is pure
//! ([`arithmetic`], [`revision`], [`status`], [`hash`]). Upstream:
//! `pkg/controller/deployment/` (`deployment_controller.go`, `sync.go`, `rolling.go`,
//! `recreate.go`, `progress.go`, `util/`).
//!
//! Not done: `spec.rollbackTo` (extensions/v1beta1 only; `kubectl rollout undo` edits the
//! template, which reuses the old ReplicaSet here as upstream); pods are not watched — for
//! Recreate, old pods are known gone from their ReplicaSets' `replicas` and
//! `terminatingReplicas` (see [`arithmetic::old_pods_running`]).
//!
//! ```text
//!  Deployment watch ─┐                         ┌─ claim ReplicaSets
//!  ReplicaSet watch ─┴─► queue of Deployments ─┤  rollout: create / scale / clean up
//!                         dedup, backoff       └─ status: counts, conditions, requeue at deadline
//! ```

pub mod arithmetic;
#[cfg(test)]
mod fixtures;
pub mod hash;
pub mod revision;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::arithmetic::{ArithmeticError, Scaling, name, replicas, size};
use super::owner::{
    self, ClaimError, ObjectKey, claim_all, controlled_by, controller_of, controller_ref, selects,
};
use super::queue::{Backoff, Queue};
use super::{chain, namespace_terminating};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "deployment-controller";
/// Deployments synced at once (upstream's `--concurrent-deployment-syncs` is 5).
const WORKERS: usize = 4;
/// How soon a Deployment that changed under a write is looked at again.
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, syncing from a
    /// frozen view would be wrong, so the controller stops.
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("claiming ReplicaSets for Deployment {deployment}")]
    Claim {
        deployment: ObjectKey,
        #[source]
        source: ClaimError,
    },
    #[error("Deployment {deployment} has an invalid rolling update")]
    Arithmetic {
        deployment: ObjectKey,
        #[source]
        source: ArithmeticError,
    },
    #[error("creating ReplicaSet {name} for Deployment {deployment}")]
    Create {
        deployment: ObjectKey,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating ReplicaSet {name} of Deployment {deployment}")]
    Update {
        deployment: ObjectKey,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting old ReplicaSet {name} of Deployment {deployment}")]
    Delete {
        deployment: ObjectKey,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of Deployment {deployment}")]
    Status {
        deployment: ObjectKey,
        #[source]
        source: kube::Error,
    },
    /// A ReplicaSet of another template holds the new one's name: collisionCount was raised,
    /// and the next sync hashes to another name.
    #[error(
        "ReplicaSet {name} exists with another template; Deployment {deployment}'s collisionCount raised"
    )]
    Collision { deployment: ObjectKey, name: String },
    /// Something changed since the store showed it: its watch event brings the news, and the
    /// Deployment is synced again without backing off.
    #[error("Deployment {deployment} or one of its ReplicaSets changed since it was read")]
    Stale { deployment: ObjectKey },
}

impl Error {
    fn backs_off(&self) -> bool {
        !matches!(self, Error::Stale { .. } | Error::Collision { .. })
    }
}

fn stale(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_conflict() || s.is_not_found())
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("Deployment controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("Deployment controller stopped"),
        Err(err) => error!(error = %chain(&err), "the Deployment controller stopped"),
    }
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (deployments, d_writer) = reflector::store::<Deployment>();
    let (replicasets, rs_writer) = reflector::store::<ReplicaSet>();
    let d_events = watcher(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(d_writer);
    let rs_events = watcher(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(rs_writer);
    let mut d_events = pin!(d_events);
    let mut rs_events = pin!(rs_events);
    let mut c = Controller {
        ctx: Arc::new(Ctx {
            client,
            reporter: Reporter::from(REPORTER),
        }),
        deployments,
        replicasets,
        listed: (false, false),
        queue: Queue::new(BACKOFF),
        rs_owners: HashMap::new(),
        bad_selectors: HashMap::new(),
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
            event = d_events.next() => match event {
                Some(Ok(event)) => c.on_deployment(event),
                Some(Err(err)) => warn!(error = %chain(&err), "Deployment watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "Deployment" }),
            },
            event = rs_events.next() => match event {
                Some(Ok(event)) => c.on_replicaset(event),
                Some(Err(err)) => warn!(error = %chain(&err), "ReplicaSet watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "ReplicaSet" }),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    super::drain(&mut c.tasks, "Deployment syncs").await;
    result
}

struct Ctx {
    client: Client,
    reporter: Reporter,
}

impl Ctx {
    /// Records an event on `d`; a failure is logged, never retried.
    async fn event(
        &self,
        d: &Deployment,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = Note {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A recorder per event: kube's folds events of one reason and action on one object
        // into a series that keeps the first note, so "Scaled up replica set x from 1 to 2"
        // then "from 2 to 3" would show as the first message twice; upstream shows each.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(err) = recorder.publish(&note, &d.object_ref(&())).await {
            debug!(deployment = %ObjectKey::of(d), error = %chain(&err), "recording an event failed");
        }
    }
}

/// What one sync's task reports: when to look again for the progress deadline.
type Outcome = (ObjectKey, Result<Option<Duration>, Error>);

struct Controller {
    ctx: Arc<Ctx>,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    /// Whether the Deployment and ReplicaSet watches have listed once.
    listed: (bool, bool),
    queue: Queue<ObjectKey>,
    /// The Deployment controlling each ReplicaSet when last seen: one that loses or changes
    /// its controller must reach the old one too.
    rs_owners: HashMap<ObjectKey, ObjectKey>,
    /// Deployments skipped for their selector, with the generation said so about.
    bad_selectors: HashMap<ObjectKey, Option<i64>>,
    tasks: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, ObjectKey>,
}

/// The Deployment controlling the ReplicaSet, if its controller is one.
fn deployment_of(rs: &ReplicaSet) -> Option<ObjectKey> {
    let reference = controller_of(&rs.metadata)?;
    (reference.kind == "Deployment" && reference.api_version == "apps/v1").then(|| {
        ObjectKey::new(
            rs.metadata.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

impl Controller {
    fn mark_all(&mut self) {
        for d in self.deployments.state() {
            self.queue.add(ObjectKey::of(d.as_ref()));
        }
    }

    fn on_deployment(&mut self, event: Event<Deployment>) {
        match event {
            Event::Apply(d) | Event::InitApply(d) => self.queue.add(ObjectKey::of(&d)),
            // Its ReplicaSets are the garbage collector's.
            Event::Delete(d) => {
                let key = ObjectKey::of(&d);
                self.bad_selectors.remove(&key);
                self.queue.remove(&key);
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.0 = true;
                self.mark_all();
            }
        }
    }

    /// Deployments of the ReplicaSet's namespace whose selector picks it: those that may
    /// adopt it.
    fn adopters(&self, rs: &ReplicaSet) -> Vec<ObjectKey> {
        let namespace = rs.metadata.namespace.as_deref();
        self.deployments
            .state()
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == namespace)
            .filter(|d| {
                owner::selector(&d.spec.selector)
                    .is_ok_and(|s| !s.selects_all() && selects(&s, rs.metadata.labels.as_ref()))
            })
            .map(|d| ObjectKey::of(d.as_ref()))
            .collect()
    }

    fn on_replicaset(&mut self, event: Event<ReplicaSet>) {
        match event {
            Event::Apply(rs) | Event::InitApply(rs) => {
                let rs_key = ObjectKey::of(&rs);
                let owner = deployment_of(&rs);
                let before = match &owner {
                    Some(owner) => self.rs_owners.insert(rs_key, owner.clone()),
                    None => self.rs_owners.remove(&rs_key),
                };
                if let Some(before) = before.filter(|b| Some(b) != owner.as_ref()) {
                    self.queue.add(before);
                }
                match owner {
                    Some(owner) => self.queue.add(owner),
                    None => {
                        for key in self.adopters(&rs) {
                            self.queue.add(key);
                        }
                    }
                }
            }
            Event::Delete(rs) => {
                let before = self.rs_owners.remove(&ObjectKey::of(&rs));
                for owner in before.into_iter().chain(deployment_of(&rs)) {
                    self.queue.add(owner);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed.1 = true;
                self.rs_owners = self
                    .replicasets
                    .state()
                    .iter()
                    .filter_map(|rs| Some((ObjectKey::of(rs.as_ref()), deployment_of(rs)?)))
                    .collect();
                self.mark_all();
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(d) = self
            .deployments
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let selector = match owner::selector(&d.spec.selector) {
            Ok(s) => {
                self.bad_selectors.remove(&key);
                s
            }
            Err(err) => {
                self.queue.done(&key);
                self.queue.forget(&key);
                let generation = d.metadata.generation;
                if self.bad_selectors.insert(key.clone(), generation) != Some(generation) {
                    warn!(deployment = %key, error = %err, "skipping Deployment: its selector is invalid");
                }
                return;
            }
        };
        let rss: Vec<Arc<ReplicaSet>> = self
            .replicasets
            .state()
            .into_iter()
            .filter(|rs| rs.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
            .collect();
        let ctx = self.ctx.clone();
        let task_key = key.clone();
        let handle = self.tasks.spawn(async move {
            let result = sync(&ctx, d, selector, rss).await;
            (task_key, result)
        });
        self.running.insert(handle.id(), key);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let now = Instant::now();
        let (key, result) = match done {
            Ok((id, outcome)) => {
                self.running.remove(&id);
                outcome
            }
            Err(err) => {
                let Some(key) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(deployment = %key, error = %err, "Deployment sync task failed");
                self.queue.done(&key);
                let delay = self.queue.backoff(&key);
                self.queue.add_after(key, now + delay);
                return;
            }
        };
        self.queue.done(&key);
        match result {
            Ok(requeue) => {
                self.queue.forget(&key);
                if let Some(after) = requeue {
                    self.queue.add_after(key, now + after);
                }
            }
            Err(err) if !err.backs_off() => {
                debug!(deployment = %key, error = %chain(&err), "retrying");
                self.queue.add_after(key, now + STALE_RETRY);
            }
            Err(err) => {
                let delay = self.queue.backoff(&key);
                warn!(deployment = %key, error = %chain(&err), retry_in = ?delay, "syncing Deployment failed");
                self.queue.add_after(key, now + delay);
            }
        }
    }
}

/// Upstream's `syncDeployment`: one sync of one Deployment from the stores' view of it and
/// its namespace's ReplicaSets. Returns when to look again, if the progress deadline asks.
async fn sync(
    ctx: &Ctx,
    d: Arc<Deployment>,
    selector: Selector,
    rss: Vec<Arc<ReplicaSet>>,
) -> Result<Option<Duration>, Error> {
    let key = ObjectKey::of(d.as_ref());
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let replicasets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut step = Rollout {
        ctx,
        key: key.clone(),
        d: d.as_ref().clone(),
        rss: Vec::new(),
        deployments,
        replicasets,
        now: Timestamp::now(),
        requeue: None,
    };
    if selector.selects_all() {
        let note = "This deployment is selecting all pods. A non-empty selector is required.";
        ctx.event(&d, EventType::Warning, "SelectingAll", "Sync", note.into())
            .await;
        let observed = d.status.as_ref().and_then(|s| s.observed_generation);
        if observed.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
            let mut status = d.status.clone().unwrap_or_default();
            status.observed_generation = d.metadata.generation;
            step.write_status(status).await?;
        }
        return Ok(None);
    }
    let claimed = claim_all(
        &step.replicasets,
        &step.deployments,
        d.as_ref(),
        &selector,
        rss,
    )
    .await
    .map_err(|source| Error::Claim {
        deployment: key.clone(),
        source,
    })?;
    step.rss = claimed.iter().map(|rs| rs.as_ref().clone()).collect();

    if d.metadata.deletion_timestamp.is_some() {
        let new = step.sync_revision(false).await?;
        step.sync_status(new).await?;
        return Ok(None);
    }
    if let Some(status) = status::paused(&step.d, step.now) {
        step.write_status(status).await?;
    }
    if step.d.spec.paused == Some(true) {
        step.rescale().await?;
        return Ok(None);
    }
    // Upstream's isScalingEvent syncs the revision first, as here.
    step.sync_revision(false).await?;
    if arithmetic::is_scaling_event(&step.d, &step.all()) {
        step.rescale().await?;
        return Ok(None);
    }
    if arithmetic::is_recreate(&step.d) {
        step.rollout_recreate().await?;
    } else {
        step.rollout_rolling().await?;
    }
    Ok(step.requeue)
}

/// One sync's working state: the Deployment and its ReplicaSets as last written or read.
struct Rollout<'a> {
    ctx: &'a Ctx,
    key: ObjectKey,
    d: Deployment,
    rss: Vec<ReplicaSet>,
    deployments: Api<Deployment>,
    replicasets: Api<ReplicaSet>,
    now: Timestamp,
    requeue: Option<Duration>,
}

impl Rollout<'_> {
    fn all(&self) -> Vec<&ReplicaSet> {
        self.rss.iter().collect()
    }

    /// The ReplicaSets but the new one.
    fn old(&self, new: Option<usize>) -> Vec<&ReplicaSet> {
        self.rss
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, rs)| rs)
            .collect()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.rss
            .iter()
            .position(|rs| rs.metadata.name.as_deref() == Some(name))
    }

    async fn write_status(&mut self, status: DeploymentStatus) -> Result<(), Error> {
        let mut updated = self.d.clone();
        updated.status = Some(status);
        // Through the status subresource, which also takes annotation changes (the revision):
        // upstream's UpdateStatus does the same.
        match self
            .deployments
            .replace_status(&self.key.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                self.d = written;
                Ok(())
            }
            Err(err) if stale(&err) => Err(Error::Stale {
                deployment: self.key.clone(),
            }),
            Err(source) => Err(Error::Status {
                deployment: self.key.clone(),
                source,
            }),
        }
    }

    async fn replace_rs(&mut self, i: usize, rs: ReplicaSet) -> Result<(), Error> {
        let name = name(&rs);
        match self
            .replicasets
            .replace(&name, &PostParams::default(), &rs)
            .await
        {
            Ok(written) => {
                self.rss[i] = written;
                Ok(())
            }
            Err(err) if stale(&err) => Err(Error::Stale {
                deployment: self.key.clone(),
            }),
            Err(source) => Err(Error::Update {
                deployment: self.key.clone(),
                name,
                source,
            }),
        }
    }

    /// Upstream's `scaleReplicaSet` (`always`) and `scaleReplicaSetAndRecordEvent` (not):
    /// writes the size and the replica annotations; whether the size changed.
    async fn scale(&mut self, i: usize, to: i32, always: bool) -> Result<bool, Error> {
        let rs = &self.rss[i];
        let from = size(rs);
        if from == to && !always {
            return Ok(false);
        }
        let desired = replicas(&self.d);
        let max = desired + arithmetic::max_surge(&self.d);
        if from == to && !revision::replicas_annotations_need_update(rs, desired, max) {
            return Ok(false);
        }
        let mut updated = rs.clone();
        updated.spec.replicas = Some(to);
        revision::set_replicas_annotations(&mut updated, desired, max);
        self.replace_rs(i, updated).await?;
        if from == to {
            return Ok(false);
        }
        let direction = if from < to { "up" } else { "down" };
        let note = format!(
            "Scaled {direction} replica set {} from {from} to {to}",
            name(&self.rss[i])
        );
        info!(deployment = %self.key, "{note}");
        self.ctx
            .event(
                &self.d,
                EventType::Normal,
                "ScalingReplicaSet",
                "Scale",
                note,
            )
            .await;
        Ok(true)
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`/`getNewReplicaSet`: finds the new
    /// ReplicaSet and brings its annotations and revision up to date, creating it if asked
    /// and missing; its index.
    async fn sync_revision(&mut self, create: bool) -> Result<Option<usize>, Error> {
        let new = revision::find_new(&self.d, &self.all());
        let new_revision = revision::max_revision(&self.old(new)) + 1;
        if let Some(i) = new {
            let mut rs = self.rss[i].clone();
            let annotated = revision::set_new_rs_annotations(&self.d, &mut rs, new_revision, true);
            if annotated
                || rs.spec.min_ready_seconds.unwrap_or(0)
                    != self.d.spec.min_ready_seconds.unwrap_or(0)
            {
                rs.spec.min_ready_seconds = self.d.spec.min_ready_seconds;
                self.replace_rs(i, rs).await?;
                return Ok(Some(i));
            }
            let number = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(revision::REVISION))
                .cloned()
                .unwrap_or_default();
            let mut needs_write = revision::set_deployment_revision(&mut self.d, &number);
            let mut current = self.d.status.clone().unwrap_or_default();
            // Progress is estimated from the first time the new ReplicaSet was seen.
            if status::has_progress_deadline(&self.d)
                && status::get(&current, status::PROGRESSING).is_none()
            {
                let message = format!("Found new replica set \"{}\"", name(&rs));
                status::set(
                    &mut current,
                    status::condition(
                        status::PROGRESSING,
                        "True",
                        status::FOUND_NEW_RS,
                        message,
                        self.now,
                    ),
                );
                needs_write = true;
            }
            if needs_write {
                self.write_status(current).await?;
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        self.create_new(new_revision).await.map(Some)
    }

    /// The new ReplicaSet for the Deployment's template, created with the hash label in its
    /// selector and template, as many pods as the strategy allows at once, and revision
    /// `new_revision`.
    async fn create_new(&mut self, new_revision: i64) -> Result<usize, Error> {
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = hash::template_hash(&self.d.spec.template, collisions);
        let template = with_label(&self.d.spec.template, &hash);
        let mut selector = self.d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(hash::LABEL.to_owned(), hash.clone());
        let rs_name = format!("{}-{hash}", self.key.name);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.key.namespace.clone()),
                owner_references: controller_ref(&self.d).map(|r| vec![r]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        let count = {
            let mut all = self.all();
            all.push(&rs);
            arithmetic::new_rs_replicas(&self.d, &all, &rs).map_err(|source| Error::Arithmetic {
                deployment: self.key.clone(),
                source,
            })?
        };
        rs.spec.replicas = Some(count);
        revision::set_new_rs_annotations(&self.d, &mut rs, new_revision, false);

        let (index, created) = match self.replicasets.create(&PostParams::default(), &rs).await {
            Ok(made) => {
                self.rss.push(made);
                (self.rss.len() - 1, true)
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                (self.adopt_existing(&rs_name).await?, false)
            }
            // Every create fails in a namespace being deleted; nothing to report.
            Err(source) if namespace_terminating(&source) => {
                return Err(Error::Create {
                    deployment: self.key.clone(),
                    name: rs_name,
                    source,
                });
            }
            Err(source) => {
                let message = format!(
                    "Failed to create new replica set \"{rs_name}\": {}",
                    api_message(&source)
                );
                if status::has_progress_deadline(&self.d) {
                    let mut current = self.d.status.clone().unwrap_or_default();
                    status::set(
                        &mut current,
                        status::condition(
                            status::PROGRESSING,
                            "False",
                            status::FAILED_RS_CREATE,
                            message.clone(),
                            self.now,
                        ),
                    );
                    // The create failure is the one to report.
                    if let Err(err) = self.write_status(current).await {
                        debug!(deployment = %self.key, error = %chain(&err), "recording the failed create");
                    }
                }
                self.ctx
                    .event(
                        &self.d,
                        EventType::Warning,
                        status::FAILED_RS_CREATE,
                        "Create",
                        message,
                    )
                    .await;
                return Err(Error::Create {
                    deployment: self.key.clone(),
                    name: rs_name,
                    source,
                });
            }
        };
        if created && count > 0 {
            let note = format!("Scaled up replica set {rs_name} from 0 to {count}");
            info!(deployment = %self.key, "{note}");
            self.ctx
                .event(
                    &self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    "Scale",
                    note,
                )
                .await;
        }
        let mut needs_write =
            revision::set_deployment_revision(&mut self.d, &new_revision.to_string());
        let mut current = self.d.status.clone().unwrap_or_default();
        if created && status::has_progress_deadline(&self.d) {
            let message = format!("Created new replica set \"{rs_name}\"");
            status::set(
                &mut current,
                status::condition(
                    status::PROGRESSING,
                    "True",
                    status::NEW_RS_CREATED,
                    message,
                    self.now,
                ),
            );
            needs_write = true;
        }
        if needs_write {
            self.write_status(current).await?;
        }
        Ok(index)
    }

    /// The name is taken: the Deployment's own ReplicaSet the store did not show yet, or a
    /// hash collision, which raises collisionCount so that the next sync picks another name.
    async fn adopt_existing(&mut self, rs_name: &str) -> Result<usize, Error> {
        let existing = self
            .replicasets
            .get_opt(rs_name)
            .await
            .map_err(|source| Error::Update {
                deployment: self.key.clone(),
                name: rs_name.to_owned(),
                source,
            })?;
        if let Some(existing) = existing {
            let ours = controlled_by(&existing.metadata, self.d.metadata.uid.as_deref());
            let same = existing
                .spec
                .template
                .as_ref()
                .is_some_and(|t| hash::equal_ignore_hash(t, &self.d.spec.template));
            if ours && same {
                return Ok(match self.index(rs_name) {
                    Some(i) => {
                        self.rss[i] = existing;
                        i
                    }
                    None => {
                        self.rss.push(existing);
                        self.rss.len() - 1
                    }
                });
            }
        }
        let mut current = self.d.status.clone().unwrap_or_default();
        current.collision_count = Some(current.collision_count.unwrap_or(0).saturating_add(1));
        self.write_status(current).await?;
        info!(deployment = %self.key, replicaset = rs_name, "hash collision; collisionCount raised");
        Err(Error::Collision {
            deployment: self.key.clone(),
            name: rs_name.to_owned(),
        })
    }

    /// Upstream's `sync` for paused and scaled Deployments: rescale, clean up history if
    /// paused, report.
    async fn rescale(&mut self) -> Result<(), Error> {
        let new = self.sync_revision(false).await?;
        let plan = {
            let new_rs = new.map(|i| &self.rss[i]);
            arithmetic::scaling(&self.d, new_rs, &self.old(new))
        };
        let (sizes, always) = match plan {
            None => (Vec::new(), false),
            Some(Scaling::Resize(sizes)) => (sizes, false),
            Some(Scaling::Proportional(sizes)) => (sizes, true),
        };
        for (rs_name, to) in sizes {
            if let Some(i) = self.index(&rs_name) {
                self.scale(i, to, always).await?;
            }
        }
        if self.d.spec.paused == Some(true) {
            self.clean_up(new).await?;
        }
        self.sync_status(new).await
    }

    /// Upstream's `rolloutRolling`: grow the new ReplicaSet within the surge, else shrink old
    /// ones within availability, else clean up history; then report.
    async fn rollout_rolling(&mut self) -> Result<(), Error> {
        let new = self.sync_revision(true).await?;
        let Some(new) = new else {
            return self.sync_rollout_status(None).await;
        };
        // reconcileNewReplicaSet
        let want = replicas(&self.d);
        let target = match size(&self.rss[new]).cmp(&want) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(want),
            std::cmp::Ordering::Less => Some(
                arithmetic::new_rs_replicas(&self.d, &self.all(), &self.rss[new]).map_err(
                    |source| Error::Arithmetic {
                        deployment: self.key.clone(),
                        source,
                    },
                )?,
            ),
        };
        if let Some(to) = target
            && self.scale(new, to, false).await?
        {
            return self.sync_rollout_status(Some(new)).await;
        }
        // reconcileOldReplicaSets
        let plan = {
            let old: Vec<&ReplicaSet> = self
                .old(Some(new))
                .into_iter()
                .filter(|rs| size(rs) > 0)
                .collect();
            arithmetic::old_scale_down(&self.d, &self.rss[new], &old)
        };
        let mut scaled_down = false;
        for (rs_name, to) in plan {
            if let Some(i) = self.index(&rs_name) {
                scaled_down |= self.scale(i, to, false).await?;
            }
        }
        if scaled_down {
            return self.sync_rollout_status(Some(new)).await;
        }
        if status::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.clean_up(Some(new)).await?;
        }
        self.sync_rollout_status(Some(new)).await
    }

    /// Upstream's `rolloutRecreate`: scale every old ReplicaSet to zero, wait for their pods
    /// to go, then create or scale up the new one.
    async fn rollout_recreate(&mut self) -> Result<(), Error> {
        let new = self.sync_revision(false).await?;
        let active_old: Vec<String> = self
            .old(new)
            .into_iter()
            .filter(|rs| size(rs) > 0)
            .map(name)
            .collect();
        let mut scaled_down = false;
        for rs_name in active_old {
            if let Some(i) = self.index(&rs_name) {
                scaled_down |= self.scale(i, 0, false).await?;
            }
        }
        if scaled_down || arithmetic::old_pods_running(&self.old(new)) {
            return self.sync_rollout_status(new).await;
        }
        let new = match new {
            Some(i) => i,
            None => match self.sync_revision(true).await? {
                Some(i) => i,
                None => return self.sync_rollout_status(None).await,
            },
        };
        let want = replicas(&self.d);
        self.scale(new, want, false).await?;
        if status::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.clean_up(Some(new)).await?;
        }
        self.sync_rollout_status(Some(new)).await
    }

    /// Upstream's `cleanupDeployment`: deletes old ReplicaSets beyond revisionHistoryLimit.
    async fn clean_up(&mut self, new: Option<usize>) -> Result<(), Error> {
        let doomed: Vec<(String, Option<String>)> = {
            let old = self.old(new);
            revision::history_to_delete(&self.d, &old)
                .into_iter()
                .map(|n| {
                    let uid = self
                        .index(&n)
                        .and_then(|i| self.rss[i].metadata.uid.clone());
                    (n, uid)
                })
                .collect()
        };
        for (rs_name, uid) in doomed {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            debug!(deployment = %self.key, replicaset = %rs_name, "deleting old ReplicaSet beyond the revision history limit");
            match self.replicasets.delete(&rs_name, &params).await {
                Ok(_) => {}
                Err(err) if stale(&err) => {}
                // Stop here, as upstream: the API server may be overloaded already.
                Err(source) => {
                    return Err(Error::Delete {
                        deployment: self.key.clone(),
                        name: rs_name,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Upstream's `syncDeploymentStatus`: counts and Available only.
    async fn sync_status(&mut self, new: Option<usize>) -> Result<(), Error> {
        let computed = {
            let new_rs = new.map(|i| &self.rss[i]);
            status::calculate(&self.d, &self.all(), new_rs, self.now)
        };
        if !status::same(&self.d, &computed) {
            self.write_status(computed).await?;
        }
        Ok(())
    }

    /// Upstream's `syncRolloutStatus`: counts and every condition, and when to look again
    /// for the progress deadline.
    async fn sync_rollout_status(&mut self, new: Option<usize>) -> Result<(), Error> {
        let computed = {
            let new_rs = new.map(|i| &self.rss[i]);
            status::rollout(&self.d, &self.all(), new_rs, self.now)
        };
        self.requeue = status::requeue_after(&self.d, &computed, self.now);
        if !status::same(&self.d, &computed) {
            self.write_status(computed).await?;
        }
        Ok(())
    }
}

/// The template with the hash label added.
fn with_label(template: &PodTemplateSpec, hash: &str) -> PodTemplateSpec {
    let mut template = template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(hash::LABEL.to_owned(), hash.to_owned());
    template
}

fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => chain(other),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::{Value, json};

    use super::super::replicaset::api_double::Double;
    use super::fixtures::{annotated, deployment, rs};
    use super::revision::{DESIRED_REPLICAS, MAX_REPLICAS, REVISION};
    use super::*;

    const REPLICASETS: &str = "/apis/apps/v1/namespaces/shop/replicasets";
    const STATUS: &str = "/apis/apps/v1/namespaces/shop/deployments/web/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    /// Echoes writes back as the server would store them.
    fn echo(method: &str, _: &str, body: &Value, _: usize) -> (u16, Value) {
        let mut reply = body.clone();
        if method == "POST" && body["kind"] == "ReplicaSet" {
            reply["metadata"]["uid"] = json!("uid-new");
            reply["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        (if method == "POST" { 201 } else { 200 }, reply)
    }

    fn context(double: &Double) -> Ctx {
        let client = Client::new(double.clone(), "shop");
        Ctx {
            client,
            reporter: Reporter::from(REPORTER),
        }
    }

    fn notes(double: &Double) -> Vec<String> {
        double
            .sent("POST", EVENTS)
            .iter()
            .map(|(_, _, e)| {
                format!(
                    "{}: {}",
                    e["reason"].as_str().unwrap_or_default(),
                    e["note"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// A ReplicaSet of the Deployment `web`: its labels, its controller reference.
    fn of_web(mut rs: ReplicaSet) -> ReplicaSet {
        rs.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        rs.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        rs
    }

    async fn run_sync(
        double: &Double,
        d: Deployment,
        rss: Vec<ReplicaSet>,
    ) -> Result<Option<Duration>, Error> {
        let ctx = context(double);
        let selector = owner::selector(&d.spec.selector).expect("valid");
        sync(
            &ctx,
            Arc::new(d),
            selector,
            rss.into_iter().map(Arc::new).collect(),
        )
        .await
    }

    #[tokio::test]
    async fn a_first_rollout_creates_the_new_replicaset_as_upstream_names_and_annotates_it() {
        let double = Double::new(echo);
        let d = deployment(3, "1", "0");
        let hash = hash::template_hash(&d.spec.template, None);
        let requeue = run_sync(&double, d, Vec::new()).await.expect("synced");

        let created = double.sent("POST", REPLICASETS);
        assert_eq!(created.len(), 1);
        let rs = &created[0].2;
        let rs_name = format!("web-{hash}");
        assert_eq!(rs["metadata"]["name"], rs_name.as_str());
        assert_eq!(
            rs["metadata"]["labels"],
            json!({"app": "web", "pod-template-hash": hash})
        );
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"],
            json!({"app": "web", "pod-template-hash": hash})
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"],
            hash.as_str()
        );
        assert_eq!(
            rs["spec"]["replicas"], 3,
            "surge 1 over none yet: all 3 at once"
        );
        assert_eq!(
            rs["metadata"]["annotations"],
            json!({REVISION: "1", DESIRED_REPLICAS: "3", MAX_REPLICAS: "4"})
        );
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "uid-web");
        assert_eq!(
            notes(&double),
            vec![format!(
                "ScalingReplicaSet: Scaled up replica set {rs_name} from 0 to 3"
            )]
        );

        let statuses = double.sent("PUT", STATUS);
        assert_eq!(
            statuses.len(),
            2,
            "revision and NewReplicaSetCreated, then the rollout status"
        );
        assert_eq!(statuses[0].2["metadata"]["annotations"][REVISION], "1");
        let progressing = &statuses[0].2["status"]["conditions"][0];
        assert_eq!(progressing["reason"], "NewReplicaSetCreated");
        assert_eq!(
            progressing["message"],
            format!("Created new replica set \"{rs_name}\"")
        );
        let last = &statuses[1].2["status"];
        assert_eq!(last["observedGeneration"], 1);
        assert_eq!(last["conditions"][1]["type"], "Available");
        assert_eq!(
            last["conditions"][1]["reason"],
            "MinimumReplicasUnavailable"
        );
        assert!(
            requeue.is_some_and(|r| r > Duration::from_secs(590)),
            "{requeue:?}: look again at the deadline"
        );
    }

    #[tokio::test]
    async fn a_deployment_scaled_mid_rollout_scales_its_replicasets_in_proportion() {
        let double = Double::new(echo);
        let d = deployment(15, "3", "2");
        let sized_for = |rs: ReplicaSet, revision: &str| {
            of_web(annotated(
                rs,
                &[
                    (DESIRED_REPLICAS, "10"),
                    (MAX_REPLICAS, "13"),
                    (REVISION, revision),
                ],
            ))
        };
        let old = sized_for(rs("web-old", 8, 8, 1), "1");
        let mut new = sized_for(rs("web-new", 5, 0, 10), "2");
        new.spec.template = Some(with_label(&d.spec.template, "new"));
        run_sync(&double, d, vec![old, new]).await.expect("synced");

        let writes: Vec<(String, Value, Value)> = double
            .sent("PUT", REPLICASETS)
            .into_iter()
            .map(|(_, path, body)| {
                (
                    path,
                    body["spec"]["replicas"].clone(),
                    body["metadata"]["annotations"].clone(),
                )
            })
            .collect();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(writes[0].0, format!("{REPLICASETS}/web-old"));
        assert_eq!(writes[0].1, 11);
        assert_eq!(writes[0].2[DESIRED_REPLICAS], "15");
        assert_eq!(writes[0].2[MAX_REPLICAS], "18");
        assert_eq!(writes[1].0, format!("{REPLICASETS}/web-new"));
        assert_eq!(writes[1].1, 7);
        assert_eq!(
            notes(&double),
            vec![
                "ScalingReplicaSet: Scaled up replica set web-old from 8 to 11".to_owned(),
                "ScalingReplicaSet: Scaled up replica set web-new from 5 to 7".to_owned(),
            ]
        );
        assert!(
            double.sent("POST", REPLICASETS).is_empty(),
            "the new ReplicaSet is found, not made"
        );
    }

    #[tokio::test]
    async fn a_rollback_reuses_the_old_replicaset_under_a_new_revision() {
        let double = Double::new(echo);
        let d = deployment(2, "1", "0");
        // Revision 1 had the Deployment's template; revision 2 is running.
        let mut first = of_web(annotated(rs("web-first", 0, 0, 1), &[(REVISION, "1")]));
        first.spec.template = Some(with_label(&d.spec.template, "first"));
        let second = of_web(annotated(rs("web-second", 2, 2, 5), &[(REVISION, "2")]));
        run_sync(&double, d, vec![first, second])
            .await
            .expect("synced");

        let writes = double.sent("PUT", &format!("{REPLICASETS}/web-first"));
        let annotations = &writes[0].2["metadata"]["annotations"];
        assert_eq!(annotations[REVISION], "3");
        assert_eq!(
            annotations["deployment.kubernetes.io/revision-history"],
            "1"
        );
        assert!(double.sent("POST", REPLICASETS).is_empty());
    }

    #[test]
    fn the_new_replicaset_carries_the_hash_in_name_labels_and_selector() {
        let d = deployment(3, "1", "0");
        let hash = hash::template_hash(&d.spec.template, None);
        let template = with_label(&d.spec.template, &hash);
        let labels = template.metadata.and_then(|m| m.labels).expect("labels");
        assert_eq!(labels.get(hash::LABEL), Some(&hash));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert!(hash::equal_ignore_hash(
            &with_label(&d.spec.template, &hash),
            &d.spec.template
        ));
    }

    #[test]
    fn replicasets_name_their_deployment_only_through_an_apps_v1_controller_ref() {
        let mut owned = rs("web-abc", 1, 1, 1);
        assert_eq!(deployment_of(&owned), None);
        owned.metadata.owner_references = controller_ref(&deployment(1, "1", "0")).map(|r| vec![r]);
        assert_eq!(deployment_of(&owned), Some(ObjectKey::new("shop", "web")));
    }

    #[test]
    fn only_stale_reads_and_collisions_skip_backoff() {
        let key = ObjectKey::new("shop", "web");
        assert!(
            !Error::Stale {
                deployment: key.clone()
            }
            .backs_off()
        );
        let collision = Error::Collision {
            deployment: key.clone(),
            name: "web-5d4b8c9f7".into(),
        };
        assert!(!collision.backs_off());
        assert_eq!(
            collision.to_string(),
            "ReplicaSet web-5d4b8c9f7 exists with another template; Deployment shop/web's collisionCount raised"
        );
        assert!(
            Error::WatchEnded {
                resource: "Deployment"
            }
            .backs_off()
        );
    }
}
