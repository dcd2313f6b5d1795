//! The kubelet API on 10250 as users reach it: `kubectl logs` through the stock API server
//! (with `--tail`, `--limit-bytes`, `--timestamps`, `--previous`, `-f`), exec, cp, attach and
//! port-forward; the server's own door (no credentials or a stranger's certificate is 401, a
//! token without the right is 403, on every endpoint); clear 4xx answers to bad requests; and
//! no leftovers from clients that vanish mid-stream.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use nodus_e2e::pods::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn kubectl_logs_shows_the_output_with_its_options() -> Result<()> {
    let (cluster, ns, node) = setup("api-logs").await?;
    // stdout and stderr reach the log through separate pipes: the pause keeps their order.
    let script = "for i in 1 2 3; do echo line $i; done; sleep 1; echo oops >&2; sleep 3600";
    ns.create_pod(&node, pod("talker", "Always", json!([sh("app", script)])))
        .await?;
    let logs = |extra: &[&str]| {
        let mut args = vec!["logs", "-n", &ns.name, "talker"];
        args.extend_from_slice(extra);
        cluster.kubectl(&args)
    };
    let all = nodus_e2e::poll(WAIT, "the pod's output", || async {
        Ok(logs(&[]).ok().filter(|l| l.ends_with("oops\n")))
    })
    .await?;
    assert_eq!(all, "line 1\nline 2\nline 3\noops\n");
    assert_eq!(logs(&["--tail", "2"])?, "line 3\noops\n");
    assert_eq!(logs(&["--limit-bytes", "4"])?, "line");
    let stamped = logs(&["--tail", "1", "--timestamps"])?;
    let (time, rest) = stamped.split_once(' ').context("a timestamp")?;
    ensure!(
        time.len() == "2026-11-26T10:08:33.036070971Z".len() && time.ends_with('Z'),
        "{stamped:?}"
    );
    assert_eq!(rest, "oops\n");
    let previous = cluster.kubectl(&["logs", "-n", &ns.name, "talker", "--previous"]);
    let err = previous.expect_err("no previous container yet").to_string();
    ensure!(
        err.contains("previous terminated container \"app\" in pod \"talker\" not found"),
        "{err}"
    );
    // The same log over a WebSocket, as the API server serves it to WebSocket clients (the
    // upstream suite's "retrieving logs over websockets"): a short log must arrive whole.
    let url = format!(
        "https://127.0.0.1:6443/api/v1/namespaces/{}/pods/talker/log?container=app",
        ns.name
    );
    let output = Command::new("curl")
        .args(["--http1.1", "-s", "-N", "--max-time", "10", "--cacert"])
        .arg(cluster.ca_cert())
        .arg("--cert")
        .arg(cluster.pki("admin.crt"))
        .arg("--key")
        .arg(cluster.pki("admin.key"))
        .args([
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
            "-H",
            "Sec-WebSocket-Protocol: binary.k8s.io",
            &url,
        ])
        .output()?;
    let frames = String::from_utf8_lossy(&output.stdout);
    ensure!(
        frames.contains("line 1\nline 2\nline 3\noops\n"),
        "the log in WebSocket frames: {frames:?}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn previous_logs_come_from_the_container_before_the_restart() -> Result<()> {
    let (cluster, ns, node) = setup("api-previous").await?;
    // Each run says which one it is, counting in an emptyDir that outlives restarts.
    let script = "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; \
                  echo run $n; [ $n -ge 2 ] && exec sleep 3600; exit 1";
    let mut spec = pod("twice", "Always", json!([sh("app", script)]));
    spec["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/data" }]);
    spec["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    ns.create_pod(&node, spec).await?;
    wait_pod(&ns, "twice", WAIT, "the second run", |p| {
        let c = container(p, "app")?;
        (c.restart_count >= 1 && c.state.as_ref()?.running.is_some()).then_some(())
    })
    .await?;
    let current = nodus_e2e::poll(WAIT, "the second run's output", || async {
        Ok(cluster
            .kubectl(&["logs", "-n", &ns.name, "twice"])
            .ok()
            .filter(|l| !l.is_empty()))
    })
    .await?;
    assert_eq!(current, "run 2\n");
    let previous = cluster.kubectl(&["logs", "-n", &ns.name, "twice", "--previous"])?;
    assert_eq!(previous, "run 1\n");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn following_logs_streams_until_the_container_exits() -> Result<()> {
    let (cluster, ns, node) = setup("api-follow").await?;
    let script = "echo start; sleep 2; for i in 1 2 3; do echo tick $i; sleep 0.5; done";
    ns.create_pod(&node, pod("ticker", "Never", json!([sh("app", script)])))
        .await?;
    wait_pod(&ns, "ticker", WAIT, "ticker to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    // `kubectl logs -f` returns only when the stream ends: when the container exits.
    let kubeconfig = cluster.admin_kubeconfig();
    let name = ns.name.clone();
    let followed = tokio::task::spawn_blocking(move || {
        nodus_e2e::kubectl(&kubeconfig, &["logs", "-f", "-n", &name, "ticker"])
    });
    let output = tokio::time::timeout(WAIT, followed)
        .await
        .context("kubectl logs -f did not end with the container")???;
    assert_eq!(output, "start\ntick 1\ntick 2\ntick 3\n");
    ns.delete_pods().await
}

/// Who knocks on the kubelet API's door.
enum Caller<'a> {
    Nobody,
    Token(&'a str),
    /// A client certificate and key (PEM files).
    Certificate(&'a std::path::Path, &'a std::path::Path),
}

/// The HTTP status of a request to the node's kubelet API.
fn status(method: &str, url: &str, caller: &Caller) -> Result<String> {
    let mut curl = Command::new("curl");
    curl.args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
        url,
    ]);
    match caller {
        Caller::Nobody => {}
        Caller::Token(token) => {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        Caller::Certificate(cert, key) => {
            curl.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    let output = curl.output().context("running curl")?;
    Ok(String::from_utf8(output.stdout)?)
}

/// Every endpoint the server has, with the method it takes.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/pods"),
    ("GET", "/stats/summary"),
    ("GET", "/metrics"),
    ("GET", "/metrics/resource"),
    ("GET", "/containerLogs/default/some-pod/app"),
    ("POST", "/run/default/some-pod/app?cmd=ls"),
    ("POST", "/exec/default/some-pod/app?command=ls&output=1"),
    ("POST", "/attach/default/some-pod/app?output=1"),
    ("POST", "/portForward/default/some-pod"),
];

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn the_kubelet_api_turns_away_strangers() -> Result<()> {
    let (cluster, ns, _node) = setup("api-auth").await?;
    let node_ip = std::env::var("NODUS_E2E_NODE_IP").context("NODUS_E2E_NODE_IP")?;
    let base = format!("https://{node_ip}:10250");
    // A real token of an account with no rights on nodes: authenticated, then refused.
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.pods().into_client(), &ns.name);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await?;
    let token = issued
        .status
        .and_then(|s| s.token)
        .context("the issued token")?;
    // A certificate naming the API server's kubelet-client identity, but from a CA the
    // kubelet API does not trust.
    let dir = tempfile::tempdir()?;
    let (cert, key) = (
        dir.path().join("stranger.crt"),
        dir.path().join("stranger.key"),
    );
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=kube-apiserver-kubelet-client/O=system:masters",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    ensure!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    for (method, path) in ENDPOINTS {
        let url = format!("{base}{path}");
        assert_eq!(
            status(method, &url, &Caller::Nobody)?,
            "401",
            "no credentials: {path}"
        );
        assert_eq!(
            status(method, &url, &Caller::Token("not-a-token"))?,
            "401",
            "a bad token: {path}"
        );
        assert_eq!(
            status(method, &url, &Caller::Token(&token))?,
            "403",
            "a token without rights: {path}"
        );
        // The handshake itself may refuse the unknown issuer (curl reports 000), or the
        // request is unauthenticated: either way nothing is served.
        let stranger = status(method, &url, &Caller::Certificate(&cert, &key))?;
        ensure!(
            stranger == "401" || stranger == "000",
            "a certificate from an unknown CA got {stranger} on {path}"
        );
    }
    // The API server's own identity gets in.
    let (client_cert, client_key) = (
        cluster.pki("apiserver-kubelet-client.crt"),
        cluster.pki("apiserver-kubelet-client.key"),
    );
    let admitted = Caller::Certificate(&client_cert, &client_key);
    for path in [
        "/pods",
        "/stats/summary",
        "/metrics",
        "/metrics/resource",
        "/healthz",
    ] {
        assert_eq!(
            status("GET", &format!("{base}{path}"), &admitted)?,
            "200",
            "{path}"
        );
    }
    Ok(())
}

