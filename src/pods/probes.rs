//! Probes: startup, liveness and readiness probes of a pod's containers, run on their own
//! schedule beside the pod's worker, with the kubelet's semantics.
//!
//! - A probe first runs `initialDelaySeconds` after its container started, then every
//!   `periodSeconds`, each try bounded by `timeoutSeconds`; `successThreshold` consecutive
//!   successes or `failureThreshold` consecutive failures change its result.
//! - Until a container's startup probe has succeeded, its liveness and readiness probes do not
//!   run; a container without one is started at once.
//! - Readiness starts as failed (not ready until a success), liveness and startup as unknown;
//!   a liveness or startup failure asks the worker to restart the container.
//! - Handlers: `exec` through the runtime's ExecSync (exit 0), `httpGet` over HTTP or HTTPS
//!   (a status of 200 to 399 after local redirects, see [`super::probe_http`]; a redirect
//!   elsewhere succeeds with a ProbeWarning event), `tcpSocket` (a connection), `grpc` (the
//!   standard health service answering `SERVING`).
//!
//! Invariants: results are keyed by container ID, so a restarted container starts over; the
//! prober never blocks the worker: it publishes a snapshot through a `watch` channel and rings
//! the worker's bell when a result changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodus_cri::Runtime;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{self, Events};

/// Upstream's User-Agent for HTTP probes.
pub(super) const USER_AGENT: &str = "kube-probe/1.37";
/// How much of a failing probe's output goes into its event.
const OUTPUT_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe's schedule and thresholds, defaulted as the API does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Schedule {
    pub fn of(probe: &Probe) -> Schedule {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Schedule {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// One probe's running tally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// `None` until the thresholds decide.
    pub result: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Tally {
    /// Counts one outcome; returns whether the result changed.
    pub fn record(&mut self, success: bool, schedule: &Schedule) -> bool {
        let before = self.result;
        if success {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= schedule.success_threshold {
                self.result = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= schedule.failure_threshold {
                self.result = Some(false);
            }
        }
        self.result != before
    }
}

/// What the worker reads for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the container counts as started (startup probe passed, or none).
    pub started: bool,
    /// Whether it counts as ready (readiness probe passed, or none), once started.
    pub ready: bool,
    /// Set when a liveness or startup probe failed: the container must be restarted.
    pub restart: Option<Restart>,
}

/// A probe's demand that its container be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The Killing event's message.
    pub reason: String,
    /// The failed probe's own terminationGracePeriodSeconds, which beats the pod's.
    pub grace_seconds: Option<i64>,
}

/// Verdicts by container ID.
pub type Verdicts = HashMap<String, Verdict>;

/// The verdict for a container from its probes' tallies.
pub fn verdict(container: &Container, tallies: &HashMap<Kind, Tally>) -> Verdict {
    let result = |kind| tallies.get(&kind).and_then(|t| t.result);
    let started = container.startup_probe.is_none() || result(Kind::Startup) == Some(true);
    let ready =
        started && (container.readiness_probe.is_none() || result(Kind::Readiness) == Some(true));
    let failed = if result(Kind::Startup) == Some(false) {
        Some((Kind::Startup, container.startup_probe.as_ref()))
    } else if started && result(Kind::Liveness) == Some(false) {
        Some((Kind::Liveness, container.liveness_probe.as_ref()))
    } else {
        None
    };
    let restart = failed.map(|(kind, probe)| Restart {
        reason: format!(
            "Container {} failed {} probe, will be restarted",
            container.name,
            kind.name().to_lowercase()
        ),
        grace_seconds: probe.and_then(|p| p.termination_grace_period_seconds),
    });
    Verdict {
        started,
        ready,
        restart,
    }
}

/// A running container the prober should watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub container: Container,
    /// When it started, on the prober's clock.
    pub started: Instant,
}

