//! Static pods: a manifest dropped into the node's manifest directory runs and shows up as
//! a mirror pod; deleting the mirror pod brings it back without touching the pod; editing
//! the manifest replaces the pod; removing it removes both. And, as kubeadm needs for a
//! control plane's own pods, a static pod starts while there is no API server at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, LogParams};
use nodus_e2e::pods::{IMAGE, container, phase};
use nodus_e2e::{Cluster, TestNamespace, poll};

const START: Duration = Duration::from_secs(60);

fn manifest(name: &str, namespace: &str, version: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {IMAGE}
    command: [sh, -c, 'echo version $VERSION; exec sleep 3600']
    env:
    - name: VERSION
      value: \"{version}\"
"
    )
}

/// Writes a manifest the way an editor or kubeadm does: to a hidden file, then renamed in.
fn put(path: &Path, text: &str) -> Result<()> {
    let hidden = path.with_file_name(format!(
        ".{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&hidden, text)?;
    std::fs::rename(&hidden, path)?;
    Ok(())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The running container's ID, once the mirror pod shows the static pod running and ready.
fn running_id(pod: &Pod) -> Option<String> {
    let main = container(pod, "main")?;
    (phase(pod) == "Running" && main.ready && main.state.as_ref()?.running.is_some())
        .then(|| main.container_id.clone())
        .flatten()
}

/// The IDs of the runtime's running containers of the pod named `pod_name`.
fn runtime_containers(pod_name: &str) -> Result<Vec<String>> {
    let endpoint = std::env::var("NODUS_CRI_ENDPOINT")?;
    let out = std::process::Command::new("crictl")
        .args([
            "--runtime-endpoint",
            &endpoint,
            "ps",
            "-q",
            "--state",
            "Running",
        ])
        .args(["--label", &format!("io.kubernetes.pod.name={pod_name}")])
        .output()?;
    ensure!(
        out.status.success(),
        "crictl ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Removes the test's manifests however the test ends.
struct Manifests(Vec<PathBuf>);

impl Drop for Manifests {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_manifest_runs_as_a_static_pod_with_a_mirror_in_the_api() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "static").await?;
    let node_name = cluster.node_name();
    let node = Api::<Node>::all(client.clone()).get(&node_name).await?;
    let dir = cluster.manifests_dir();
    let path = dir.join("web.yaml");
    let broken = dir.join("broken.yaml");
    let _cleanup = Manifests(vec![path.clone(), broken.clone()]);
    // A bad manifest beside the good one stops nothing.
    put(&broken, "apiVersion: v1\nkind: Pod\nspec: [")?;
    put(&path, &manifest("web", &ns.name, "1"))?;

    let mirror_name = format!("web-{node_name}");
    let pods = ns.pods();
    let get = || async { anyhow::Ok(pods.get_opt(&mirror_name).await?) };
    let first = poll(
        START,
        "the mirror pod to show the static pod running",
        || async { Ok(get().await?.filter(|p| running_id(p).is_some())) },
    )
    .await?;
    let hash = annotation(&first, "kubernetes.io/config.hash").context("config.hash")?;
    ensure!(
        annotation(&first, "kubernetes.io/config.mirror") == Some(hash),
        "the mirror carries the static pod's hash: {:?}",
        first.metadata.annotations
    );
    ensure!(annotation(&first, "kubernetes.io/config.source") == Some("file"));
    let owner = &first.metadata.owner_references.as_ref().context("owner")?[0];
    ensure!(
        owner.kind == "Node" && Some(&owner.uid) == node.metadata.uid.as_ref(),
        "the mirror is owned by the node: {owner:?}"
    );
    let logs = pods
        .logs(&mirror_name, &LogParams::default())
        .await
        .context("kubectl logs of a static pod")?;
    ensure!(logs.contains("version 1"), "logs: {logs:?}");
    let first_id = running_id(&first).context("running")?;

    // Deleting the mirror pod makes a new mirror; the pod itself keeps running.
    pods.delete(&mirror_name, &DeleteParams::default()).await?;
    let old_uid = first.metadata.uid.clone();
    let again = poll(START, "a new mirror pod", || async {
        Ok(get()
            .await?
            .filter(|p| p.metadata.uid != old_uid && running_id(p).is_some()))
    })
    .await?;
    ensure!(
        running_id(&again).as_deref() == Some(first_id.as_str()),
        "deleting the mirror restarted the static pod"
    );

    // An edit is a new pod: the old containers stop and the new ones start.
    put(&path, &manifest("web", &ns.name, "2"))?;
    let edited = poll(START, "the edited static pod to run", || async {
        Ok(get().await?.filter(|p| {
            annotation(p, "kubernetes.io/config.mirror").is_some_and(|h| h != hash)
                && running_id(p).is_some()
        }))
    })
    .await?;
    let edited_id = running_id(&edited).context("running")?;
    ensure!(
        edited_id != first_id,
        "the edit did not replace the container"
    );
    let logs = pods.logs(&mirror_name, &LogParams::default()).await?;
    ensure!(logs.contains("version 2"), "logs after the edit: {logs:?}");
    let runtime_id = |id: &str| id.rsplit("://").next().unwrap_or(id).to_owned();
    poll(START, "only the edited pod's container to run", || async {
        let running = runtime_containers(&mirror_name)?;
        Ok((running.len() == 1 && runtime_id(&edited_id).starts_with(&running[0])).then_some(()))
    })
    .await?;

    // Removing the manifest removes the pod and its mirror.
    std::fs::remove_file(&path)?;
    poll(START, "the mirror pod to go", || async {
        Ok(get().await?.is_none().then_some(()))
    })
    .await?;
    poll(START, "the static pod's containers to stop", || async {
        Ok(runtime_containers(&mirror_name)?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_static_pod_starts_without_an_api_server() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "static-alone").await?;
    let node_name = cluster.node_name();
    let path = cluster.manifests_dir().join("alone.yaml");
    let _cleanup = Manifests(vec![path.clone()]);
    let mirror_name = format!("alone-{node_name}");

    // As on a kubeadm control-plane node before its API server runs: the agent starts with
    // no API server to talk to and finds the manifest. (nodus-control goes first: like
    // kube-scheduler, it exits when it cannot renew its leader lease.)
    cluster.script(&["stop", "nodus-control"])?;
    cluster.script(&["stop", "kube-apiserver"])?;
    let outcome = async {
        cluster.script(&["restart", "nodus"])?;
        put(&path, &manifest("alone", &ns.name, "1"))?;
        poll(
            START,
            "the static pod to run with no API server",
            || async { Ok((!runtime_containers(&mirror_name)?.is_empty()).then_some(())) },
        )
        .await
    }
    .await;
    cluster.script(&["start", "kube-apiserver"])?;
    cluster.script(&["start", "nodus-control"])?;
    outcome?;

    let pods = ns.pods();
    poll(
        Duration::from_secs(90),
        "the mirror pod once the API server is back",
        || async {
            Ok(pods
                .get_opt(&mirror_name)
                .await?
                .filter(|p| running_id(p).is_some()))
        },
    )
    .await?;
    std::fs::remove_file(&path)?;
    poll(START, "the mirror pod to go", || async {
        Ok(pods.get_opt(&mirror_name).await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}
