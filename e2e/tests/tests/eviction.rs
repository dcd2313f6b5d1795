//! Eviction as the kubelet does it: a pod whose emptyDir outgrows its `sizeLimit` fails with
//! reason `Evicted`, and under node memory pressure the BestEffort pod goes before a
//! Guaranteed one within its requests.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use nodus_e2e::pods::*;
use nodus_e2e::{Cluster, TestNamespace};
use serde_json::json;

/// Eviction rounds come every 10 s; a kill and a status write follow.
const EVICTED: Duration = Duration::from_secs(60);

fn eviction(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    (status.phase.as_deref() == Some("Failed") && status.reason.as_deref() == Some("Evicted"))
        .then(|| status.message.clone().unwrap_or_default())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_empty_dir_over_its_size_limit_gets_the_pod_evicted() -> Result<()> {
    let (_cluster, ns, node) = setup("evict-emptydir").await?;
    let mut spec = pod(
        "filler",
        "Never",
        json!([sh(
            "app",
            "dd if=/dev/zero of=/data/blob bs=1M count=12 && sleep 3600"
        )]),
    );
    spec["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/data" }]);
    spec["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": { "sizeLimit": "4Mi" } }]);
    ns.create_pod(&node, spec).await?;
    let message = wait_pod(&ns, "filler", EVICTED, "filler to be evicted", eviction).await?;
    assert_eq!(
        message,
        "Usage of EmptyDir volume \"data\" exceeds the limit \"4Mi\". "
    );
    wait_event(&ns, "filler", "Evicted", |m| m.contains("EmptyDir volume")).await?;
    // Its containers are stopped, and it stays for its owner to see.
    let pod = wait_pod(&ns, "filler", EVICTED, "the container to stop", |p| {
        container(p, "app")?.state.as_ref()?.terminated.as_ref()?;
        Some(p.clone())
    })
    .await?;
    ensure!(eviction(&pod).is_some(), "still evicted");
    ns.delete_pods().await
}

/// Free memory on the node, in KiB, as the eviction signal counts it.
fn available_kib() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("MemAvailable in /proc/meminfo")
}

async fn memory_pressure_order(cluster: &Cluster, ns: &TestNamespace, node: &str) -> Result<()> {
    let sleeper = |name: &str, resources: serde_json::Value| {
        let mut c = sh(name, "sleep 3600");
        c["resources"] = resources;
        pod(name, "Never", json!([c]))
    };
    ns.create_pod(node, sleeper("best-effort", json!({})))
        .await?;
    let guaranteed = json!({
        "requests": { "cpu": "10m", "memory": "64Mi" },
        "limits": { "cpu": "10m", "memory": "64Mi" },
    });
    ns.create_pod(node, sleeper("guaranteed", guaranteed))
        .await?;
    for name in ["best-effort", "guaranteed"] {
        wait_pod(ns, name, Duration::from_secs(60), "the pod to run", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await?;
    }
    // A threshold a little above what the node has: nodus sees memory pressure at once, while
    // allocatable (capacity less the threshold) still holds the Guaranteed pod when the
    // restarted agent admits the running pods again.
    let threshold = available_kib()? + (256 << 10);
    cluster.script_with_nodus_args(
        &["restart", "nodus"],
        &format!("--eviction-hard=memory.available<{threshold}Ki"),
    )?;
    let message = wait_pod(
        ns,
        "best-effort",
        EVICTED,
        "the BestEffort pod to be evicted",
        eviction,
    )
    .await?;
    ensure!(
        message.starts_with("The node was low on resource: memory."),
        "{message}"
    );
    let guaranteed = ns.pods().get("guaranteed").await?;
    ensure!(
        phase(&guaranteed) == "Running",
        "the Guaranteed pod went with or before the BestEffort one: {:?}",
        guaranteed
            .status
            .as_ref()
            .map(|s| (&s.phase, &s.reason, &s.message))
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn memory_pressure_evicts_best_effort_before_guaranteed() -> Result<()> {
    let (cluster, ns, node) = setup("evict-memory").await?;
    let result = memory_pressure_order(&cluster, &ns, &node).await;
    // Back to the harness's configuration whatever happened.
    let restored = cluster.script(&["restart", "nodus"]);
    result?;
    restored?;
    ns.delete_pods().await
}
