//! Service proxy benchmark against the local cluster (run by `e2e/bench` on a fresh cluster
//! per proxy: nodus, the stock kube-proxy in nftables mode, and in iptables mode as a second
//! reference): prints one JSON line per figure (`measure::record`), asserts nothing.
//!
//! Services without selectors, each with an EndpointSlice of two (unreachable) endpoints,
//! so that only the proxy works: no pods, the same API objects for every proxy. For each
//! size (total Services):
//!
//! 1. Cold sync: the proxy is stopped, its rules removed, and started again; from the
//!    process's start (its `/proc` start time) until every Service's ClusterIP is in the
//!    kernel's dispatch (the `service-ips` map of nodus's and kube-proxy's nftables tables,
//!    the `KUBE-SERVICES` chain in iptables mode), polled.
//! 2. Endpoint change: one endpoint of one Service replaced by a new address, N times over
//!    different Services: from the API call's return until `nft monitor` shows a rule or
//!    element with the new address (iptables-nft rules show there too). Changes are spaced
//!    past both proxies' default `--min-sync-period` (1 s), so each figure is the time to
//!    program a change, not the rate limit (p50, p99).
//! 3. Data plane: TCP connect latency through a ClusterIP whose endpoint is a listener of
//!    this process on the node's address (p50, p99 of sequential connects), before the
//!    first size (10 Services) and at each size.
//!
//! `proxy-bench --proxy nodus|nftables|iptables [--services N]... [--changes N]
//! [--connects N]`; defaults `--services 1000 --services 10000 --changes 100 --connects 2000`.
//! Needs `NODUS_E2E_DIR` and `NODUS_E2E_NODE_IP`, and kube-proxy on PATH for the stock ones.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use nodus_e2e::measure::{cpu_time, percentile, record, stat_fields};
use nodus_e2e::{Cluster, poll};
use serde_json::json;

const BENCH: &str = "service proxy";
const NAMESPACE: &str = "proxy-bench";
/// Creates in flight at once.
const CONCURRENCY: usize = 32;
/// Past the default --min-sync-period of nodus and kube-proxy (1 s).
const CHANGE_SPACING: Duration = Duration::from_millis(1200);
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// Long past a full resync at 10k Services here (kube-proxy's takes about 15 s); a change
/// slower than this is counted as lost and ends its series.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// For `nft monitor` to start reporting (it reads the ruleset first).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `nft monitor` must use no CPU to count as done reading the ruleset.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// The table whose addition shows that `nft monitor` listens (empty, deleted at once).
const PROBE_TABLE: &str = "proxy_bench_probe";
/// The longest pause between two polls of the dispatch. A poll that waited out a proxy's
/// long transaction must not delay the next by as long (that overstated kube-proxy's cold
/// sync at 10k Services by its whole 15 s transaction).
const MAX_POLL_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nodus,
    Nftables,
    Iptables,
}

