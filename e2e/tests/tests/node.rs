//! The node as a user of the stock kubelet sees it: registration, Lease, readiness
//! following the container runtime, restarts and credentials.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use nodus_e2e::{Cluster, poll};
use serde_json::json;

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn is_ready(node: &Node) -> bool {
    condition(node, "Ready").is_some_and(|c| c.status == "True")
}

async fn nodes(cluster: &Cluster) -> Result<Api<Node>> {
    Ok(Api::all(cluster.admin().await?))
}

async fn wait_ready(api: &Api<Node>, name: &str, timeout: Duration) -> Result<Node> {
    poll(timeout, "the node to be Ready", || async {
        let node = api.get(name).await?;
        Ok(is_ready(&node).then_some(node))
    })
    .await
}

/// Starts a component again when a test that stopped it ends, even by a failed assertion,
/// so that one failure does not cascade into every later test.
struct Restart<'a> {
    cluster: &'a Cluster,
    component: &'static str,
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.cluster.script(&["start", self.component]) {
            eprintln!("restarting {} after the test: {err:#}", self.component);
        }
    }
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn node_registers_with_the_kubelets_fields() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let node = wait_ready(&nodes(&cluster).await?, &name, Duration::from_secs(30)).await?;

    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("amd64")
    );

    let status = node.status.clone().context("node status")?;
    let addresses = status.addresses.clone().unwrap_or_default();
    let internal = addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .context("InternalIP")?;
    let expected_ip = std::env::var("NODUS_E2E_NODE_IP").context("NODUS_E2E_NODE_IP")?;
    assert_eq!(internal.address, expected_ip);
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "Hostname" && a.address == name)
    );

    let capacity = status.capacity.clone().unwrap_or_default();
    let allocatable = status.allocatable.clone().unwrap_or_default();
    for resource in ["cpu", "memory", "ephemeral-storage", "pods"] {
        assert!(capacity.contains_key(resource), "capacity lacks {resource}");
        assert!(
            allocatable.contains_key(resource),
            "allocatable lacks {resource}"
        );
    }
    assert_eq!(capacity["pods"].0, "110");
    let cpus = std::thread::available_parallelism()?.get().to_string();
    assert_eq!(capacity["cpu"].0, cpus);
    assert_ne!(
        capacity["memory"], allocatable["memory"],
        "eviction threshold held back from allocatable"
    );

    let info = status.node_info.clone().context("nodeInfo")?;
    assert_eq!(
        info.kernel_version,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    assert_eq!(
        info.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim()
    );
    assert_eq!(
        info.machine_id,
        std::fs::read_to_string("/etc/machine-id")?.trim()
    );
    assert!(
        info.os_image.starts_with("Debian GNU/Linux"),
        "{}",
        info.os_image
    );
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{}",
        info.container_runtime_version
    );
    assert!(
        info.kubelet_version.starts_with("v1.37."),
        "{}",
        info.kubelet_version
    );
    assert_eq!(
        (info.operating_system.as_str(), info.architecture.as_str()),
        ("linux", "amd64")
    );
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(port, Some(10250));

    for (kind, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
        ("Ready", "KubeletReady"),
    ] {
        let c = condition(&node, kind).with_context(|| format!("condition {kind}"))?;
        assert_eq!(c.reason.as_deref(), Some(reason), "{kind}");
        assert!(
            c.last_heartbeat_time.is_some() && c.last_transition_time.is_some(),
            "{kind} timestamps"
        );
    }

    // What a user sees.
    let wide = cluster.kubectl(&["get", "nodes", "-o", "wide", "--no-headers"])?;
    let row = wide
        .lines()
        .find(|l| l.starts_with(&name))
        .context("node row in kubectl get nodes")?;
    for expected in [
        " Ready ",
        &expected_ip,
        &info.kernel_version,
        "containerd://",
        "Debian GNU/Linux",
    ] {
        assert!(
            row.contains(expected),
            "kubectl get nodes -o wide row lacks {expected:?}: {row}"
        );
    }
    let describe = cluster.kubectl(&["describe", "node", &name])?;
    for expected in [
        "Capacity:",
        "Allocatable:",
        "Conditions:",
        "KubeletReady",
        "Lease:",
        "RenewTime:",
    ] {
        assert!(
            describe.contains(expected),
            "kubectl describe node lacks {expected:?}"
        );
    }
    Ok(())
}

