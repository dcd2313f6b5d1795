//! Hooks: running a container's lifecycle handlers (exec, httpGet, sleep), as used by
//! the postStart hook after a container starts and the preStop hook before it is stopped.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodus_cri::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
            if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                return Err(Error::Invalid(
                    "only the HTTP scheme is supported for hooks".into(),
                ));
            }
            http_get(&host, port, &path).await
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

/// A plain HTTP/1.1 GET; success is a 2xx or 3xx status, as for the kubelet's handlers.
pub async fn http_get(host: &str, port: u16, path: &str) -> Result<(), Error> {
    let url = format!("http://{host}:{port}{path}");
    let fail = |message: String| Error::Http {
        url: url.clone(),
        message,
    };
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-lifecycle/1.37\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut head = vec![0u8; 64];
    let n = stream
        .read(&mut head)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail(format!("malformed response {status_line:?}")))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(fail(format!("status {code}")))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ContainerPort;
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
        assert_eq!(http_get("127.0.0.1", ok, "/quit").await, Ok(()));
        let bad = serve_once("500 Internal Server Error").await;
        let err = http_get("127.0.0.1", bad, "/quit").await.expect_err("500");
        assert!(err.to_string().ends_with("status 500"), "{err}");
    }
}
