//! Probes as the kubelet runs them: readiness gates the Ready condition and follows the
//! probe both ways, a failing liveness or startup probe restarts the container (with the
//! kubelet's events), a startup probe holds the others back, httpGet, tcpSocket and gRPC
//! probes reach the pod over its IP, and httpGet follows redirects only within the pod.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use nodus_e2e::pods::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn ready(pod: &Pod, name: &str) -> Option<bool> {
    Some(container(pod, name)?.ready)
}

fn pod_ready(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_readiness_probe_gates_ready_until_it_passes_and_follows_it() -> Result<()> {
    let (cluster, ns, node) = setup("probe-ready").await?;
    let mut app = sh("app", "sleep 4; touch /tmp/ready; sleep 3600");
    app["readinessProbe"] =
        json!({ "exec": { "command": ["cat", "/tmp/ready"] }, "periodSeconds": 1 });
    ns.create_pod(&node, pod("gated", "Always", json!([app])))
        .await?;
    // Running but not ready while the probe fails.
    let early = wait_pod(&ns, "gated", WAIT, "gated to run", |p| {
        (phase(p) == "Running").then(|| (ready(p, "app"), pod_ready(p)))
    })
    .await?;
    assert_eq!(early, (Some(false), Some("False".into())));
    wait_event(&ns, "gated", "Unhealthy", |m| {
        m.starts_with("Readiness probe failed:")
    })
    .await?;
    // Then ready, container and pod.
    wait_pod(&ns, "gated", WAIT, "gated to be ready", |p| {
        (ready(p, "app") == Some(true) && pod_ready(p).as_deref() == Some("True")).then_some(())
    })
    .await?;
    // And back, as the file goes and comes again.
    for (command, expected) in [("rm", false), ("touch", true)] {
        cluster.kubectl(&["exec", "-n", &ns.name, "gated", "--", command, "/tmp/ready"])?;
        let condition = if expected { "True" } else { "False" };
        wait_pod(
            &ns,
            "gated",
            WAIT,
            &format!("gated to be ready={expected}"),
            |p| {
                (ready(p, "app") == Some(expected) && pod_ready(p).as_deref() == Some(condition))
                    .then_some(())
            },
        )
        .await?;
    }
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-live").await?;
    let mut app = sh("app", "sleep 3600");
    app["livenessProbe"] = json!({
        "exec": { "command": ["test", "-e", "/tmp/healthy"] },
        "periodSeconds": 1, "failureThreshold": 2,
    });
    ns.create_pod(&node, pod("sick", "Always", json!([app])))
        .await?;
    wait_pod(&ns, "sick", WAIT, "a restart", |p| {
        (container(p, "app")?.restart_count >= 1).then_some(())
    })
    .await?;
    wait_event(&ns, "sick", "Killing", |m| {
        m == "Container app failed liveness probe, will be restarted"
    })
    .await?;
    wait_event(&ns, "sick", "Unhealthy", |m| {
        m.starts_with("Liveness probe failed:")
    })
    .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn http_and_tcp_probes_reach_the_pod() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-http").await?;
    let mut web = sh(
        "web",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    web["ports"] = json!([{ "name": "http", "containerPort": 8080 }]);
    web["readinessProbe"] =
        json!({ "httpGet": { "path": "/index.html", "port": "http" }, "periodSeconds": 1 });
    // Liveness probes start as soon as the container does, as the kubelet's do, and one
    // failure restarts this one: the startup probe holds them back until httpd listens.
    web["startupProbe"] =
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1, "failureThreshold": 60 });
    web["livenessProbe"] =
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1, "failureThreshold": 1 });
    // A probe of a path that is not there fails with the status code.
    let mut other = sh("other", "mkdir -p /www && exec httpd -f -p 9090 -h /www");
    other["readinessProbe"] =
        json!({ "httpGet": { "path": "/missing", "port": 9090 }, "periodSeconds": 1 });
    ns.create_pod(&node, pod("web", "Always", json!([web, other])))
        .await?;
    wait_pod(&ns, "web", WAIT, "web to be ready", |p| {
        (ready(p, "web") == Some(true)).then_some(())
    })
    .await?;
    wait_event(&ns, "web", "Unhealthy", |m| {
        m.contains("Readiness probe failed: HTTP probe failed with statuscode: 404")
    })
    .await?;
    // By now the 1 s liveness probe has run several times: never restarted; the other
    // container is never ready, and so neither is the pod.
    let pod = ns.pods().get("web").await?;
    assert_eq!(container(&pod, "web").map(|c| c.restart_count), Some(0));
    assert_eq!(ready(&pod, "other"), Some(false));
    assert_eq!(pod_ready(&pod).as_deref(), Some("False"));
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_startup_probe_holds_back_started_and_ready() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-startup").await?;
    let mut app = sh("app", "sleep 4; touch /tmp/started; sleep 3600");
    app["startupProbe"] = json!({
        "exec": { "command": ["test", "-e", "/tmp/started"] },
        "periodSeconds": 1, "failureThreshold": 30,
    });
    ns.create_pod(&node, pod("slow", "Always", json!([app])))
        .await?;
    let early = wait_pod(&ns, "slow", WAIT, "slow to run", |p| {
        let c = container(p, "app")?;
        c.state.as_ref()?.running.as_ref()?;
        Some((c.started, c.ready))
    })
    .await?;
    assert_eq!(early, (Some(false), false));
    wait_pod(&ns, "slow", WAIT, "slow to start", |p| {
        let c = container(p, "app")?;
        (c.started == Some(true) && c.ready).then_some(())
    })
    .await?;
    let slow = ns.pods().get("slow").await?;
    assert_eq!(container(&slow, "app").map(|c| c.restart_count), Some(0));

    // A startup probe that never passes restarts the container, as a liveness failure does.
    let mut stuck = sh("app", "sleep 3600");
    stuck["startupProbe"] = json!({
        "exec": { "command": ["test", "-e", "/tmp/never"] },
        "periodSeconds": 1, "failureThreshold": 2,
    });
    let mut stuck_pod = pod("stuck", "Always", json!([stuck]));
    stuck_pod["spec"]["terminationGracePeriodSeconds"] = 1.into();
    ns.create_pod(&node, stuck_pod).await?;
    wait_event(&ns, "stuck", "Unhealthy", |m| {
        m.starts_with("Startup probe failed:")
    })
    .await?;
    wait_pod(&ns, "stuck", WAIT, "stuck to be restarted", |p| {
        let c = container(p, "app")?;
        (c.restart_count >= 1 && c.started != Some(true)).then_some(())
    })
    .await?;
    wait_event(&ns, "stuck", "Killing", |m| {
        m.contains("failed startup probe, will be restarted")
    })
    .await?;
    ns.delete_pods().await
}

