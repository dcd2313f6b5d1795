//! The kubelet API server on port 10250 (`--address`, `--port`): HTTPS, every request
//! authenticated and authorized (see [`auth`]), serving `/healthz`, `/pods` and
//! `/containerLogs/{namespace}/{pod}/{container}`, the endpoint behind `kubectl logs`.
//!
//! ```text
//!   kubectl logs ─> kube-apiserver ─(its kubelet client certificate)─> :10250
//!     TLS (client CA) ─> who: cert CN/O | TokenReview | anonymous? ─> SubjectAccessReview
//!       (nodes/<subresource>, cached) ─> route ─> CRI log files under --pod-logs-dir
//! ```
//!
//! Invariants: nothing is served before authentication and authorization; a failed TLS
//! handshake or a slow client never affects other connections; the server stops with its token.

pub mod auth;
pub mod logs;
pub mod streaming;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes_util::{Body, body};
use hyper::body::{Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use nodus_cri::Runtime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::auth::{Gate, Refusal, User};
use crate::pods::housekeeping::Paths;
use crate::pods::metadata::{CONTAINER_NAME, POD_UID};
use crate::stats::Collector;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a followed log is checked for new lines and for its container's end.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long a `/run` command may take (the kubelet's streaming idle timeout).
const RUN_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub address: SocketAddr,
    pub tls: tls::Serving,
    pub client_ca: Option<PathBuf>,
    pub anonymous_auth: bool,
    pub node_name: String,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// The body of `/configz`.
    pub configz: serde_json::Value,
}

