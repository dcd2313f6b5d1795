//! Serve: nodus-control's `/healthz` and `/metrics` over plain HTTP on a local address
//! (`--healthz-bind-address`, 127.0.0.1:10257 by default), for probes and scrapers on the
//! control-plane machine. Upstream serves these over authenticated HTTPS; nodus-control keeps
//! them on loopback by default instead.
//!
//! Invariants: a slow or broken client only holds its own connection, for at most
//! [`READ_TIMEOUT`]; figures are read from a `watch` snapshot and never block the workers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether this replica holds the leader lease (always, without leader election).
    pub leading: bool,
    pub lease_name: String,
}

/// The answer to `path`: status code, content type and body.
pub fn reply(path: &str, status: &Status) -> (u16, &'static str, String) {
    match path {
        "/healthz" | "/livez" | "/readyz" => (200, "text/plain; charset=utf-8", "ok".into()),
        "/metrics" => {
            let body = format!(
                "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n\
                 # TYPE leader_election_master_status gauge\n\
                 leader_election_master_status{{name=\"{}\"}} {}\n",
                status.lease_name,
                u8::from(status.leading)
            );
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        _ => (
            404,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    }
}

/// Serves until `cancel`.
pub async fn run(address: SocketAddr, status: watch::Receiver<Status>, cancel: CancellationToken) {
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(err) => {
            warn!(%address, error = %err, "cannot serve /healthz and /metrics");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let status = status.borrow().clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let text = String::from_utf8_lossy(&head);
            let path = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (code, content_type, body) = reply(path, &status);
            let reason = if code == 200 { "OK" } else { "Not Found" };
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_leadership_are_reported() {
        let status = Status {
            leading: true,
            lease_name: "nodus-control".into(),
        };
        assert_eq!(reply("/healthz", &status).0, 200);
        let (code, _, body) = reply("/metrics", &status);
        assert_eq!(code, 200);
        assert!(body.contains("leader_election_master_status{name=\"nodus-control\"} 1\n"));
        assert_eq!(reply("/other", &status).0, 404);
    }
}
