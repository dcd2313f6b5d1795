//! Health: the proxy's own health server (`/healthz`, `/livez` on 0.0.0.0:10256) and one health-check
//! server per Service that asks for it (`externalTrafficPolicy: Local` LoadBalancers, on their
//! `healthCheckNodePort`), both answering as upstream kube-proxy does.
//!
//! Invariants: answers are a pure function of what the sync loop last published through `watch`
//! channels plus the clock at request time, so a stuck sync loop shows up as 503 without the loop's
//! help; the servers never block the sync loop (no lock is shared with it); every listener stops
//! when its token is cancelled.
//!
//! Semantics (upstream `pkg/proxy/healthcheck/proxy_health.go`, `service_health.go`):
//! - `/healthz` and `/livez` are 200 unless a change has been waiting longer than the health
//!   timeout (upstream: twice `--sync-period`) without a successful sync. nodus also counts a
//!   failed sync as a waiting change and starts "waiting" at start-up, so a proxy that never
//!   manages to program the kernel turns unhealthy (upstream stays healthy until its first sync).
//!   `/healthz` is also 503 while the Node is being deleted or carries the cluster autoscaler's
//!   `ToBeDeletedByClusterAutoscaler` taint, so load balancers drain it; `/livez` ignores that.
//!   The body is `{"lastUpdated": T,"currentTime": T, "nodeEligible": B}` (`/livez` without
//!   `nodeEligible`), times in Go's `time.Time` format, and a healthy answer reports
//!   `lastUpdated` = `currentTime`, as upstream does for compatibility.
//! - A service health check is 200 when the Service has at least one ready endpoint on this node
//!   and the proxy is healthy, else 503, with the count in the body.
//!
//! Why hyper 1 (with hyper-util's tokio glue) rather than a hand-written responder: the tree
//! already compiles hyper for kube's client, so the server half costs little, and it gives real
//! HTTP/1.1 for free (keep-alive that load-balancer probers use, pipelining, `HEAD`, header size
//! limits, a header read timeout against idle or slow clients), none of which a small responder
//! would get right by accident. The kubelet API server will need the same stack.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::jiff::Timestamp;
use nodus_net::proxy::model::ProxyState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::mapping::ServiceKey;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long open connections get to finish their request when a server stops.
const DRAIN: Duration = Duration::from_secs(1);
/// How often binds that failed (a port still held by someone else) are tried again.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// What the sync loop reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHealth {
    /// Wall-clock time of the last successful sync.
    pub last_updated: Option<SystemTime>,
    /// Since when a change (or a failed sync) has been waiting for a successful sync.
    pub pending_since: Option<Instant>,
    /// Whether load balancers may use this node (see `mapping::node_eligible`).
    pub node_eligible: bool,
}

impl ProxyHealth {
    /// At start-up, the whole state is waiting to be programmed.
    pub fn starting(now: Instant) -> Self {
        ProxyHealth {
            last_updated: None,
            pending_since: Some(now),
            node_eligible: true,
        }
    }

    /// A change arrived (or a sync failed): the kernel is behind until the next success. The
    /// oldest waiting change counts, as upstream's `QueuedUpdate`.
    pub fn queued(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// A sync succeeded.
    pub fn updated(&mut self, wall: SystemTime) {
        self.pending_since = None;
        self.last_updated = Some(wall);
    }

    /// Healthy unless a change has waited `timeout` or longer.
    pub fn is_healthy(&self, now: Instant, timeout: Duration) -> bool {
        self.pending_since
            .is_none_or(|since| now.saturating_duration_since(since) < timeout)
    }
}

/// A Service's health check: its port, and its ready endpoints on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCheck {
    pub port: u16,
    pub local_endpoints: usize,
}

/// Every health check this node should serve.
pub type ServiceChecks = BTreeMap<ServiceKey, ServiceCheck>;

/// The health checks of the proxied Services (`state` holds only Services that made it into the
/// ruleset). The count is that of distinct local ready `ip:port` endpoints over all the
/// Service's ports, as upstream's `LocalReadyEndpoints`: terminating endpoints do not count, so
/// a load balancer stops sending new traffic to a node whose last local pod is going away.
pub fn service_checks(state: &ProxyState) -> ServiceChecks {
    state
        .services
        .iter()
        .filter_map(|service| {
            let port = service.health_check_node_port?;
            let mut endpoints: Vec<_> = service
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .filter(|e| e.local && e.ready)
                .map(|e| (e.ip, e.port))
                .collect();
            endpoints.sort();
            endpoints.dedup();
            let key = ServiceKey {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
            };
            Some((
                key,
                ServiceCheck {
                    port,
                    local_endpoints: endpoints.len(),
                },
            ))
        })
        .collect()
}