impl Proxy {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "nodus" => Self::Nodus,
            "nftables" => Self::Nftables,
            "iptables" => Self::Iptables,
            other => bail!("--proxy must be nodus, nftables or iptables, not {other}"),
        })
    }

    /// The subject in the report (`e2e/bench_report.py` pairs these).
    fn subject(self) -> &'static str {
        match self {
            Self::Nodus => "nodus",
            Self::Nftables => "kube-proxy",
            Self::Iptables => "kube-proxy (iptables)",
        }
    }

    /// The cluster component that programs Services.
    fn component(self) -> &'static str {
        match self {
            Self::Nodus => "nodus",
            Self::Nftables | Self::Iptables => "kube-proxy",
        }
    }

    /// What lists the Service dispatch in the kernel.
    fn dispatch(self) -> Command {
        let mut command;
        match self {
            Self::Nodus => {
                command = Command::new("nft");
                command.args(["list", "map", "inet", "nodus", "service-ips"]);
            }
            Self::Nftables => {
                command = Command::new("nft");
                command.args(["list", "map", "ip", "kube-proxy", "service-ips"]);
            }
            Self::Iptables => {
                command = Command::new("iptables");
                command.args(["-w", "-t", "nat", "-S", "KUBE-SERVICES"]);
            }
        }
        command
    }

    /// Removes the proxy's rules while it is stopped, so that a start programs everything.
    fn remove_rules(self) -> Result<()> {
        // Exit statuses are not checked: nft fails when the table is already gone, and
        // kube-proxy --cleanup reports what it could not find as errors. What counts is
        // that the dispatch is empty afterwards.
        match self {
            // As `nodus --cleanup`: nodus owns exactly this table.
            Self::Nodus => Command::new("nft")
                .args(["delete", "table", "inet", "nodus"])
                .stderr(Stdio::null())
                .status()?,
            Self::Nftables | Self::Iptables => Command::new("kube-proxy")
                .arg("--cleanup")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running kube-proxy --cleanup (is kube-proxy on PATH?)")?,
        };
        ensure!(
            self.programmed_ips()?.is_empty(),
            "{} rules are still in the kernel after removing them",
            self.subject()
        );
        Ok(())
    }

    /// Whether the proxy's whole ruleset names `ip` now.
    fn ruleset_mentions(self, ip: &str) -> Result<bool> {
        let (program, args) = match self {
            Self::Nodus => ("nft", ["list", "table", "inet", "nodus"].as_slice()),
            Self::Nftables => ("nft", ["list", "table", "ip", "kube-proxy"].as_slice()),
            Self::Iptables => ("iptables-save", ["-t", "nat"].as_slice()),
        };
        let output = Command::new(program)
            .args(args)
            .stderr(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| mentions(line, ip)))
    }

    /// The IPv4 addresses in the Service dispatch now (empty when it does not exist).
    fn programmed_ips(self) -> Result<HashSet<Ipv4Addr>> {
        let output = self.dispatch().stderr(Stdio::null()).output()?;
        Ok(ipv4_words(&String::from_utf8_lossy(&output.stdout)).collect())
    }
}

struct Options {
    proxy: Proxy,
    sizes: Vec<usize>,
    changes: usize,
    connects: usize,
}

fn options() -> Result<Options> {
    let mut proxy = None;
    let mut sizes = Vec::new();
    let mut changes = 100;
    let mut connects = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--proxy" => proxy = Some(Proxy::parse(&value()?)?),
            "--services" => sizes.push(value()?.parse()?),
            "--changes" => changes = value()?.parse()?,
            "--connects" => connects = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000];
    }
    sizes.sort_unstable();
    ensure!(sizes[0] > 10, "--services must be above 10");
    Ok(Options {
        proxy: proxy.context("--proxy nodus|nftables|iptables is required")?,
        sizes,
        changes,
        connects,
    })
}

/// Every whitespace- or punctuation-delimited word of `text` that is an IPv4 address.
fn ipv4_words(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| word.parse().ok())
}

/// The address of a fake endpoint: 10.200.0.0/16 and up, unique for each `n`.
fn endpoint_ip(n: usize) -> Ipv4Addr {
    let n = n as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + n)
}

/// The address a change moves an endpoint to: from 10.250.0.0 up, never one of the others.
fn changed_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 1)) + n as u32)
}

fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] },
    }))?)
}

fn slice(service: &str, addresses: &[Ipv4Addr], port: u16) -> Result<EndpointSlice> {
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": service,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "proxy-bench",
            },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": addresses.iter().map(|a| json!({
            "addresses": [a.to_string()],
            "conditions": { "ready": true },
        })).collect::<Vec<_>>(),
    }))?)
}

