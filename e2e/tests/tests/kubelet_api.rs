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
    let script = "for i in 1 2 3; do echo line $i; done; echo oops >&2; sleep 3600";
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
