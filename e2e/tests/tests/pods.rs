//! Pods bound to the node run through containerd, and report what the stock kubelet
//! would report: phases, container states and reasons, restarts, events, deletion.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use nodus_e2e::pods::*;
use nodus_e2e::poll;
use serde_json::json;

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_busybox_pod_runs_with_an_ip_from_the_pod_cidr() -> Result<()> {
    let (cluster, ns, node) = setup("run").await?;
    ns.create_pod(
        &node,
        pod(
            "web",
            "Always",
            json!([sh("main", "echo started; sleep 3600")]),
        ),
    )
    .await?;
    let running = wait_pod(
        &ns,
        "web",
        Duration::from_secs(30),
        "Running and Ready",
        |p| {
            let ready = container(p, "main").is_some_and(|c| c.ready);
            (phase(p) == "Running" && ready).then(|| p.clone())
        },
    )
    .await?;
    let status = running.status.clone().context("status")?;
    let ip: std::net::Ipv4Addr = status.pod_ip.clone().context("podIP")?.parse()?;
    let cidr = std::env::var("NODUS_E2E_POD_CIDR").unwrap_or_else(|_| "10.244.0.0/24".into());
    let (net, bits) = cidr.split_once('/').context("cidr")?;
    let mask = u32::MAX << (32 - bits.parse::<u32>()?);
    ensure!(
        u32::from(ip) & mask == u32::from(net.parse::<std::net::Ipv4Addr>()?) & mask,
        "{ip} not in {cidr}"
    );
    assert_eq!(status.host_ip, std::env::var("NODUS_E2E_NODE_IP").ok());
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    assert!(status.start_time.is_some());
    let main = container(&running, "main").context("main status")?;
    assert!(
        main.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")),
        "{main:?}"
    );
    assert!(
        main.image_id.starts_with("sha256:") || main.image_id.contains('@'),
        "{}",
        main.image_id
    );
    assert_eq!(main.restart_count, 0);
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        let condition = status.conditions.iter().flatten().find(|c| c.type_ == kind);
        assert_eq!(condition.map(|c| c.status.as_str()), Some("True"), "{kind}");
    }
    let wide = cluster.kubectl(&["get", "pods", "-n", &ns.name, "-o", "wide", "--no-headers"])?;
    assert!(
        wide.contains("1/1")
            && wide.contains("Running")
            && wide.contains(&ip.to_string())
            && wide.contains(&node),
        "{wide}"
    );
    for reason in ["Pulled", "Created", "Started"] {
        wait_event(&ns, "web", reason, |_| true).await?;
    }
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn init_containers_run_one_after_another_before_the_app() -> Result<()> {
    let (_cluster, ns, node) = setup("init").await?;
    let mut spec = pod("init", "Always", json!([sh("app", "sleep 3600")]));
    // The second writes its message as a non-root user at a path of its own: the file nodus
    // mounts there must be writable for any user, as the kubelet makes it.
    let mut second = sh("second", "sleep 1; echo two > /dev/termination-custom-log");
    second["securityContext"] = json!({ "runAsUser": 10000 });
    second["terminationMessagePath"] = "/dev/termination-custom-log".into();
    spec["spec"]["initContainers"] = json!([
        sh("first", "sleep 1; echo one > /dev/termination-log"),
        second
    ]);
    ns.create_pod(&node, spec).await?;
    let pod = wait_pod(
        &ns,
        "init",
        Duration::from_secs(45),
        "the app container to run",
        |p| (phase(p) == "Running").then(|| p.clone()),
    )
    .await?;
    let finished = |name: &str| {
        let t = container(&pod, name)?.state.as_ref()?.terminated.as_ref()?;
        Some((
            t.started_at.clone()?.0,
            t.finished_at.clone()?.0,
            t.reason.clone(),
            t.message.clone(),
        ))
    };
    let (_, first_end, reason, message) =
        finished("first").context("first init container terminated")?;
    let (second_start, second_end, second_reason, second_message) =
        finished("second").context("second init container terminated")?;
    assert_eq!(second_reason.as_deref(), Some("Completed"));
    assert_eq!(second_message.as_deref(), Some("two\n"));
    // Finished init containers count as ready, as the kubelet reports them.
    for name in ["first", "second"] {
        ensure!(
            container(&pod, name).is_some_and(|c| c.ready),
            "init container {name} completed but is not ready"
        );
    }
    assert_eq!(reason.as_deref(), Some("Completed"));
    assert_eq!(
        message.as_deref(),
        Some("one\n"),
        "termination message read from the file"
    );
    ensure!(
        second_start >= first_end,
        "second started {second_start} before first ended {first_end}"
    );
    let app_start = container(&pod, "app")
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
        .context("app running")?
        .0;
    ensure!(
        app_start >= second_end,
        "app started {app_start} before init finished {second_end}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_crashing_container_backs_off_at_the_kubelets_pace() -> Result<()> {
    let (_cluster, ns, node) = setup("crash").await?;
    ns.create_pod(&node, pod("crash", "Always", json!([sh("main", "exit 1")])))
        .await?;
    // Record when each restart shows up.
    let started = Instant::now();
    let mut seen: Vec<(i32, Duration)> = Vec::new();
    let pods = ns.pods();
    let mut back_off = false;
    while seen.last().is_none_or(|(count, _)| *count < 3) {
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "restarts so far: {seen:?}"
        );
        let pod = pods.get("crash").await?;
        let count = container(&pod, "main").map_or(0, |c| c.restart_count);
        if seen.last().is_none_or(|(c, _)| *c != count) {
            seen.push((count, started.elapsed()));
        }
        back_off |= waiting_reason(&pod, "main").as_deref() == Some("CrashLoopBackOff");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back_off, "the container was seen in CrashLoopBackOff");
    let at = |n: i32| {
        seen.iter()
            .find(|(c, _)| *c == n)
            .map(|(_, t)| *t)
            .context("restart seen")
    };
    // 10 s before the second restart, 20 s before the third (less the 1 s relist granularity).
    ensure!(
        at(2)? - at(1)? >= Duration::from_secs(9),
        "second restart too early: {seen:?}"
    );
    ensure!(
        at(3)? - at(2)? >= Duration::from_secs(19),
        "third restart too early: {seen:?}"
    );
    let pod = pods.get("crash").await?;
    let last = container(&pod, "main")
        .and_then(|c| c.last_state.clone()?.terminated)
        .context("lastState")?;
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    wait_event(&ns, "crash", "BackOff", |m| {
        m.contains("Back-off restarting failed container main")
    })
    .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn restart_policy_never_fails_and_on_failure_succeeds() -> Result<()> {
    let (_cluster, ns, node) = setup("policy").await?;
    ns.create_pod(&node, pod("never", "Never", json!([sh("main", "exit 3")])))
        .await?;
    ns.create_pod(
        &node,
        pod("onfailure", "OnFailure", json!([sh("main", "exit 0")])),
    )
    .await?;
    let failed = wait_pod(&ns, "never", Duration::from_secs(30), "phase Failed", |p| {
        (phase(p) == "Failed").then(|| p.clone())
    })
    .await?;
    let terminated = container(&failed, "main")
        .and_then(|c| c.state.clone()?.terminated)
        .context("terminated")?;
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    assert_eq!(container(&failed, "main").map(|c| c.restart_count), Some(0));
    let succeeded = wait_pod(
        &ns,
        "onfailure",
        Duration::from_secs(30),
        "phase Succeeded",
        |p| (phase(p) == "Succeeded").then(|| p.clone()),
    )
    .await?;
    let terminated = container(&succeeded, "main")
        .and_then(|c| c.state.clone()?.terminated)
        .context("terminated")?;
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    let ready = succeeded
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let ready = ready.iter().find(|c| c.type_ == "Ready").context("Ready")?;
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("PodCompleted"))
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_missing_image_reports_err_image_pull_and_backs_off() -> Result<()> {
    let (_cluster, ns, node) = setup("pull").await?;
    let image = "nodus.invalid/no-such-image:1";
    ns.create_pod(
        &node,
        pod(
            "pull",
            "Always",
            json!([{ "name": "main", "image": image }]),
        ),
    )
    .await?;
    // The reasons the pod shows over time: ErrImagePull first, then ImagePullBackOff.
    let mut reasons: Vec<String> = Vec::new();
    let started = Instant::now();
    while !reasons.iter().any(|r| r == "ImagePullBackOff") {
        ensure!(
            started.elapsed() < Duration::from_secs(45),
            "reasons seen: {reasons:?}"
        );
        let reason = waiting_reason(&ns.pods().get("pull").await?, "main");
        if let Some(reason) = reason.filter(|r| reasons.last() != Some(r)) {
            reasons.push(reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_error = reasons
        .iter()
        .position(|r| r == "ErrImagePull")
        .context(format!("no ErrImagePull in {reasons:?}"))?;
    let back_off = reasons
        .iter()
        .position(|r| r == "ImagePullBackOff")
        .context("ImagePullBackOff")?;
    ensure!(first_error < back_off, "{reasons:?}");
    assert_eq!(phase(&ns.pods().get("pull").await?), "Pending");
    wait_event(&ns, "pull", "Failed", |m| {
        m.starts_with(&format!("Failed to pull image \"{image}\""))
    })
    .await?;
    wait_event(&ns, "pull", "Pulling", |_| true).await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_missing_config_map_is_a_config_error_until_it_appears() -> Result<()> {
    let (_cluster, ns, node) = setup("cfg").await?;
    let main = json!({
        "name": "main", "image": IMAGE, "command": ["sh", "-c", "echo $COLOR; sleep 3600"],
        "env": [{ "name": "COLOR", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "color" } } }],
    });
    ns.create_pod(&node, pod("cfg", "Always", json!([main])))
        .await?;
    let message = wait_pod(
        &ns,
        "cfg",
        Duration::from_secs(30),
        "CreateContainerConfigError",
        |p| {
            let waiting = container(p, "main")?.state.as_ref()?.waiting.as_ref()?;
            (waiting.reason.as_deref() == Some("CreateContainerConfigError"))
                .then(|| waiting.message.clone())
        },
    )
    .await?;
    assert_eq!(message.as_deref(), Some("configmap \"settings\" not found"));
    wait_event(&ns, "cfg", "Failed", |m| {
        m == "Error: configmap \"settings\" not found"
    })
    .await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(ns.pods().into_client(), &ns.name);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..ObjectMeta::default()
        },
        data: Some([("color".to_owned(), "blue".to_owned())].into()),
        ..ConfigMap::default()
    };
    config_maps.create(&PostParams::default(), &cm).await?;
    wait_pod(
        &ns,
        "cfg",
        Duration::from_secs(45),
        "Running once the ConfigMap exists",
        |p| (phase(p) == "Running").then_some(()),
    )
    .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn graceful_deletion_honours_the_grace_period_and_removes_everything() -> Result<()> {
    let (cluster, ns, node) = setup("grace").await?;
    // PID 1 in a container ignores SIGTERM unless it handles it: this one must be killed.
    let mut stubborn = pod("stubborn", "Always", json!([sh("main", "sleep 3600")]));
    stubborn["spec"]["terminationGracePeriodSeconds"] = 4.into();
    let polite = pod(
        "polite",
        "Always",
        json!([sh(
            "main",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done"
        )]),
    );
    ns.create_pod(&node, stubborn).await?;
    let created = ns.create_pod(&node, polite).await?;
    for name in ["stubborn", "polite"] {
        wait_pod(&ns, name, Duration::from_secs(30), "Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await?;
    }
    let uid = created.metadata.uid.clone().context("uid")?;
    let pods = ns.pods();
    let timed_delete = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let start = Instant::now();
            pods.delete(name, &DeleteParams::default()).await?;
            poll(
                Duration::from_secs(60),
                "the pod object to be removed",
                || async { Ok(pods.get_opt(name).await?.is_none().then_some(())) },
            )
            .await?;
            anyhow::Ok(start.elapsed())
        }
    };
    let (stubborn_took, polite_took) =
        tokio::try_join!(timed_delete("stubborn"), timed_delete("polite"))?;
    ensure!(
        stubborn_took >= Duration::from_secs(4),
        "killed before its 4 s grace period: {stubborn_took:?}"
    );
    ensure!(
        polite_took < Duration::from_secs(4),
        "a container that exits on SIGTERM goes at once: {polite_took:?}"
    );
    // Nothing of the pod is left in the runtime.
    let endpoint = std::env::var("NODUS_CRI_ENDPOINT")?;
    let left = std::process::Command::new("crictl")
        .args([
            "--runtime-endpoint",
            &endpoint,
            "pods",
            "-q",
            "--label",
            &format!("io.kubernetes.pod.uid={uid}"),
        ])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "sandbox left behind"
    );
    wait_event(&ns, "stubborn", "Killing", |m| {
        m == "Stopping container main"
    })
    .await?;
    let _ = cluster;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn containers_of_a_pod_share_its_network_namespace() -> Result<()> {
    let (_cluster, ns, node) = setup("netns").await?;
    let server = sh(
        "server",
        "mkdir -p /www && echo shared > /www/index.html && httpd -f -p 8080 -h /www",
    );
    let client = sh(
        "client",
        "until wget -q -O /dev/termination-log http://127.0.0.1:8080/index.html; do sleep 0.2; done",
    );
    ns.create_pod(&node, pod("pair", "OnFailure", json!([server, client])))
        .await?;
    let message = wait_pod(
        &ns,
        "pair",
        Duration::from_secs(45),
        "the client to fetch from the server over localhost",
        |p| {
            let terminated = container(p, "client")?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            (terminated.exit_code == 0).then(|| terminated.message.clone())
        },
    )
    .await?;
    assert_eq!(message.as_deref(), Some("shared\n"));
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_agent_restart_keeps_containers_running() -> Result<()> {
    let (cluster, ns, node) = setup("adopt").await?;
    ns.create_pod(
        &node,
        pod("steady", "Always", json!([sh("main", "sleep 3600")])),
    )
    .await?;
    let before = wait_pod(&ns, "steady", Duration::from_secs(30), "Running", |p| {
        (phase(p) == "Running")
            .then(|| container(p, "main").cloned())
            .flatten()
    })
    .await?;
    cluster.script(&["restart", "nodus"])?;
    // Give the new agent a few status passes, then compare.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.admin().await?);
    poll(
        Duration::from_secs(30),
        "the node to be Ready after the restart",
        || async {
            let node = nodes.get(&node).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(()))
        },
    )
    .await?;
    // Absence of a restart cannot be polled for: watch the pod over a window in which the
    // new agent relists and syncs it several times, and require it unchanged throughout.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(5) {
        let after = ns.pods().get("steady").await?;
        let main = container(&after, "main").context("main")?;
        assert_eq!(main.container_id, before.container_id, "the same container");
        assert_eq!(main.restart_count, 0);
        assert!(
            main.state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_some(),
            "still running: {main:?}"
        );
        assert_eq!(phase(&after), "Running");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_that_does_not_fit_is_rejected_with_the_kubelets_reason() -> Result<()> {
    let (_cluster, ns, node) = setup("admit").await?;
    let hungry = |name: &str, resource: &str, amount: &str| {
        let mut main = sh("main", "sleep 3600");
        main["resources"] = json!({ "requests": { resource: amount } });
        pod(name, "Always", json!([main]))
    };
    ns.create_pod(&node, hungry("cpu", "cpu", "512")).await?;
    ns.create_pod(&node, hungry("memory", "memory", "64Ti"))
        .await?;
    let mut selective = pod("selector", "Always", json!([sh("main", "sleep 3600")]));
    selective["spec"]["nodeSelector"] = json!({ "nodus.dev/never-set": "x" });
    ns.create_pod(&node, selective).await?;
    // kernel.msgmax is namespaced but not safe: the node has not allowed it.
    let mut unsafe_sysctl = pod("sysctl", "Always", json!([sh("main", "sleep 3600")]));
    unsafe_sysctl["spec"]["securityContext"] =
        json!({ "sysctls": [{ "name": "kernel.msgmax", "value": "10000000000" }] });
    ns.create_pod(&node, unsafe_sysctl).await?;
    let mut windows = pod("windows", "Always", json!([sh("main", "sleep 3600")]));
    windows["spec"]["os"] = json!({ "name": "windows" });
    ns.create_pod(&node, windows).await?;
    for (name, reason) in [
        ("cpu", "OutOfcpu"),
        ("memory", "OutOfmemory"),
        ("selector", "NodeAffinity"),
        ("sysctl", "SysctlForbidden"),
        ("windows", "PodOSNotSupported"),
    ] {
        let status = wait_pod(&ns, name, Duration::from_secs(30), "rejection", |p| {
            (phase(p) == "Failed").then(|| p.status.clone()).flatten()
        })
        .await?;
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}");
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with("Pod was rejected: "),
            "{name}: {message}"
        );
        wait_event(&ns, name, reason, |_| true).await?;
        // Nothing of it ran.
        let pod = ns.pods().get(name).await?;
        assert!(
            container(&pod, "main").is_none_or(|c| c.container_id.is_none()),
            "{name} must not run"
        );
    }
    // A pod that fits still runs beside them, with a safe sysctl set in its namespace.
    let mut fits = pod("fits", "Always", json!([sh("main", "sleep 3600")]));
    fits["spec"]["securityContext"] =
        json!({ "sysctls": [{ "name": "kernel.shm_rmid_forced", "value": "1" }] });
    ns.create_pod(&node, fits).await?;
    wait_pod(&ns, "fits", Duration::from_secs(30), "Running", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_post_start_hook_runs_beside_the_new_container() -> Result<()> {
    let (_cluster, ns, node) = setup("poststart").await?;
    // The container waits for what the hook leaves and says so; the hook's failure in the
    // second pod is reported and the container killed, as upstream does.
    let mut waits = sh(
        "main",
        "while [ ! -f /tmp/hooked ]; do sleep 0.1; done; echo saw $(cat /tmp/hooked) > /dev/termination-log",
    );
    waits["lifecycle"] = json!({ "postStart": { "exec": { "command": ["sh", "-c", "echo by-the-hook > /tmp/hooked"] } } });
    ns.create_pod(&node, pod("hooked", "Never", json!([waits])))
        .await?;
    let message = wait_pod(
        &ns,
        "hooked",
        Duration::from_secs(60),
        "hooked to finish",
        |p| {
            let terminated = container(p, "main")?.state.as_ref()?.terminated.as_ref()?;
            Some((terminated.exit_code, terminated.message.clone()))
        },
    )
    .await?;
    assert_eq!(message, (0, Some("saw by-the-hook\n".into())));

    let mut failing = sh("main", "sleep 3600");
    failing["lifecycle"] =
        json!({ "postStart": { "exec": { "command": ["sh", "-c", "exit 7"] } } });
    let mut failing = pod("failing", "Never", json!([failing]));
    // sh as PID 1 ignores SIGTERM: a short grace keeps the kill quick.
    failing["spec"]["terminationGracePeriodSeconds"] = 2.into();
    ns.create_pod(&node, failing).await?;
    wait_event(&ns, "failing", "FailedPostStartHook", |_| true).await?;
    let killed = wait_pod(
        &ns,
        "failing",
        Duration::from_secs(60),
        "the container to be killed",
        |p| {
            container(p, "main")?
                .state
                .as_ref()?
                .terminated
                .as_ref()
                .map(|_| ())
        },
    )
    .await;
    assert!(
        killed.is_ok(),
        "a failed postStart hook kills the container"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn the_pre_stop_hook_runs_before_the_container_is_signalled() -> Result<()> {
    let (_cluster, ns, node) = setup("prestop").await?;
    // The server records the first request it gets (busybox nc serves one connection) and
    // answers it, so the client never has to time out (busybox's wget -T crashes here).
    let recorder = r"printf 'HTTP/1.0 200 OK
Content-Length: 2

ok' | nc -l -p 8080 > /dev/termination-log";
    ns.create_pod(
        &node,
        pod("recorder", "Never", json!([sh("main", recorder)])),
    )
    .await?;
    let server_ip = wait_pod(
        &ns,
        "recorder",
        Duration::from_secs(30),
        "the recorder to run",
        |p| {
            (phase(p) == "Running")
                .then(|| p.status.clone()?.pod_ip)
                .flatten()
        },
    )
    .await?;
    let mut client = sh(
        "main",
        &format!(
            "trap 'wget -q -O- http://{server_ip}:8080/sigterm; exit 0' TERM; while true; do sleep 0.1; done"
        ),
    );
    client["lifecycle"] = json!({ "preStop": { "exec": { "command": ["wget", "-q", "-O-", format!("http://{server_ip}:8080/prestop")] } } });
    ns.create_pod(&node, pod("client", "Always", json!([client])))
        .await?;
    wait_pod(
        &ns,
        "client",
        Duration::from_secs(30),
        "the client to run",
        |p| (phase(p) == "Running").then_some(()),
    )
    .await?;
    ns.pods().delete("client", &DeleteParams::default()).await?;
    let recorded = wait_pod(
        &ns,
        "recorder",
        Duration::from_secs(30),
        "the recorder to get a request",
        |p| {
            let terminated = container(p, "main")?.state.as_ref()?.terminated.as_ref()?;
            terminated.message.clone()
        },
    )
    .await?;
    assert!(
        recorded.starts_with("GET /prestop HTTP/1.1"),
        "first request was: {recorded}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_host_port_reaches_the_pod_from_the_node_address() -> Result<()> {
    let (_cluster, ns, node) = setup("hostport").await?;
    let mut server = sh(
        "main",
        "mkdir -p /www && echo hostport-ok > /www/index.html && httpd -f -p 8080 -h /www",
    );
    server["ports"] = json!([{ "containerPort": 8080, "hostPort": 18080, "protocol": "TCP" }]);
    ns.create_pod(&node, pod("hostport", "Always", json!([server])))
        .await?;
    wait_pod(&ns, "hostport", Duration::from_secs(30), "Running", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    let node_ip = std::env::var("NODUS_E2E_NODE_IP")?;
    let body = poll(
        Duration::from_secs(20),
        "an answer on the host port",
        || {
            let node_ip = node_ip.clone();
            async move {
                let answer = tokio::task::spawn_blocking(move || -> Result<String> {
                    use std::io::{Read, Write};
                    let mut stream = std::net::TcpStream::connect((node_ip.as_str(), 18080))?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                    let mut response = String::new();
                    stream.read_to_string(&mut response)?;
                    Ok(response)
                })
                .await??;
                Ok(Some(answer))
            }
        },
    )
    .await?;
    assert!(body.contains("hostport-ok"), "{body}");
    // A second pod asking for the same host port does not fit.
    let mut clash = sh("main", "sleep 3600");
    clash["ports"] = json!([{ "containerPort": 80, "hostPort": 18080 }]);
    ns.create_pod(&node, pod("clash", "Always", json!([clash])))
        .await?;
    let reason = wait_pod(&ns, "clash", Duration::from_secs(30), "rejection", |p| {
        (phase(p) == "Failed")
            .then(|| p.status.clone()?.reason)
            .flatten()
    })
    .await?;
    assert_eq!(reason, "NodePorts");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_container_over_its_memory_limit_is_oom_killed() -> Result<()> {
    let (_cluster, ns, node) = setup("pods-oom").await?;
    // `tail` keeps its "last line" in memory, and /dev/zero has no newline: it grows until
    // the cgroup's limit kills it.
    let mut hog = sh("hog", "tail /dev/zero");
    hog["resources"] = json!({ "limits": { "memory": "24Mi" }, "requests": { "memory": "24Mi" } });
    ns.create_pod(&node, pod("hog", "Never", json!([hog])))
        .await?;
    let (reason, code) = wait_pod(
        &ns,
        "hog",
        Duration::from_secs(60),
        "hog to be killed",
        |p| {
            let terminated = container(p, "hog")?.state.as_ref()?.terminated.as_ref()?;
            Some((
                terminated.reason.clone().unwrap_or_default(),
                terminated.exit_code,
            ))
        },
    )
    .await?;
    assert_eq!((reason.as_str(), code), ("OOMKilled", 137));
    let pod = ns.pods().get("hog").await?;
    assert_eq!(phase(&pod), "Failed");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pods_cgroup_holds_the_sum_of_its_containers_limits() -> Result<()> {
    let (_cluster, ns, node) = setup("pods-cgroup").await?;
    let limited = |name: &str| {
        let mut c = sh(name, "sleep 3600");
        c["resources"] = json!({ "limits": { "cpu": "250m", "memory": "32Mi" } });
        c
    };
    let created = ns
        .create_pod(
            &node,
            pod("pair", "Never", json!([limited("a"), limited("b")])),
        )
        .await?;
    wait_pod(&ns, "pair", Duration::from_secs(60), "pair to run", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    // Guaranteed (requests default to limits): the pod's cgroup sits right under kubepods.
    let uid = created.metadata.uid.context("uid")?;
    let read = |controller: &str, file: &str| -> Result<String> {
        let path = format!("/sys/fs/cgroup/{controller}/kubepods/pod{uid}/{file}");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_owned())
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes")?,
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.cfs_quota_us")?, "50000");
    assert_eq!(read("cpu", "cpu.shares")?, "512");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_privileged_container_beside_a_plain_one_gets_its_privileges() -> Result<()> {
    let (_cluster, ns, node) = setup("privileged").await?;
    // Mounting needs CAP_SYS_ADMIN, which only the privileged container has. The runtime
    // refuses a privileged container in a sandbox not made privileged, so this pod only
    // starts if the sandbox is.
    let attempt = "if mount -t tmpfs none /tmp; then echo mounted; else echo refused; fi > /dev/termination-log";
    let mut privileged = sh("privileged", attempt);
    privileged["securityContext"] = json!({ "privileged": true });
    ns.create_pod(
        &node,
        pod("mixed", "Never", json!([privileged, sh("plain", attempt)])),
    )
    .await?;
    let messages = wait_pod(
        &ns,
        "mixed",
        Duration::from_secs(45),
        "both containers to finish",
        |p| {
            Some((
                terminated_message(p, "privileged")?,
                terminated_message(p, "plain")?,
            ))
        },
    )
    .await?;
    assert_eq!(messages, ("mounted\n".to_owned(), "refused\n".to_owned()));
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_host_network_pod_runs_with_the_nodes_hostname() -> Result<()> {
    let (_cluster, ns, node) = setup("hostnet").await?;
    // Its /etc/hosts is the node's plus the pod's hostAliases.
    let mut spec = pod(
        "hostnet",
        "Never",
        json!([sh(
            "app",
            "grep -q '^123.45.67.89\tfoo.example\tbar.example$' /etc/hosts || exit 1; hostname > /dev/termination-log"
        )]),
    );
    spec["spec"]["hostNetwork"] = true.into();
    spec["spec"]["hostAliases"] =
        json!([{ "ip": "123.45.67.89", "hostnames": ["foo.example", "bar.example"] }]);
    ns.create_pod(&node, spec).await?;
    let message = wait_pod(
        &ns,
        "hostnet",
        Duration::from_secs(45),
        "the host-network pod to finish",
        |p| terminated_message(p, "app"),
    )
    .await?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert_eq!(message.trim(), hostname.trim());
    // The node's own entries come first, as in the node's file.
    let node_hosts = std::fs::read_to_string("/etc/hosts")?;
    let pod_hosts = std::fs::read_dir("/var/lib/nodus-e2e/nodus/pods")?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("etc-hosts")).ok())
        .find(|h| h.contains("foo.example"))
        .context("the pod's hosts file")?;
    ensure!(
        pod_hosts.starts_with(&node_hosts),
        "the node's /etc/hosts is not the start of the pod's: {pod_hosts:?}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn pods_deleted_while_their_containers_start_are_removed() -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let (_cluster, ns, node) = setup("mid-start").await?;
    let client = ns.pods().into_client();
    let events: Api<Event> = Api::namespaced(client, &ns.name);
    let mut stream = events.watch(&WatchParams::default(), "0").await?.boxed();
    // Each pod is deleted as soon as its first container is reported Created, so the
    // deletion reaches nodus while the runtime is still starting containers. Before the
    // fix, such a pod could stay Terminating forever (its sandbox could not be removed).
    const PODS: usize = 20;
    let pods = ns.pods();
    for i in 0..PODS {
        let mut spec = pod(
            &format!("p{i}"),
            "Always",
            json!([
                sh("a", "sleep 3600"),
                sh("b", "sleep 3600"),
                sh("c", "sleep 3600")
            ]),
        );
        spec["spec"]["terminationGracePeriodSeconds"] = 1.into();
        ns.create_pod(&node, spec).await?;
    }
    let mut deleted = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while deleted.len() < PODS {
        let next = tokio::time::timeout_at(deadline.into(), stream.try_next()).await;
        let Some(event) = next.unwrap_or(Ok(None))? else {
            anyhow::bail!("only {} of {PODS} pods reported Created", deleted.len());
        };
        let WatchEvent::Added(event) = event else {
            continue;
        };
        let name = event.involved_object.name.clone().unwrap_or_default();
        if event.reason.as_deref() == Some("Created") && deleted.insert(name.clone()) {
            pods.delete(&name, &DeleteParams::default()).await?;
        }
    }
    poll(
        Duration::from_secs(60),
        "every pod deleted mid-start to be removed",
        || async {
            let left = pods.list(&ListParams::default()).await?.items;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_ephemeral_container_runs_once_in_its_targets_process_namespace() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let (cluster, ns, node) = setup("ephemeral").await?;
    ns.create_pod(
        &node,
        pod("target", "Always", json!([sh("app", "exec sleep 3600")])),
    )
    .await?;
    wait_pod(&ns, "target", Duration::from_secs(30), "Running", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    // What `kubectl debug --target app` sends: the ephemeralcontainers subresource.
    let mut debugger = sh("debugger", "echo from the debugger; ps");
    debugger["targetContainerName"] = "app".into();
    let patch = json!({ "spec": { "ephemeralContainers": [debugger] } });
    ns.pods()
        .patch_subresource(
            "ephemeralcontainers",
            "target",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    let exit = wait_pod(
        &ns,
        "target",
        Duration::from_secs(30),
        "the debugger to finish",
        |p| {
            let status = p.status.as_ref()?.ephemeral_container_statuses.as_ref()?;
            let debugger = status.iter().find(|c| c.name == "debugger")?;
            Some(debugger.state.as_ref()?.terminated.as_ref()?.exit_code)
        },
    )
    .await?;
    assert_eq!(exit, 0, "the debugger's exit code");
    let logs = cluster.kubectl(&["logs", "-n", &ns.name, "target", "-c", "debugger"])?;
    ensure!(
        logs.contains("from the debugger"),
        "the debugger's own output: {logs:?}"
    );
    ensure!(
        logs.contains("sleep 3600"),
        "the target's processes are visible to the debugger: {logs:?}"
    );
    // It ran once: the pod's restart policy (Always) does not apply to it.
    let pod = ns.pods().get("target").await?;
    let status = pod.status.clone().context("status")?;
    let debugger = status
        .ephemeral_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "debugger")
        .context("debugger status")?;
    assert_eq!(debugger.restart_count, 0);
    ensure!(!debugger.ready, "an ephemeral container is never ready");
    assert_eq!(phase(&pod), "Running", "the pod runs on");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_failed_containers_last_output_is_its_message_under_fallback_to_logs() -> Result<()> {
    let (_cluster, ns, node) = setup("fallback").await?;
    // No newline at the end: the runtime logs it as a partial line that never ends.
    let mut main = sh("main", "echo first line; echo -n DONE; false");
    main["terminationMessagePolicy"] = "FallbackToLogsOnError".into();
    ns.create_pod(&node, pod("fallback", "Never", json!([main])))
        .await?;
    let message = wait_pod(
        &ns,
        "fallback",
        Duration::from_secs(45),
        "the container to fail",
        |p| {
            let terminated = container(p, "main")?.state.as_ref()?.terminated.clone()?;
            (phase(p) == "Failed").then(|| terminated.message.unwrap_or_default())
        },
    )
    .await?;
    assert_eq!(message, "first line\nDONE");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_containers_own_restart_policy_and_rules_override_the_pods() -> Result<()> {
    let (_cluster, ns, node) = setup("restart-rules").await?;
    // Pod policy Never, container policy Always: restarted, and the pod keeps running.
    let mut always = sh("main", "exit 1");
    always["restartPolicy"] = "Always".into();
    ns.create_pod(&node, pod("always", "Never", json!([always])))
        .await?;
    // A rule restarts on exit code 42 only.
    let mut ruled = sh("main", "exit 42");
    ruled["restartPolicy"] = "Never".into();
    ruled["restartPolicyRules"] =
        json!([{ "action": "Restart", "exitCodes": { "operator": "In", "values": [42] } }]);
    ns.create_pod(&node, pod("ruled", "Never", json!([ruled])))
        .await?;
    // Pod policy Always, container policy Never: fails once and stays down.
    let mut never = sh("main", "exit 1");
    never["restartPolicy"] = "Never".into();
    ns.create_pod(&node, pod("never", "Always", json!([never])))
        .await?;
    for name in ["always", "ruled"] {
        wait_pod(&ns, name, Duration::from_secs(45), "a restart", |p| {
            (container(p, "main")?.restart_count >= 1 && phase(p) != "Failed").then_some(())
        })
        .await?;
    }
    wait_pod(&ns, "never", Duration::from_secs(45), "Failed", |p| {
        (phase(p) == "Failed").then_some(())
    })
    .await?;
    let never = ns.pods().get("never").await?;
    assert_eq!(container(&never, "main").map(|c| c.restart_count), Some(0));
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn readiness_gates_hold_ready_until_their_condition_is_true() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let (_cluster, ns, node) = setup("gates").await?;
    let mut gated = pod("gated", "Always", json!([sh("main", "sleep 3600")]));
    gated["spec"]["readinessGates"] = json!([{ "conditionType": "example.com/gate" }]);
    ns.create_pod(&node, gated).await?;
    let ready = |p: &k8s_openapi::api::core::v1::Pod| {
        let conditions = p.status.as_ref()?.conditions.as_ref()?;
        let c = conditions.iter().find(|c| c.type_ == "Ready")?;
        Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
    };
    // The container is ready, the pod is not: the gate's condition does not exist.
    wait_pod(
        &ns,
        "gated",
        Duration::from_secs(30),
        "the gate to hold Ready",
        |p| {
            (container(p, "main")?.ready
                && ready(p)? == ("False".into(), "ReadinessGatesNotReady".into()))
                .then_some(())
        },
    )
    .await?;
    // What a controller owning the gate does: set its condition in the status.
    let set_gate = |status: &'static str| {
        let pods = ns.pods();
        async move {
            let patch = json!({ "status": { "conditions": [
                { "type": "example.com/gate", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z" }
            ] } });
            pods.patch_status("gated", &PatchParams::default(), &Patch::Strategic(&patch))
                .await?;
            anyhow::Ok(())
        }
    };
    set_gate("True").await?;
    wait_pod(
        &ns,
        "gated",
        Duration::from_secs(30),
        "Ready once the gate is True",
        |p| (ready(p)?.0 == "True").then_some(()),
    )
    .await?;
    set_gate("False").await?;
    wait_pod(
        &ns,
        "gated",
        Duration::from_secs(30),
        "unready once the gate is False",
        |p| (ready(p)? == ("False".into(), "ReadinessGatesNotReady".into())).then_some(()),
    )
    .await?;
    // nodus's own status updates keep the gate's condition.
    let pod = ns.pods().get("gated").await?;
    let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
    ensure!(
        conditions
            .iter()
            .any(|c| c.type_ == "example.com/gate" && c.status == "False"),
        "the gate's condition was dropped: {conditions:?}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn hostname_override_names_the_pod_whatever_its_hostname_and_subdomain() -> Result<()> {
    let (_cluster, ns, node) = setup("hostname-override").await?;
    let mut spec = pod(
        "named",
        "Never",
        json!([sh(
            "app",
            "echo \"$(hostname);$(hostname -f)\" > /dev/termination-log"
        )]),
    );
    spec["spec"]["hostname"] = "custom-host".into();
    spec["spec"]["subdomain"] = "sub".into();
    spec["spec"]["hostnameOverride"] = "override.example.host".into();
    ns.create_pod(&node, spec).await?;
    let message = wait_pod(
        &ns,
        "named",
        Duration::from_secs(45),
        "the pod to finish",
        |p| terminated_message(p, "app"),
    )
    .await?;
    assert_eq!(
        message.trim(),
        "override.example.host;override.example.host"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn env_from_a_config_map_keeps_keys_that_are_not_shell_names() -> Result<()> {
    let (_cluster, ns, node) = setup("env-from").await?;
    let maps: Api<ConfigMap> = Api::namespaced(ns.pods().into_client(), &ns.name);
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" },
        "data": { "data-1": "value-1", "PLAIN": "plain" },
    }))?;
    maps.create(&PostParams::default(), &map).await?;
    // Read the environment the runtime gave PID 1: busybox's shell itself would drop names
    // with a dash before its children saw them.
    let mut main = sh(
        "main",
        "tr '\\0' '\\n' < /proc/1/environ | grep -e '^p-data-1=' -e '^p-PLAIN=' | sort | tr '\\n' ' ' > /dev/termination-log",
    );
    main["envFrom"] = json!([{ "prefix": "p-", "configMapRef": { "name": "settings" } }]);
    ns.create_pod(&node, pod("env", "Never", json!([main])))
        .await?;
    let message = wait_pod(
        &ns,
        "env",
        Duration::from_secs(45),
        "the pod to finish",
        |p| terminated_message(p, "main"),
    )
    .await?;
    assert_eq!(message.trim(), "p-PLAIN=plain p-data-1=value-1");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_past_its_active_deadline_is_stopped_and_fails() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let (_cluster, ns, node) = setup("deadline").await?;
    let mut spec = pod("bounded", "Always", json!([sh("main", "sleep 3600")]));
    spec["spec"]["terminationGracePeriodSeconds"] = 1.into();
    ns.create_pod(&node, spec).await?;
    wait_pod(&ns, "bounded", Duration::from_secs(30), "Running", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    // The deadline may be set (or shortened) on a running pod, as the upstream spec does.
    let patch = json!({ "spec": { "activeDeadlineSeconds": 5 } });
    ns.pods()
        .patch(
            "bounded",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    let status = wait_pod(&ns, "bounded", Duration::from_secs(40), "Failed", |p| {
        (phase(p) == "Failed").then(|| p.status.clone()).flatten()
    })
    .await?;
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    wait_event(&ns, "bounded", "DeadlineExceeded", |m| {
        m == "Pod was active on the node longer than the specified deadline"
    })
    .await?;
    // Its container is stopped (with the pod's 1 s grace).
    wait_pod(
        &ns,
        "bounded",
        Duration::from_secs(30),
        "the container to stop",
        |p| {
            container(p, "main")?
                .state
                .as_ref()?
                .terminated
                .as_ref()
                .map(|_| ())
        },
    )
    .await?;
    ns.delete_pods().await
}

/// The status says which spec generation it reflects: 1 at first, and each spec update
/// (which the API server counts in metadata.generation) is observed on the status and on
/// the conditions nodus owns, as the kubelet reports them; a metadata-only update is not
/// a new generation.
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn the_status_reports_the_spec_generation_it_reflects() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let (_cluster, ns, node) = setup("generation").await?;
    ns.create_pod(
        &node,
        pod("gen", "Always", json!([sh("main", "sleep 3600")])),
    )
    .await?;
    let observed = |p: &k8s_openapi::api::core::v1::Pod| {
        let status = p.status.as_ref()?;
        let on_conditions: Vec<Option<i64>> = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "Ready" || c.type_ == "Initialized")
            .map(|c| c.observed_generation)
            .collect();
        Some((
            p.metadata.generation,
            status.observed_generation,
            on_conditions,
        ))
    };
    let first = wait_pod(
        &ns,
        "gen",
        Duration::from_secs(30),
        "generation 1 observed",
        |p| (phase(p) == "Running").then(|| observed(p)).flatten(),
    )
    .await?;
    ensure!(
        first == (Some(1), Some(1), vec![Some(1), Some(1)]),
        "a new pod's (generation, observed, on Initialized and Ready) are {first:?}"
    );
    let tolerate = json!({ "spec": { "tolerations": [
        { "key": "example.com/gen", "operator": "Exists", "effect": "NoSchedule" } ] } });
    ns.pods()
        .patch("gen", &PatchParams::default(), &Patch::Strategic(&tolerate))
        .await?;
    let annotate = json!({ "metadata": { "annotations": { "example.com/note": "x" } } });
    ns.pods()
        .patch("gen", &PatchParams::default(), &Patch::Strategic(&annotate))
        .await?;
    let second = wait_pod(
        &ns,
        "gen",
        Duration::from_secs(20),
        "generation 2 observed",
        |p| observed(p).filter(|(_, o, _)| *o == Some(2)),
    )
    .await?;
    ensure!(
        second == (Some(2), Some(2), vec![Some(2), Some(2)]),
        "after one spec update (generation, observed, on Initialized and Ready) are {second:?}"
    );
    ns.delete_pods().await
}

/// A pod with a hostname and subdomain finds itself by the full name the cluster DNS would
/// give it (`hostname.subdomain.namespace.svc.cluster.local`) in its /etc/hosts, before the
/// short one, as the kubelet writes the file: no DNS server is needed for it.
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_with_a_subdomain_has_its_full_name_in_etc_hosts() -> Result<()> {
    let (_cluster, ns, node) = setup("hosts-fqdn").await?;
    let mut spec = pod(
        "named",
        "Never",
        json!([sh(
            "app",
            "grep -v '^#' /etc/hosts | tail -1 > /dev/termination-log"
        )]),
    );
    spec["spec"]["hostname"] = "db-0".into();
    spec["spec"]["subdomain"] = "db".into();
    ns.create_pod(&node, spec).await?;
    let (line, ip) = wait_pod(
        &ns,
        "named",
        Duration::from_secs(45),
        "the pod to finish",
        |p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((terminated_message(p, "app")?, ip))
        },
    )
    .await?;
    assert_eq!(
        line.trim_end(),
        format!("{ip}\tdb-0.db.{}.svc.cluster.local\tdb-0", ns.name)
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_evicted_pod_keeps_the_eviction_apis_disruption_condition() -> Result<()> {
    let (_cluster, ns, node) = setup("evicted").await?;
    // The finalizer keeps the stopped pod readable after the eviction deleted it.
    let mut spec = pod(
        "evicted",
        "Never",
        json!([sh("main", "trap 'exit 0' TERM; sleep 600 & wait")]),
    );
    spec["metadata"]["finalizers"] = json!(["example.com/hold"]);
    spec["spec"]["terminationGracePeriodSeconds"] = json!(2);
    ns.create_pod(&node, spec).await?;
    wait_pod(&ns, "evicted", Duration::from_secs(60), "running", |p| {
        (phase(p) == "Running").then_some(())
    })
    .await?;
    ns.pods()
        .evict("evicted", &kube::api::EvictParams::default())
        .await?;
    // Stopped by nodus, its status keeps what the eviction API said, as the kubelet's does:
    // a Job's pod failure policy reads it.
    let condition = wait_pod(
        &ns,
        "evicted",
        Duration::from_secs(60),
        "the pod to be stopped",
        |p| {
            let stopped = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| {
                    c.iter().all(|c| {
                        c.state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some()
                    })
                });
            let condition = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget").cloned());
            stopped.then_some(condition)
        },
    )
    .await?;
    let condition = condition.context("no DisruptionTarget condition")?;
    ensure!(
        condition.status == "True" && condition.reason.as_deref() == Some("EvictionByEvictionAPI"),
        "{condition:?}"
    );
    let release = json!({ "metadata": { "finalizers": null } });
    ns.pods()
        .patch(
            "evicted",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&release),
        )
        .await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_running_pod_is_resized_in_place_or_told_why_not() -> Result<()> {
    let (cluster, ns, node) = setup("resize").await?;
    let mut cpu = sh("cpu", "sleep 3600");
    cpu["resources"] = json!({
        "requests": { "cpu": "100m", "memory": "32Mi" },
        "limits": { "cpu": "200m", "memory": "64Mi" },
    });
    let mut memory = sh("memory", "sleep 3600");
    memory["resources"] =
        json!({ "requests": { "memory": "32Mi" }, "limits": { "memory": "64Mi" } });
    memory["resizePolicy"] =
        json!([{ "resourceName": "memory", "restartPolicy": "RestartContainer" }]);
    ns.create_pod(&node, pod("sized", "Always", json!([cpu, memory])))
        .await?;
    let running = wait_pod(&ns, "sized", Duration::from_secs(60), "sized to run", |p| {
        (phase(p) == "Running" && container(p, "memory").is_some_and(|c| c.ready))
            .then(|| p.clone())
    })
    .await?;
    // The status carries what each container was given: the API server refuses resizes
    // of a pod whose running containers report none.
    let first = container(&running, "cpu").context("cpu status")?;
    let quantity =
        |list: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
         name: &str| { list.and_then(|l| l.get(name)).map(|q| q.0.clone()) };
    let resources = first.resources.clone().context("status resources")?;
    assert_eq!(
        quantity(resources.limits.as_ref(), "cpu").as_deref(),
        Some("200m")
    );
    assert_eq!(
        quantity(first.allocated_resources.as_ref(), "cpu").as_deref(),
        Some("100m")
    );
    let read = |container: &str, file: &str| -> Result<String> {
        Ok(cluster
            .kubectl(&[
                "exec", "-n", &ns.name, "sized", "-c", container, "--", "cat", file,
            ])?
            .trim()
            .to_owned())
    };
    assert_eq!(read("cpu", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")?, "20000");

    // More cpu in place: the cgroup changes, the container keeps running.
    let resize = |patch: serde_json::Value| {
        cluster.kubectl(&[
            "patch",
            "pod",
            "sized",
            "-n",
            &ns.name,
            "--subresource",
            "resize",
            "--type",
            "strategic",
            "-p",
            &patch.to_string(),
        ])
    };
    resize(
        json!({ "spec": { "containers": [{ "name": "cpu", "resources": {
        "requests": { "cpu": "150m" }, "limits": { "cpu": "300m" } } }] } }),
    )?;
    let resized = wait_pod(
        &ns,
        "sized",
        Duration::from_secs(60),
        "the cpu resize to be done",
        |p| {
            let done = p.status.as_ref()?.observed_generation >= p.metadata.generation
                && !p
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_.starts_with("PodResize"));
            let limit = quantity(
                container(p, "cpu")?.resources.as_ref()?.limits.as_ref(),
                "cpu",
            );
            (done && limit.as_deref() == Some("300m")).then(|| p.clone())
        },
    )
    .await?;
    assert_eq!(read("cpu", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")?, "30000");
    assert_eq!(read("cpu", "/sys/fs/cgroup/cpu/cpu.shares")?, "153");
    assert_eq!(container(&resized, "cpu").map(|c| c.restart_count), Some(0));
    wait_event(&ns, "sized", "ResizeCompleted", |m| {
        m.starts_with("Pod resize completed")
    })
    .await?;

    // A memory limit under a RestartContainer policy: the container starts again with it.
    resize(
        json!({ "spec": { "containers": [{ "name": "memory", "resources": {
        "limits": { "memory": "96Mi" } } }] } }),
    )?;
    wait_pod(
        &ns,
        "sized",
        Duration::from_secs(60),
        "memory to restart with its new limit",
        |p| {
            let status = container(p, "memory")?;
            let limit = quantity(status.resources.as_ref()?.limits.as_ref(), "memory");
            (status.restart_count == 1 && status.ready && limit.as_deref() == Some("96Mi"))
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        read("memory", "/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
        (96u64 << 20).to_string()
    );

    // All the node's cpu while another pod holds half of it: the API server lets it through
    // (it fits the node), nodus defers it, saying why, and nothing changes.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.admin().await?);
    let allocatable = nodes
        .get(&node)
        .await?
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("cpu").cloned())
        .context("allocatable cpu")?;
    let mut filler = sh("filler", "sleep 3600");
    filler["resources"] = json!({ "requests": { "cpu": "1" } });
    ns.create_pod(&node, pod("filler", "Always", json!([filler])))
        .await?;
    wait_pod(
        &ns,
        "filler",
        Duration::from_secs(60),
        "filler to run",
        |p| (phase(p) == "Running").then_some(()),
    )
    .await?;
    resize(
        json!({ "spec": { "containers": [{ "name": "cpu", "resources": {
        "requests": { "cpu": allocatable.0 }, "limits": { "cpu": allocatable.0 } } }] } }),
    )?;
    let message = wait_pod(
        &ns,
        "sized",
        Duration::from_secs(60),
        "the resize to be deferred",
        |p| {
            let pending = p.status.as_ref()?.conditions.iter().flatten().find(|c| {
                c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Deferred")
            })?;
            pending.message.clone()
        },
    )
    .await?;
    ensure!(
        message.starts_with("Node didn't have enough resource: cpu"),
        "{message}"
    );
    wait_event(&ns, "sized", "ResizeDeferred", |m| {
        m.contains("Node didn't have enough resource: cpu")
    })
    .await?;
    assert_eq!(read("cpu", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")?, "30000");
    // Asking again for what it has clears the condition.
    resize(
        json!({ "spec": { "containers": [{ "name": "cpu", "resources": {
        "requests": { "cpu": "150m" }, "limits": { "cpu": "300m" } } }] } }),
    )?;
    wait_pod(
        &ns,
        "sized",
        Duration::from_secs(60),
        "the pending condition to clear",
        |p| {
            let conditions = p.status.as_ref()?.conditions.clone().unwrap_or_default();
            (!conditions.iter().any(|c| c.type_ == "PodResizePending")).then_some(())
        },
    )
    .await?;
    ns.delete_pods().await
}