/// Creates Services `svc-FROM`..`svc-TO` with their slices; returns their ClusterIPs.
async fn create_services(client: &Client, from: usize, to: usize) -> Result<Vec<Ipv4Addr>> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    stream::iter(from..to)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = format!("svc-{i}");
                let created = services
                    .create(&PostParams::default(), &service(&name)?)
                    .await
                    .with_context(|| format!("creating service {name}"))?;
                let endpoints = [endpoint_ip(2 * i), endpoint_ip(2 * i + 1)];
                slices
                    .create(&PostParams::default(), &slice(&name, &endpoints, 8080)?)
                    .await
                    .with_context(|| format!("creating the endpoint slice of {name}"))?;
                cluster_ip(&created)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

fn cluster_ip(service: &Service) -> Result<Ipv4Addr> {
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .context("a Service without a ClusterIP")?;
    Ok(ip.parse()?)
}

/// Polls the kernel's dispatch until every address of `ips` is in it; returns when the poll
/// that saw them started (each poll lists the whole dispatch, so polls are spaced by their own
/// cost, up to `MAX_POLL_PAUSE`).
///
/// Why its start: every proxy here writes its whole first ruleset in one atomic transaction, so
/// a poll finds the dispatch either missing (a failed listing, a few ms) or complete, and which
/// is decided when it looks the table up, at its start. Its end came one whole listing later
/// (~0.2 s at 10k Services), a bias that counted against the faster proxy most. The figure is
/// within one poll of the truth either way: after the previous poll, which saw the rules
/// missing, and before this one looked.
fn wait_all_programmed(proxy: Proxy, ips: &HashSet<Ipv4Addr>) -> Result<Instant> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let started = Instant::now();
        let present = proxy.programmed_ips()?;
        let now = Instant::now();
        let missing = ips.iter().filter(|ip| !present.contains(ip)).count();
        if missing == 0 {
            return Ok(started);
        }
        ensure!(
            now < deadline,
            "{missing} of {} Services were still not programmed by {} after {SYNC_TIMEOUT:?}",
            ips.len(),
            proxy.subject()
        );
        std::thread::sleep((now - started).clamp(Duration::from_millis(20), MAX_POLL_PAUSE));
    }
}

/// Seconds since boot (`/proc/uptime`), the clock of a process's `/proc` start time.
fn uptime() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/uptime")?;
    Ok(text.split_whitespace().next().context("uptime")?.parse()?)
}

/// When process `pid` started, in seconds since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: i32) -> Result<f64> {
    let ticks: f64 = stat_fields(pid)?[19].parse()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks / 100.0)
}

/// Cold sync: the proxy restarted with no rules in the kernel; seconds from its start to
/// every Service in the dispatch.
fn cold_sync(cluster: &Cluster, proxy: Proxy, ips: &HashSet<Ipv4Addr>) -> Result<f64> {
    cluster.script(&["stop", proxy.component()])?;
    proxy.remove_rules()?;
    cluster.script(&["start", proxy.component()])?;
    let pid = cluster.pid(proxy.component())?;
    let started = start_time(pid)?;
    let done = wait_all_programmed(proxy, ips)?;
    // `done` is an Instant; move it onto the boot clock through the time since then.
    let done_uptime = uptime()? - done.elapsed().as_secs_f64();
    Ok(done_uptime - started)
}

/// `line` names `ip` as a whole address (not 10.250.0.1 inside 10.250.0.10).
fn mentions(line: &str, ip: &str) -> bool {
    line.match_indices(ip).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + ip.len()..].chars().next();
        let part_of_address = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '.');
        !part_of_address(before) && !part_of_address(after)
    })
}

