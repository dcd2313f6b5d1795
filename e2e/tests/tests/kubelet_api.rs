//! The kubelet API on 10250 as users reach it: `kubectl logs` through the stock API server
//! (with `--tail`, `--limit-bytes`, `--timestamps`, `--previous`, `-f`), and the server's own
//! door: no credentials is 401, a token without the right is 403.

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

/// The HTTP status of a GET to the node's kubelet API.
fn status(url: &str, token: Option<&str>) -> Result<String> {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", url]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = curl.output().context("running curl")?;
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn the_kubelet_api_turns_away_strangers() -> Result<()> {
    let (_cluster, ns, _node) = setup("api-auth").await?;
    let node_ip = std::env::var("NODUS_E2E_NODE_IP").context("NODUS_E2E_NODE_IP")?;
    let url = format!("https://{node_ip}:10250/pods");
    assert_eq!(status(&url, None)?, "401", "no credentials");
    assert_eq!(status(&url, Some("not-a-token"))?, "401", "a bad token");
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
    assert_eq!(status(&url, Some(&token))?, "403", "a token without rights");
    Ok(())
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
