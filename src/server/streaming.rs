//! Streaming: `/exec`, `/attach` and `/portForward`, the endpoints behind `kubectl exec`,
//! `kubectl attach`, `kubectl cp` and `kubectl port-forward`. As the kubelet does by default,
//! nodus asks the runtime for a streaming session (CRI `Exec`, `Attach`, `PortForward`), which
//! answers with a URL of its own streaming server, and proxies the client's upgraded connection
//! there: the runtime speaks the stream protocols (SPDY, WebSocket) itself.
//!
//! ```text
//!   apiserver ──Upgrade: SPDY/3.1──> nodus :10250 ──same request──> containerd stream server
//!             <──101 (its headers)──                <──101──
//!             <═════════════ bytes copied both ways until either side closes ═════════════>
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::bytes_util::{Body, body};

/// The largest response head accepted from the runtime's streaming server.
const HEAD_LIMIT: usize = 16 * 1024;

/// Decodes a query value (`%XX` and `+`), as Go's `url.ParseQuery` does.
pub fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&value[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of `key` in a query string, decoded, in order.
pub fn values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
        .collect()
}

/// Whether a boolean query flag is set (`stdin=1`, `stdin=true`).
pub fn flag(query: &str, key: &str) -> bool {
    values(query, key)
        .first()
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(body(message));
    *response.status_mut() = status;
    response
}

/// Proxies `request` (an upgrade) to the runtime's streaming `url`.
pub async fn proxy(
    mut request: Request<Incoming>,
    url: &str,
    sessions: &Arc<AtomicUsize>,
) -> Response<Body> {
    let Some(rest) = url.strip_prefix("http://") else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unsupported streaming URL from the runtime: {url}"),
        );
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut backend = match TcpStream::connect(authority).await {
        Ok(stream) => stream,
        Err(err) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("connecting to the runtime's streaming server {authority}: {err}"),
            );
        }
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut head = format!(
        "{} {path}{query} HTTP/1.1\r\nHost: {authority}\r\n",
        request.method()
    );
    for (name, value) in request.headers() {
        // The client's credentials were for us, not for the runtime.
        if name == hyper::header::HOST || name == hyper::header::AUTHORIZATION {
            continue;
        }
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    if let Err(err) = backend.write_all(head.as_bytes()).await {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("writing to the runtime: {err}"),
        );
    }

    // The runtime's answer: its head, and whatever of the stream followed it in the same read.
    let mut buffer = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        match backend.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "the runtime's streaming server closed the connection".into(),
                );
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > HEAD_LIMIT {
            return error(
                StatusCode::BAD_GATEWAY,
                "oversized response head from the runtime".into(),
            );
        }
    };
    let leftover = buffer.split_off(end);
    let head = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(body(Bytes::new()));
    *response.status_mut() = status;
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.trim().as_bytes()),
                hyper::header::HeaderValue::from_str(value.trim()),
            )
        {
            response.headers_mut().append(name, value);
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // A refusal (e.g. a bad request): pass its body on.
        let mut rest = leftover;
        let _ = backend.read_to_end(&mut rest).await;
        *response.body_mut() = body(rest);
        return response;
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let session = Session::open(sessions);
    tokio::spawn(async move {
        let _session = session;
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                debug!(error = %err, "the client's upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
            return;
        }
        // Either side going away ends the session: the stream protocols never half-close
        // the connection, so an end of input means the peer is gone, and waiting for the
        // other direction (a command that prints nothing) would keep the session forever.
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut backend_read, mut backend_write) = backend.into_split();
        tokio::select! {
            copied = tokio::io::copy(&mut client_read, &mut backend_write) => {
                debug!(?copied, "the client ended the stream");
            }
            copied = tokio::io::copy(&mut backend_read, &mut client_write) => {
                debug!(?copied, "the runtime ended the stream");
                let _ = client_write.shutdown().await;
            }
        }
    });
    response
}

/// Counts a proxied stream while it lives (`nodus_kubelet_api_streams`).
#[derive(Debug)]
struct Session(Arc<AtomicUsize>);

impl Session {
    fn open(sessions: &Arc<AtomicUsize>) -> Session {
        sessions.fetch_add(1, Ordering::Relaxed);
        Session(sessions.clone())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_as_go_does() {
        let q = "command=sh&command=-c&command=echo+hi%20there%21&stdin=1&tty=false";
        assert_eq!(values(q, "command"), ["sh", "-c", "echo hi there!"]);
        assert!(flag(q, "stdin"));
        assert!(!flag(q, "tty"));
        assert!(!flag(q, "stdout"));
        assert_eq!(decode("100%"), "100%");
    }
}
