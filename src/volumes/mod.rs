//! Volumes: making a pod's volumes exist on the host before its sandbox starts, keeping
//! configMap, secret, downwardAPI and projected volumes current while it runs, turning each
//! container's `volumeMounts` into runtime mounts, and removing it all when the pod goes.
//!
//! ```text
//!   <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>    directory, or tmpfs (medium Memory)
//!                             kubernetes.io~configmap/<name>    atomic writer (..data swap)
//!                             kubernetes.io~downward-api/<name>
//!                             kubernetes.io~secret/<name>       tmpfs + atomic writer
//!                             kubernetes.io~projected/<name>    tmpfs + atomic writer (tokens,
//!                                                               trust bundles, pod certificates)
//!   <root>/pods/<uid>/volume-subpaths/<volume>/<container>/<i>  bind mounts of subPaths
//!   hostPath volumes are used where they are, after their type check
//! ```
//!
//! Invariants: nothing is written outside a volume's directory (item paths and subPaths are
//! checked, and subPaths are resolved by the kernel beneath the volume); a failed set-up never
//! starts the pod and says why in a `FailedMount` event, and is retried; files change only as a
//! whole (see [`atomic`]); teardown unmounts before it removes, and works from the kernel's mount
//! table, so it also cleans up after an agent restart.

pub mod atomic;
pub mod host_path;
pub mod mounts;
pub mod pod_certificate;
pub mod projection;
pub mod subpath;
pub mod token;
pub mod trust_bundle;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret, Volume};
use kube::Client;
use kube::api::Api;
use nodus_cri::api::{Mount, MountPropagation};

use self::atomic::{Files, Ownership};
use self::projection::Objects;
use self::token::Token;
use crate::node::runtime::error_chain;
use crate::pods::env::Downward;
use crate::quantity;

/// What a volume is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `mode`: the directory's permission bits (the alpha `EmptyDirVolumeMode`; default 0777).
    EmptyDir {
        memory: bool,
        size: Option<u64>,
        mode: u32,
    },
    HostPath {
        path: PathBuf,
        check: Option<String>,
    },
    /// Files written by the atomic writer; `tmpfs` for secrets and tokens.
    Files { plugin: &'static str, tmpfs: bool },
}

impl Kind {
    fn of(volume: &Volume) -> Result<Kind, String> {
        if let Some(e) = &volume.empty_dir {
            let size = e
                .size_limit
                .as_ref()
                .map(|q| {
                    quantity::parse(&q.0)
                        .map(|m| (m.0 / 1000).max(0) as u64)
                        .ok_or_else(|| format!("invalid sizeLimit {:?}", q.0))
                })
                .transpose()?;
            let mode = match e.mode {
                None => 0o777,
                Some(m @ 0..=0o1777) => m as u32,
                Some(m) => return Err(format!("invalid emptyDir mode {m:#o}: must be 0 to 01777")),
            };
            return Ok(Kind::EmptyDir {
                memory: e.medium.as_deref() == Some("Memory"),
                size,
                mode,
            });
        }
        if let Some(h) = &volume.host_path {
            return Ok(Kind::HostPath {
                path: PathBuf::from(&h.path),
                check: h.type_.clone(),
            });
        }
        let files = |plugin, tmpfs| Ok(Kind::Files { plugin, tmpfs });
        if volume.config_map.is_some() {
            return files("configmap", false);
        }
        if volume.secret.is_some() {
            return files("secret", true);
        }
        if volume.downward_api.is_some() {
            return files("downward-api", false);
        }
        if volume.projected.is_some() {
            return files("projected", true);
        }
        Err(format!(
            "volume type {} is not supported by nodus",
            unsupported_type(volume)
        ))
    }

    /// Whether containers always get it read-only (upstream's plugins for API data).
    fn read_only(&self) -> bool {
        matches!(self, Kind::Files { .. })
    }
}

/// The name of the volume source a user chose, for the error message.
fn unsupported_type(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
        })
        .map_or_else(|| "(none)".to_owned(), |k| format!("{k:?}"))
}

