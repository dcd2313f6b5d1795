//! The CRI client against a real runtime: containerd when `NODUS_CRI_ENDPOINT` names one
//! (e2e/test sets it to the local cluster's), and a socket that does not exist.

use nodus_cri::{Endpoint, Error, Runtime, RuntimeStatus};

fn cluster_runtime() -> Runtime {
    let endpoint =
        std::env::var("NODUS_CRI_ENDPOINT").expect("NODUS_CRI_ENDPOINT is set by e2e/test");
    Runtime::connect(Endpoint::parse(&endpoint).expect("valid endpoint"))
}

#[tokio::test]
#[ignore = "needs the local cluster's containerd: run e2e/test"]
async fn containerd_reports_its_version_and_readiness() {
    let runtime = cluster_runtime();
    let version = runtime.version().await.expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    assert!(
        version.node_info().starts_with("containerd://"),
        "{}",
        version.node_info()
    );

    let status = runtime.status().await.expect("Status");
    let runtime_ready = status
        .condition(RuntimeStatus::RUNTIME_READY)
        .expect("RuntimeReady reported");
    assert!(runtime_ready.status, "{runtime_ready:?}");
    // nodus wrote the CNI configuration, so the network is ready too.
    let network_ready = status
        .condition(RuntimeStatus::NETWORK_READY)
        .expect("NetworkReady reported");
    assert!(network_ready.status, "{network_ready:?}");
}

#[tokio::test]
async fn a_missing_socket_is_unavailable_and_says_why() {
    let dir = std::env::temp_dir().join(format!("nodus-cri-missing-{}", std::process::id()));
    let endpoint = Endpoint::parse(&format!("unix://{}/containerd.sock", dir.display()))
        .expect("valid endpoint");
    let runtime = Runtime::connect(endpoint);
    let err = runtime.status().await.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        matches!(
            err,
            Error::Call {
                method: "Status",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("No such file or directory"), "{message}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
}

/// A StartContainer call cut off part-way (the caller dropped it, as an agent restarting
/// mid-start does) can leave containerd 1.6 with a task created but never started, while
/// CRI reports the container exited; CRI's own removal then fails for good. Removal through
/// this client still succeeds: it deletes such stale tasks first.
#[tokio::test]
#[ignore = "needs the local cluster's containerd: run e2e/test"]
async fn a_start_cut_off_midway_does_not_block_removal() {
    use nodus_cri::api::{
        ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
        PodSandboxMetadata,
    };
    use std::time::Duration;

    let runtime = cluster_runtime();
    let logs = std::env::temp_dir().join(format!("nodus-cri-cut-off-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let uid = format!("cut-off-{}", std::process::id());
    // No io.kubernetes.pod.* labels: the cluster's nodus leaves this sandbox alone.
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "cut-off".into(),
            uid: uid.clone(),
            namespace: "nodus-cri-test".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let sandbox = runtime
        .run_pod_sandbox(sandbox_config.clone(), "")
        .await
        .expect("RunPodSandbox");
    // Cut starts off at every point of their course, a few milliseconds apart.
    for (i, delay_ms) in (0..=200).step_by(2).enumerate() {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: format!("c{i}"),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "busybox:1.36".into(),
                ..ImageSpec::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("c{i}.log"),
            ..ContainerConfig::default()
        };
        let id = runtime
            .create_container(&sandbox, config, sandbox_config.clone())
            .await
            .expect("CreateContainer");
        let _ = tokio::time::timeout(
            Duration::from_millis(delay_ms),
            runtime.start_container(&id),
        )
        .await;
    }
    runtime
        .stop_pod_sandbox(&sandbox)
        .await
        .expect("StopPodSandbox");
    // A start that was cut off may still be finishing inside containerd for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match runtime.remove_pod_sandbox(&sandbox).await {
            Ok(()) => break,
            Err(err) if tokio::time::Instant::now() < deadline => {
                eprintln!("RemovePodSandbox: {err}; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the sandbox could not be removed: {err}"),
        }
    }
    let left = runtime
        .list_pod_sandboxes(None)
        .await
        .expect("ListPodSandbox");
    assert!(
        left.iter()
            .all(|s| s.metadata.as_ref().is_none_or(|m| m.uid != uid)),
        "the sandbox is still listed"
    );
    let _ = std::fs::remove_dir_all(&logs);
}