/// The status and body of a request made with the API server's kubelet-client identity.
fn as_apiserver(cluster: &nodus_e2e::Cluster, method: &str, url: &str) -> Result<(String, String)> {
    let output = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", "-X", method, url])
        .arg("--cert")
        .arg(cluster.pki("apiserver-kubelet-client.crt"))
        .arg("--key")
        .arg(cluster.pki("apiserver-kubelet-client.key"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.to_owned(), body.to_owned()))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn bad_requests_get_a_clear_client_error() -> Result<()> {
    let (cluster, ns, node) = setup("api-bad").await?;
    ns.create_pod(
        &node,
        pod("box", "Always", json!([sh("app", "sleep 3600")])),
    )
    .await?;
    // A pod bound to another node: this node's kubelet API does not serve it.
    ns.create_pod(
        "elsewhere",
        pod("away", "Always", json!([sh("app", "sleep 3600")])),
    )
    .await?;
    wait_pod(&ns, "box", WAIT, "box to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let node_ip = std::env::var("NODUS_E2E_NODE_IP").context("NODUS_E2E_NODE_IP")?;
    let base = format!("https://{node_ip}:10250");
    let n = &ns.name;
    for (method, path, code, says) in [
        (
            "POST",
            format!("/exec/{n}/box/nope?command=ls&output=1"),
            "404",
            "container \"nope\" not found",
        ),
        (
            "POST",
            format!("/run/{n}/box/nope?cmd=ls"),
            "404",
            "container \"nope\" not found",
        ),
        (
            "GET",
            format!("/containerLogs/{n}/away/app"),
            "404",
            "does not exist on this node",
        ),
        (
            "POST",
            format!("/exec/{n}/away/app?command=ls&output=1"),
            "404",
            "does not exist on this node",
        ),
        (
            "GET",
            format!("/containerLogs/{n}/box/app?tailLines=many"),
            "400",
            "tailLines",
        ),
        (
            "GET",
            format!("/containerLogs/{n}/box/app?sinceSeconds=-5"),
            "400",
            "sinceSeconds",
        ),
        (
            "POST",
            format!("/exec/{n}/box/app?output=1"),
            "400",
            "command",
        ),
        ("POST", format!("/run/{n}/box/app"), "400", "cmd"),
        (
            "GET",
            "/no/such/endpoint".to_owned(),
            "404",
            "404 page not found",
        ),
    ] {
        let (status, body) = as_apiserver(&cluster, method, &format!("{base}{path}"))?;
        assert_eq!(status, code, "{method} {path}: {body}");
        ensure!(
            body.contains(says),
            "{method} {path} says {body:?}, not {says:?}"
        );
    }
    // Through the API server as users meet it.
    let (code, _, err) = kubectl_raw(
        &cluster,
        &["exec", "-n", n, "box", "-c", "nope", "--", "ls"],
        "",
    )?;
    ensure!(
        code != 0 && err.contains("nope"),
        "kubectl exec into a missing container: {err}"
    );
    // And /run works for a good request.
    let (status, body) = as_apiserver(
        &cluster,
        "POST",
        &format!("{base}/run/{n}/box/app?cmd=echo+ran+here"),
    )?;
    assert_eq!((status.as_str(), body.as_str()), ("200", "ran here\n"));
    // No kubelet runs the pod of the other node to confirm its deletion: force it.
    let force = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..kube::api::DeleteParams::default()
    };
    ns.pods().delete("away", &force).await?;
    ns.delete_pods().await
}

/// Open file descriptors of a process.
fn open_fds(pid: i32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// `nodus_kubelet_api_streams` from the node's `/metrics`.
fn streams(cluster: &nodus_e2e::Cluster, node: &str) -> Result<u64> {
    let text = cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics"),
    ])?;
    text.lines()
        .find_map(|l| l.strip_prefix("nodus_kubelet_api_streams "))
        .context("nodus_kubelet_api_streams in /metrics")?
        .trim()
        .parse()
        .context("a count")
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn clients_that_vanish_mid_stream_leave_nothing_behind() -> Result<()> {
    let (cluster, ns, node) = setup("api-vanish").await?;
    ns.create_pod(
        &node,
        pod("box", "Always", json!([sh("app", "sleep 3600")])),
    )
    .await?;
    wait_pod(&ns, "box", WAIT, "box to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let nodus = cluster.pid("nodus")?;
    let fds_before = open_fds(nodus)?;
    let kubeconfig = cluster.admin_kubeconfig();
    for round in 0..100 {
        // `cat` waits on its stdin forever: the stream only ends because the client goes.
        let mut exec = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "exec",
                "-i",
                "-n",
                &ns.name,
                "box",
                "--",
                "sh",
                "-c",
                "echo up; exec cat",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut stdout = exec.stdout.take().context("exec's stdout")?;
        let up = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = [0u8; 16];
            matches!(stdout.read(&mut buf), Ok(n) if n > 0)
        });
        let up = tokio::time::timeout(Duration::from_secs(20), up).await;
        let _ = exec.kill();
        let _ = exec.wait();
        ensure!(
            matches!(up, Ok(Ok(true))),
            "round {round}: the stream never started"
        );
    }
    nodus_e2e::poll(Duration::from_secs(30), "every stream to close", || async {
        let open = streams(&cluster, &node)?;
        let fds = open_fds(nodus)?;
        // A few descriptors come and go with ordinary work (API watches, runtime calls).
        Ok((open == 0 && fds <= fds_before + 8).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "streams open: {:?}, descriptors {:?} (before: {fds_before})",
            streams(&cluster, &node).ok(),
            open_fds(nodus).ok()
        )
    })?;
    // The runtime ended each exec when its stream went: no `cat` is left in the container.
    let left = nodus_e2e::poll(Duration::from_secs(30), "the execs to end", || async {
        let (_, out, _) = kubectl_raw(
            &cluster,
            &["exec", "-n", &ns.name, "box", "--", "ps", "-o", "comm"],
            "",
        )?;
        let cats = out.lines().filter(|l| l.trim() == "cat").count();
        Ok((cats == 0).then_some(cats))
    })
    .await;
    ensure!(left.is_ok(), "exec processes outlived their streams");
    ns.delete_pods().await
}