/// Why a volume could not be set up: the FailedMount event's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct SetUpError {
    pub volume: String,
    pub message: String,
}

/// The pod facts a set-up needs besides the pod.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub downward: Downward,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("downward", &self.downward)
            .finish_non_exhaustive()
    }
}

/// One pod's volumes on this node.
#[derive(Debug)]
pub struct PodVolumes {
    pod_dir: PathBuf,
    tokens: HashMap<(String, String), Token>,
    certificates: pod_certificate::Credentials,
    ready: bool,
}

impl PodVolumes {
    pub fn new(pod_dir: PathBuf) -> Self {
        PodVolumes {
            pod_dir,
            tokens: HashMap::new(),
            certificates: pod_certificate::Credentials::default(),
            ready: false,
        }
    }

    /// Whether every volume has been set up once (containers may start).
    pub fn ready(&self) -> bool {
        self.ready
    }

    fn volume_dir(&self, plugin: &str, name: &str) -> PathBuf {
        self.pod_dir
            .join("volumes")
            .join(format!("kubernetes.io~{plugin}"))
            .join(name)
    }

    /// Where volume `volume` of kind `kind` lives on the host.
    fn host_path(&self, volume: &Volume, kind: &Kind) -> PathBuf {
        match kind {
            Kind::EmptyDir { .. } => self.volume_dir("empty-dir", &volume.name),
            Kind::HostPath { path, .. } => path.clone(),
            Kind::Files { plugin, .. } => self.volume_dir(plugin, &volume.name),
        }
    }

