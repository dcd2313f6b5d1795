//! Volume protection: a PersistentVolumeClaim being deleted keeps its
//! `kubernetes.io/pvc-protection` finalizer while a pod uses it, a PersistentVolume its
//! `kubernetes.io/pv-protection` finalizer while it is bound, and a VolumeAttributesClass its
//! `kubernetes.io/vac-protection` finalizer while a claim or volume names it; then the
//! finalizer goes and the API server removes the object. The API server's admission adds the
//! finalizers; without this controller deleted claims, volumes and classes never go.
//! Upstream: `pkg/controller/volume/{pvcprotection,pvprotection,vacprotection}`.
//!
//! Invariants: level-triggered — claims and volumes being deleted are looked at when they or
//! the pods of their namespace change; a claim's finalizer is removed only when neither the
//! pod store nor a live listing of its namespace shows a pod that uses it and has not
//! finished (the store may lag a pod just created); removals are conditional on the
//! resourceVersion read.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::chain;
use super::owner::ObjectKey;
use super::queue::{Backoff, Ending, Queue, Tasks};

pub const CLAIM_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const VOLUME_FINALIZER: &str = "kubernetes.io/pv-protection";
pub const CLASS_FINALIZER: &str = "kubernetes.io/vac-protection";
const WORKERS: usize = 2;
const STALE_RETRY: Duration = Duration::from_secs(1);
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
    #[error("the protection task failed")]
    Task,
    #[error("listing the pods of namespace {namespace}")]
    Pods {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the protection finalizer of {what}")]
    Release {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} changed since it was read")]
    Stale { what: String },
}

/// What is protected: a claim (namespace and name), a volume or a volume attributes class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Protected {
    Claim(ObjectKey),
    Volume(String),
    Class(String),
}

/// Whether a pod that has not finished names the claim among its volumes.
pub fn uses(pod: &Pod, claim: &str) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
                // A generic ephemeral volume's claim is `<pod>-<volume>`.
                || (v.ephemeral.is_some()
                    && format!("{}-{}", pod.name_any(), v.name) == claim)
        })
}