/// Response bodies: whole, or streamed (followed logs).
mod bytes_util {
    use super::*;
    pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    pub fn body(data: impl Into<Bytes>) -> Body {
        use http_body_util::BodyExt;
        http_body_util::Full::new(data.into()).boxed()
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(body(message.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What every request handler shares.
struct Shared {
    gate: Gate,
    client: Client,
    runtime: Runtime,
    settings: Settings,
    metrics: Arc<crate::metrics::Kubelet>,
    stats: Arc<Collector>,
    /// Streams being proxied to the runtime now.
    streams: Arc<AtomicUsize>,
}

/// Serves until `cancel`; a bind failure is retried with backoff.
pub async fn run(
    client: Client,
    runtime: Runtime,
    metrics: Arc<crate::metrics::Kubelet>,
    settings: Settings,
    cancel: CancellationToken,
) {
    let config = match tls::config(&settings.tls, settings.client_ca.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            warn!(error = %crate::node::runtime::error_chain(&err), "the kubelet API cannot serve TLS; not serving");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(config);
    let Some(listener) = crate::listen::bind(settings.address, "kubelet API", &cancel).await else {
        return;
    };
    let stats = Arc::new(Collector::new(
        runtime.clone(),
        settings.node_name.clone(),
        Paths {
            root_dir: settings.root_dir.clone(),
            pod_logs_dir: settings.pod_logs_dir.clone(),
        },
    ));
    let sampler = stats.clone();
    let sampling = cancel.clone();
    tokio::spawn(async move { sampler.sample(sampling).await });
    let shared = Arc::new(Shared {
        gate: Gate::new(
            client.clone(),
            settings.node_name.clone(),
            settings.anonymous_auth,
        ),
        client,
        runtime,
        settings,
        metrics,
        stats,
        streams: Arc::new(AtomicUsize::new(0)),
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (acceptor, shared, cancel) = (acceptor.clone(), shared.clone(), cancel.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(tls::identity)
                .map(|(name, groups)| User { name, groups });
            let service = service_fn(move |request| {
                let (shared, certificate) = (shared.clone(), certificate.clone());
                async move { Ok::<_, Infallible>(handle(&shared, certificate, request).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => if let Err(err) = result {
                    debug!(%peer, error = %err, "kubelet API connection ended with an error");
                },
                _ = cancel.cancelled() => {}
            }
        });
    }
    connections.shutdown().await;
}

async fn handle(
    shared: &Shared,
    certificate: Option<User>,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let user = match shared
        .gate
        .authenticate(certificate, bearer.as_deref())
        .await
    {
        Ok(user) => user,
        Err(refusal) => return refused(refusal),
    };
    let path = request.uri().path().to_owned();
    let attributes = auth::attributes(request.method(), &path);
    if let Err(refusal) = shared.gate.authorize(&user, &attributes).await {
        return refused(refusal);
    }
    let query = request.uri().query().unwrap_or_default().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["configz"] => json(serde_json::to_string(&shared.settings.configz)),
        ["pods"] | ["pods", ""] => pods(shared).await,
        ["metrics"] => prometheus(metrics(shared).await),
        ["metrics", "resource"] => {
            let summary = shared.stats.summary().await;
            prometheus(crate::stats::resource::render(&summary, Timestamp::now()))
        }
        ["stats", "summary"] | ["stats", "summary", ""] => {
            json(serde_json::to_string(&shared.stats.summary().await))
        }
        ["run", namespace, pod, container] if request.method() == hyper::Method::POST => {
            run_command(shared, namespace, pod, container, &query).await
        }
        ["containerLogs", namespace, pod, container] => {
            container_logs(shared, namespace, pod, container, &query).await
        }
        ["exec" | "attach", namespace, pod, container] => {
            let exec = parts[0] == "exec";
            let (namespace, pod, container) = (
                namespace.to_string(),
                pod.to_string(),
                container.to_string(),
            );
            match stream_url(shared, exec, &namespace, &pod, &container, &query).await {
                Ok(url) => streaming::proxy(request, &url, &shared.streams).await,
                Err(response) => response,
            }
        }
        ["portForward", namespace, pod] => {
            let (namespace, pod) = (namespace.to_string(), pod.to_string());
            match port_forward_url(shared, &namespace, &pod, &query).await {
                Ok(url) => streaming::proxy(request, &url, &shared.streams).await,
                Err(response) => response,
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn prometheus(text: String) -> Response<Body> {
    let mut response = Response::new(body(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(encoded: serde_json::Result<String>) -> Response<Body> {
    match encoded {
        Ok(text) => {
            let mut response = Response::new(body(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// The kubelet role's `/metrics`: what was recorded plus what the runtime runs now.
async fn metrics(shared: &Shared) -> String {
    let mut counts = crate::metrics::RuntimeCounts::default();
    if let Ok(sandboxes) = shared.runtime.list_pod_sandboxes(None).await {
        counts.running_pods = sandboxes
            .iter()
            .filter(|s| s.state == nodus_cri::api::PodSandboxState::SandboxReady as i32)
            .count();
    }
    if let Ok(containers) = shared.runtime.list_containers(None).await {
        use nodus_cri::api::ContainerState;
        for c in containers {
            let state = match ContainerState::try_from(c.state) {
                Ok(ContainerState::ContainerRunning) => "running",
                Ok(ContainerState::ContainerExited) => "exited",
                Ok(ContainerState::ContainerCreated) => "created",
                _ => "unknown",
            };
            *counts.containers.entry(state).or_default() += 1;
        }
    }
    let mut text = shared.metrics.render(&shared.settings.node_name, &counts);
    crate::metrics::single(
        &mut text,
        "nodus_kubelet_api_streams",
        "Exec, attach and port-forward streams being proxied to the runtime",
        "gauge",
        shared.streams.load(Ordering::Relaxed),
    );
    text
}

/// `/run`: a command run to completion in a container (CRI ExecSync), its output as the answer.
async fn run_command(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let command: Vec<String> = streaming::values(query, "cmd")
        .iter()
        .flat_map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "missing the cmd parameter");
    }
    let id = match running_container(shared, namespace, name, container).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    match shared.runtime.exec_sync(&id, command, RUN_TIMEOUT).await {
        Ok(output) => {
            let mut all = output.stdout;
            all.extend_from_slice(&output.stderr);
            text(StatusCode::OK, String::from_utf8_lossy(&all).into_owned())
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.runtime_message()),
    }
}

fn refused(refusal: Refusal) -> Response<Body> {
    let status = match refusal {
        Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
        Refusal::Unavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, refusal.to_string())
}

/// The pod, from the API (a name may have been reused), if it is bound to this node: the
/// kubelet answers only for its own pods.
async fn own_pod(shared: &Shared, namespace: &str, name: &str) -> Result<Pod, Response<Body>> {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(mut pod))
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                == Some(shared.settings.node_name.as_str()) =>
        {
            // A mirror pod stands for a static pod, which the runtime knows by its own UID.
            if let Some(hash) =
                crate::pods::static_pods::annotation(&pod, crate::pods::static_pods::CONFIG_MIRROR)
            {
                pod.metadata.uid = Some(hash.to_owned());
            }
            Ok(pod)
        }
        // The Node authorizer forbids reading another node's pods: that, too, is "not here".
        Ok(_) => Err(not_here(namespace, name)),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(not_here(namespace, name)),
        Err(err) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    }
}

fn not_here(namespace: &str, name: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("pod \"{namespace}/{name}\" does not exist on this node"),
    )
}

/// The pod's UID, if it is bound to this node.
async fn pod_uid(shared: &Shared, namespace: &str, name: &str) -> Result<String, Response<Body>> {
    Ok(own_pod(shared, namespace, name)
        .await?
        .metadata
        .uid
        .unwrap_or_default())
}

/// The runtime ID of the pod's container of that name, if it is running.
async fn running_container(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &str,
) -> Result<String, Response<Body>> {
    let pod = own_pod(shared, namespace, name).await?;
    let declared = pod.spec.iter().any(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == container)
            || spec
                .ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !declared {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{namespace}/{name}\""),
        ));
    }
    let uid = pod.metadata.uid.unwrap_or_default();
    running_id(&shared.runtime, &uid, container)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.runtime_message()))?
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {namespace}/{name}"),
            )
        })
}

/// A streaming session for exec or attach, prepared by the runtime.
async fn stream_url(
    shared: &Shared,
    exec: bool,
    namespace: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Result<String, Response<Body>> {
    let id = running_container(shared, namespace, name, container).await?;
    // The kubelet's parameter names, as the API server sends them.
    let (stdin, stdout, stderr, tty) = (
        streaming::flag(query, "input"),
        streaming::flag(query, "output"),
        streaming::flag(query, "error"),
        streaming::flag(query, "tty"),
    );
    let url = if exec {
        let cmd = streaming::values(query, "command");
        if cmd.is_empty() {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "you must specify at least one command",
            ));
        }
        shared
            .runtime
            .exec(nodus_cri::api::ExecRequest {
                container_id: id,
                cmd,
                tty,
                stdin,
                stdout,
                stderr: stderr && !tty,
            })
            .await
    } else {
        shared
            .runtime
            .attach(nodus_cri::api::AttachRequest {
                container_id: id,
                stdin,
                tty,
                stdout,
                stderr: stderr && !tty,
            })
            .await
    };
    url.map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.runtime_message()))
}

/// A port-forwarding session into the pod's sandbox, prepared by the runtime.
async fn port_forward_url(
    shared: &Shared,
    namespace: &str,
    name: &str,
    query: &str,
) -> Result<String, Response<Body>> {
    let uid = pod_uid(shared, namespace, name).await?;
    let filter = nodus_cri::api::PodSandboxFilter {
        label_selector: [(POD_UID.to_owned(), uid)].into(),
        ..nodus_cri::api::PodSandboxFilter::default()
    };
    let sandbox = shared
        .runtime
        .list_pod_sandboxes(Some(filter))
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.runtime_message()))?
        .into_iter()
        .find(|s| s.state == nodus_cri::api::PodSandboxState::SandboxReady as i32)
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("pod {namespace}/{name} has no running sandbox"),
            )
        })?;
    let ports: Vec<i32> = streaming::values(query, "port")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    shared
        .runtime
        .port_forward(&sandbox.id, ports)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.runtime_message()))
}