    /// Sets up (or refreshes) every volume of `pod`. Idempotent: what exists is kept, files are
    /// rewritten only when their content changed, and tokens are renewed only when due.
    pub async fn set_up(&mut self, ctx: &Context, pod: &Pod) -> Result<(), SetUpError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let ownership = Ownership {
            fs_group: spec
                .security_context
                .as_ref()
                .and_then(|s| s.fs_group)
                .and_then(|g| u32::try_from(g).ok()),
        };
        let volumes = spec.volumes.clone().unwrap_or_default();
        let mut kinds = Vec::with_capacity(volumes.len());
        for volume in &volumes {
            let kind = Kind::of(volume).map_err(|message| SetUpError {
                volume: volume.name.clone(),
                message,
            })?;
            kinds.push(kind);
        }
        let objects = self.fetch(ctx, pod, &volumes).await?;
        for (volume, kind) in volumes.iter().zip(&kinds) {
            let failed = |message: String| SetUpError {
                volume: volume.name.clone(),
                message,
            };
            let dir = self.host_path(volume, kind);
            match kind {
                Kind::EmptyDir { memory, size, mode } => {
                    empty_dir(&dir, *memory, *size, *mode, ownership).map_err(failed)?
                }
                Kind::HostPath { path, check } => {
                    host_path::check(path, check.as_deref()).map_err(failed)?
                }
                Kind::Files { tmpfs, .. } => {
                    let files = files(volume, pod, &objects, &ctx.downward)
                        .map_err(|e| failed(e.to_string()))?;
                    if *tmpfs {
                        mounts::tmpfs(&dir, None, 0o755).map_err(|e| failed(e.to_string()))?;
                    }
                    atomic::write(&dir, &files, ownership)
                        .map_err(|e| failed(format!("writing files: {e}")))?;
                }
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Fetches the ConfigMaps and Secrets the volumes name and the tokens and trust bundles
    /// they project.
    async fn fetch(
        &mut self,
        ctx: &Context,
        pod: &Pod,
        volumes: &[Volume],
    ) -> Result<Objects, SetUpError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let mut config_maps = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        let mut wanted_tokens = Vec::new();
        let mut wanted_bundles = Vec::new();
        let mut wanted_certificates = Vec::new();
        for volume in volumes {
            if let Some(cm) = &volume.config_map {
                config_maps.insert((cm.name.clone(), volume.name.clone()));
            }
            if let Some(s) = &volume.secret {
                secrets.insert((
                    s.secret_name.clone().unwrap_or_default(),
                    volume.name.clone(),
                ));
            }
            for (index, source) in volume
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .enumerate()
            {
                if let Some(cm) = &source.config_map {
                    config_maps.insert((cm.name.clone(), volume.name.clone()));
                }
                if let Some(s) = &source.secret {
                    secrets.insert((s.name.clone(), volume.name.clone()));
                }
                if let Some(t) = &source.service_account_token {
                    wanted_tokens.push((volume.name.clone(), t.clone()));
                }
                if let Some(b) = &source.cluster_trust_bundle {
                    wanted_bundles.push((volume.name.clone(), b.clone()));
                }
                if let Some(c) = &source.pod_certificate {
                    wanted_certificates.push((volume.name.clone(), index, c.clone()));
                }
            }
        }
        let mut objects = Objects::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        for (name, volume) in config_maps {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => {
                    objects.config_maps.insert(name, cm);
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(SetUpError {
                        volume,
                        message: format!("reading configmap \"{name}\": {}", error_chain(&err)),
                    });
                }
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        for (name, volume) in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(secret)) => {
                    objects.secrets.insert(name, secret);
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(SetUpError {
                        volume,
                        message: format!("reading secret \"{name}\": {}", error_chain(&err)),
                    });
                }
            }
        }
        let now = SystemTime::now();
        let mut kept = HashMap::new();
        for (volume, projection) in wanted_tokens {
            let audience = projection.audience.clone().unwrap_or_default();
            let expiration = projection
                .expiration_seconds
                .unwrap_or(token::DEFAULT_EXPIRATION);
            let key = (volume.clone(), projection.path.clone());
            let token = match self.tokens.remove(&key) {
                Some(t)
                    if !t.due(now)
                        && t.audience == audience
                        && t.expiration_seconds == expiration =>
                {
                    t
                }
                _ => token::request(&ctx.client, pod, &audience, expiration)
                    .await
                    .map_err(|err| SetUpError {
                        volume: volume.clone(),
                        message: format!("failed to fetch token: {}", error_chain(&err)),
                    })?,
            };
            objects
                .tokens
                .insert(projection.path.clone(), token.value.clone());
            kept.insert(key, token);
        }
        self.tokens = kept;
        for (volume, projection) in wanted_bundles {
            let pem = trust_bundle::fetch(&ctx.client, &projection)
                .await
                .map_err(|err| SetUpError {
                    volume,
                    message: err.to_string(),
                })?;
            objects.trust_bundles.insert(projection.path.clone(), pem);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        for (volume, index, projection) in &wanted_certificates {
            let credential = self
                .certificates
                .get(
                    &ctx.client,
                    pod,
                    &ctx.downward.node_name,
                    (volume, *index),
                    projection,
                    now,
                )
                .await
                .map_err(|err| SetUpError {
                    volume: volume.clone(),
                    message: err.to_string(),
                })?;
            objects
                .pod_certificates
                .insert((volume.clone(), *index), credential);
        }
        self.certificates.retain(|volume, index| {
            wanted_certificates
                .iter()
                .any(|(v, i, _)| v == volume && *i == index)
        });
        Ok(objects)
    }

    /// The runtime mounts for `container`'s `volumeMounts`; `env` expands `subPathExpr`.
    /// The error is the container's `CreateContainerConfigError` message.
    pub fn container_mounts(
        &self,
        spec: &PodSpec,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, String> {
        let volumes: HashMap<&str, &Volume> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let mut out = Vec::new();
        for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
            let volume = volumes.get(mount.name.as_str()).ok_or_else(|| {
                format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    mount.name, container.name
                )
            })?;
            let kind = Kind::of(volume)?;
            let mut host_path = self.host_path(volume, &kind);
            let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(expr)) if !expr.is_empty() => Some(expand(expr, env)),
                _ => None,
            };
            if let Some(sub_path) = sub_path {
                let target = self
                    .pod_dir
                    .join("volume-subpaths")
                    .join(&mount.name)
                    .join(&container.name)
                    .join(index.to_string());
                host_path =
                    subpath::prepare(&host_path, &sub_path, &target).map_err(|e| e.to_string())?;
            }
            let propagation = match mount.mount_propagation.as_deref() {
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                _ => MountPropagation::PropagationPrivate,
            };
            out.push(Mount {
                container_path: mount.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: mount.read_only == Some(true) || kind.read_only(),
                propagation: propagation as i32,
                ..Mount::default()
            });
        }
        Ok(out)
    }
}