/// An operator advertises a device count in the node's capacity only (as the Kubernetes
/// docs' "Advertise Extended Resources for a Node" does); the agent makes it allocatable,
/// and withdraws it from allocatable once capacity no longer has it.
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn extended_resources_in_capacity_become_allocatable() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let api = nodes(&cluster).await?;
    let resource = "nodus.dev/e2e-dongle";
    let allocatable = |node: Node| {
        node.status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.get(resource).map(|q| q.0.clone()))
    };
    let set = |amount: Option<&str>| json!({ "status": { "capacity": { resource: amount } } });
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&set(Some("4"))),
    )
    .await?;
    // The agent reads the node at each status update (every 10 s).
    let outcome = poll(
        Duration::from_secs(35),
        "the dongles to be allocatable",
        || async { Ok(allocatable(api.get(&name).await?).filter(|q| q == "4")) },
    )
    .await;
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&set(None)))
        .await?;
    outcome?;
    poll(
        Duration::from_secs(35),
        "the dongles to leave allocatable",
        || async { Ok(allocatable(api.get(&name).await?).is_none().then_some(())) },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn lease_is_renewed_by_the_node() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let node = nodes(&cluster).await?.get(&name).await?;
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await?, "kube-node-lease");
    let first = leases.get(&name).await?;
    let spec = first.spec.clone().context("lease spec")?;
    assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = first.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.kind == "Node" && Some(&o.uid) == node.metadata.uid.as_ref()),
        "lease owned by the Node: {owner:?}"
    );
    let renewed_at = spec.renew_time.context("renewTime")?.0;
    // Renewal runs every 10 s; allow for two missed beats.
    poll(
        Duration::from_secs(35),
        "the lease's renewTime to advance",
        || async {
            let lease = leases.get(&name).await?;
            let now = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
            Ok(now.filter(|t| *t > renewed_at))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn ready_follows_the_container_runtime() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let api = nodes(&cluster).await?;
    wait_ready(&api, &name, Duration::from_secs(30)).await?;

    cluster.script(&["stop", "containerd"])?;
    let restart = Restart {
        cluster: &cluster,
        component: "containerd",
    };
    let not_ready = poll(
        Duration::from_secs(45),
        "Ready=False while containerd is stopped",
        || async {
            let node = api.get(&name).await?;
            Ok(condition(&node, "Ready")
                .filter(|c| c.status == "False")
                .cloned())
        },
    )
    .await?;
    assert_eq!(not_ready.reason.as_deref(), Some("KubeletNotReady"));
    let message = not_ready.message.unwrap_or_default();
    assert!(
        message.starts_with("container runtime is down"),
        "{message}"
    );

    drop(restart);
    let ready = wait_ready(&api, &name, Duration::from_secs(45)).await?;
    let c = condition(&ready, "Ready").context("Ready")?;
    assert_eq!(c.reason.as_deref(), Some("KubeletReady"));
    ensure!(
        c.last_transition_time > not_ready.last_transition_time,
        "transition time moved on"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn agent_restart_keeps_the_same_node() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let api = nodes(&cluster).await?;
    let before = wait_ready(&api, &name, Duration::from_secs(30)).await?;
    let pid_before = cluster.pid("nodus")?;

    cluster.script(&["restart", "nodus"])?;
    assert_ne!(cluster.pid("nodus")?, pid_before, "a new agent process");
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await?, "kube-node-lease");
    let restarted_at = k8s_openapi::jiff::Timestamp::now();
    // The new process renews the lease as soon as it has taken the Node over.
    poll(
        Duration::from_secs(30),
        "the restarted agent to renew the lease",
        || async {
            let lease = leases.get(&name).await?;
            Ok(lease
                .spec
                .and_then(|s| s.renew_time)
                .filter(|t| t.0 >= restarted_at))
        },
    )
    .await?;
    let after = wait_ready(&api, &name, Duration::from_secs(30)).await?;
    assert_eq!(after.metadata.uid, before.metadata.uid, "same Node object");
    assert_eq!(
        after.metadata.creation_timestamp,
        before.metadata.creation_timestamp
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn sigterm_stops_the_agent_promptly() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let _restart = Restart {
        cluster: &cluster,
        component: "nodus",
    };
    let pid = cluster.pid("nodus")?;
    let process = std::path::PathBuf::from(format!("/proc/{pid}"));
    ensure!(process.exists(), "nodus (pid {pid}) is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid}");
    // The harness's process is a child of setsid: once it exits its /proc entry goes.
    poll(
        Duration::from_secs(5),
        "nodus to exit after SIGTERM",
        || async { Ok((!process.exists()).then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn agent_runs_with_node_credentials_only() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let name = cluster.node_name();
    let pid = cluster.pid("nodus")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let kubeconfig = args
        .iter()
        .position(|a| a == "--kubeconfig")
        .and_then(|i| args.get(i + 1))
        .context("nodus runs with --kubeconfig")?;
    assert_eq!(std::path::Path::new(kubeconfig), cluster.node_kubeconfig());

    let whoami = nodus_e2e::kubectl(
        &cluster.node_kubeconfig(),
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    )?;
    assert!(
        whoami.starts_with(&format!("system:node:{name} ")),
        "{whoami}"
    );
    assert!(whoami.contains("system:nodes"), "{whoami}");
    assert!(!whoami.contains("system:masters"), "{whoami}");

    let secrets: Api<Secret> = Api::all(cluster.node_client().await?);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert!(status.is_forbidden(), "{status:?}"),
        other => panic!("the node may not list secrets, got {other:?}"),
    }
    let others: Api<Node> = Api::all(cluster.node_client().await?);
    let node = k8s_openapi::api::core::v1::Node {
        metadata: kube::api::ObjectMeta {
            name: Some("not-this-node".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match others.create(&Default::default(), &node).await {
        Err(kube::Error::Api(status)) => assert!(status.is_forbidden(), "{status:?}"),
        other => panic!("NodeRestriction must refuse another node's object, got {other:?}"),
    }
    Ok(())
}
