//! HTTP probes as the kubelet runs them: a GET over HTTP or HTTPS (certificates are not
//! verified), following redirects while they stay on the probed host (at most 10). A
//! redirect elsewhere is not followed: the probe ends on that 3xx answer, which upstream
//! counts as a success with a warning that carries the response body.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::HTTPGetAction;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::probes::USER_AGENT;

/// Upstream's client gives up after this many redirects.
const MAX_REDIRECTS: usize = 10;
/// How much of a response body is kept (upstream reads 10 KiB).
const BODY_LIMIT: usize = 10 * 1024;
const HEAD_LIMIT: usize = 16 * 1024;

/// Where a probe's GET goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    pub https: bool,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// The last answer of a probe: its status, and for a 3xx its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The headers an httpGet action asks to send, as name and value.
pub fn headers(action: &HTTPGetAction) -> Vec<(String, String)> {
    action
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// One probe: GET `target`, following local redirects.
pub async fn get(mut target: Target, headers: &[(String, String)]) -> std::io::Result<Answer> {
    let mut redirects = 0;
    loop {
        let response = get_once(&target, headers).await?;
        if !(300..400).contains(&response.status) {
            return Ok(Answer {
                status: response.status,
                body: String::new(),
            });
        }
        let next = response
            .location
            .as_deref()
            .and_then(|location| resolve(&target, location));
        match next {
            Some(next) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                target = next;
            }
            Some(_) => {
                return Err(std::io::Error::other(format!(
                    "stopped after {MAX_REDIRECTS} redirects"
                )));
            }
            None => {
                return Ok(Answer {
                    status: response.status,
                    body: response.body,
                });
            }
        }
    }
}

/// Where a redirect leads, when it stays on the probed host (the kubelet compares host
/// names only: another port or scheme on the same host is still local).
fn resolve(from: &Target, location: &str) -> Option<Target> {
    let (https, rest) = if let Some(rest) = location.strip_prefix("http://") {
        (false, Some(rest))
    } else if let Some(rest) = location.strip_prefix("https://") {
        (true, Some(rest))
    } else if let Some(rest) = location.strip_prefix("//") {
        (from.https, Some(rest))
    } else {
        (from.https, None)
    };
    let Some(rest) = rest else {
        // A path on the same host: absolute, or relative to the current one's directory.
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let dir = from
                .path
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit_once('/'))
                .map_or("", |(dir, _)| dir);
            format!("{dir}/{location}")
        };
        return Some(Target {
            path,
            ..from.clone()
        });
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = split_host_port(authority)?;
    if host.parse::<IpAddr>().ok() != Some(from.ip) {
        return None;
    }
    let port = match port {
        Some(port) => port,
        None if https => 443,
        None => 80,
    };
    Some(Target {
        ip: from.ip,
        port,
        https,
        path,
    })
}

/// `host[:port]`, with IPv6 hosts in brackets.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let authority = authority.rsplit('@').next()?;
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

struct Response {
    status: u16,
    location: Option<String>,
    body: String,
}

async fn get_once(target: &Target, headers: &[(String, String)]) -> std::io::Result<Response> {
    let addr = SocketAddr::new(target.ip, target.port);
    let stream = TcpStream::connect(addr).await?;
    if target.https {
        let tls = super::probe_tls::connect(addr.ip(), stream).await?;
        exchange(tls, addr, &target.path, headers).await
    } else {
        exchange(stream, addr, &target.path, headers).await
    }
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<Response> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("User-Agent") {
        request.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;

    let mut data = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await?;
        // A server that closes early still gave its status line.
        if n == 0 || data.len() > HEAD_LIMIT {
            break data.len();
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("malformed HTTP response: {status_line:?}"))
        })?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let location = header("Location");
    if !(300..400).contains(&status) {
        return Ok(Response {
            status,
            location,
            body: String::new(),
        });
    }
    // The body only matters for a redirect that ends the probe (it goes into the warning).
    let length: Option<usize> = header("Content-Length").and_then(|l| l.parse().ok());
    let chunked = header("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let mut body = data[head_end..].to_vec();
    let wanted = length.unwrap_or(BODY_LIMIT).min(BODY_LIMIT);
    while body.len() < wanted && !(chunked && body.windows(5).any(|w| w == b"0\r\n\r\n")) {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    body.truncate(wanted);
    Ok(Response {
        status,
        location,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The data of a chunked body (as much of it as arrived).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|&s| s > 0) else {
            break;
        };
        let start = i + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = raw.get(end + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        Target {
            ip: "10.0.0.5".parse().expect("ip"),
            port: 8080,
            https: false,
            path: path.into(),
        }
    }

    #[test]
    fn redirects_stay_only_on_the_probed_host() {
        let from = target("/redirect?loc=%2Fhealthz");
        assert_eq!(resolve(&from, "/healthz"), Some(target("/healthz")));
        assert_eq!(resolve(&from, "healthz"), Some(target("/healthz")));
        assert_eq!(resolve(&target("/a/b"), "c?x=1"), Some(target("/a/c?x=1")));
        assert_eq!(
            resolve(&from, "https://10.0.0.5:8443/ok"),
            Some(Target {
                port: 8443,
                https: true,
                ..target("/ok")
            })
        );
        assert_eq!(
            resolve(&from, "http://10.0.0.5"),
            Some(Target {
                port: 80,
                ..target("/")
            })
        );
        assert_eq!(resolve(&from, "http://0.0.0.0/"), None);
        assert_eq!(resolve(&from, "http://example.com/healthz"), None);
        assert_eq!(resolve(&from, "//10.0.0.6/x"), None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(split_host_port("[fd00::1]:80"), Some(("fd00::1", Some(80))));
        assert_eq!(split_host_port("[fd00::1]"), Some(("fd00::1", None)));
        assert_eq!(split_host_port("host:x"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
            b"Wikipedia"
        );
    }

    /// A server answering each connection from `answers` in turn (path → response).
    async fn server(answers: Vec<(&'static str, String)>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for (path, answer) in answers {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut request = vec![0u8; 4096];
                let n = conn.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).into_owned();
                assert!(line.starts_with(&format!("GET {path} ")), "{line}");
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn local_redirects_are_followed_and_others_end_with_their_body() {
        let redirect = |to: &str| {
            let body = format!("<a href=\"{to}\">Found</a>.\n\n");
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let port = server(vec![
            ("/redirect", redirect("/healthz")),
            (
                "/healthz",
                "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".into(),
            ),
            ("/redirect", redirect("http://0.0.0.0/")),
        ])
        .await;
        let local = Target {
            ip: "127.0.0.1".parse().expect("ip"),
            port,
            https: false,
            path: "/redirect".into(),
        };
        let followed = get(local.clone(), &[]).await.expect("answer");
        assert_eq!(followed.status, 500, "the redirect's target decides");
        let offsite = get(local, &[]).await.expect("answer");
        assert_eq!(offsite.status, 302);
        assert_eq!(offsite.body, "<a href=\"http://0.0.0.0/\">Found</a>.\n\n");
    }
}