/// `nft monitor`, its lines and when they were read.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Monitor {
    fn start() -> Result<Self> {
        let mut child = Command::new("nft")
            .arg("monitor")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nft monitor")?;
        let stdout = child.stdout.take().context("nft monitor's output")?;
        let stderr = child.stderr.take().context("nft monitor's errors")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // Its complaints (a netlink overrun: events it did not see) go to the bench's log.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("nft monitor: {line}");
            }
        });
        let monitor = Self { child, lines };
        monitor.wait_listening()?;
        Ok(monitor)
    }

    /// Returns once the monitor reports events. `nft monitor` reads the whole ruleset before
    /// it listens (seconds with kube-proxy's 10k Services here), starts that read over when
    /// the ruleset changes meanwhile, and never reports what changed before it listens. So:
    /// wait until it stops using CPU (read done, waiting for events), then add and delete an
    /// empty probe table and look for its addition; again if it did not show.
    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let pid = i32::try_from(self.child.id())?;
        let nft = |verb: &str| -> Result<()> {
            let status = Command::new("nft")
                .args([verb, "table", "ip", PROBE_TABLE])
                .status()
                .context("running nft")?;
            ensure!(status.success(), "nft {verb} table ip {PROBE_TABLE} failed");
            Ok(())
        };
        let added = format!("add table ip {PROBE_TABLE}");
        loop {
            let mut used = cpu_time(pid)?;
            loop {
                std::thread::sleep(IDLE_CHECK);
                let now = cpu_time(pid)?;
                if now == used {
                    break;
                }
                used = now;
                ensure!(
                    Instant::now() < deadline,
                    "nft monitor was still reading the ruleset after {LISTEN_TIMEOUT:?}"
                );
            }
            nft("add")?;
            let seen = self.wait_for(|line| line == added, Instant::now() + IDLE_CHECK * 4);
            nft("delete")?;
            if seen.is_some() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "nft monitor reported nothing in {LISTEN_TIMEOUT:?}"
            );
        }
    }

    /// Drops what was read so far.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// When a line that `matches` was read, waiting at most until `deadline` (None: not by
    /// then).
    fn wait_for(&self, matches: impl Fn(&str) -> bool, deadline: Instant) -> Option<Instant> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if matches(&line) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a series of endpoint changes measured.
#[derive(Debug)]
struct Changes {
    /// Of the changes that reached the kernel, sorted.
    latencies: Vec<Duration>,
    /// A change that had not reached the kernel after `CHANGE_TIMEOUT` (it ends the series).
    lost: bool,
}

/// Endpoint changes: each replaces the second endpoint of one Service; the latency from
/// the patch's return to the new address in the kernel.
async fn endpoint_changes(
    client: &Client,
    proxy: Proxy,
    services: usize,
    changes: usize,
    first_change: usize,
) -> Result<Changes> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let monitor = Monitor::start()?;
    let mut latencies = Vec::with_capacity(changes);
    let mut last = Instant::now();
    for k in 0..changes {
        tokio::time::sleep(CHANGE_SPACING.saturating_sub(last.elapsed())).await;
        // Walk over the Services with a stride, so consecutive changes hit different ones.
        let i = (k * 7919 + 11) % services;
        let name = format!("svc-{i}");
        let new_ip = changed_ip(first_change + k);
        let patch = json!({ "endpoints": [
            { "addresses": [endpoint_ip(2 * i).to_string()], "conditions": { "ready": true } },
            { "addresses": [new_ip.to_string()], "conditions": { "ready": true } },
        ]});
        monitor.drain();
        slices
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("patching the endpoint slice of {name}"))?;
        let sent = Instant::now();
        let new_ip = new_ip.to_string();
        let Some(seen) = tokio::task::block_in_place(|| {
            monitor.wait_for(|line| mentions(line, &new_ip), sent + CHANGE_TIMEOUT)
        }) else {
            // Tell a change the proxy did not make from one the monitor missed.
            let in_kernel = proxy.ruleset_mentions(&new_ip)?;
            eprintln!(
                "no rule with {new_ip} seen in {CHANGE_TIMEOUT:?} (in the kernel now: \
                 {in_kernel}); series ended"
            );
            latencies.sort();
            return Ok(Changes {
                latencies,
                lost: true,
            });
        };
        latencies.push(seen.saturating_duration_since(sent));
        // Spaced from when the kernel had it, which is after that sync started: the next
        // change then never waits out the min-sync-period.
        last = seen;
    }
    latencies.sort();
    Ok(Changes {
        latencies,
        lost: false,
    })
}

