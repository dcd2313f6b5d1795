//! Services through nodus's proxy role, as a user of the stock kube-proxy sees them: ClusterIP and
//! NodePort reach every backend from the host and from pods, ClientIP affinity pins a client, a pod
//! reaches itself through its own Service, and a Service without endpoints is refused at once.
//!
//! There is no controller manager yet, so each Service is selector-less and its EndpointSlice is
//! written by the test (label `kubernetes.io/service-name`), pointing at busybox httpd pods that
//! answer with their own name.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, PostParams};
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::json;

const IMAGE: &str = "busybox:1.36";
/// How long the proxy may take to program a new Service: its watch, one debounced sync, and the
/// watch's backoff should it have started before it was allowed to list EndpointSlices.
const PROGRAMMED: Duration = Duration::from_secs(60);
/// Per-request limits; a programmed Service answers in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests used to see both of two backends: with a fair random choice, missing one has
/// probability 2^-(N-1).
const SPREAD_REQUESTS: usize = 40;

/// nodus's proxy metrics, at kube-proxy's default metrics address.
const METRICS: &str = "127.0.0.1:10249";

struct Env {
    ns: TestNamespace,
    node: String,
    node_ip: IpAddr,
    client: Client,
}

async fn setup(prefix: &str) -> Result<Env> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), prefix).await?;
    let node_ip = std::env::var("NODUS_E2E_NODE_IP")
        .context("NODUS_E2E_NODE_IP is not set: run these tests through e2e/test")?
        .parse()
        .context("NODUS_E2E_NODE_IP")?;
    Ok(Env {
        ns,
        node: cluster.node_name(),
        node_ip,
        client,
    })
}

impl Env {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// A busybox httpd pod on port 8080 answering `/` with its own name; returns its IP once it
    /// runs.
    async fn web_pod(&self, name: &str) -> Result<IpAddr> {
        self.ns
            .create_pod(
                &self.node,
                json!({
                    "metadata": { "name": name, "labels": { "app": "web" } },
                    "spec": {
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 1,
                        "containers": [httpd(name)],
                    },
                }),
            )
            .await?;
        self.running_ip(name).await
    }

    async fn running_ip(&self, name: &str) -> Result<IpAddr> {
        let pods = self.ns.pods();
        let ip = poll(
            Duration::from_secs(45),
            &format!("pod {name} to run with an IP"),
            || async {
                let pod = pods.get(name).await?;
                let status = pod.status.unwrap_or_default();
                let running = status.phase.as_deref() == Some("Running");
                Ok(status.pod_ip.filter(|_| running))
            },
        )
        .await?;
        Ok(ip.parse()?)
    }

    /// A selector-less Service with port `http` 80 -> 8080; returns it as the API server filled
    /// it in (cluster IP, node port).
    async fn service(&self, name: &str, extra: serde_json::Value) -> Result<Service> {
        let mut spec = json!({
            "type": "ClusterIP",
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }],
        });
        if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name },
            "spec": spec,
        }))?;
        let service = self
            .services()
            .create(&PostParams::default(), &service)
            .await?;
        // No traffic before the kernel knows the address: an unprogrammed ClusterIP would be
        // routed off the machine. Once programmed (even without endpoints) it stays local.
        let ip = cluster_ip(&service)?.to_string();
        nodus_e2e::wait_programmed(&ip).await?;
        Ok(service)
    }

    /// The EndpointSlice a controller would write for `service`: ready endpoints on this node.
    async fn endpoints(&self, service: &str, ips: &[IpAddr]) -> Result<()> {
        let endpoints: Vec<_> = ips
            .iter()
            .map(|ip| {
                json!({
                    "addresses": [ip.to_string()],
                    "conditions": { "ready": true, "serving": true, "terminating": false },
                    "nodeName": self.node,
                })
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-manual"),
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "nodus-e2e",
                },
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": endpoints,
        }))?;
        self.slices().create(&PostParams::default(), &slice).await?;
        Ok(())
    }

    /// Waits for a pod's container to end successfully and returns its termination message.
    async fn termination_message(&self, pod: &str, container: &str) -> Result<String> {
        let pods = self.ns.pods();
        poll(
            PROGRAMMED + Duration::from_secs(30),
            &format!("container {container} of {pod} to finish"),
            || async {
                let pod: Pod = pods.get(pod).await?;
                let Some(terminated) = status_of(&pod, container)
                    .and_then(|c| c.state.clone())
                    .and_then(|s| s.terminated)
                else {
                    return Ok(None);
                };
                ensure!(
                    terminated.exit_code == 0,
                    "exited {}: {:?}",
                    terminated.exit_code,
                    terminated.message
                );
                Ok(Some(terminated.message.unwrap_or_default()))
            },
        )
        .await
    }

    async fn finish(self) -> Result<()> {
        self.ns.delete_pods().await
    }
}

