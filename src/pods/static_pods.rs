//! Static pods: pods read from manifest files in `staticPodPath` (`--pod-manifest-path`),
//! which the agent runs without the API server, the way kubeadm runs a control plane.
//!
//! Each regular file (names starting with `.` are skipped, as editors' swap files are) holds
//! one Pod in YAML or JSON. As the kubelet does, the pod is named `<name>-<node>`, lands in
//! `default` unless it names a namespace, is bound to this node, tolerates every NoExecute
//! taint, and gets a UID hashed from its content, the node and the file: an edit is a new
//! pod, so the old one stops and the new one starts. The directory is read again on every
//! inotify event and every `fileCheckFrequency` as a safety net.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Marks a pod's source (`file` for static pods), as the kubelet does.
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// The static pod's hash, which is also its UID.
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// When the agent first read the pod.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// On a mirror pod: the hash of the static pod it mirrors.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether the agent read `pod` from a manifest file.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, CONFIG_SOURCE) == Some("file")
}

/// Whether `pod` is a mirror pod: the API's copy of some node's static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, CONFIG_MIRROR).is_some()
}

pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Parses one manifest into the pod the agent runs for this node.
pub fn parse(path: &Path, text: &str, node_name: &str) -> Result<Pod, ManifestError> {
    let invalid = |reason: String| ManifestError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|err| invalid(format!("not YAML or JSON: {err}")))?;
    let kind = value.get("kind").and_then(serde_json::Value::as_str);
    let api = value.get("apiVersion").and_then(serde_json::Value::as_str);
    if (kind, api) != (Some("Pod"), Some("v1")) {
        return Err(invalid(format!(
            "expected a Pod (apiVersion v1), got kind {:?} apiVersion {:?}",
            kind.unwrap_or_default(),
            api.unwrap_or_default()
        )));
    }
    let mut pod: Pod =
        serde_json::from_value(value).map_err(|err| invalid(format!("not a Pod: {err}")))?;
    validate(&pod).map_err(invalid)?;
    // The UID hashes the pod as written (before the agent's own fields), the node and the
    // file, so the same manifest on two nodes or in two files gives two pods.
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    hasher.update(&serde_json::to_vec(&pod).unwrap_or_default());
    hasher.update(format!("host:{node_name}").as_bytes());
    hasher.update(format!("file:{}", path.display()).as_bytes());
    let uid: String = hasher.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        pod.metadata.namespace = Some("default".into());
    }
    pod.metadata.uid = Some(uid.clone());
    pod.metadata.resource_version = None;
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_HASH.into(), uid);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_owned());
    // A static pod stays on its node whatever NoExecute taint the node gets.
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Toleration::default()
        });
    pod.status = None;
    Ok(pod)
}

/// What the API server would refuse and the agent cannot run without.
fn validate(pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    crate::config::labels::validate_dns_subdomain(name)
        .map_err(|reason| format!("metadata.name {name:?}: {reason}"))?;
    let Some(spec) = &pod.spec else {
        return Err("spec is required".into());
    };
    if spec.containers.is_empty() {
        return Err("spec.containers must have at least one container".into());
    }
    let mut names = std::collections::HashSet::new();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        if container.name.is_empty() {
            return Err("every container needs a name".into());
        }
        if !names.insert(container.name.as_str()) {
            return Err(format!("container name {:?} is used twice", container.name));
        }
        if container.image.as_deref().unwrap_or_default().is_empty() {
            return Err(format!("container {:?} has no image", container.name));
        }
    }
    Ok(())
}

/// Reads every manifest in `dir`: the pods, and what could not be used.
pub fn read_dir(dir: &Path, node_name: &str) -> (Vec<Pod>, Vec<ManifestError>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (pods, errors),
        Err(source) => {
            errors.push(ManifestError::Read {
                path: dir.to_owned(),
                source,
            });
            return (pods, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        // Follows symlinks, as kubeadm's manifests may be links.
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse(&path, &text, node_name) {
                Ok(pod) => pods.push(pod),
                Err(err) => errors.push(err),
            },
            Err(source) => errors.push(ManifestError::Read { path, source }),
        }
    }
    (pods, errors)
}

/// Watches `dir` with inotify on a thread of its own (a blocking read: the descriptor is
/// not handed to tokio's reactor, which would take unsafe code). Each batch of events
/// arrives as `true`; `false` (and the end) when the directory itself went away, so that it
/// is watched again once it is back. `None` when `dir` does not exist (yet).
fn watch_dir(dir: &Path) -> Option<mpsc::UnboundedReceiver<bool>> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    inotify.add_watch(dir, flags).ok()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let gone =
        AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED;
    std::thread::Builder::new()
        .name("static-pods".into())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(events) => {
                        let intact = !events.iter().any(|e| e.mask.intersects(gone));
                        // The receiver is gone (its loop ended) or the directory is.
                        if tx.send(intact).is_err() || !intact {
                            return;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        let _ = tx.send(false);
                        return;
                    }
                }
            }
        })
        .ok()?;
    Some(rx)
}

