//! Scheduler throughput benchmark against the local cluster (run by `e2e/bench`): prints
//! figures, asserts nothing.
//!
//! Fake Node objects (no agent behind them, Ready, with Leases so the node lifecycle
//! controller leaves them be) and pending pods with their own `schedulerName`, placed by a
//! scheduler-only nodus-control started here (`--controllers= --leader-elect=false`), so
//! the cluster's own controllers keep running and nothing else binds the pods. Figures:
//! pods bound per second over the run, per-pod latency from the create call's return to
//! the watch event that shows `nodeName` (p50, p99), and the scheduler's CPU time and peak
//! RSS. Everything made is removed afterwards (pods force-deleted: no agent confirms).
//!
//! `sched-bench [--nodes N] [--pods M]`; defaults 1000 and 5000.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use nodus_e2e::measure::{cpu_time, peak_rss_kib, percentile};
use nodus_e2e::{Cluster, TestNamespace, fake, poll};
use serde_json::json;

const SCHEDULER: &str = "bench-scheduler";
/// Creates in flight at once.
const CONCURRENCY: usize = 32;

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a number"))?
            .parse()
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

fn node_name(i: usize) -> String {
    format!("bench-node-{i:04}")
}

async fn make_nodes(client: &kube::Client, count: usize) -> Result<()> {
    stream::iter(0..count)
        .map(|i| async move {
            let name = node_name(i);
            let zone = format!("zone-{}", i % 3);
            // A pod CIDR outside the cluster's keeps node IPAM from spending its blocks.
            let cidr = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
            fake::create(
                client,
                &name,
                &[("topology.kubernetes.io/zone", &zone)],
                &cidr,
            )
            .await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // The cluster's nodus-control lifts the not-ready taint the API server put on them.
    let nodes: Api<Node> = Api::all(client.clone());
    poll(
        Duration::from_secs(120),
        "the fake nodes to be schedulable",
        || async {
            let list = nodes
                .list(&ListParams::default().labels(fake::LABEL))
                .await?;
            let tainted = list
                .items
                .iter()
                .filter(|n| {
                    n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| !t.is_empty())
                })
                .count();
            Ok((list.items.len() == count && tainted == 0).then_some(()))
        },
    )
    .await
}

fn start_scheduler(cluster: &Cluster) -> Result<Child> {
    let binary = std::env::var("NODUS_E2E_CONTROL_BIN").context("NODUS_E2E_CONTROL_BIN")?;
    Command::new(binary)
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args([
            "--controllers=",
            "--leader-elect=false",
            "--scheduler-name",
            SCHEDULER,
        ])
        .args(["--healthz-bind-address", "127.0.0.1:10259", "-v", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the bench scheduler")
}

fn pod(i: usize) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": format!("p-{i:05}") },
        "spec": {
            "schedulerName": SCHEDULER,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox:1.36",
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } } }],
        },
    }))?)
}

struct Run {
    pods: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    cpu: Duration,
    peak_rss_kib: u64,
}

async fn measure(ns: &TestNamespace, scheduler: u32, count: usize) -> Result<Run> {
    let pods = ns.pods();
    let pid = i32::try_from(scheduler)?;
    let cpu_before = cpu_time(pid)?;
    let watch = watcher::watcher(pods.clone(), watcher::Config::default());
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watching = tokio::spawn(async move {
        let mut watch = std::pin::pin!(watch);
        while let Some(event) = watch.next().await {
            if let Ok(Event::Apply(pod) | Event::InitApply(pod)) = event
                && pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
            {
                let _ = bound_tx.send((pod.metadata.name.unwrap_or_default(), Instant::now()));
            }
        }
    });
    let started = Instant::now();
    let created: HashMap<String, Instant> = stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod = pod(i)?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok((name, Instant::now()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut bound: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound.len() < count {
        let Ok(Some((name, at))) = tokio::time::timeout_at(deadline.into(), bound_rx.recv()).await
        else {
            bail!(
                "only {} of {count} pods were bound within 10 minutes",
                bound.len()
            );
        };
        bound.entry(name).or_insert(at);
    }
    let wall = bound
        .values()
        .max()
        .map_or(Duration::ZERO, |last| *last - started);
    watching.abort();
    let mut latencies: Vec<Duration> = created
        .iter()
        .filter_map(|(name, at)| Some(bound.get(name)?.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    Ok(Run {
        pods: count,
        wall,
        latencies,
        cpu: cpu_time(pid)? - cpu_before,
        peak_rss_kib: peak_rss_kib(pid)?,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let nodes = arg("--nodes", 1000)?;
    let count = arg("--pods", 5000)?;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    fake::remove_all(&client).await?;
    let made = Instant::now();
    make_nodes(&client, nodes).await?;
    eprintln!(
        "{nodes} fake nodes ready in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let ns = TestNamespace::create(client.clone(), "sched-bench").await?;
    let mut scheduler = start_scheduler(&cluster)?;
    // The scheduler is up once it serves its health endpoint.
    poll(
        Duration::from_secs(30),
        "the bench scheduler to start",
        || async {
            let up = Command::new("curl")
                .args(["-sf", "--max-time", "1", "http://127.0.0.1:10259/healthz"])
                .stdout(Stdio::null())
                .status()?
                .success();
            Ok(up.then_some(()))
        },
    )
    .await?;
    let outcome = measure(&ns, scheduler.id(), count).await;
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    // No agent confirms these pods' deletion: force it, then drop the nodes.
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    ns.pods()
        .delete_collection(&force, &ListParams::default())
        .await?;
    fake::remove_all(&client).await?;
    let run = outcome?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| scheduler | nodes | pods | pods/s | latency p50 | latency p99 | wall | CPU | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| nodus-control | {nodes} | {} | {:.0} | {} | {} | {:.1} s | {:.1} s | {} MiB |",
        run.pods,
        run.pods as f64 / run.wall.as_secs_f64(),
        ms(percentile(&run.latencies, 50.0)),
        ms(percentile(&run.latencies, 99.0)),
        run.wall.as_secs_f64(),
        run.cpu.as_secs_f64(),
        run.peak_rss_kib / 1024
    );
    Ok(())
}