fn httpd(name: &str) -> serde_json::Value {
    json!({
        "name": "httpd",
        "image": IMAGE,
        "command": ["sh", "-c",
            format!("mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www")],
    })
}

fn status_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
}

fn cluster_ip(service: &Service) -> Result<IpAddr> {
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .context("the Service has no cluster IP")?;
    Ok(ip.parse()?)
}

fn node_port(service: &Service) -> Result<u16> {
    let port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .context("the Service has no node port")?;
    Ok(u16::try_from(port)?)
}

/// One HTTP/1.0 `GET /` from the host over a new connection (so each request is a new choice of
/// endpoint); returns the body, trimmed. Blocking std I/O on a blocking thread, with timeouts.
async fn get(addr: SocketAddr) -> Result<String> {
    tokio::task::spawn_blocking(move || get_blocking(addr, "/")).await?
}

fn get_blocking(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: nodus-e2e\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading from {addr}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {addr}: {answer:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{addr} answered {head:?}"
    );
    Ok(body.trim().to_owned())
}

/// A connect from the host: `Ok(true)` refused, `Ok(false)` timed out, `Err` anything else
/// (including being accepted).
async fn refused(addr: SocketAddr) -> Result<bool> {
    tokio::task::spawn_blocking(
        move || match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => Ok(true),
            Err(err) if err.kind() == ErrorKind::TimedOut => Ok(false),
            Err(err) => Err(anyhow::Error::new(err).context(format!("connecting to {addr}"))),
            Ok(_) => bail!("{addr} accepted a connection"),
        },
    )
    .await?
}