/// The upstream test image with the gRPC health server (built locally by the harness).
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_grpc_probe_follows_the_health_service() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-grpc").await?;
    // agnhost serves grpc.health.v1 on 5000 and flips it with /make-(not-)serving on 8080.
    let app = json!({
        "name": "app",
        "image": AGNHOST,
        "args": ["grpc-health-checking", "--port=5000", "--http-port=8080"],
        "readinessProbe": { "grpc": { "port": 5000 }, "periodSeconds": 1 },
    });
    ns.create_pod(&node, pod("health", "Always", json!([app])))
        .await?;
    let ip = wait_pod(&ns, "health", WAIT, "health to be ready", |p| {
        (ready(p, "app") == Some(true))
            .then(|| p.status.clone()?.pod_ip)
            .flatten()
    })
    .await?;
    let flip = |path: &str| {
        let url = format!("http://{ip}:8080/{path}");
        let status = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", "-o", "/dev/null", &url])
            .status()?;
        anyhow::ensure!(status.success(), "{url} failed");
        Ok(())
    };
    flip("make-not-serving")?;
    wait_pod(&ns, "health", WAIT, "health to be unready", |p| {
        (ready(p, "app") == Some(false)).then_some(())
    })
    .await?;
    wait_event(&ns, "health", "Unhealthy", |m| {
        m.contains("service unhealthy (responded with \"NOT_SERVING\")")
    })
    .await?;
    flip("make-serving")?;
    wait_pod(&ns, "health", WAIT, "health to be ready again", |p| {
        (ready(p, "app") == Some(true)).then_some(())
    })
    .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn http_probes_follow_local_redirects_and_warn_about_others() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-redirect").await?;
    // agnhost's liveness server: /healthz fails from 10 s after the start, and
    // /redirect?loc=X redirects to X.
    let probed = |location: &str| {
        json!([{
            "name": "app",
            "image": AGNHOST,
            "args": ["liveness"],
            "livenessProbe": {
                "httpGet": { "path": format!("/redirect?loc={location}"), "port": 8080 },
                "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 1,
            },
        }])
    };
    ns.create_pod(&node, pod("local", "Always", probed("%2Fhealthz")))
        .await?;
    ns.create_pod(
        &node,
        pod("offsite", "Always", probed("http%3A%2F%2F0.0.0.0%2F")),
    )
    .await?;
    // Followed to /healthz, the probe fails once that does, and the container restarts.
    wait_pod(&ns, "local", WAIT, "local to be restarted", |p| {
        (container(p, "app")?.restart_count >= 1).then_some(())
    })
    .await?;
    wait_event(&ns, "local", "Unhealthy", |m| {
        m == "Liveness probe failed: HTTP probe failed with statuscode: 500"
    })
    .await?;
    // A redirect off the pod is not followed: a success, with the kubelet's warning.
    wait_event(&ns, "offsite", "ProbeWarning", |m| {
        m.starts_with(
            "Liveness probe warning: Probe terminated redirects, Response body: <a href=\"http://0.0.0.0/\">Found</a>.",
        )
    })
    .await?;
    let offsite = ns.pods().get("offsite").await?;
    anyhow::ensure!(
        container(&offsite, "app").is_some_and(|c| c.restart_count == 0),
        "a probe that ended on an off-pod redirect restarted the container"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn app_containers_wait_for_a_sidecars_startup_probe() -> Result<()> {
    let (_cluster, ns, node) = setup("probe-sidecar").await?;
    let mount = json!([{ "name": "shared", "mountPath": "/shared" }]);
    // The sidecar counts as started only once /shared/started exists (after 3 s).
    let sidecar = json!({
        "name": "sidecar", "image": IMAGE, "restartPolicy": "Always",
        "command": ["sh", "-c", "sleep 3; touch /shared/started; sleep 3600"],
        "startupProbe": { "exec": { "command": ["test", "-f", "/shared/started"] }, "periodSeconds": 1 },
        "volumeMounts": mount,
    });
    let mut main = sh(
        "main",
        "if [ -f /shared/started ]; then echo after; else echo before; fi > /dev/termination-log",
    );
    main["volumeMounts"] = mount.clone();
    let mut spec = pod("gated", "Never", json!([main]));
    spec["spec"]["initContainers"] = json!([sidecar]);
    spec["spec"]["volumes"] = json!([{ "name": "shared", "emptyDir": {} }]);
    ns.create_pod(&node, spec).await?;
    let message = wait_pod(&ns, "gated", WAIT, "main to finish", |p| {
        terminated_message(p, "main")
    })
    .await?;
    assert_eq!(
        message.trim(),
        "after",
        "main started before the sidecar had started"
    );
    ns.delete_pods().await
}
