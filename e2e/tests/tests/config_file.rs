//! `nodus --config`: a KubeletConfiguration file on a running node, as a user swapping the
//! kubelet would pass it: its fields take effect where the Node shows them, command-line flags
//! still win, `/configz` serves the merged result, and a field nodus does not implement is
//! named in one warning instead of vanishing.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

const WAIT: Duration = Duration::from_secs(60);

const FILE: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
maxPods: 42
# The harness passes --pod-logs-dir: the flag must win over this.
podLogsDir: /nonexistent/the-flag-wins
imageGCHighThresholdPercent: 90
";

async fn pods_capacity(nodes: &Api<Node>, node: &str) -> Result<Option<String>> {
    let node = nodes.get(node).await?;
    Ok(node
        .status
        .and_then(|s| s.capacity)
        .and_then(|c| c.get("pods").map(|q| q.0.clone())))
}

async fn check(cluster: &nodus_e2e::Cluster, path: &str, log_start: u64) -> Result<()> {
    let node = cluster.node_name();
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    nodus_e2e::poll(WAIT, "the Node's pod capacity from maxPods", || async {
        Ok((pods_capacity(&nodes, &node).await?.as_deref() == Some("42")).then_some(()))
    })
    .await?;

    let raw = cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/configz"),
    ])?;
    let configz: serde_json::Value = serde_json::from_str(&raw).context("/configz is JSON")?;
    let config = &configz["kubeletconfig"];
    ensure!(config["maxPods"] == 42, "/configz: {raw}");
    let logs_dir = config["podLogsDir"].as_str().unwrap_or_default();
    ensure!(
        logs_dir.ends_with("/pod-logs"),
        "the flag wins: {logs_dir:?}"
    );

    let log = std::fs::read(cluster.log("nodus"))?;
    let since_restart = String::from_utf8_lossy(&log[log_start as usize..]).into_owned();
    let warnings = since_restart
        .lines()
        .filter(|l| l.contains("KubeletConfiguration.imageGCHighThresholdPercent"))
        .count();
    ensure!(
        warnings == 1,
        "one warning naming the unsupported field, got {warnings} (config {path})"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_kubelet_configuration_file_takes_effect_and_flags_win() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let path = std::env::temp_dir().join("nodus-e2e-kubelet-config.yaml");
    std::fs::write(&path, FILE)?;
    let path = path.to_string_lossy().into_owned();
    let log_start = std::fs::metadata(cluster.log("nodus"))?.len();
    cluster.script_with_nodus_args(&["restart", "nodus"], &format!("--config {path}"))?;
    let result = check(&cluster, &path, log_start).await;
    // Back to the harness's configuration whatever happened, and the default capacity with it.
    let restored = cluster.script(&["restart", "nodus"]);
    let _ = std::fs::remove_file(&path);
    result?;
    restored?;
    let node = cluster.node_name();
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    nodus_e2e::poll(WAIT, "the default pod capacity again", || async {
        Ok((pods_capacity(&nodes, &node).await?.as_deref() == Some("110")).then_some(()))
    })
    .await
}