/// An HTTP answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// A JSON answer, as every health endpoint gives.
    fn json(status: StatusCode, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// Go's `http.NotFound`, which upstream's muxes answer with.
    pub fn not_found() -> Reply {
        Reply {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain; charset=utf-8",
            body: "404 page not found\n".to_owned(),
        }
    }
}

/// Go's `time.Time.String()` layout in UTC (`2006-01-02 15:04:05.999999999 +0000 UTC`), which
/// upstream's body prints with `%q`; the zero time when there is none.
fn go_time(t: Option<SystemTime>) -> String {
    t.and_then(|t| Timestamp::try_from(t).ok()).map_or_else(
        || "0001-01-01 00:00:00 +0000 UTC".to_owned(),
        |ts| ts.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
    )
}

/// The answer to `path` on the proxy health server at (`now`, `wall`).
pub fn proxy_reply(
    path: &str,
    health: &ProxyHealth,
    now: Instant,
    wall: SystemTime,
    timeout: Duration,
) -> Reply {
    let livez = match path {
        "/healthz" => false,
        "/livez" => true,
        _ => return Reply::not_found(),
    };
    let proxy_healthy = health.is_healthy(now, timeout);
    let healthy = proxy_healthy && (livez || health.node_eligible);
    let current = go_time(Some(wall));
    // Upstream: a healthy answer says "updated now", whatever the last sync time.
    let last = if healthy {
        current.clone()
    } else {
        go_time(health.last_updated)
    };
    let body = if livez {
        format!(r#"{{"lastUpdated": "{last}","currentTime": "{current}"}}"#)
    } else {
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{current}", "nodeEligible": {}}}"#,
            health.node_eligible
        )
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(status, body)
}

/// The answer of a Service's health check, with upstream's body layout.
pub fn service_reply(service: &ServiceKey, local_endpoints: usize, proxy_healthy: bool) -> Reply {
    // serde_json quotes and escapes; names are DNS labels, but a body must stay JSON regardless.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&service.namespace),
        quote(&service.name),
    );
    let status = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(status, body)
}

/// Serves `/healthz` and `/livez` on `addr` until cancelled. A bind failure (port taken, e.g. by
/// a stock kube-proxy) is logged and retried with backoff rather than ending the proxy role.
pub async fn serve_proxy_health(
    addr: SocketAddr,
    health: watch::Receiver<ProxyHealth>,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let Some(listener) = crate::listen::bind(addr, "proxy health server", &cancel).await else {
        return;
    };
    serve(
        listener,
        move |path: &str| {
            let health = health.borrow().clone();
            proxy_reply(path, &health, Instant::now(), SystemTime::now(), timeout)
        },
        cancel,
    )
    .await;
}

