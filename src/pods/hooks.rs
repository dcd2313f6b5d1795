//! Hooks: running a container's lifecycle handlers (exec, httpGet, sleep), as used by
//! the postStart hook after a container starts and the preStop hook before it is stopped.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodus_cri::Runtime;
use std::net::IpAddr;

use super::probe_http;

/// Upstream's User-Agent for lifecycle hooks.
const USER_AGENT: &str = "kube-lifecycle/1.37";

/// Why a hook failed, for the FailedPreStopHook / FailedPostStartHook event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("exec {command:?} exited with {code}: {output}")]
    ExecExit {
        command: Vec<String>,
        code: i32,
        output: String,
    },
    #[error("exec {command:?}: {message}")]
    Exec {
        command: Vec<String>,
        message: String,
    },
    #[error("HTTP GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unsupported or invalid hook: {0}")]
    Invalid(String),
}

/// Resolves a hook's port, by number or by the container's port name.
pub fn port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs a handler against a running container, within `timeout`.
pub async fn run(
    runtime: &Runtime,
    container_id: &str,
    container: &Container,
    pod_ip: &str,
    handler: &LifecycleHandler,
    timeout: Duration,
) -> Result<(), Error> {
    let work = async {
        if let Some(exec) = &handler.exec {
            let command = exec.command.clone().unwrap_or_default();
            let output = runtime
                .exec_sync(container_id, command.clone(), timeout)
                .await
                .map_err(|e| Error::Exec {
                    command: command.clone(),
                    message: e.runtime_message(),
                })?;
            if output.exit_code != 0 {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                return Err(Error::ExecExit {
                    command,
                    code: output.exit_code,
                    output: text.trim().to_owned(),
                });
            }
            Ok(())
        } else if let Some(http) = &handler.http_get {
            let port = port(container, &http.port)
                .ok_or_else(|| Error::Invalid(format!("port {:?}", http.port)))?;
            let host = http
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let https = match http.scheme.as_deref() {
                None | Some("HTTP") => false,
                Some("HTTPS") => true,
                Some(other) => return Err(Error::Invalid(format!("scheme {other}"))),
            };
            http_get(&host, port, https, &path, &probe_http::headers(http)).await
        } else if let Some(sleep) = &handler.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            Ok(())
        } else {
            Err(Error::Invalid(
                "no handler (exec, httpGet or sleep) given".into(),
            ))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

/// A GET over HTTP or HTTPS (certificates not verified, as upstream); success is a 2xx or
/// 3xx status, as for the kubelet's handlers.
pub async fn http_get(
    host: &str,
    port: u16,
    https: bool,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), Error> {
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{port}{path}");
    let fail = |message: String| Error::Http {
        url: url.clone(),
        message,
    };
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| fail(e.to_string()))?
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| fail("no address".into()))?,
    };
    let mut headers = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("User-Agent"))
    {
        headers.push(("User-Agent".into(), USER_AGENT.into()));
    }
    let target = probe_http::Target {
        ip,
        port,
        https,
        path: path.to_owned(),
    };
    let answer = probe_http::get(target, &headers)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if (200..400).contains(&answer.status) {
        Ok(())
    } else {
        Err(fail(format!("status {}", answer.status)))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ContainerPort;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn named_and_numbered_ports() {
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        assert_eq!(
            port(&container, &IntOrString::String("http".into())),
            Some(8080)
        );
        assert_eq!(port(&container, &IntOrString::Int(9090)), Some(9090));
        assert_eq!(port(&container, &IntOrString::String("none".into())), None);
    }

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        });
        port
    }

    #[tokio::test]
    async fn http_get_judges_by_status() {
        let ok = serve_once("204 No Content").await;
        assert_eq!(http_get("127.0.0.1", ok, false, "/quit", &[]).await, Ok(()));
        let bad = serve_once("500 Internal Server Error").await;
        let err = http_get("127.0.0.1", bad, false, "/quit", &[])
            .await
            .expect_err("500");
        assert!(err.to_string().ends_with("status 500"), "{err}");
    }
}
