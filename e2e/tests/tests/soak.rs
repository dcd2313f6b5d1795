//! Soak: many pods with volumes created and deleted leave nothing behind on the node — no
//! sandbox, container, network namespace, IP allocation, cgroup, log directory, pod directory or
//! mount (each pod has a configMap with a subPath, a secret, and disk and memory emptyDirs, so
//! tmpfs and bind mounts are in play).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::json;

const PODS: usize = 200;
/// Pods alive at once: well inside the node's 110.
const BATCH: usize = 40;

fn leftovers() -> Result<Vec<String>> {
    let mut found = Vec::new();
    let endpoint = std::env::var("NODUS_CRI_ENDPOINT")?;
    for what in ["pods", "ps"] {
        let out = std::process::Command::new("crictl")
            .args(["--runtime-endpoint", &endpoint, what, "-q"])
            .args(if what == "ps" { vec!["-a"] } else { vec![] })
            .output()?;
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("crictl {what}: {l}")),
        );
    }
    let state = Path::new("/var/lib/nodus-e2e");
    let dirs = [
        (state.join("pod-logs"), "log directory"),
        (state.join("nodus/pods"), "pod directory"),
        (state.join("nodus/cni-ipam/nodus"), "IP allocation"),
        (
            Path::new("/run/nodus-e2e/containerd/state/io.containerd.grpc.v1.cri/netns")
                .to_path_buf(),
            "netns",
        ),
    ];
    for (dir, what) in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // host-local keeps its lock and a cursor, which are not allocations.
            if what == "IP allocation" && (name == "lock" || name.starts_with("last_reserved_ip")) {
                continue;
            }
            found.push(format!("{what}: {}", entry.path().display()));
        }
    }
    let pods_dir = state.join("nodus/pods");
    for line in std::fs::read_to_string("/proc/self/mountinfo")?.lines() {
        if let Some(point) = line.split(' ').nth(4)
            && Path::new(point).starts_with(&pods_dir)
        {
            found.push(format!("mount: {point}"));
        }
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        for qos in ["besteffort", "burstable"] {
            let dir = controller.path().join("kubepods").join(qos);
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type()?.is_dir() {
                    found.push(format!("cgroup: {}", entry.path().display()));
                }
            }
        }
    }
    Ok(found)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn creating_and_deleting_many_pods_leaves_nothing_behind() -> Result<()> {
    let cluster = Cluster::from_env()?;
    // Other tests' pods may legitimately hold runtime objects (a finished pod keeps its last
    // container): only what appears during the soak counts.
    let before: std::collections::BTreeSet<String> = leftovers()?.into_iter().collect();
    let ns = TestNamespace::create(cluster.admin().await?, "soak").await?;
    let node = cluster.node_name();
    let pods = ns.pods();
    let client = pods.clone().into_client();
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "soak" }, "data": { "app.conf": "x=1" },
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &config)
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "soak" }, "stringData": { "token": "t" },
    }))?;
    Api::<Secret>::namespaced(client, &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    for batch in 0..PODS / BATCH {
        try_join_all((0..BATCH).map(|i| {
            let (ns, node) = (&ns, &node);
            async move {
                let spec = json!({
                    "metadata": { "name": format!("soak-{batch}-{i}") },
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"],
                            "volumeMounts": [
                                { "name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf" },
                                { "name": "sec", "mountPath": "/sec" },
                                { "name": "disk", "mountPath": "/disk" },
                                { "name": "mem", "mountPath": "/mem" },
                            ],
                        }],
                        "volumes": [
                            { "name": "cfg", "configMap": { "name": "soak" } },
                            { "name": "sec", "secret": { "secretName": "soak" } },
                            { "name": "disk", "emptyDir": {} },
                            { "name": "mem", "emptyDir": { "medium": "Memory" } },
                        ],
                    },
                });
                ns.create_pod(node, spec).await
            }
        }))
        .await?;
        poll(Duration::from_secs(120), "the batch to run", || async {
            let list = pods.list(&ListParams::default()).await?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            Ok((running == BATCH).then_some(()))
        })
        .await?;
        ns.delete_pods().await?;
    }
    // The API objects go only after the runtime's are removed; host files follow at once.
    let new = || -> Result<Vec<String>> {
        Ok(leftovers()?
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect())
    };
    let left = poll(
        Duration::from_secs(30),
        "nothing to be left behind",
        || async { Ok(new()?.is_empty().then_some(())) },
    )
    .await;
    left.map_err(|err| anyhow::anyhow!("{err}: {:?}", new().unwrap_or_default()))
}