/// Publishes the static pods of `dir` on `pods` (`Some` once the directory was read) until
/// cancelled. Errors in a manifest are logged once per change of that file's content.
pub async fn follow(
    dir: PathBuf,
    node_name: String,
    check_every: Duration,
    pods: watch::Sender<Option<Vec<Pod>>>,
    cancel: CancellationToken,
) {
    info!(path = %dir.display(), "reading static pods");
    // When each pod was first read, so that `config.seen` stays put across reads.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut reported: Vec<String> = Vec::new();
    let mut watch = None;
    loop {
        if watch.is_none() {
            watch = watch_dir(&dir);
        }
        let (mut read, errors) = read_dir(&dir, &node_name);
        let messages: Vec<String> = errors
            .iter()
            .map(|e| crate::node::runtime::error_chain(e))
            .collect();
        for message in messages.iter().filter(|m| !reported.contains(m)) {
            warn!(error = %message, "static pod manifest not used");
        }
        reported = messages;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        seen.retain(|uid, _| read.iter().any(|p| p.metadata.uid.as_ref() == Some(uid)));
        for pod in &mut read {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let at = seen.entry(uid).or_insert_with(|| now.clone()).clone();
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(CONFIG_SEEN.into(), at);
        }
        pods.send_if_modified(|current| {
            let same = current.as_ref().is_some_and(|old| {
                old.len() == read.len()
                    && old
                        .iter()
                        .zip(&read)
                        .all(|(a, b)| a.metadata.uid == b.metadata.uid)
            });
            if !same {
                debug!(count = read.len(), "static pods changed");
                *current = Some(std::mem::take(&mut read));
            }
            !same
        });
        let event = async {
            match &mut watch {
                Some(events) => events.recv().await.unwrap_or(false),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            intact = event => if !intact { watch = None },
            _ = tokio::time::sleep(check_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn a_manifest_becomes_this_nodes_pod() {
        let pod = parse(Path::new("/m/web.yaml"), WEB, "Node-1").expect("parses");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        assert_eq!(annotation(&pod, CONFIG_HASH), Some(uid.as_str()));
        assert!(is_static(&pod));
        assert!(!is_mirror(&pod));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        let toleration = &spec.tolerations.expect("tolerations")[0];
        assert_eq!(toleration.effect.as_deref(), Some("NoExecute"));
        assert_eq!(toleration.operator.as_deref(), Some("Exists"));
    }

    #[test]
    fn the_uid_follows_content_node_and_file_but_not_formatting() {
        let uid = |path: &str, text: &str, node: &str| {
            parse(Path::new(path), text, node)
                .expect("parses")
                .metadata
                .uid
                .expect("uid")
        };
        let base = uid("/m/web.yaml", WEB, "n1");
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},
            "spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        assert_eq!(uid("/m/web.yaml", json, "n1"), base);
        assert_ne!(
            uid("/m/web.yaml", &WEB.replace("busybox", "pause"), "n1"),
            base
        );
        assert_ne!(uid("/m/web.yaml", WEB, "n2"), base);
        assert_ne!(uid("/m/other.yaml", WEB, "n1"), base);
    }

    #[test]
    fn unusable_manifests_say_why() {
        let err = |text: &str| {
            parse(Path::new("/m/x"), text, "n")
                .expect_err("refused")
                .to_string()
        };
        assert!(err("a: [").contains("not YAML"), "{}", err("a: ["));
        assert!(err("apiVersion: v1\nkind: Service\n").contains("expected a Pod"));
        assert!(err(&WEB.replace("  name: web\n", "")).contains("metadata.name"));
        assert!(err(&WEB.replace("    image: busybox\n", "")).contains("no image"));
        assert!(err(&WEB.replace("name: web", "name: Web_1")).contains("metadata.name"));
        let twice = format!("{WEB}  - name: c\n    image: pause\n");
        assert!(err(&twice).contains("used twice"));
    }

    #[test]
    fn a_directory_reads_good_files_and_reports_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), WEB).expect("write");
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod").expect("write");
        std::fs::write(dir.path().join(".web.yaml.swp"), "junk").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let (pods, errors) = read_dir(dir.path(), "n");
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad.yaml"));
        let (pods, errors) = read_dir(&dir.path().join("missing"), "n");
        assert!(pods.is_empty() && errors.is_empty());
    }
}