fn held<K: Resource>(object: &K, finalizer: &str) -> bool {
    let meta = object.meta();
    meta.deletion_timestamp.is_some() && meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// Whether a claim or volume names the volume attributes class (upstream's vacprotection
/// reads the spec, the current class and the one a modification is heading for).
pub fn class_in_use(
    class: &str,
    claims: &[&PersistentVolumeClaim],
    volumes: &[&PersistentVolume],
) -> bool {
    let named = |name: Option<&String>| name.is_some_and(|n| n == class);
    claims.iter().any(|c| {
        let status = c.status.as_ref();
        named(
            c.spec
                .as_ref()
                .and_then(|s| s.volume_attributes_class_name.as_ref()),
        ) || named(status.and_then(|s| s.current_volume_attributes_class_name.as_ref()))
            || named(
                status
                    .and_then(|s| s.modify_volume_status.as_ref())
                    .and_then(|m| m.target_volume_attributes_class_name.as_ref()),
            )
    }) || volumes.iter().any(|v| {
        named(
            v.spec
                .as_ref()
                .and_then(|s| s.volume_attributes_class_name.as_ref()),
        )
    })
}

/// A volume is in use while bound to a claim.
pub fn volume_in_use(volume: &PersistentVolume) -> bool {
    volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// Which of the three upstream controllers run: claims
/// (`persistentvolumeclaim-protection-controller`), volumes
/// (`persistentvolume-protection-controller`) and classes
/// (`volumeattributesclass-protection-controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub claims: bool,
    pub volumes: bool,
    pub classes: bool,
}

pub async fn run(client: Client, config: Config, cancel: CancellationToken) {
    info!(?config, "volume protection controller starting");
    match run_until(client, config, cancel).await {
        Ok(()) => info!("volume protection controller stopped"),
        Err(err) => error!(error = %chain(&err), "the volume protection controller stopped"),
    }
}

struct Controller {
    client: Client,
    config: Config,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<VolumeAttributesClass>,
    pods: Store<Pod>,
    listed: [bool; 4],
    queue: Queue<Protected>,
    tasks: Tasks<Protected, Result<(), Error>>,
}

async fn run_until(client: Client, config: Config, cancel: CancellationToken) -> Result<(), Error> {
    let (claims, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let (volumes, volume_writer) = reflector::store::<PersistentVolume>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (classes, class_writer) = reflector::store::<VolumeAttributesClass>();
    let class_events = watcher(
        Api::<VolumeAttributesClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(class_writer);
    let claim_events = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(claim_writer);
    let volume_events = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(volume_writer);
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer);
    let mut claim_events = pin!(claim_events);
    let mut volume_events = pin!(volume_events);
    let mut pod_events = pin!(pod_events);
    let mut class_events = pin!(class_events);
    let mut c = Controller {
        client,
        config,
        claims,
        volumes,
        classes,
        pods,
        listed: [false; 4],
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
            event = claim_events.next() => match event {
                Some(Ok(event)) => c.on_claim(event),
                Some(Err(err)) => warn!(error = %chain(&err), "PersistentVolumeClaim watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "PersistentVolumeClaim" }),
            },
            event = volume_events.next() => match event {
                Some(Ok(event)) => c.on_volume(event),
                Some(Err(err)) => warn!(error = %chain(&err), "PersistentVolume watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "PersistentVolume" }),
            },
            event = class_events.next() => match event {
                Some(Ok(event)) => c.on_class(event),
                Some(Err(err)) => warn!(error = %chain(&err), "VolumeAttributesClass watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "VolumeAttributesClass" }),
            },
            event = pod_events.next() => match event {
                Some(Ok(event)) => c.on_pod(event),
                Some(Err(err)) => warn!(error = %chain(&err), "pod watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded { resource: "pod" }),
            },
            Some((key, done)) = c.tasks.next(), if !c.tasks.is_empty() => c.finish(key, done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    c.tasks.drain("volume protection writes").await;
    result
}

impl Controller {
    fn mark_all(&mut self) {
        for claim in self.claims.state() {
            if self.config.claims && held(claim.as_ref(), CLAIM_FINALIZER) {
                self.queue
                    .add(Protected::Claim(ObjectKey::of(claim.as_ref())));
            }
        }
        for volume in self.volumes.state() {
            if self.config.volumes && held(volume.as_ref(), VOLUME_FINALIZER) {
                self.queue.add(Protected::Volume(volume.name_any()));
            }
        }
        self.mark_classes();
    }

    fn mark_classes(&mut self) {
        for class in self.classes.state() {
            if self.config.classes && held(class.as_ref(), CLASS_FINALIZER) {
                self.queue.add(Protected::Class(class.name_any()));
            }
        }
    }

    fn on_class(&mut self, event: Event<VolumeAttributesClass>) {
        match event {
            Event::Apply(class) if self.config.classes && held(&class, CLASS_FINALIZER) => {
                self.queue.add(Protected::Class(class.name_any()));
            }
            Event::InitDone => self.listed(3),
            _ => {}
        }
    }

    fn listed(&mut self, which: usize) {
        self.listed[which] = true;
        self.mark_all();
    }

    fn on_claim(&mut self, event: Event<PersistentVolumeClaim>) {
        match event {
            Event::Apply(claim) | Event::Delete(claim) => {
                if self.config.claims && held(&claim, CLAIM_FINALIZER) {
                    self.queue.add(Protected::Claim(ObjectKey::of(&claim)));
                }
                // A claim that goes or changes class may free a class.
                self.mark_classes();
            }
            Event::InitDone => self.listed(0),
            _ => {}
        }
    }

    fn on_volume(&mut self, event: Event<PersistentVolume>) {
        match event {
            Event::Apply(volume) | Event::Delete(volume) => {
                if self.config.volumes && held(&volume, VOLUME_FINALIZER) {
                    self.queue.add(Protected::Volume(volume.name_any()));
                }
                self.mark_classes();
            }
            Event::InitDone => self.listed(1),
            _ => {}
        }
    }

    /// A pod that goes or finishes may free the claims it used.
    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) | Event::Delete(pod) if self.config.claims => {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let waiting: Vec<Protected> = self
                    .claims
                    .state()
                    .iter()
                    .filter(|c| c.metadata.namespace.as_deref() == Some(namespace.as_str()))
                    .filter(|c| held(c.as_ref(), CLAIM_FINALIZER))
                    .map(|c| Protected::Claim(ObjectKey::of(c.as_ref())))
                    .collect();
                for key in waiting {
                    self.queue.add(key);
                }
            }
            Event::InitDone => self.listed(2),
            _ => {}
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let client = self.client.clone();
        match &key {
            Protected::Claim(claim_key) => {
                let Some(claim) = self
                    .claims
                    .get(&ObjectRef::new(&claim_key.name).within(&claim_key.namespace))
                    .filter(|c| held(c.as_ref(), CLAIM_FINALIZER))
                else {
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                };
                let in_use = self.pods.state().iter().any(|p| {
                    p.metadata.namespace.as_deref() == Some(claim_key.namespace.as_str())
                        && uses(p, &claim_key.name)
                });
                if in_use {
                    debug!(claim = %claim_key, "still used by a pod");
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                }
                self.tasks.spawn(
                    key.clone(),
                    async move { release_claim(&client, &claim).await },
                );
            }
            Protected::Volume(name) => {
                let Some(volume) = self
                    .volumes
                    .get(&ObjectRef::new(name))
                    .filter(|v| held(v.as_ref(), VOLUME_FINALIZER))
                else {
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                };
                if volume_in_use(&volume) {
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                }
                self.tasks.spawn(key.clone(), async move {
                    let api: Api<PersistentVolume> = Api::all(client);
                    release(&api, volume.as_ref(), VOLUME_FINALIZER).await
                });
            }
            Protected::Class(name) => {
                let Some(class) = self
                    .classes
                    .get(&ObjectRef::new(name))
                    .filter(|c| held(c.as_ref(), CLASS_FINALIZER))
                else {
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                };
                let claims = self.claims.state();
                let volumes = self.volumes.state();
                let claims: Vec<&PersistentVolumeClaim> =
                    claims.iter().map(AsRef::as_ref).collect();
                let volumes: Vec<&PersistentVolume> = volumes.iter().map(AsRef::as_ref).collect();
                if class_in_use(name, &claims, &volumes) {
                    self.queue.settle(key, Ending::Done { recheck: None }, now);
                    return;
                }
                self.tasks.spawn(key.clone(), async move {
                    let api: Api<VolumeAttributesClass> = Api::all(client);
                    release(&api, class.as_ref(), CLASS_FINALIZER).await
                });
            }
        }
    }

    fn finish(&mut self, key: Protected, done: Result<Result<(), Error>, tokio::task::JoinError>) {
        let now = Instant::now();
        let result = match done {
            Ok(result) => result,
            Err(err) => {
                warn!(?key, error = %err, "a volume protection task failed");
                Err(Error::Task)
            }
        };
        let ending = match &result {
            Ok(()) => Ending::Done { recheck: None },
            Err(Error::Stale { .. }) => Ending::Stale { retry: STALE_RETRY },
            Err(_) => Ending::Failed,
        };
        if let Some(delay) = self.queue.settle(key.clone(), ending, now)
            && let Err(err) = &result
        {
            warn!(?key, error = %chain(err), retry_in = ?delay, "releasing a protected volume failed");
        }
    }
}

/// Releases a claim once a live listing confirms that no pod uses it.
async fn release_claim(client: &Client, claim: &PersistentVolumeClaim) -> Result<(), Error> {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Pods {
            namespace: namespace.clone(),
            source,
        })?;
    if listed.items.iter().any(|p| uses(p, &claim.name_any())) {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    release(&api, claim, CLAIM_FINALIZER).await
}

/// Removes `finalizer`, conditional on the resourceVersion read.
async fn release<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} {}", K::kind(&()), object.name_any());
    let kept: Vec<&String> = object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({ "metadata": {
        "finalizers": kept,
        "resourceVersion": object.meta().resource_version,
    }});
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            info!(object = %what, "released: nothing uses it any more");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(kube::Error::Api(s)) if s.is_conflict() => Err(Error::Stale { what }),
        Err(source) => Err(Error::Release { what, source }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimVolumeSource, PersistentVolumeStatus, PodSpec, PodStatus, Volume,
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(phase: &str, claim: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Volume::default()
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn only_unfinished_pods_naming_the_claim_hold_it() {
        assert!(uses(&pod("Running", "data"), "data"));
        assert!(uses(&pod("Pending", "data"), "data"));
        assert!(!uses(&pod("Succeeded", "data"), "data"));
        assert!(!uses(&pod("Running", "other"), "data"));
        let bound = PersistentVolume {
            status: Some(PersistentVolumeStatus {
                phase: Some("Bound".into()),
                ..PersistentVolumeStatus::default()
            }),
            ..PersistentVolume::default()
        };
        assert!(volume_in_use(&bound));
        assert!(!volume_in_use(&PersistentVolume::default()));

        let mut claim = PersistentVolumeClaim::default();
        claim
            .spec
            .get_or_insert_with(Default::default)
            .volume_attributes_class_name = Some("fast".into());
        assert!(class_in_use("fast", &[&claim], &[]));
        assert!(!class_in_use("slow", &[&claim], &[]));
    }
}
