//! Pod start-up benchmark against the local cluster (run by `e2e/bench`): prints figures,
//! asserts nothing.
//!
//! (a) pods created one after another, each waited for: creation → Running and → Ready;
//! (b) pods created at once: time until all run, and per-pod latency;
//! (c) container exit → terminated state in the API: each container exits at a wall-clock
//!     second agreed in advance, and the watch tells when the API shows it.
//! For both, the agent's CPU time and peak RSS over the scenario. Times are taken by this
//! client: from the create call's return to the watch event that shows the state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use nodus_e2e::measure::{cpu_time, peak_rss_kib, percentile};
use nodus_e2e::{Cluster, TestNamespace};
use serde_json::json;

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    created: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
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

struct Scenario {
    name: &'static str,
    times: HashMap<String, Times>,
    wall: Duration,
    cpu: Duration,
    peak_rss_kib: u64,
}

async fn run(
    cluster: &Cluster,
    name: &'static str,
    count: usize,
    at_once: bool,
) -> Result<Scenario> {
    let ns = TestNamespace::create(cluster.admin().await?, "bench").await?;
    let node = cluster.node_name();
    let pid = cluster.pid("nodus")?;
    // Resets the peak RSS counter so VmHWM covers this scenario alone.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    let cpu_before = cpu_time(pid)?;

    let pods = ns.pods();
    let mut times: HashMap<String, Times> = HashMap::new();
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    // Wait for the watch to be established before creating anything.
    while let Some(event) = events.try_next().await? {
        if matches!(event, Event::InitDone) {
            break;
        }
    }
    let names: Vec<String> = (0..count).map(|i| format!("p{i:03}")).collect();
    let started = Instant::now();
    let observe = |event: Event<Pod>, times: &mut HashMap<String, Times>| {
        if let Event::Apply(pod) = event {
            let now = Instant::now();
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
    };
    let deadline = Duration::from_secs(300);
    if at_once {
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
                bail!("not all pods became Ready within {deadline:?}");
            }
            let event = tokio::time::timeout(Duration::from_secs(60), events.try_next())
                .await??
                .context("watch ended")?;
            observe(event, &mut times);
        }
    } else {
        for n in &names {
            ns.create_pod(&node, pod(n, &node)).await?;
            times.entry(n.clone()).or_default().created = Some(Instant::now());
            while times.get(n).is_none_or(|t| t.ready.is_none()) {
                if started.elapsed() > deadline {
                    bail!("{n} did not become Ready");
                }
                let event = tokio::time::timeout(Duration::from_secs(60), events.try_next())
                    .await??
                    .context("watch ended")?;
                observe(event, &mut times);
            }
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_time(pid)? - cpu_before;
    let peak_rss_kib = peak_rss_kib(pid)?;
    ns.delete_pods().await?;
    Ok(Scenario {
        name,
        times,
        wall,
        cpu,
        peak_rss_kib,
    })
}

/// The slowest pods to Running, for a look at outliers.
fn slowest(s: &Scenario) -> String {
    let mut by_pod: Vec<(Duration, &str)> = s
        .times
        .iter()
        .filter_map(|(name, t)| {
            Some((
                t.running?.saturating_duration_since(t.created?),
                name.as_str(),
            ))
        })
        .collect();
    by_pod.sort();
    by_pod
        .iter()
        .rev()
        .take(3)
        .map(|(d, name)| format!("{name} {:.0} ms", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(s: &Scenario) {
    let latencies = |pick: fn(&Times) -> Option<Instant>| {
        let mut v: Vec<Duration> = s
            .times
            .values()
            .filter_map(|t| Some(pick(t)?.saturating_duration_since(t.created?)))
            .collect();
        v.sort();
        v
    };
    let running = latencies(|t| t.running);
    let ready = latencies(|t| t.ready);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
        s.name,
        s.times.len(),
        ms(percentile(&running, 50.0)),
        ms(percentile(&running, 99.0)),
        ms(percentile(&ready, 50.0)),
        ms(percentile(&ready, 99.0)),
        ms(s.wall),
        ms(s.cpu),
        s.peak_rss_kib as f64 / 1024.0
    );
}

/// Scenario (c): how long a container's exit takes to show in the API.
async fn exit_latency(cluster: &Cluster, count: usize) -> Result<Vec<Duration>> {
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
    for i in 0..count {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let exit_at = now.as_secs() + 4;
        let script = format!("while [ $(date +%s) -lt {exit_at} ]; do usleep 5000; done");
        let spec = json!({
            "metadata": { "name": format!("exit{i:02}") },
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
            if terminated && pod.metadata.name.as_deref() == Some(&format!("exit{i:02}")) {
                let seen = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                latencies.push(seen.saturating_sub(Duration::from_secs(exit_at)));
                break;
            }
        }
    }
    ns.delete_pods().await?;
    latencies.sort();
    Ok(latencies)
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let cluster = Cluster::from_env()?;
    let (sequential, parallel) = if quick { (10, 20) } else { (30, 50) };
    println!(
        "| scenario | pods | → Running p50 | → Running p99 | → Ready p50 | → Ready p99 | wall | agent CPU | agent peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let a = run(&cluster, "(a) one after another", sequential, false).await?;
    report(&a);
    let b = run(&cluster, "(b) all at once", parallel, true).await?;
    report(&b);
    eprintln!(
        "slowest to Running: (a) {}; (b) {}",
        slowest(&a),
        slowest(&b)
    );
    let exits = exit_latency(&cluster, if quick { 3 } else { 10 }).await?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!("| scenario | pods | exit → API p50 | exit → API p99 |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| (c) container exit seen in the API | {} | {} | {} |",
        exits.len(),
        ms(percentile(&exits, 50.0)),
        ms(percentile(&exits, 99.0))
    );
    Ok(())
}
