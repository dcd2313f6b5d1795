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