/// What the worker tells the prober: the pod's IP and its running containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub pod_ip: Option<IpAddr>,
    pub containers: Vec<Target>,
}

/// Outcome of one try: success, and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    /// A success the kubelet warns about (an HTTP probe ended on a redirect).
    pub warning: bool,
    pub output: String,
}

impl Outcome {
    fn passed(output: String) -> Outcome {
        Outcome {
            success: true,
            warning: false,
            output,
        }
    }

    fn failed(output: String) -> Outcome {
        Outcome {
            success: false,
            warning: false,
            output,
        }
    }
}

fn port_of(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs one try of `probe` against `target`.
pub async fn run_once(
    runtime: &Runtime,
    probe: &Probe,
    target: &Target,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Outcome {
    let fail = Outcome::failed;
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return match runtime.exec_sync(&target.id, command, timeout).await {
            Ok(out) => {
                let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                output.push_str(&String::from_utf8_lossy(&out.stderr));
                if out.exit_code == 0 {
                    Outcome::passed(output)
                } else if output.trim().is_empty() {
                    fail(format!("command exited with {}", out.exit_code))
                } else {
                    fail(output)
                }
            }
            Err(err) => fail(err.runtime_message()),
        };
    }
    let host = |h: Option<&String>| -> Option<IpAddr> {
        h.filter(|h| !h.is_empty())
            .and_then(|h| h.parse().ok())
            .or(pod_ip)
    };
    if let Some(http) = &probe.http_get {
        let (Some(ip), Some(port)) = (
            host(http.host.as_ref()),
            port_of(&http.port, &target.container),
        ) else {
            return fail("no address to probe".into());
        };
        let https = http.scheme.as_deref() == Some("HTTPS");
        let scheme = if https { "https" } else { "http" };
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let headers = super::probe_http::headers(http);
        let target = super::probe_http::Target {
            ip,
            port,
            https,
            path: path.clone(),
        };
        return match tokio::time::timeout(timeout, super::probe_http::get(target, &headers)).await {
            Ok(Ok(answer)) if (200..300).contains(&answer.status) => Outcome::passed(String::new()),
            // A redirect off the probed host (or one without a target): a success, with a
            // warning, as upstream.
            Ok(Ok(answer)) if (300..400).contains(&answer.status) => Outcome {
                success: true,
                warning: true,
                output: format!("Probe terminated redirects, Response body: {}", answer.body),
            },
            Ok(Ok(answer)) => fail(format!(
                "HTTP probe failed with statuscode: {}",
                answer.status
            )),
            Ok(Err(err)) => fail(format!(
                "Get \"{scheme}://{}/{}\": {err}",
                SocketAddr::new(ip, port),
                path.trim_start_matches('/')
            )),
            Err(_) => fail(format!(
                "Get \"{scheme}://{}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                SocketAddr::new(ip, port)
            )),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let (Some(ip), Some(port)) = (
            host(tcp.host.as_ref()),
            port_of(&tcp.port, &target.container),
        ) else {
            return fail("no address to probe".into());
        };
        let addr = SocketAddr::new(ip, port);
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Outcome::passed(String::new()),
            Ok(Err(err)) => fail(format!("dial tcp {addr}: connect: {err}")),
            Err(_) => fail(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(grpc) = &probe.grpc {
        let Some(ip) = host(None) else {
            return fail("no address to probe".into());
        };
        let Ok(port) = u16::try_from(grpc.port) else {
            return fail(format!("invalid port {}", grpc.port));
        };
        let service = grpc.service.as_deref().unwrap_or_default();
        return match super::probe_grpc::check(SocketAddr::new(ip, port), service, timeout).await {
            Ok(()) => Outcome::passed(String::new()),
            Err(message) => fail(message),
        };
    }
    fail("the probe has no handler".into())
}

fn probe_of(container: &Container, kind: Kind) -> Option<&Probe> {
    match kind {
        Kind::Startup => container.startup_probe.as_ref(),
        Kind::Liveness => container.liveness_probe.as_ref(),
        Kind::Readiness => container.readiness_probe.as_ref(),
    }
}

/// What the prober needs from the pod's worker.
#[derive(Debug, Clone)]
pub struct Context {
    pub runtime: Runtime,
    pub events: Events,
    /// The pod, for event references.
    pub pod: Arc<k8s_openapi::api::core::v1::Pod>,
    /// Rung when a verdict changes.
    pub wake: Arc<Notify>,
}

/// Runs the pod's probes until cancelled, following `targets`, publishing to `verdicts`.
pub async fn run(
    ctx: Context,
    mut targets: watch::Receiver<Targets>,
    verdicts: watch::Sender<Verdicts>,
    cancel: CancellationToken,
) {
    // (container ID, kind) → tally and next due time.
    let mut tallies: HashMap<String, HashMap<Kind, Tally>> = HashMap::new();
    let mut due: HashMap<(String, Kind), Instant> = HashMap::new();
    loop {
        let current = targets.borrow_and_update().clone();
        let now = Instant::now();
        tallies.retain(|id, _| current.containers.iter().any(|t| &t.id == id));
        due.retain(|(id, _), _| current.containers.iter().any(|t| &t.id == id));
        let mut runs = Vec::new();
        for target in &current.containers {
            let tally = tallies.entry(target.id.clone()).or_default();
            let started = verdict(&target.container, tally).started;
            for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                let Some(probe) = probe_of(&target.container, kind) else {
                    continue;
                };
                // Liveness and readiness wait for the startup probe; startup stops once passed.
                if (kind != Kind::Startup && !started) || (kind == Kind::Startup && started) {
                    // Not due while it waits (or is done): its old time must not wake the loop.
                    due.remove(&(target.id.clone(), kind));
                    continue;
                }
                let schedule = Schedule::of(probe);
                let at = *due
                    .entry((target.id.clone(), kind))
                    .or_insert(target.started + schedule.initial_delay);
                if at <= now {
                    runs.push((target.clone(), kind, probe.clone(), schedule));
                }
            }
        }
        let pod_ip = current.pod_ip;
        let outcomes =
            futures::future::join_all(runs.into_iter().map(|(target, kind, probe, schedule)| {
                let runtime = ctx.runtime.clone();
                async move {
                    let outcome =
                        run_once(&runtime, &probe, &target, pod_ip, schedule.timeout).await;
                    (target, kind, schedule, outcome)
                }
            }))
            .await;
        let mut changed = false;
        for (target, kind, schedule, outcome) in outcomes {
            let tally = tallies
                .entry(target.id.clone())
                .or_default()
                .entry(kind)
                .or_default();
            changed |= tally.record(outcome.success, &schedule);
            due.insert((target.id.clone(), kind), Instant::now() + schedule.period);
            let mut output = outcome.output.trim_end().to_owned();
            output.truncate(OUTPUT_LIMIT);
            if !outcome.success {
                ctx.events.warning(
                    events::reference(&ctx.pod, Some(&target.container.name)),
                    "Unhealthy",
                    format!("{} probe failed: {}", kind.name(), output.trim_start()),
                );
            } else if outcome.warning {
                ctx.events.warning(
                    events::reference(&ctx.pod, Some(&target.container.name)),
                    "ProbeWarning",
                    format!("{} probe warning: {output}", kind.name()),
                );
            }
        }
        if changed {
            let snapshot: Verdicts = current
                .containers
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        verdict(&t.container, tallies.get(&t.id).unwrap_or(&HashMap::new())),
                    )
                })
                .collect();
            verdicts.send_replace(snapshot);
            ctx.wake.notify_one();
            // A startup probe that just passed lets liveness and readiness run: at once,
            // not after whatever sleep was due next.
            continue;
        }
        let next = due.values().min().copied();
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = targets.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn schedule(success: u32, failure: u32) -> Schedule {
        Schedule {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_decide_and_a_success_resets_failures() {
        let s = schedule(2, 3);
        let mut t = Tally::default();
        assert!(!t.record(true, &s), "one success of two: undecided");
        assert!(t.record(true, &s));
        assert_eq!(t.result, Some(true));
        assert!(!t.record(false, &s));
        assert!(!t.record(false, &s));
        assert!(
            !t.record(true, &s),
            "a success in between resets the failures"
        );
        assert!(!t.record(false, &s));
        assert!(!t.record(false, &s));
        assert!(t.record(false, &s));
        assert_eq!(t.result, Some(false));
    }

    fn container(startup: bool, liveness: bool, readiness: bool) -> Container {
        let probe = || Some(Probe::default());
        Container {
            name: "app".into(),
            startup_probe: if startup { probe() } else { None },
            liveness_probe: if liveness { probe() } else { None },
            readiness_probe: if readiness { probe() } else { None },
            ..Container::default()
        }
    }

    fn tallies(list: &[(Kind, Option<bool>)]) -> HashMap<Kind, Tally> {
        list.iter()
            .map(|(k, r)| {
                (
                    *k,
                    Tally {
                        result: *r,
                        ..Tally::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn verdicts_follow_the_kubelets_rules() {
        // No probes: started and ready at once.
        assert_eq!(
            verdict(&container(false, false, false), &HashMap::new()),
            Verdict {
                started: true,
                ready: true,
                restart: None
            }
        );
        // A readiness probe: not ready until it succeeds.
        let c = container(false, false, true);
        assert!(!verdict(&c, &HashMap::new()).ready);
        assert!(verdict(&c, &tallies(&[(Kind::Readiness, Some(true))])).ready);
        // A startup probe holds readiness back, and its failure restarts the container.
        let c = container(true, true, true);
        let v = verdict(&c, &tallies(&[(Kind::Readiness, Some(true))]));
        assert!(!v.started && !v.ready);
        assert!(
            verdict(&c, &tallies(&[(Kind::Startup, Some(false))]))
                .restart
                .is_some()
        );
        // Liveness failure after start restarts.
        let v = verdict(
            &c,
            &tallies(&[(Kind::Startup, Some(true)), (Kind::Liveness, Some(false))]),
        );
        assert_eq!(
            v.restart.map(|r| r.reason).as_deref(),
            Some("Container app failed liveness probe, will be restarted")
        );
        // The failed probe's own grace period goes with it, not another probe's.
        let mut c = container(true, true, false);
        if let Some(p) = c.startup_probe.as_mut() {
            p.termination_grace_period_seconds = Some(5);
        }
        let restart = verdict(&c, &tallies(&[(Kind::Startup, Some(false))])).restart;
        assert_eq!(restart.and_then(|r| r.grace_seconds), Some(5));
    }

    /// A one-shot HTTPS server answering `status`, with a self-signed certificate.
    async fn https_server(status: u16) -> SocketAddr {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(stream).await.expect("handshake");
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
        addr
    }

    #[tokio::test]
    async fn https_probes_speak_tls_and_read_the_status() {
        let status = |addr: SocketAddr| async move {
            let target = super::super::probe_http::Target {
                ip: addr.ip(),
                port: addr.port(),
                https: true,
                path: "/".into(),
            };
            super::super::probe_http::get(target, &[])
                .await
                .expect("an answer")
                .status
        };
        assert_eq!(status(https_server(204).await).await, 204);
        assert_eq!(status(https_server(404).await).await, 404);
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "ports": [{ "name": "http", "containerPort": 8080 }],
        }))
        .expect("container");
        assert_eq!(port_of(&IntOrString::String("http".into()), &c), Some(8080));
        assert_eq!(port_of(&IntOrString::Int(81), &c), Some(81));
        assert_eq!(port_of(&IntOrString::String("nope".into()), &c), None);
    }
}
