//! StatefulSet controller: every StatefulSet keeps pods `<set>-0` … `<set>-(n-1)` with stable
//! names, hostnames under its headless Service and claims from its volume claim templates;
//! creates them in order and removes them in reverse (or all at once with Parallel), replaces
//! failed ones, rolls a new template out from the highest ordinal down to the partition, and
//! records each template as a ControllerRevision. Upstream: `pkg/controller/statefulset`.
//!
//! Invariants: level-triggered — events only name StatefulSets, and each sync decides from
//! the set, its revisions and its pods in the stores ([`plan`], pure); a pod belongs to a set
//! by controller reference and by name (`<set>-<ordinal>`), and orphans matching both the
//! selector and the name are adopted; a pod is made once its claims exist; writes are
//! conditional (uid preconditions on deletes, the resourceVersion read on status), and a
//! create of a pod or claim that already exists is no error, so a sync repeated from a stale
//! store does no harm; nothing syncs before the three watches have listed once.
//!
//! ```text
//!  StatefulSet watch ─┐                          ┌─ revisions: find or record the template
//!  Pod watch ─────────┼─► queue of StatefulSets ─┤  claim pods, plan (ordinals, partition)
//!  Revision watch ────┘                          └─ create / delete / relabel, status
//! ```
//!
//! Not done: `persistentVolumeClaimRetentionPolicy.whenScaled: Delete` (claims of condemned
//! pods are kept), `maxUnavailable` (pods roll one at a time).

pub mod plan;

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::plan::{Action, POD_INDEX_LABEL, POD_NAME_LABEL, Revisions, Why};
use super::history;
use super::owner::{ObjectKey, claim_all, controlled_by, controller_of, selector, selects};
use super::queue::{Backoff, Ending, Queue, Tasks};
use super::replicaset::api_message;
use super::{chain, namespace_terminating};

/// The name events are reported under, as upstream's controller.
pub const REPORTER: &str = "statefulset-controller";
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
    #[error("claiming pods for StatefulSet {set}")]
    Claim {
        set: ObjectKey,
        #[source]
        source: super::owner::ClaimError,
    },
    #[error("recording the revisions of StatefulSet {set}")]
    History {
        set: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("revision {name} of StatefulSet {set} collides with another template")]
    Collision { set: ObjectKey, name: String },
    #[error("StatefulSet {set}: {what}")]
    Write {
        set: ObjectKey,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("StatefulSet {set} changed since it was read")]
    Stale { set: ObjectKey },
}

/// Runs the controller until cancelled; a watch that ends stops it, logged here.
pub async fn run(client: Client, cancel: CancellationToken) {
    info!("StatefulSet controller starting");
    match run_until(client, cancel).await {
        Ok(()) => info!("StatefulSet controller stopped"),
        Err(err) => error!(error = %chain(&err), "the StatefulSet controller stopped"),
    }
}

/// The StatefulSet controlling the object, if its controller is one.
fn set_of(meta: &kube::api::ObjectMeta) -> Option<ObjectKey> {
    let reference = controller_of(meta)?;
    (reference.kind == "StatefulSet" && reference.api_version == "apps/v1").then(|| {
        ObjectKey::new(
            meta.namespace.as_deref().unwrap_or_default(),
            &reference.name,
        )
    })
}

type Finished = Result<Option<Duration>, Error>;

struct Controller {
    client: Client,
    recorder: Recorder,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    listed: [bool; 3],
    queue: Queue<ObjectKey>,
    tasks: Tasks<ObjectKey, Finished>,
}