/// `$(VAR)` references to the container's environment; unknown ones stay as written, as the
/// kubelet's expansion does.
fn expand(expr: &str, env: &[(String, String)]) -> String {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    crate::pods::env::expand(expr, &map)
}

/// An emptyDir: a directory anyone in the pod may write, or a tmpfs of at most `size` bytes.
fn empty_dir(
    dir: &Path,
    memory: bool,
    size: Option<u64>,
    mode: u32,
    ownership: Ownership,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let result = if memory {
        mounts::tmpfs(dir, size, mode)
    } else {
        std::fs::create_dir_all(dir)
    };
    result.map_err(|e| format!("creating emptyDir: {e}"))?;
    // A tmpfs root is sticky (1777) as mounted, and upstream leaves it so.
    let mut mode = if memory { mode | 0o1000 } else { mode };
    // Upstream: fsGroup wins over the mode, making the group own and write the directory.
    if let Some(gid) = ownership.fs_group {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|e| format!("chown emptyDir: {e}"))?;
        mode |= 0o2070;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod emptyDir: {e}"))
}

/// The files of one configMap, secret, downwardAPI or projected volume.
fn files(
    volume: &Volume,
    pod: &Pod,
    objects: &Objects,
    downward: &Downward,
) -> Result<Files, projection::Error> {
    let mut files = Files::new();
    if let Some(cm) = &volume.config_map {
        projection::config_map(
            &mut files,
            objects,
            &cm.name,
            cm.items.as_ref(),
            cm.default_mode,
            cm.optional == Some(true),
        )?;
    } else if let Some(s) = &volume.secret {
        projection::secret(
            &mut files,
            objects,
            s.secret_name.as_deref().unwrap_or_default(),
            s.items.as_ref(),
            s.default_mode,
            s.optional == Some(true),
        )?;
    } else if let Some(d) = &volume.downward_api {
        projection::downward_api(
            &mut files,
            pod,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            downward,
        )?;
    } else if let Some(p) = &volume.projected {
        projection::projected(
            &mut files,
            objects,
            pod,
            &volume.name,
            p.sources.as_deref().unwrap_or_default(),
            p.default_mode,
            downward,
        )?;
    }
    Ok(files)
}

/// Removes everything of the pod's under `pod_dir`: unmounts, then deletes.
pub fn tear_down(pod_dir: &Path) -> std::io::Result<()> {
    mounts::remove_dir(pod_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EmptyDirVolumeSource, HostPathVolumeSource, PersistentVolumeClaimVolumeSource,
    };

    #[test]
    fn kinds_and_clear_refusals() {
        let mut v = Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "64Mi".into(),
                )),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        };
        assert_eq!(
            Kind::of(&v),
            Ok(Kind::EmptyDir {
                memory: true,
                size: Some(64 << 20),
                mode: 0o777,
            })
        );
        v.empty_dir = None;
        v.host_path = Some(HostPathVolumeSource {
            path: "/srv".into(),
            type_: Some("Directory".into()),
        });
        assert!(matches!(Kind::of(&v), Ok(Kind::HostPath { .. })));
        v.host_path = None;
        v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: "c".into(),
            read_only: None,
        });
        assert_eq!(
            Kind::of(&v),
            Err("volume type \"persistentVolumeClaim\" is not supported by nodus".into())
        );
    }

    #[test]
    fn sub_path_expressions_use_the_container_environment() {
        let env = vec![("POD_NAME".to_owned(), "web-0".to_owned())];
        assert_eq!(expand("logs/$(POD_NAME)", &env), "logs/web-0");
    }
}
