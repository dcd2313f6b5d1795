//! nodus-control's namespace controllers on the local cluster: a new namespace gets the
//! `kube-root-ca.crt` ConfigMap (the cluster CA) and the `default` ServiceAccount, both put
//! back when deleted or changed; a deleted namespace is emptied — its pods first, stopped by
//! the node, and the rest only once no pod is left — and then goes.
//!
//! The namespaces here are created bare, not through `TestNamespace`, which makes the
//! ServiceAccount itself: the point is that the controller does.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use nodus_e2e::{Cluster, poll};
use serde_json::json;

const ROOT_CA: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "kubernetes.io/description";

/// Creates a namespace named `<prefix>-<hex>` and nothing in it.
async fn bare_namespace(client: &Client, prefix: &str) -> Result<String> {
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let name = format!("{prefix}-{suffix:x}");
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

fn ca_of(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get("ca.crt").map(String::as_str)
}

/// Waits for `kube-root-ca.crt` to hold exactly `ca` and the description, and for its uid to
/// differ from `not_uid` (a re-created one); returns its uid.
async fn published(
    config_maps: &Api<ConfigMap>,
    ca: &str,
    not_uid: Option<&str>,
    what: &str,
) -> Result<String> {
    let wanted = BTreeMap::from([("ca.crt".to_owned(), ca.to_owned())]);
    poll(Duration::from_secs(30), what, || async {
        let Some(cm) = config_maps.get_opt(ROOT_CA).await? else {
            return Ok(None);
        };
        let described = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION))
            .is_some_and(|d| d.starts_with("Contains a CA bundle"));
        let uid = cm.metadata.uid.clone().unwrap_or_default();
        let fresh = not_uid.is_none_or(|old| old != uid);
        Ok((cm.data.as_ref() == Some(&wanted) && described && fresh).then_some(uid))
    })
    .await
}

/// Waits for the `default` ServiceAccount, with a uid other than `not_uid`; returns its uid.
async fn default_account(
    accounts: &Api<ServiceAccount>,
    not_uid: Option<&str>,
    what: &str,
) -> Result<String> {
    poll(Duration::from_secs(30), what, || async {
        let Some(account) = accounts.get_opt("default").await? else {
            return Ok(None);
        };
        let uid = account.metadata.uid.unwrap_or_default();
        Ok(not_uid.is_none_or(|old| old != uid).then_some(uid))
    })
    .await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_new_namespace_gets_the_root_ca_and_default_account_and_keeps_them() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ca = std::fs::read_to_string(cluster.ca_cert())
        .with_context(|| format!("reading {}", cluster.ca_cert().display()))?;
    let ns = bare_namespace(&client, "rootca").await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);

    let first = published(&config_maps, &ca, None, "kube-root-ca.crt to be published").await?;
    let created = config_maps.get(ROOT_CA).await?;
    assert_eq!(ca_of(&created), Some(ca.as_str()));
    let account = default_account(&accounts, None, "the default ServiceAccount").await?;

    // Deleted: created again (a new object).
    config_maps
        .delete(ROOT_CA, &DeleteParams::default())
        .await?;
    let second = published(
        &config_maps,
        &ca,
        Some(&first),
        "kube-root-ca.crt to be re-created",
    )
    .await?;

    // Changed: put back, extra keys dropped, same object.
    config_maps
        .patch(
            ROOT_CA,
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "ca.crt": "tampered", "extra": "x" } })),
        )
        .await?;
    let restored = poll(
        Duration::from_secs(30),
        "kube-root-ca.crt's data to be restored",
        || async {
            let cm = config_maps.get(ROOT_CA).await?;
            let restored =
                ca_of(&cm) == Some(ca.as_str()) && cm.data.as_ref().is_some_and(|d| d.len() == 1);
            Ok(restored.then_some(cm))
        },
    )
    .await?;
    assert_eq!(restored.metadata.uid.as_deref(), Some(second.as_str()));

    // Other ConfigMaps are none of the publisher's business.
    let own = ConfigMap {
        metadata: ObjectMeta {
            name: Some("own".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("ca.crt".into(), "mine".into())])),
        ..ConfigMap::default()
    };
    config_maps.create(&PostParams::default(), &own).await?;

    accounts.delete("default", &DeleteParams::default()).await?;
    default_account(
        &accounts,
        Some(&account),
        "the default ServiceAccount to be re-created",
    )
    .await?;
    let own = config_maps.get("own").await?;
    assert_eq!(ca_of(&own), Some("mine"));

    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .context("cleanup")?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_deleted_namespace_is_emptied_and_goes() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = bare_namespace(&client, "nsdel").await?;
    // Pod admission refuses pods until the controller has made `default`.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    default_account(&accounts, None, "the default ServiceAccount").await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "settings" },
                "data": { "mode": "test" },
            }))?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "token" },
                "stringData": { "token": "s3cret" },
            }))?,
        )
        .await?;
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "web" },
                "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80 }] },
            }))?,
        )
        .await?;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            // Held by a finalizer, so that the namespace's content waits on it.
            "metadata": { "name": "web", "labels": { "app": "web" }, "finalizers": ["example.com/hold"] },
            "spec": {
                "nodeName": cluster.node_name(),
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"] }],
            },
        }))?,
    )
    .await?;
    // Running, so that the node has a container to stop before the namespace can go.
    poll(Duration::from_secs(60), "the pod to run", || async {
        let pod = pods.get("web").await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        Ok((phase.as_deref() == Some("Running")).then_some(()))
    })
    .await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    // Pods go first: while one is left (held here), the rest of the content stays.
    poll(
        Duration::from_secs(60),
        "a pass that finds the pod left",
        || async {
            let namespace = namespaces.get(&ns).await?;
            let conditions = namespace
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            let waiting = conditions.iter().any(|c| {
                c.type_ == "NamespaceContentRemaining"
                    && c.status == "True"
                    && c.message.as_deref().is_some_and(|m| m.contains("pods"))
            });
            Ok(waiting.then_some(()))
        },
    )
    .await?;
    let pod = pods.get("web").await?;
    assert!(
        pod.metadata.deletion_timestamp.is_some(),
        "the pod is being deleted"
    );
    assert!(
        config_maps.get_opt("settings").await?.is_some(),
        "ConfigMaps wait for the pods"
    );
    assert!(
        secrets.get_opt("token").await?.is_some(),
        "Secrets wait for the pods"
    );
    let release = json!({ "metadata": { "finalizers": null } });
    pods.patch("web", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    poll(
        Duration::from_secs(90),
        "the namespace to be gone",
        || async {
            let left = namespaces.get_opt(&ns).await?;
            Ok(left.is_none().then_some(()))
        },
    )
    .await
    .with_context(|| {
        let describe = cluster
            .kubectl(&["get", "namespace", &ns, "-o", "yaml"])
            .unwrap_or_else(|err| format!("{err:#}"));
        format!("namespace {ns} as it was left:\n{describe}")
    })?;

    // Released only once empty: nothing of it is left behind in storage.
    let all = ListParams::default();
    assert!(pods.list(&all).await?.items.is_empty(), "pods left");
    assert!(
        config_maps.list(&all).await?.items.is_empty(),
        "ConfigMaps left"
    );
    assert!(secrets.list(&all).await?.items.is_empty(), "Secrets left");
    assert!(services.list(&all).await?.items.is_empty(), "Services left");
    assert!(
        accounts.list(&all).await?.items.is_empty(),
        "ServiceAccounts left"
    );
    Ok(())
}
