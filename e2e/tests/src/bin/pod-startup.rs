//! Node agent benchmark against the local cluster (run by `e2e/bench`, once on a cluster
//! whose agent is nodus and once on one running the stock kubelet and kube-proxy): prints
//! one JSON line per figure (see `measure::record`), asserts nothing.
//!
//! 1. Pod start: N pods (image present) created at once: create call's return → the watch
//!    event showing Running, and → Ready (p50, p99); then all deleted at once: delete
//!    call's return → the watch event of the object's removal (p50, p99).
//! 2. Footprint: the agent processes' resident memory (mean of one sample a second) and CPU
//!    use over a window, idle with no pods and with the largest N running.
//! 3. Container exit → terminated state in the API: each container exits at a wall-clock
//!    second agreed in advance.
//!
//! `pod-startup --agent nodus|stock [--pods N]... [--window SECONDS] [--exits N]`; defaults
//! `--pods 30 --pods 100 --window 60 --exits 5`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::watcher::{self, Event};
use nodus_e2e::measure::{cpu_time, percentile, record, rss_kib};
use nodus_e2e::{Cluster, TestNamespace};
use serde_json::json;

const BENCH: &str = "node agent";

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    created: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
    deleted: Option<Instant>,
    gone: Option<Instant>,
}

struct Options {
    agent: String,
    pods: Vec<usize>,
    window: Duration,
    exits: usize,
}

fn options() -> Result<Options> {
    let mut options = Options {
        agent: String::new(),
        pods: Vec::new(),
        window: Duration::from_secs(60),
        exits: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--agent" => options.agent = value()?,
            "--pods" => options.pods.push(value()?.parse()?),
            "--window" => options.window = Duration::from_secs(value()?.parse()?),
            "--exits" => options.exits = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if options.pods.is_empty() {
        options.pods = vec![30, 100];
    }
    match options.agent.as_str() {
        "nodus" | "stock" => Ok(options),
        _ => bail!("--agent nodus|stock is required"),
    }
}

/// The processes that make up the node agent.
fn agent_pids(cluster: &Cluster, agent: &str) -> Result<Vec<i32>> {
    let components: &[&str] = if agent == "stock" {
        &["kubelet", "kube-proxy"]
    } else {
        &["nodus"]
    };
    components.iter().map(|c| cluster.pid(c)).collect()
}

fn total_cpu(pids: &[i32]) -> Result<Duration> {
    pids.iter().map(|&p| cpu_time(p)).sum()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"] }],
        },
    })
}

fn observe(event: Event<Pod>, times: &mut HashMap<String, Times>) {
    let now = Instant::now();
    match event {
        Event::Apply(pod) => {
            let entry = times
                .entry(pod.metadata.name.clone().unwrap_or_default())
                .or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Running") && entry.running.is_none() {
                entry.running = Some(now);
            }
            if is_ready(&pod) && entry.ready.is_none() {
                entry.ready = Some(now);
            }
        }
        Event::Delete(pod) => {
            let entry = times
                .entry(pod.metadata.name.clone().unwrap_or_default())
                .or_default();
            entry.gone.get_or_insert(now);
        }
        _ => {}
    }
}

fn latencies(
    times: &HashMap<String, Times>,
    pick: fn(&Times) -> Option<(Instant, Instant)>,
) -> Vec<Duration> {
    let mut v: Vec<Duration> = times
        .values()
        .filter_map(|t| {
            let (from, to) = pick(t)?;
            Some(to.saturating_duration_since(from))
        })
        .collect();
    v.sort();
    v
}

fn record_ms(agent: &str, scenario: &str, metric: &str, sorted: &[Duration]) {
    for p in [50.0, 99.0] {
        let value = percentile(sorted, p).as_secs_f64() * 1000.0;
        record(
            BENCH,
            agent,
            scenario,
            &format!("{metric} p{p:.0}"),
            value,
            "ms",
        );
    }
}