/// The pods bound to this node, as a PodList.
async fn pods(shared: &Shared) -> Response<Body> {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let params =
        ListParams::default().fields(&format!("spec.nodeName={}", shared.settings.node_name));
    match api.list(&params).await {
        Ok(list) => {
            let json = serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": list.items,
            });
            let mut response = Response::new(body(json.to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn container_logs(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let options = match logs::Options::from_query(query, Timestamp::now()) {
        Ok(options) => options,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let pod = match own_pod(shared, namespace, name).await {
        Ok(pod) => pod,
        Err(response) => return response,
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_dir = shared
        .settings
        .pod_logs_dir
        .join(format!("{namespace}_{name}_{uid}"));
    let files = logs::attempts(&pod_dir, container);
    let chosen = if options.previous {
        files.len().checked_sub(2).and_then(|i| files.get(i))
    } else {
        files.last()
    };
    let Some(file) = chosen.cloned() else {
        let message = if options.previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    let text_now = tokio::fs::read_to_string(&file).await.unwrap_or_default();
    let rendered = logs::render(&text_now, &options);
    if !options.follow || options.previous {
        return chunked_log(rendered);
    }
    follow(
        shared,
        file,
        text_now.len() as u64,
        rendered,
        options,
        uid,
        container.to_owned(),
    )
    .await
}

/// A whole log, sent as the kubelet sends it: chunked, the data flushed before the end of the
/// body. The API server's WebSocket log stream (`kubectl logs` over WebSocket, the e2e
/// suite's "retrieving logs over websockets") drops the data of a read that also returns
/// end-of-file, which a body of known length does on its last read, and so does a chunked
/// one whose end arrives with its data: a short log would arrive empty.
/// How long a whole log's data goes ahead of the end of its body (see [`chunked_log`]).
const LOG_END_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

fn chunked_log(rendered: String) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = futures::stream::unfold(Some(rendered), |state| async move {
        match state {
            Some(text) => Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), None)),
            None => {
                // The data goes out on its own; the end follows it.
                tokio::time::sleep(LOG_END_DELAY).await;
                None
            }
        }
    });
    let body = http_body_util::StreamBody::new(body).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Streams the log as it grows until the container is no longer running (or the client
/// goes away, which closes the channel).
async fn follow(
    shared: &Shared,
    file: PathBuf,
    mut offset: u64,
    first: String,
    options: logs::Options,
    uid: String,
    container: String,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let runtime = shared.runtime.clone();
    tokio::spawn(async move {
        let mut sent = first.len();
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut pending = String::new();
        let tail_done = logs::Options {
            tail_lines: None,
            since: None,
            ..options.clone()
        };
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let mut chunk = String::new();
            if let Ok(mut f) = tokio::fs::File::open(&file).await
                && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                && let Ok(n) = f.read_to_string(&mut chunk).await
            {
                offset += n as u64;
            }
            if !chunk.is_empty() {
                pending.push_str(&chunk);
                // Only whole records; a record still being written waits for the next round.
                let cut = pending.rfind('\n').map_or(0, |i| i + 1);
                let ready: String = pending.drain(..cut).collect();
                let mut out = logs::render(&ready, &tail_done);
                if let Some(limit) = options.limit_bytes {
                    out.truncate(limit.saturating_sub(sent));
                }
                sent += out.len();
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    return;
                }
                if options.limit_bytes.is_some_and(|l| sent >= l) {
                    return;
                }
                continue;
            }
            if !running(&runtime, &uid, &container).await || tx.is_closed() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(http_body_util::StreamBody::new(stream).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The runtime ID of the pod's running container of that name, if any.
async fn running_id(
    runtime: &Runtime,
    uid: &str,
    container: &str,
) -> Result<Option<String>, nodus_cri::Error> {
    let filter = nodus_cri::api::ContainerFilter {
        label_selector: [
            (POD_UID.to_owned(), uid.to_owned()),
            (CONTAINER_NAME.to_owned(), container.to_owned()),
        ]
        .into(),
        ..nodus_cri::api::ContainerFilter::default()
    };
    Ok(runtime
        .list_containers(Some(filter))
        .await?
        .into_iter()
        .find(|c| c.state == nodus_cri::api::ContainerState::ContainerRunning as i32)
        .map(|c| c.id))
}

/// Whether the pod's container of that name is running now.
async fn running(runtime: &Runtime, uid: &str, container: &str) -> bool {
    matches!(running_id(runtime, uid, container).await, Ok(Some(_)))
}
