//! Scheduler throughput benchmark against the local cluster (run by `e2e/bench`): prints
//! figures, asserts nothing.
//!
//! Fake Node objects (no agent behind them, Ready, with Leases so the node lifecycle
//! controller leaves them be) and pending pods with their own `schedulerName`, placed by a
//! second scheduler started here (nodus-control with `--controllers= --leader-elect=false`,
//! or kube-scheduler), so the cluster's own controllers keep running and nothing else binds
//! the pods. Figures:
//! pods bound per second over the run, per-pod latency from the create call's return to
//! the watch event that shows `nodeName` (p50, p99), and the scheduler's CPU time and peak
//! RSS. Everything made is removed afterwards (pods force-deleted: no agent confirms).
//!
//! `sched-bench [--nodes N] [--pods M] [--scheduler nodus|stock]`; defaults 1000, 5000 and
//! nodus (nodus-control); `stock` is kube-scheduler (found on PATH) with a
//! KubeSchedulerConfiguration naming the same scheduler. Prints one JSON line per figure
//! (`measure::record`), so that `e2e/bench` can alternate runs of both into one table.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use nodus_e2e::measure::{cpu_time, peak_rss_kib, percentile, record};
use nodus_e2e::{Cluster, TestNamespace, fake, poll};
use serde_json::json;

const SCHEDULER: &str = "bench-scheduler";
const BENCH: &str = "scheduler";
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

/// Which scheduler places the pods.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheduler {
    Nodus,
    Stock,
}

impl Scheduler {
    fn label(self) -> &'static str {
        match self {
            Scheduler::Nodus => "nodus-control",
            Scheduler::Stock => "kube-scheduler",
        }
    }
}

/// Starts the scheduler with its defaults (client QPS and all) but for what a second
/// scheduler beside the cluster's needs: its own name, no leader election, no controllers.
fn start_scheduler(cluster: &Cluster, which: Scheduler, dir: &std::path::Path) -> Result<Child> {
    let mut command = match which {
        Scheduler::Nodus => {
            let binary = std::env::var("NODUS_E2E_CONTROL_BIN").context("NODUS_E2E_CONTROL_BIN")?;
            let mut command = Command::new(binary);
            command
                .arg("--kubeconfig")
                .arg(cluster.admin_kubeconfig())
                .args([
                    "--controllers=",
                    "--leader-elect=false",
                    "--scheduler-name",
                    SCHEDULER,
                    "--healthz-bind-address",
                    "127.0.0.1:10259",
                    "-v",
                    "1",
                ]);
            command
        }
        Scheduler::Stock => {
            let config = dir.join("kube-scheduler.yaml");
            std::fs::write(
                &config,
                format!(
                    "apiVersion: kubescheduler.config.k8s.io/v1\n\
                     kind: KubeSchedulerConfiguration\n\
                     clientConnection:\n  kubeconfig: {}\n\
                     leaderElection:\n  leaderElect: false\n\
                     profiles:\n- schedulerName: {SCHEDULER}\n",
                    cluster.admin_kubeconfig().display()
                ),
            )?;
            let mut command = Command::new("kube-scheduler");
            command.arg("--config").arg(&config).args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "10259",
                "--cert-dir",
            ]);
            command.arg(dir).args(["-v", "1"]);
            command
        }
    };
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", which.label()))
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
    let args: Vec<String> = std::env::args().collect();
    let which = match args.iter().position(|a| a == "--scheduler") {
        None => Scheduler::Nodus,
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("nodus") => Scheduler::Nodus,
            Some("stock") => Scheduler::Stock,
            _ => bail!("--scheduler takes nodus or stock"),
        },
    };
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
    let dir = std::env::temp_dir().join(format!("nodus-sched-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut scheduler = start_scheduler(&cluster, which, &dir)?;
    // The scheduler is up once it serves its health endpoint (kube-scheduler's is HTTPS,
    // with a certificate it made itself).
    poll(
        Duration::from_secs(60),
        "the bench scheduler to start",
        || async {
            let url = match which {
                Scheduler::Nodus => "http://127.0.0.1:10259/healthz",
                Scheduler::Stock => "https://127.0.0.1:10259/healthz",
            };
            let up = Command::new("curl")
                .args(["-skf", "--max-time", "1", url])
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
    let _ = std::fs::remove_dir_all(&dir);
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
    let scenario = format!("{nodes} nodes, {} pods", run.pods);
    let subject = which.label();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rate = run.pods as f64 / run.wall.as_secs_f64();
    record(BENCH, subject, &scenario, "throughput", rate, "pods/s");
    record(
        BENCH,
        subject,
        &scenario,
        "latency p50",
        ms(percentile(&run.latencies, 50.0)),
        "ms",
    );
    record(
        BENCH,
        subject,
        &scenario,
        "latency p99",
        ms(percentile(&run.latencies, 99.0)),
        "ms",
    );
    record(BENCH, subject, &scenario, "CPU", run.cpu.as_secs_f64(), "s");
    record(
        BENCH,
        subject,
        &scenario,
        "peak RSS",
        run.peak_rss_kib as f64 / 1024.0,
        "MiB",
    );
    Ok(())
}