/// Creates `count` pods at once, waits until all are Ready, samples the footprint if asked,
/// then deletes them at once and waits until they are gone.
async fn pod_start(
    cluster: &Cluster,
    options: &Options,
    count: usize,
    footprint: bool,
) -> Result<()> {
    let ns = TestNamespace::create(cluster.admin().await?, "bench").await?;
    let node = cluster.node_name();
    let pods = ns.pods();
    let mut times: HashMap<String, Times> = HashMap::new();
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.try_next().await? {
        if matches!(event, Event::InitDone) {
            break;
        }
    }
    let names: Vec<String> = (0..count).map(|i| format!("p{i:03}")).collect();
    let started = Instant::now();
    let deadline = Duration::from_secs(600);
    let creates = futures::future::try_join_all(names.iter().map(|n| {
        let ns = &ns;
        let node = node.clone();
        async move {
            ns.create_pod(&node, pod(n, &node)).await?;
            anyhow::Ok((n.clone(), Instant::now()))
        }
    }));
    // Watch while creating, so no transition is missed.
    let mut creates = std::pin::pin!(creates);
    let created = loop {
        tokio::select! {
            done = &mut creates => break done?,
            event = events.try_next() => observe(event?.context("watch ended")?, &mut times),
        }
    };
    for (n, at) in created {
        times.entry(n).or_default().created = Some(at);
    }
    while times.values().filter(|t| t.ready.is_some()).count() < count {
        if started.elapsed() > deadline {
            bail!("not all {count} pods became Ready within {deadline:?}");
        }
        let event = tokio::time::timeout(Duration::from_secs(120), events.try_next())
            .await??
            .context("watch ended")?;
        observe(event, &mut times);
    }
    let scenario = format!("{count} pods at once");
    record_ms(
        &options.agent,
        &scenario,
        "create → Running",
        &latencies(&times, |t| Some((t.created?, t.running?))),
    );
    record_ms(
        &options.agent,
        &scenario,
        "create → Ready",
        &latencies(&times, |t| Some((t.created?, t.ready?))),
    );
    if footprint {
        sample_footprint(cluster, options, &format!("{count} pods running")).await?;
    }

    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let deleted = Instant::now();
    for t in times.values_mut() {
        t.deleted = Some(deleted);
    }
    let started = Instant::now();
    while times.values().filter(|t| t.gone.is_some()).count() < count {
        if started.elapsed() > deadline {
            bail!("not all {count} pods were gone within {deadline:?}");
        }
        let event = tokio::time::timeout(Duration::from_secs(120), events.try_next())
            .await??
            .context("watch ended")?;
        observe(event, &mut times);
    }
    record_ms(
        &options.agent,
        &scenario,
        "delete → gone",
        &latencies(&times, |t| Some((t.deleted?, t.gone?))),
    );
    Ok(())
}

/// The agent's mean resident memory (one sample a second) and CPU use over the window.
async fn sample_footprint(cluster: &Cluster, options: &Options, scenario: &str) -> Result<()> {
    let pids = agent_pids(cluster, &options.agent)?;
    let cpu_before = total_cpu(&pids)?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < options.window {
        tick.tick().await;
        let rss: u64 = pids.iter().map(|&p| rss_kib(p)).sum::<Result<u64>>()?;
        samples.push(rss);
    }
    let cpu = total_cpu(&pids)? - cpu_before;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    record(
        BENCH,
        &options.agent,
        scenario,
        "agent RSS",
        mean / 1024.0,
        "MiB",
    );
    let share = cpu.as_secs_f64() / started.elapsed().as_secs_f64() * 100.0;
    record(
        BENCH,
        &options.agent,
        scenario,
        "agent CPU",
        share,
        "% of a core",
    );
    Ok(())
}

/// How long a container's exit takes to show in the API.
async fn exit_latency(cluster: &Cluster, options: &Options) -> Result<()> {
    let ns = TestNamespace::create(cluster.admin().await?, "bench-exit").await?;
    let node = cluster.node_name();
    let pods = ns.pods();
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.try_next().await? {
        if matches!(event, Event::InitDone) {
            break;
        }
    }
    let mut latencies = Vec::new();
    for i in 0..options.exits {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let exit_at = now.as_secs() + 4;
        let script = format!("while [ $(date +%s) -lt {exit_at} ]; do usleep 5000; done");
        let name = format!("exit{i:02}");
        let spec = json!({
            "metadata": { "name": name },
            "spec": {
                "nodeName": node, "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script] }],
            },
        });
        ns.create_pod(&node, spec).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.try_next())
                .await??
                .context("watch ended")?;
            let Event::Apply(pod) = event else { continue };
            let terminated = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first()?.state.as_ref()?.terminated.as_ref())
                .is_some();
            if terminated && pod.metadata.name.as_deref() == Some(&name) {
                let seen = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                latencies.push(seen.saturating_sub(Duration::from_secs(exit_at)));
                break;
            }
        }
    }
    ns.delete_pods().await?;
    latencies.sort();
    record_ms(&options.agent, "container exit", "exit → API", &latencies);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    let cluster = Cluster::from_env()?;
    sample_footprint(&cluster, &options, "idle, no pods").await?;
    let largest = options.pods.iter().copied().max().unwrap_or_default();
    for &count in &options.pods {
        pod_start(&cluster, &options, count, count == largest).await?;
    }
    exit_latency(&cluster, &options).await
}
