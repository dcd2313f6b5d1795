//! The kubelet API's figures as users read them through the stock API server:
//! `/stats/summary` (what metrics-server and `kubectl top` use) with the node's and each
//! pod's usage, and `/metrics` and `/metrics/resource` parsed as Prometheus text.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nodus_e2e::pods::*;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::{Value as Json, json};

const WAIT: Duration = Duration::from_secs(60);

fn raw(cluster: &nodus_e2e::Cluster, node: &str, path: &str) -> Result<String> {
    cluster.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy{path}")])
}

fn parse(text: &str) -> Result<Scrape> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).context("parsing the Prometheus text")
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => 0.0,
    }
}

/// The samples of `metric` whose labels include all of `labels`.
fn samples<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn number(json: &Json, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(json, |j, key| j.get(key))
        .and_then(Json::as_u64)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn the_stats_summary_shows_the_node_and_each_pods_usage() -> Result<()> {
    let (cluster, ns, node) = setup("api-stats").await?;
    // 32 MiB in the shared-memory tmpfs is charged to the container's memory.
    let hog = sh(
        "hog",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null; echo filled; sleep 3600",
    );
    ns.create_pod(&node, pod("hog", "Always", json!([hog])))
        .await?;
    wait_pod(&ns, "hog", WAIT, "hog to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let pod = nodus_e2e::poll(WAIT, "the pod's figures in the summary", || async {
        let summary: Json = serde_json::from_str(&raw(&cluster, &node, "/stats/summary")?)?;
        let pod = summary["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == "hog" && p["podRef"]["namespace"] == ns.name.as_str())
            .cloned();
        let node_stats = &summary["node"];
        ensure!(
            node_stats["nodeName"] == node.as_str(),
            "node name: {node_stats}"
        );
        for path in [
            &["cpu", "usageCoreNanoSeconds"][..],
            &["memory", "workingSetBytes"],
            &["memory", "availableBytes"],
            &["fs", "capacityBytes"],
            &["fs", "availableBytes"],
            &["runtime", "imageFs", "capacityBytes"],
        ] {
            ensure!(
                number(node_stats, path).is_some_and(|v| v > 0),
                "node {path:?} missing in {node_stats}"
            );
        }
        // The container's figures come once the runtime has measured it.
        Ok(pod.filter(|p| number(&p["containers"][0], &["memory", "workingSetBytes"]).is_some()))
    })
    .await?;
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "hog");
    let working_set = number(container, &["memory", "workingSetBytes"]).context("working set")?;
    ensure!(
        working_set >= 32 << 20,
        "the container holds 32 MiB of tmpfs pages, its working set says {working_set}"
    );
    ensure!(
        number(&pod, &["memory", "workingSetBytes"]).is_some_and(|v| v >= working_set),
        "the pod's working set covers its container's: {pod}"
    );
    ensure!(
        number(container, &["cpu", "usageCoreNanoSeconds"]).is_some_and(|v| v > 0),
        "the container's CPU time: {container}"
    );
    ensure!(
        pod["network"]["interfaces"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "eth0")),
        "the pod's own eth0: {}",
        pod["network"]
    );
    ensure!(
        number(container, &["logs", "usedBytes"]).is_some_and(|v| v > 0),
        "the container's log (it printed a line): {container}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn metrics_parse_as_prometheus_text_with_the_kubelets_names() -> Result<()> {
    let (cluster, ns, node) = setup("api-metrics").await?;
    ns.create_pod(
        &node,
        pod("tick", "Always", json!([sh("app", "sleep 3600")])),
    )
    .await?;
    wait_pod(&ns, "tick", WAIT, "the pod to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;

    let metrics = parse(&raw(&cluster, &node, "/metrics")?)?;
    let one = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
        let found = samples(&metrics, name, labels);
        ensure!(
            found.len() == 1,
            "{name} {labels:?}: {} samples",
            found.len()
        );
        Ok(value(found[0]))
    };
    ensure!(one("kubelet_running_pods", &[])? >= 1.0);
    ensure!(
        one(
            "kubelet_running_containers",
            &[("container_state", "running")]
        )? >= 1.0
    );
    ensure!(
        one(
            "kubelet_runtime_operations_total",
            &[("operation_type", "run_podsandbox")]
        )? >= 1.0
    );
    ensure!(
        one(
            "kubelet_runtime_operations_total",
            &[("operation_type", "start_container")]
        )? >= 1.0
    );
    ensure!(
        one("kubelet_pod_start_duration_seconds_count", &[])? >= 1.0,
        "this pod's start was timed"
    );
    ensure!(one("kubelet_node_name", &[("node", &node)])? == 1.0);

    let resource = parse(&raw(&cluster, &node, "/metrics/resource")?)?;
    let labels = [
        ("namespace", ns.name.as_str()),
        ("pod", "tick"),
        ("container", "app"),
    ];
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_start_time_seconds",
    ] {
        let found = samples(&resource, name, &labels);
        ensure!(
            found.len() == 1,
            "{name} for the pod's container: {found:?}"
        );
    }
    ensure!(
        samples(&resource, "node_memory_working_set_bytes", &[])
            .first()
            .is_some_and(|s| value(s) > 0.0),
        "the node's working set"
    );
    ensure!(
        samples(&resource, "resource_scrape_error", &[])
            .first()
            .is_some_and(|s| value(s) == 0.0),
        "no scrape error"
    );
    ns.delete_pods().await
}