/// `kubectl ARGS` with the admin kubeconfig and `input` on stdin: (exit code, stdout, stderr).
/// Blocking: the tests' runtime has nothing else to do meanwhile.
fn kubectl_raw(
    cluster: &nodus_e2e::Cluster,
    args: &[&str],
    input: &str,
) -> Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn kubectl_exec_cp_and_attach_reach_the_container() -> Result<()> {
    let (cluster, ns, node) = setup("api-exec").await?;
    let script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done";
    ns.create_pod(&node, pod("box", "Always", json!([sh("app", script)])))
        .await?;
    wait_pod(&ns, "box", WAIT, "box to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let (code, out, err) = kubectl_raw(
        &cluster,
        &[
            "exec",
            "-n",
            &ns.name,
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        "",
    )?;
    // kubectl adds its own line about the exit code to stderr.
    assert_eq!((code, out.as_str()), (3, "out\n"), "exec: {err}");
    ensure!(err.starts_with("err\n"), "the command's stderr: {err:?}");

    let (code, out, _) = kubectl_raw(
        &cluster,
        &["exec", "-i", "-n", &ns.name, "box", "--", "cat"],
        "hello\nstdin\n",
    )?;
    assert_eq!(
        (code, out.as_str()),
        (0, "hello\nstdin\n"),
        "exec with stdin"
    );

    // kubectl cp streams a tar through exec's stdin.
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("note.txt");
    std::fs::write(&local, "copied in\n")?;
    let target = format!("{}/box:/tmp/note.txt", ns.name);
    let local_arg = local.to_string_lossy().into_owned();
    let (code, _, err) = kubectl_raw(&cluster, &["cp", &local_arg, &target], "")?;
    assert_eq!(code, 0, "kubectl cp: {err}");
    let (_, out, _) = kubectl_raw(
        &cluster,
        &["exec", "-n", &ns.name, "box", "--", "cat", "/tmp/note.txt"],
        "",
    )?;
    assert_eq!(out, "copied in\n");
    // And out again: kubectl cp reads a tar from exec's stdout.
    let back = dir.path().join("back.txt");
    let back_arg = back.to_string_lossy().into_owned();
    let (code, _, err) = kubectl_raw(&cluster, &["cp", &target, &back_arg], "")?;
    assert_eq!(code, 0, "kubectl cp out: {err}");
    assert_eq!(std::fs::read_to_string(&back)?, "copied in\n");

    // attach follows the main process's output; it runs until stopped.
    let mut attach = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args(["attach", "-n", &ns.name, "box"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdout = attach.stdout.take().context("attach's stdout")?;
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut text = String::new();
        while !text.contains("tick") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let seen = tokio::time::timeout(Duration::from_secs(20), seen).await;
    let _ = attach.kill();
    let _ = attach.wait();
    let seen = seen.context("attach showed nothing")??;
    ensure!(seen.contains("tick"), "attach: {seen:?}");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn kubectl_port_forward_reaches_the_pods_port() -> Result<()> {
    let (cluster, ns, node) = setup("api-forward").await?;
    let web = sh(
        "web",
        "mkdir -p /www && echo forwarded > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    ns.create_pod(&node, pod("web", "Always", json!([web])))
        .await?;
    wait_pod(&ns, "web", WAIT, "web to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let mut forward = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args(["port-forward", "-n", &ns.name, "pod/web", "18089:8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let answer = nodus_e2e::poll(
        Duration::from_secs(30),
        "the forwarded port to answer",
        || async {
            Ok(tokio::task::spawn_blocking(|| {
                let output = Command::new("curl")
                    .args(["-s", "--max-time", "2", "http://127.0.0.1:18089/"])
                    .output()
                    .ok()?;
                let body = String::from_utf8_lossy(&output.stdout).into_owned();
                (!body.is_empty()).then_some(body)
            })
            .await?)
        },
    )
    .await;
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(answer?, "forwarded\n");
    ns.delete_pods().await
}

/// The rotated files of the pod's container log, sorted.
fn rotated_logs(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> Vec<String> {
    let dir = std::path::Path::new("/var/lib/nodus-e2e/pod-logs")
        .join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        ))
        .join(container);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".log."))
        .collect();
    names.sort();
    names
}

async fn rotation(
    cluster: &nodus_e2e::Cluster,
    ns: &nodus_e2e::TestNamespace,
    node: &str,
) -> Result<()> {
    cluster.script_with_nodus_args(
        &["restart", "nodus"],
        "--container-log-max-size=16Ki --container-log-max-files=3",
    )?;
    let script = "while true; do head -c 2000 /dev/zero | tr '\\0' x; echo; sleep 0.05; done";
    let created = ns
        .create_pod(node, pod("chatty", "Always", json!([sh("app", script)])))
        .await?;
    // Rounds come every 10 s: wait for two rotations, then for a third, after which the
    // oldest must have been pruned (3 files: the live one and two rotated).
    let two = nodus_e2e::poll(WAIT, "two rotated logs", || async {
        let names = rotated_logs(&created, "app");
        Ok((names.len() == 2).then_some(names))
    })
    .await?;
    let later = nodus_e2e::poll(WAIT, "another rotation", || async {
        let names = rotated_logs(&created, "app");
        Ok((names.last() != two.last()).then_some(names))
    })
    .await?;
    ensure!(later.len() == 2, "old rotated logs are pruned: {later:?}");
    let tail = cluster.kubectl(&["logs", "-n", &ns.name, "chatty", "--tail", "1"])?;
    ensure!(
        tail.trim_end().chars().all(|c| c == 'x') && tail.len() > 100,
        "{tail:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn container_logs_are_rotated_by_size_and_count() -> Result<()> {
    let (cluster, ns, node) = setup("api-rotate").await?;
    let result = rotation(&cluster, &ns, &node).await;
    // Back to the harness's configuration whatever happened.
    let restored = cluster.script(&["restart", "nodus"]);
    result?;
    restored?;
    ns.delete_pods().await
}