async fn run_until(client: Client, cancel: CancellationToken) -> Result<(), Error> {
    let (sets, set_writer) = reflector::store::<StatefulSet>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (revisions, revision_writer) = reflector::store::<ControllerRevision>();
    let set_events = watcher(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(set_writer);
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer);
    let revision_events = watcher(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(revision_writer);
    let mut set_events = pin!(set_events);
    let mut pod_events = pin!(pod_events);
    let mut revision_events = pin!(revision_events);
    let mut c = Controller {
        recorder: Recorder::new(client.clone(), Reporter::from(REPORTER)),
        client,
        sets,
        pods,
        revisions,
        listed: [false; 3],
        queue: Queue::new(BACKOFF),
        tasks: Tasks::default(),
    };
    let result = loop {
        let now = Instant::now();
        let synced = c.listed.iter().all(|l| *l);
        let ready = synced && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if synced { c.queue.next_wakeup() } else { None };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = set_events.next() => match event {
                Some(Ok(event)) => c.on_set(event),
                Some(Err(err)) => warn!(error = %chain(&err), "StatefulSet watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "StatefulSet" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            event = revision_events.next() => match event {
                Some(Ok(event)) => c.on_revision(event),
                Some(Err(err)) => warn!(error = %chain(&err), "ControllerRevision watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "ControllerRevision" }),
            },
            Some((key, done)) = c.tasks.next(), if !c.tasks.is_empty() => c.finish(key, done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    c.tasks.drain("StatefulSet syncs").await;
    result
}

impl Controller {
    fn mark_all(&mut self) {
        for set in self.sets.state() {
            self.queue.add(ObjectKey::of(set.as_ref()));
        }
    }

    fn listed(&mut self, which: usize) {
        self.listed[which] = true;
        self.mark_all();
    }

    fn on_set(&mut self, event: Event<StatefulSet>) {
        match event {
            Event::Apply(set) | Event::InitApply(set) => self.queue.add(ObjectKey::of(&set)),
            Event::Delete(set) => self.queue.remove(&ObjectKey::of(&set)),
            Event::Init => {}
            Event::InitDone => self.listed(0),
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::Delete(pod) => match set_of(&pod.metadata) {
                Some(key) => self.queue.add(key),
                // An orphan: the sets that might adopt it.
                None => {
                    let namespace = pod.metadata.namespace.as_deref();
                    let keys: Vec<ObjectKey> = self
                        .sets
                        .state()
                        .iter()
                        .filter(|s| s.metadata.namespace.as_deref() == namespace)
                        .filter(|s| plan::ordinal(s, &pod).is_some())
                        .map(|s| ObjectKey::of(s.as_ref()))
                        .collect();
                    for key in keys {
                        self.queue.add(key);
                    }
                }
            },
            Event::Init | Event::InitApply(_) => {}
            Event::InitDone => self.listed(1),
        }
    }

    fn on_revision(&mut self, event: Event<ControllerRevision>) {
        match event {
            Event::Apply(r) | Event::Delete(r) => {
                if let Some(key) = set_of(&r.metadata) {
                    self.queue.add(key);
                }
            }
            Event::Init | Event::InitApply(_) => {}
            Event::InitDone => self.listed(2),
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(set) = self
            .sets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.queue.done(&key);
            self.queue.forget(&key);
            return;
        };
        let uid = set.metadata.uid.as_deref();
        let here = |ns: Option<&String>| ns.map(String::as_str) == Some(key.namespace.as_str());
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| here(p.metadata.namespace.as_ref()))
            .filter(|p| plan::ordinal(&set, p).is_some() || controlled_by(&p.metadata, uid))
            .collect();
        let revisions: Vec<Arc<ControllerRevision>> = self
            .revisions
            .state()
            .into_iter()
            .filter(|r| here(r.metadata.namespace.as_ref()))
            .filter(|r| controlled_by(&r.metadata, uid))
            .collect();
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        self.tasks.spawn(key.clone(), async move {
            let sync = Sync {
                client: &client,
                recorder: &recorder,
                key,
                set: &set,
            };
            sync.run(&pods, &revisions).await
        });
    }

    fn finish(&mut self, key: ObjectKey, done: Result<Finished, tokio::task::JoinError>) {
        let now = Instant::now();
        let result = match done {
            Ok(result) => result,
            Err(err) => {
                warn!(statefulset = %key, error = %err, "a StatefulSet sync task failed");
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
            warn!(statefulset = %key, error = %chain(err), retry_in = ?delay, "syncing StatefulSet failed");
        }
    }
}

/// Whether a status says the same, counting an absent number as zero as the API does.
fn same_status(before: Option<&StatefulSetStatus>, after: &StatefulSetStatus) -> bool {
    let norm = |s: &StatefulSetStatus| {
        let z = |v: Option<i32>| Some(v.unwrap_or(0));
        StatefulSetStatus {
            ready_replicas: z(s.ready_replicas),
            available_replicas: z(s.available_replicas),
            current_replicas: z(s.current_replicas),
            updated_replicas: z(s.updated_replicas),
            ..s.clone()
        }
    };
    norm(&before.cloned().unwrap_or_default()) == norm(after)
}

/// One sync of one StatefulSet.
struct Sync<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    key: ObjectKey,
    set: &'a StatefulSet,
}

impl Sync<'_> {
    fn write_error(&self, what: String) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::Write {
            set: self.key.clone(),
            what,
            source,
        }
    }

    async fn note(&self, type_: EventType, reason: &str, note: String) {
        let note = Note {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(err) = self
            .recorder
            .publish(&note, &self.set.object_ref(&()))
            .await
        {
            debug!(statefulset = %self.key, error = %chain(&err), "recording an event failed");
        }
    }

    async fn run(
        &self,
        pods: &[Arc<Pod>],
        revisions: &[Arc<ControllerRevision>],
    ) -> Result<Option<Duration>, Error> {
        let set = self.set;
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.key.namespace);
        let sets_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.key.namespace);
        let chosen: Selector = match selector(&set.spec.selector) {
            Ok(s) if !s.selects_all() => s,
            _ => {
                let note = "invalid selector: it must select some pods".to_owned();
                self.note(EventType::Warning, "InvalidSelector", note).await;
                return Ok(None);
            }
        };
        // Only pods named after the set may be claimed (upstream's isMemberOf).
        let candidates: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| plan::ordinal(set, p).is_some())
            .cloned()
            .collect();
        let claimed = if set.metadata.deletion_timestamp.is_some() {
            candidates
                .into_iter()
                .filter(|p| controlled_by(&p.metadata, set.metadata.uid.as_deref()))
                .collect()
        } else {
            claim_all(&pods_api, &sets_api, set, &chosen, candidates)
                .await
                .map_err(|source| Error::Claim {
                    set: self.key.clone(),
                    source,
                })?
        };
        let claimed: Vec<&Pod> = claimed
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| selects(&chosen, p.metadata.labels.as_ref()))
            .collect();

        let (current, update) = self.revisions(revisions).await?;
        let current_template =
            history::recorded_template(&current).unwrap_or_else(|| set.spec.template.clone());
        let update_template: PodTemplateSpec = set.spec.template.clone();
        let (current_name, update_name) = (current.name_any(), update.name_any());
        let names = Revisions {
            current: &current_name,
            current_template: &current_template,
            update: &update_name,
            update_template: &update_template,
        };
        let now = Timestamp::now();
        let planned = plan::plan(set, &claimed, &names, now);
        for action in planned.actions {
            self.act(&pods_api, action).await?;
        }
        if !same_status(set.status.as_ref(), &planned.status) {
            let mut updated = set.clone();
            updated.status = Some(planned.status);
            match sets_api
                .replace_status(&self.key.name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                    return Err(Error::Stale {
                        set: self.key.clone(),
                    });
                }
                Err(source) => return Err(self.write_error("writing its status".into())(source)),
            }
        }
        self.clean_history(revisions, &claimed, &current_name, &update_name)
            .await?;
        Ok(planned.recheck_at.map(|at| {
            Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
                + Duration::from_secs(1)
        }))
    }

    /// Upstream's `getStatefulSetRevisions`: the current revision (the status names it) and
    /// the update revision (the one recording the template, made, or renumbered on a
    /// rollback).
    async fn revisions(
        &self,
        owned: &[Arc<ControllerRevision>],
    ) -> Result<(ControllerRevision, ControllerRevision), Error> {
        let set = self.set;
        let api: Api<ControllerRevision> =
            Api::namespaced(self.client.clone(), &self.key.namespace);
        let history_error = |source| Error::History {
            set: self.key.clone(),
            source,
        };
        let refs: Vec<&ControllerRevision> = owned.iter().map(AsRef::as_ref).collect();
        let (matching, _) = history::split(set, &refs);
        let next = refs.iter().map(|r| history::number(r)).max().unwrap_or(0) + 1;
        let latest = refs
            .iter()
            .max_by_key(|r| history::number(r))
            .map(|r| r.name_any());
        let update = match history::keep(&matching) {
            // The latest revision already records the template.
            Some(kept) if Some(kept.name_any()) == latest => kept.clone(),
            // An older one does: a rollback renumbers it.
            Some(kept) => {
                let patch = json!({ "revision": next });
                api.patch(
                    &kept.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(history_error)?
            }
            None => {
                let made = history::snapshot(set, next).ok_or_else(|| Error::Stale {
                    set: self.key.clone(),
                })?;
                match api.create(&PostParams::default(), &made).await {
                    Ok(made) => made,
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {
                        let existing = api.get(&made.name_any()).await.map_err(history_error)?;
                        if !history::matches(set, &existing) {
                            self.collide(&made.name_any()).await?;
                        }
                        existing
                    }
                    Err(source) => return Err(history_error(source)),
                }
            }
        };
        let named = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref());
        let current = refs
            .iter()
            .find(|r| r.metadata.name.as_deref() == named && named.is_some())
            .map(|r| (*r).clone())
            .unwrap_or_else(|| update.clone());
        Ok((current, update))
    }

    /// A revision name taken by another template: collisionCount goes up, so that the next
    /// sync hashes elsewhere.
    async fn collide(&self, name: &str) -> Result<(), Error> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.key.namespace);
        let mut bumped = self.set.clone();
        let status = bumped.status.get_or_insert_with(Default::default);
        status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
        warn!(statefulset = %self.key, revision = %name, "hash collision; raising collisionCount");
        match api
            .replace_status(&self.key.name, &PostParams::default(), &bumped)
            .await
        {
            Ok(_) => Err(Error::Collision {
                set: self.key.clone(),
                name: name.to_owned(),
            }),
            Err(kube::Error::Api(s)) if s.is_conflict() => Err(Error::Stale {
                set: self.key.clone(),
            }),
            Err(source) => Err(self.write_error("raising collisionCount".into())(source)),
        }
    }

    async fn act(&self, pods: &Api<Pod>, action: Action) -> Result<(), Error> {
        let set_name = self.key.name.clone();
        match action {
            Action::Create { ordinal, pod } => {
                let claims: Api<PersistentVolumeClaim> =
                    Api::namespaced(self.client.clone(), &self.key.namespace);
                for claim in plan::claims(self.set, ordinal) {
                    let name = claim.name_any();
                    match claims.create(&PostParams::default(), &claim).await {
                        Ok(_) => {
                            let note = format!(
                                "create Claim {name} Pod {} in StatefulSet {set_name} success",
                                pod.name_any()
                            );
                            self.note(EventType::Normal, "SuccessfulCreate", note).await;
                        }
                        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                        Err(source) => {
                            let note = format!(
                                "create Claim {name} for Pod {} in StatefulSet {set_name} failed error: {}",
                                pod.name_any(),
                                api_message(&source)
                            );
                            self.note(EventType::Warning, "FailedCreate", note).await;
                            return Err(self.write_error(format!("creating claim {name}"))(source));
                        }
                    }
                }
                let name = pod.name_any();
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        let note =
                            format!("create Pod {name} in StatefulSet {set_name} successful");
                        self.note(EventType::Normal, "SuccessfulCreate", note).await;
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                    Err(err) if namespace_terminating(&err) => Ok(()),
                    Err(source) => {
                        let note = format!(
                            "create Pod {name} in StatefulSet {set_name} failed error: {}",
                            api_message(&source)
                        );
                        self.note(EventType::Warning, "FailedCreate", note).await;
                        Err(self.write_error(format!("creating pod {name}"))(source))
                    }
                }
            }
            Action::Delete { name, uid, why } => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods.delete(&name, &params).await {
                    Ok(_) => {
                        if why == Why::Failed {
                            debug!(statefulset = %self.key, pod = %name, "recreating a finished pod");
                        }
                        let note =
                            format!("delete Pod {name} in StatefulSet {set_name} successful");
                        self.note(EventType::Normal, "SuccessfulDelete", note).await;
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
                    Err(source) => {
                        let note = format!(
                            "delete Pod {name} in StatefulSet {set_name} failed error: {}",
                            api_message(&source)
                        );
                        self.note(EventType::Warning, "FailedDelete", note).await;
                        Err(self.write_error(format!("deleting pod {name}"))(source))
                    }
                }
            }
            Action::Relabel { name } => {
                let ordinal = name.rsplit('-').next().unwrap_or_default().to_owned();
                let patch = json!({ "metadata": { "labels": {
                    POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal,
                }}});
                match pods
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(source) => Err(self.write_error(format!("relabelling pod {name}"))(source)),
                }
            }
        }
    }

    /// Old revisions beyond `revisionHistoryLimit` go, except the live ones: the current
    /// and update revisions and any a pod carries.
    async fn clean_history(
        &self,
        revisions: &[Arc<ControllerRevision>],
        pods: &[&Pod],
        current: &str,
        update: &str,
    ) -> Result<(), Error> {
        let mut live: HashSet<&str> = [current, update].into();
        live.extend(pods.iter().filter_map(|p| plan::revision_of(p)));
        let old: Vec<&ControllerRevision> = revisions
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        let live_hashes: HashSet<String> = revisions
            .iter()
            .filter(|r| live.contains(r.metadata.name.as_deref().unwrap_or_default()))
            .filter_map(|r| history::hash_of(r).map(str::to_owned))
            .collect();
        let api: Api<ControllerRevision> =
            Api::namespaced(self.client.clone(), &self.key.namespace);
        for name in history::to_clean(self.set, &old, &live_hashes) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => {
                    return Err(Error::History {
                        set: self.key.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}