/// A listener on the node's address that accepts and closes every connection.
fn start_backend(node_ip: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((node_ip, 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(port)
}

/// Sequential TCP connects to `target`; their connect times, sorted.
fn connect_latencies(target: SocketAddr, count: usize) -> Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {target}"))?;
        latencies.push(started.elapsed());
        drop(stream);
    }
    latencies.sort();
    Ok(latencies)
}

fn record_latencies(proxy: Proxy, scenario: &str, what: &str, sorted: &[Duration], unit: &str) {
    let scale = |d: Duration| match unit {
        "µs" => d.as_secs_f64() * 1e6,
        _ => d.as_secs_f64() * 1e3,
    };
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        record(
            BENCH,
            proxy.subject(),
            scenario,
            &format!("{what} {name}"),
            scale(percentile(sorted, p)),
            unit,
        );
    }
}

async fn data_plane(
    proxy: Proxy,
    backend: SocketAddr,
    services: usize,
    connects: usize,
) -> Result<()> {
    // The first connects after a sync may still meet the old rules; wait for one through.
    poll(
        Duration::from_secs(60),
        "a connection through the backend's ClusterIP",
        || async { Ok(TcpStream::connect_timeout(&backend, Duration::from_secs(1)).ok()) },
    )
    .await?;
    let latencies = tokio::task::block_in_place(|| connect_latencies(backend, connects))?;
    record_latencies(
        proxy,
        &format!("{services} Services"),
        "connect through a ClusterIP",
        &latencies,
        "µs",
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    let proxy = options.proxy;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let node_ip: Ipv4Addr = std::env::var("NODUS_E2E_NODE_IP")
        .context("NODUS_E2E_NODE_IP is not set")?
        .parse()?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({ "metadata": { "name": NAMESPACE } }))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .context("creating the benchmark's namespace (run it on a fresh cluster)")?;

    // The backend Service, whose one endpoint is this process, and 9 others: 10 Services.
    let port = start_backend(node_ip)?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let backend = services
        .create(&PostParams::default(), &service("backend")?)
        .await?;
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &slice("backend", &[node_ip], port)?)
        .await?;
    let backend_ip = cluster_ip(&backend)?;
    let backend = SocketAddr::from((backend_ip, 80));
    let mut ips: HashSet<Ipv4Addr> = create_services(&client, 0, 9).await?.into_iter().collect();
    ips.insert(backend_ip);
    tokio::task::block_in_place(|| wait_all_programmed(proxy, &ips))?;
    data_plane(proxy, backend, 10, options.connects).await?;

    let mut created = 9;
    let mut changes_made = 0;
    for &size in &options.sizes {
        let scenario = format!("{size} Services × 2 endpoints");
        // `size` Services in all: the backend and svc-0..svc-(size - 2).
        ips.extend(create_services(&client, created, size - 1).await?);
        created = size - 1;
        tokio::task::block_in_place(|| wait_all_programmed(proxy, &ips))?;

        let cold = tokio::task::block_in_place(|| cold_sync(&cluster, proxy, &ips))?;
        record(
            BENCH,
            proxy.subject(),
            &scenario,
            "cold sync",
            cold * 1e3,
            "ms",
        );

        let changes =
            endpoint_changes(&client, proxy, created, options.changes, changes_made).await?;
        changes_made += options.changes;
        if !changes.latencies.is_empty() {
            record_latencies(
                proxy,
                &scenario,
                "endpoint change",
                &changes.latencies,
                "ms",
            );
        }
        record(
            BENCH,
            proxy.subject(),
            &scenario,
            &format!(
                "endpoint changes lost (not in the kernel after {} s)",
                CHANGE_TIMEOUT.as_secs()
            ),
            f64::from(u8::from(changes.lost)),
            "changes",
        );

        data_plane(proxy, backend, size, options.connects).await?;
    }
    Ok(())
}