/// Keeps one listener per wanted Service health check, following `checks`: opens new ones,
/// closes those no longer wanted (or whose port changed), retries failed binds.
pub async fn serve_service_checks(
    mut checks: watch::Receiver<ServiceChecks>,
    health: watch::Receiver<ProxyHealth>,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut running: HashMap<ServiceKey, (u16, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let wanted: Vec<(ServiceKey, u16)> = checks
            .borrow_and_update()
            .iter()
            .map(|(k, c)| (k.clone(), c.port))
            .collect();
        let wanted_ports: HashMap<&ServiceKey, u16> = wanted.iter().map(|(k, p)| (k, *p)).collect();
        running.retain(|key, (port, token)| {
            let keep = wanted_ports.get(key) == Some(port);
            if !keep {
                info!(service = %key, port = *port, "closing service health check");
                token.cancel();
            }
            keep
        });
        let mut failed = false;
        for (key, port) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            // Upstream listens on every address unless --nodeport-addresses narrows NodePorts;
            // nodus always listens on every IPv4 address (load balancers probe node IPs).
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(service = %key, port, "serving service health check");
                    let token = cancel.child_token();
                    let (checks, health, answer_key) =
                        (checks.clone(), health.clone(), key.clone());
                    let respond = move |_path: &str| {
                        let count = checks
                            .borrow()
                            .get(&answer_key)
                            .map_or(0, |c| c.local_endpoints);
                        let healthy = health.borrow().is_healthy(Instant::now(), timeout);
                        service_reply(&answer_key, count, healthy)
                    };
                    tasks.spawn(serve(listener, respond, token.clone()));
                    running.insert(key, (port, token));
                }
                Err(err) => {
                    failed = true;
                    warn!(service = %key, port, error = %err, "cannot listen for the service health check; will retry");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = checks.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(BIND_RETRY), if failed => {}
            Some(_) = tasks.join_next() => {}
        }
    }
    for (_, token) in running.values() {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on `listener` with `respond(path)` until `cancel`; open connections finish
/// their current request and close.
pub(super) async fn serve<F>(listener: TcpListener, respond: F, cancel: CancellationToken)
where
    F: Fn(&str) -> Reply + Clone + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                debug!(error = %err, "accepting a health check connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let respond = respond.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let reply = respond(request.uri().path());
                async move { Ok::<_, Infallible>(to_response(reply)) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                debug!(error = %err, "health check connection ended with an error");
            }
        });
    }
    // Connections were told to finish (graceful shutdown); give them a moment, then drop them.
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(reply.content_type),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_net::proxy::model::{
        Endpoint, Node, NodePortAddresses, Protocol, Service, ServicePort, SessionAffinity,
        TrafficPolicy,
    };
    use std::net::IpAddr;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(120);
    /// Interval of the polls below, each bounded by a deadline.
    const POLL: Duration = Duration::from_millis(10);

    fn wall(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn go_time_layout() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(Some(wall(1_700_000_000))),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(
            go_time(Some(wall(1_700_000_000) + Duration::from_millis(250))),
            "2023-11-14 22:13:20.25 +0000 UTC"
        );
    }

    #[test]
    fn proxy_health_follows_upstream() {
        let t0 = Instant::now();
        let synced = {
            let mut h = ProxyHealth::starting(t0);
            h.updated(wall(1_000));
            h
        };
        let waiting = |since: Instant| ProxyHealth {
            pending_since: Some(since),
            ..synced.clone()
        };
        let later = t0 + Duration::from_secs(500);
        // (what, path, health, now, expected status)
        let cases = [
            ("synced", "/healthz", synced.clone(), later, 200),
            ("synced, livez", "/livez", synced.clone(), later, 200),
            (
                "starting up",
                "/healthz",
                ProxyHealth::starting(t0),
                t0,
                200,
            ),
            (
                "never synced within the timeout",
                "/healthz",
                ProxyHealth::starting(t0),
                t0 + TIMEOUT,
                503,
            ),
            (
                "a change waiting, not late yet",
                "/healthz",
                waiting(later - Duration::from_secs(5)),
                later,
                200,
            ),
            (
                "a change waiting too long",
                "/livez",
                waiting(later - TIMEOUT),
                later,
                503,
            ),
            (
                "node marked for deletion",
                "/healthz",
                ProxyHealth {
                    node_eligible: false,
                    ..synced.clone()
                },
                later,
                503,
            ),
            (
                "livez ignores the node",
                "/livez",
                ProxyHealth {
                    node_eligible: false,
                    ..synced.clone()
                },
                later,
                200,
            ),
            ("unknown path", "/metrics", synced.clone(), later, 404),
        ];
        for (what, path, health, now, status) in cases {
            let reply = proxy_reply(path, &health, now, wall(2_000), TIMEOUT);
            assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.body);
        }
    }

    #[test]
    fn proxy_health_bodies_match_upstream() {
        let t0 = Instant::now();
        let mut health = ProxyHealth::starting(t0);
        health.updated(wall(1_000));
        let healthy = proxy_reply("/healthz", &health, t0, wall(2_000), TIMEOUT);
        assert_eq!(
            healthy.body,
            r#"{"lastUpdated": "1970-01-01 00:33:20 +0000 UTC","currentTime": "1970-01-01 00:33:20 +0000 UTC", "nodeEligible": true}"#
        );
        health.queued(t0);
        let stale = proxy_reply("/livez", &health, t0 + TIMEOUT, wall(2_000), TIMEOUT);
        assert_eq!(
            stale.body,
            r#"{"lastUpdated": "1970-01-01 00:16:40 +0000 UTC","currentTime": "1970-01-01 00:33:20 +0000 UTC"}"#
        );
        serde_json::from_str::<serde_json::Value>(&healthy.body).expect("healthz body is JSON");
    }

    #[test]
    fn the_oldest_waiting_change_counts() {
        let t0 = Instant::now();
        let mut health = ProxyHealth::starting(t0);
        health.updated(wall(1));
        health.queued(t0);
        health.queued(t0 + Duration::from_secs(100));
        assert!(!health.is_healthy(t0 + TIMEOUT, TIMEOUT));
        health.updated(wall(2));
        assert!(health.is_healthy(t0 + TIMEOUT, TIMEOUT));
    }

    #[test]
    fn service_replies_count_local_endpoints() {
        let key = ServiceKey {
            namespace: "ns".into(),
            name: "lb".into(),
        };
        let cases = [(2, true, 200), (0, true, 503), (3, false, 503)];
        for (count, healthy, status) in cases {
            let reply = service_reply(&key, count, healthy);
            assert_eq!(reply.status.as_u16(), status, "{count} {healthy}");
            let body: serde_json::Value =
                serde_json::from_str(&reply.body).expect("service body is JSON");
            assert_eq!(
                body,
                serde_json::json!({
                    "service": { "namespace": "ns", "name": "lb" },
                    "localEndpoints": count,
                    "serviceProxyHealthy": healthy,
                })
            );
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn checks_count_distinct_local_ready_endpoints() {
        let endpoint = |s: &str, port, local, ready| Endpoint {
            ready,
            serving: true,
            terminating: !ready,
            ..Endpoint::ready(ip(s), port, local)
        };
        let port = |name: &str, endpoints| ServicePort {
            name: name.into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            endpoints,
        };
        let lb = |name: &str, hc: Option<u16>, ports| Service {
            namespace: "ns".into(),
            name: name.into(),
            cluster_ips: vec![ip("10.96.0.1")],
            external_ips: vec![],
            load_balancer_ips: vec![],
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Local,
            health_check_node_port: hc,
            internal_traffic_policy: TrafficPolicy::Cluster,
            ports,
        };
        let state = ProxyState {
            node: Node {
                node_port_addresses: NodePortAddresses::AllLocal,
                cluster_cidrs: vec![],
            },
            services: vec![
                lb(
                    "a",
                    Some(32000),
                    vec![
                        port(
                            "http",
                            vec![
                                endpoint("10.244.0.5", 8080, true, true),
                                endpoint("10.244.0.6", 8080, true, false),
                                endpoint("10.244.1.5", 8080, false, true),
                            ],
                        ),
                        port("again", vec![endpoint("10.244.0.5", 8080, true, true)]),
                    ],
                ),
                lb("b", Some(32001), vec![port("http", vec![])]),
                lb("no-check", None, vec![port("http", vec![])]),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        };
        let key = |name: &str| ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        };
        let expected: ServiceChecks = [
            (
                key("a"),
                ServiceCheck {
                    port: 32000,
                    local_endpoints: 1,
                },
            ),
            (
                key("b"),
                ServiceCheck {
                    port: 32001,
                    local_endpoints: 0,
                },
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(service_checks(&state), expected);
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the test server");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("read the answer");
        answer
    }

    #[tokio::test]
    async fn the_servers_answer_over_http_and_follow_the_published_state() {
        let (health_tx, health_rx) = watch::channel(ProxyHealth::starting(Instant::now()));
        health_tx.send_modify(|h| h.updated(SystemTime::now()));
        let cancel = CancellationToken::new();

        // The proxy server, on an ephemeral port.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let rx = health_rx.clone();
        let server = tokio::spawn(serve(
            listener,
            move |path: &str| {
                proxy_reply(
                    path,
                    &rx.borrow(),
                    Instant::now(),
                    SystemTime::now(),
                    TIMEOUT,
                )
            },
            cancel.clone(),
        ));
        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        assert!(answer.contains("\"nodeEligible\": true"), "{answer}");
        health_tx.send_modify(|h| h.node_eligible = false);
        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let answer = get(addr, "/nope").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

        // A service check on a free port: find one, release it, let the manager take it.
        let port = {
            let probe = std::net::TcpListener::bind("0.0.0.0:0").expect("probe bind");
            probe.local_addr().expect("probe address").port()
        };
        let key = ServiceKey {
            namespace: "ns".into(),
            name: "lb".into(),
        };
        let (checks_tx, checks_rx) = watch::channel(ServiceChecks::new());
        let manager = tokio::spawn(serve_service_checks(
            checks_rx,
            health_rx,
            TIMEOUT,
            cancel.clone(),
        ));
        checks_tx.send_replace(
            [(
                key.clone(),
                ServiceCheck {
                    port,
                    local_endpoints: 2,
                },
            )]
            .into_iter()
            .collect(),
        );
        let check_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let answer = poll_answer(check_addr, "HTTP/1.1 200").await;
        assert!(answer.contains("\"localEndpoints\": 2"), "{answer}");
        checks_tx.send_modify(|c| {
            if let Some(check) = c.get_mut(&key) {
                check.local_endpoints = 0;
            }
        });
        let answer = get(check_addr, "/").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // Removing the check closes its port.
        checks_tx.send_replace(ServiceChecks::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(check_addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the health check port stayed open"
            );
            tokio::time::sleep(POLL).await;
        }

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), async {
            server.await.expect("server task");
            manager.await.expect("manager task");
        })
        .await
        .expect("servers stop when cancelled");
    }

    /// The manager binds asynchronously after the update: poll until it answers as expected.
    async fn poll_answer(addr: SocketAddr, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let answer = get(addr, "/").await;
                if answer.starts_with(prefix) {
                    return answer;
                }
            }
            assert!(Instant::now() < deadline, "no {prefix} answer from {addr}");
            tokio::time::sleep(POLL).await;
        }
    }
}
