//! ResourceQuotas as users meet them, with nodus-control computing their usage and the stock
//! API server's quota admission enforcing it: a new quota shows what its namespace already
//! holds (`kubectl describe quota` "Used"), a create beyond it is refused, and what a deleted
//! or finished pod held is given back so that the next create passes; a scoped quota counts
//! only its pods; a status written by hand is put back to the quota's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn quota(name: &str, spec: Value) -> Result<ResourceQuota> {
    Ok(serde_json::from_value(
        json!({ "metadata": { "name": name }, "spec": spec }),
    )?)
}

/// A pod that sleeps (or exits at once when `brief`) asking for `cpu` and `memory`; none for
/// a best-effort pod.
fn pod(name: &str, resources: Option<(&str, &str)>, brief: bool) -> Value {
    let mut container = json!({
        "name": "c",
        "image": "busybox:1.36",
        "command": ["sh", "-c", if brief { "true" } else { "trap 'exit 0' TERM; sleep 600 & wait" }],
    });
    if let Some((cpu, memory)) = resources {
        container["resources"] = json!({ "requests": { "cpu": cpu, "memory": memory } });
    }
    json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    })
}

/// The quota's `status.used` as text, once it has one.
async fn used(quotas: &Api<ResourceQuota>, name: &str) -> Result<Option<BTreeMap<String, String>>> {
    let quota = quotas.get(name).await?;
    Ok(quota
        .status
        .and_then(|s| s.used)
        .map(|u| u.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

/// Waits until the quota shows `want` for each resource named.
async fn wait_used(quotas: &Api<ResourceQuota>, name: &str, want: &[(&str, &str)]) -> Result<()> {
    let what = format!("quota {name} to show used {want:?}");
    poll(WAIT, &what, || async {
        let Some(used) = used(quotas, name).await? else {
            return Ok(None);
        };
        let matches = want
            .iter()
            .all(|(k, v)| used.get(*k).map(String::as_str) == Some(*v));
        Ok(matches.then_some(()))
    })
    .await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_quota_counts_usage_refuses_excess_and_gives_back_what_pods_release() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let node = cluster.node_name();
    let ns = TestNamespace::create(client.clone(), "quota").await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let post = PostParams::default();
    // The namespace already holds its kube-root-ca.crt ConfigMap (published by
    // nodus-control) and, once made, this quota.
    poll(WAIT, "the namespace's root CA ConfigMap", || async {
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &ns.name);
        Ok(maps.get_opt("kube-root-ca.crt").await?.map(|_| ()))
    })
    .await?;
    quotas
        .create(
            &post,
            &quota(
                "compute",
                json!({ "hard": {
                    "pods": "2", "requests.cpu": "1", "requests.memory": "1Gi",
                    "configmaps": "5", "resourcequotas": "3", "count/replicasets.apps": "4",
                }}),
            )?,
        )
        .await?;
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "0"),
            ("requests.cpu", "0"),
            ("requests.memory", "0"),
            ("configmaps", "1"),
            ("resourcequotas", "1"),
            ("count/replicasets.apps", "0"),
        ],
    )
    .await?;
    let described = cluster.kubectl(&["-n", &ns.name, "describe", "quota", "compute"])?;
    assert!(
        described.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words == ["configmaps", "1", "5"]
        }),
        "kubectl describe shows used beside hard:\n{described}"
    );

    ns.create_pod(&node, pod("one", Some(("300m", "256Mi")), false))
        .await?;
    ns.create_pod(&node, pod("two", Some(("200m", "256Mi")), true))
        .await?;
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "2"),
            ("requests.cpu", "500m"),
            ("requests.memory", "512Mi"),
        ],
    )
    .await?;
    // Pod "two" exits at once: its share comes back when it has Succeeded, while it is
    // still stored. Until then a third pod is over the quota.
    let third = ns.create_pod(&node, pod("three", Some(("100m", "64Mi")), false));
    if let Err(err) = third.await {
        let text = format!("{err:#}");
        assert!(text.contains("exceeded quota: compute"), "{text}");
    }
    poll(WAIT, "pod two to succeed", || async {
        let phase = ns.pods().get("two").await?.status.and_then(|s| s.phase);
        Ok((phase.as_deref() == Some("Succeeded")).then_some(()))
    })
    .await?;
    poll(WAIT, "a third pod to be admitted", || async {
        if ns.pods().get_opt("three").await?.is_some() {
            return Ok(Some(()));
        }
        match ns
            .create_pod(&node, pod("three", Some(("100m", "64Mi")), false))
            .await
        {
            Ok(_) => Ok(Some(())),
            Err(err) if format!("{err:#}").contains("exceeded quota") => Ok(None),
            Err(err) => Err(err),
        }
    })
    .await?;
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "2"),
            ("requests.cpu", "400m"),
            ("requests.memory", "320Mi"),
        ],
    )
    .await?;

    // Beyond the cpu left (600m), refused with the API server's words.
    let refused = ns
        .create_pod(&node, pod("big", Some(("700m", "1Mi")), false))
        .await;
    match refused {
        Ok(_) => bail!("a pod beyond the quota's cpu was admitted"),
        Err(err) => {
            let text = format!("{err:#}");
            assert!(text.contains("exceeded quota: compute"), "{text}");
            assert!(text.contains("requests.cpu"), "{text}");
        }
    }

    // Deleting a pod gives back what it held.
    ns.pods().delete("one", &DeleteParams::default()).await?;
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "1"),
            ("requests.cpu", "100m"),
            ("requests.memory", "64Mi"),
        ],
    )
    .await?;
    ns.delete_pods().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_scoped_quota_counts_its_pods_and_a_hand_written_status_is_put_back() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let node = cluster.node_name();
    let ns = TestNamespace::create(client.clone(), "quota-scope").await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let post = PostParams::default();
    quotas
        .create(
            &post,
            &quota(
                "best-effort",
                json!({ "hard": { "pods": "5" }, "scopes": ["BestEffort"] }),
            )?,
        )
        .await?;
    quotas
        .create(
            &post,
            &quota(
                "burstable",
                json!({ "hard": { "pods": "5" }, "scopes": ["NotBestEffort"] }),
            )?,
        )
        .await?;
    wait_used(&quotas, "best-effort", &[("pods", "0")]).await?;
    wait_used(&quotas, "burstable", &[("pods", "0")]).await?;
    ns.create_pod(&node, pod("free", None, false)).await?;
    ns.create_pod(&node, pod("asks", Some(("10m", "8Mi")), false))
        .await?;
    ns.create_pod(&node, pod("asks-too", Some(("10m", "8Mi")), false))
        .await?;
    wait_used(&quotas, "best-effort", &[("pods", "1")]).await?;
    wait_used(&quotas, "burstable", &[("pods", "2")]).await?;

    // A status written by hand that disagrees with the limits is put back.
    let params = PatchParams::default();
    let wrong = json!({ "status": { "hard": { "pods": "99" }, "used": { "pods": "42" } } });
    quotas
        .patch_status("burstable", &params, &Patch::Merge(&wrong))
        .await?;
    poll(WAIT, "the hand-written status to be put back", || async {
        let status = quotas.get("burstable").await?.status.unwrap_or_default();
        let hard = status.hard.unwrap_or_default();
        let used = status.used.unwrap_or_default();
        let back = hard.get("pods").map(|q| q.0.as_str()) == Some("5")
            && used.get("pods").map(|q| q.0.as_str()) == Some("2");
        Ok(back.then_some(()))
    })
    .await?;
    ns.delete_pods().await?;
    Ok(())
}