/// Waits until `addr` answers, then returns the distinct answers of `n` more requests.
async fn answers(addr: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    let first = poll(PROGRAMMED, &format!("{addr} to answer"), || async {
        Ok(Some(get(addr).await?))
    })
    .await?;
    let mut seen = BTreeSet::from([first]);
    for _ in 0..n {
        seen.insert(get(addr).await?);
    }
    Ok(seen)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn cluster_ip_and_node_port_reach_both_backends_from_the_host() -> Result<()> {
    let env = setup("svc-host").await?;
    let a = env.web_pod("web-a").await?;
    let b = env.web_pod("web-b").await?;
    let service = env.service("web", json!({ "type": "NodePort" })).await?;
    env.endpoints("web", &[a, b]).await?;

    let via_cluster_ip = SocketAddr::new(cluster_ip(&service)?, 80);
    assert_eq!(
        answers(via_cluster_ip, SPREAD_REQUESTS).await?,
        set(&["web-a", "web-b"]),
        "ClusterIP {via_cluster_ip} spreads over both backends"
    );
    let via_node_port = SocketAddr::new(env.node_ip, node_port(&service)?);
    assert_eq!(
        answers(via_node_port, SPREAD_REQUESTS).await?,
        set(&["web-a", "web-b"]),
        "NodePort {via_node_port} spreads over both backends"
    );
    env.finish().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_reaches_the_service_by_cluster_ip_and_node_port() -> Result<()> {
    let env = setup("svc-pod").await?;
    let a = env.web_pod("web-a").await?;
    let b = env.web_pod("web-b").await?;
    let service = env.service("web", json!({ "type": "NodePort" })).await?;
    env.endpoints("web", &[a, b]).await?;
    let (ip, port) = (cluster_ip(&service)?, node_port(&service)?);

    // Retries until both answer (the proxy may not have synced yet), then writes both answers.
    let script = format!(
        "until c=$(wget -q -O - http://{ip}/) && n=$(wget -q -O - http://{node_ip}:{port}/); \
         do sleep 0.5; done; echo \"$c $n\" > /dev/termination-log",
        node_ip = env.node_ip
    );
    env.ns
        .create_pod(
            &env.node,
            json!({
                "metadata": { "name": "client" },
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "activeDeadlineSeconds": 120,
                    "containers": [{ "name": "client", "image": IMAGE,
                                     "command": ["sh", "-c", script] }],
                },
            }),
        )
        .await?;
    let message = env.termination_message("client", "client").await?;
    let words: Vec<&str> = message.split_whitespace().collect();
    ensure!(words.len() == 2, "unexpected answers {message:?}");
    for (via, answer) in ["ClusterIP", "NodePort"].iter().zip(&words) {
        ensure!(
            ["web-a", "web-b"].contains(answer),
            "{via} answered {answer:?}, not a backend"
        );
    }
    env.finish().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn session_affinity_client_ip_pins_a_client_to_one_backend() -> Result<()> {
    let env = setup("svc-affinity").await?;
    let a = env.web_pod("web-a").await?;
    let b = env.web_pod("web-b").await?;
    let service = env
        .service(
            "sticky",
            json!({
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 300 } },
            }),
        )
        .await?;
    env.endpoints("sticky", &[a, b]).await?;
    let addr = SocketAddr::new(cluster_ip(&service)?, 80);
    let seen = answers(addr, SPREAD_REQUESTS).await?;
    ensure!(
        seen.len() == 1,
        "ClientIP affinity let one client reach {seen:?}"
    );

    // The same two backends without affinity are both reached: the pin above is the affinity's.
    let plain = env.service("plain", json!({})).await?;
    env.endpoints("plain", &[a, b]).await?;
    assert_eq!(
        answers(SocketAddr::new(cluster_ip(&plain)?, 80), SPREAD_REQUESTS).await?,
        set(&["web-a", "web-b"])
    );
    env.finish().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_reaches_itself_through_its_own_service() -> Result<()> {
    let env = setup("svc-hairpin").await?;
    let service = env.service("self", json!({})).await?;
    let ip = cluster_ip(&service)?;
    // The client container retries until the Service has its endpoint (this very pod) and the
    // proxy has synced; until then the Service has no endpoints and is refused at once.
    let client = json!({
        "name": "client",
        "image": IMAGE,
        "command": ["sh", "-c", format!(
            "until wget -q -O /dev/termination-log http://{ip}/; do sleep 0.5; done")],
    });
    env.ns
        .create_pod(
            &env.node,
            json!({
                "metadata": { "name": "web-self" },
                "spec": {
                    "restartPolicy": "OnFailure",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [httpd("web-self"), client],
                },
            }),
        )
        .await?;
    let own_ip = env.running_ip("web-self").await?;
    env.endpoints("self", &[own_ip]).await?;
    let message = env.termination_message("web-self", "client").await?;
    assert_eq!(
        message.trim(),
        "web-self",
        "the pod reached itself via {ip}"
    );
    env.finish().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_service_without_endpoints_is_refused_at_once_until_it_has_one() -> Result<()> {
    let env = setup("svc-empty").await?;
    let service = env.service("empty", json!({})).await?;
    let addr = SocketAddr::new(cluster_ip(&service)?, 80);

    // Before the proxy knows the Service, its address leads nowhere (a connect times out); once
    // programmed without endpoints, the connect is reset at once.
    poll(
        PROGRAMMED,
        &format!("{addr} to refuse connections"),
        || async { Ok(refused(addr).await?.then_some(())) },
    )
    .await?;
    for _ in 0..5 {
        let start = Instant::now();
        ensure!(refused(addr).await?, "{addr} without endpoints timed out");
        let took = start.elapsed();
        ensure!(
            took < Duration::from_secs(1),
            "refusing took {took:?}: not at once"
        );
    }

    // An endpoint appearing makes the same address answer.
    let ip = env.web_pod("web-late").await?;
    env.endpoints("empty", &[ip]).await?;
    assert_eq!(answers(addr, 3).await?, set(&["web-late"]));
    env.finish().await
}

/// The value of one series in nodus's proxy metrics.
async fn metric(series: &str) -> Result<f64> {
    let addr: SocketAddr = METRICS.parse()?;
    let text = tokio::task::spawn_blocking(move || get_blocking(addr, "/metrics")).await??;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} in the proxy metrics"))?
        .parse()
        .with_context(|| format!("{series} is not a number"))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn proxy_metrics_count_syncs_and_programmed_services() -> Result<()> {
    let env = setup("svc-metrics").await?;
    let mode =
        tokio::task::spawn_blocking(|| get_blocking(METRICS.parse()?, "/proxyMode")).await??;
    assert_eq!(mode, "nftables");
    let syncs = "kubeproxy_sync_proxy_rules_duration_seconds_count";
    let (syncs_before, services_before) =
        (metric(syncs).await?, metric("nodus_proxy_services").await?);

    let ip = env.web_pod("web").await?;
    let service = env.service("web", json!({})).await?;
    env.endpoints("web", &[ip]).await?;
    assert_eq!(
        answers(SocketAddr::new(cluster_ip(&service)?, 80), 1).await?,
        set(&["web"])
    );

    ensure!(metric(syncs).await? > syncs_before, "no sync was counted");
    ensure!(
        metric("nodus_proxy_services").await? >= services_before + 1.0,
        "the new Service is not counted"
    );
    ensure!(metric("nodus_proxy_rules").await? > 0.0, "no rules counted");
    ensure!(
        metric("kubeproxy_sync_partial_proxy_rules_duration_seconds_count").await? > 0.0,
        "changes after the first sync are applied in place"
    );
    let last = metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds").await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    ensure!(
        (now - last).abs() < 120.0,
        "the last sync ({last}) is not recent (now {now})"
    );
    env.finish().await
}
