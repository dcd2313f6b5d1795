//! Volumes as a pod sees them: every test's container checks its own files and reports through
//! its exit code and termination message, so what is asserted is what a process in the pod
//! reads, not only what the API says. Cluster trust bundles project by name and by signer.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use nodus_e2e::TestNamespace;
use nodus_e2e::pods::*;
use serde_json::json;

/// A busybox script prelude: `check ACTUAL EXPECTED WHAT` fails the container with a message.
const CHECK: &str = "check() { [ \"$1\" = \"$2\" ] || { echo \"$3: got '$1', want '$2'\" > /dev/termination-log; exit 1; }; }; ";

async fn config_map(ns: &TestNamespace, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(ns.pods().into_client(), &ns.name);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &cm).await?;
    Ok(())
}

async fn secret(ns: &TestNamespace, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ns.pods().into_client(), &ns.name);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    };
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// Waits for the pod to finish and returns (phase, the named container's termination message).
async fn finished(
    ns: &TestNamespace,
    name: &str,
    container_name: &str,
) -> Result<(String, String)> {
    wait_pod(
        ns,
        name,
        Duration::from_secs(60),
        &format!("{name} to finish"),
        |p: &Pod| {
            let phase = phase(p);
            (phase == "Succeeded" || phase == "Failed").then(|| {
                let message = container(p, container_name)
                    .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
                    .unwrap_or_default();
                (phase.to_owned(), message.trim().to_owned())
            })
        },
    )
    .await
}

async fn succeeds(ns: &TestNamespace, name: &str, container_name: &str) -> Result<String> {
    let (phase, message) = finished(ns, name, container_name).await?;
    ensure!(phase == "Succeeded", "{name} {phase}: {message}");
    Ok(message)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn config_map_and_secret_files_have_their_items_and_modes() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-files").await?;
    config_map(&ns, "cfg", &[("a", "alpha"), ("b", "beta")]).await?;
    secret(&ns, "creds", &[("pw", "s3cret")]).await?;
    let script = format!(
        "{CHECK}\
         check \"$(cat /cfg/conf/a.txt)\" alpha cm-content; \
         check \"$(stat -L -c %a /cfg/conf/a.txt)\" 400 cm-mode; \
         check \"$(ls /cfg)\" conf cm-items-only; \
         check \"$(cat /sec/pw)\" s3cret secret-content; \
         check \"$(stat -L -c %a /sec/pw)\" 440 secret-mode; \
         check \"$(grep -c ' /sec tmpfs ' /proc/mounts)\" 1 secret-on-tmpfs; \
         if touch /cfg/x 2>/dev/null; then echo cfg-writable > /dev/termination-log; exit 1; fi; \
         echo ok > /dev/termination-log"
    );
    let mut spec = pod("files", "Never", json!([sh("app", &script)]));
    spec["spec"]["containers"][0]["volumeMounts"] = json!([
        { "name": "cfg", "mountPath": "/cfg" },
        { "name": "sec", "mountPath": "/sec" },
    ]);
    spec["spec"]["volumes"] = json!([
        { "name": "cfg", "configMap": { "name": "cfg", "items": [{ "key": "a", "path": "conf/a.txt", "mode": 0o400 }] } },
        { "name": "sec", "secret": { "secretName": "creds", "defaultMode": 0o440 } },
    ]);
    ns.create_pod(&node, spec).await?;
    assert_eq!(succeeds(&ns, "files", "app").await?, "ok");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_non_root_user_reads_a_secret_through_the_pods_fs_group() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-fsgroup").await?;
    secret(&ns, "creds", &[("pw", "s3cret")]).await?;
    let script = format!(
        "{CHECK}\
         check \"$(id -u)\" 1000 user; \
         case \" $(id -G) \" in *' 1001 '*) ;; *) echo \"fsGroup not among $(id -G)\" > /dev/termination-log; exit 1;; esac; \
         check \"$(stat -L -c %a:%g /sec/pw)\" 440:1001 mode-and-group; \
         check \"$(cat /sec/pw)\" s3cret readable; \
         echo ok > /dev/termination-log"
    );
    let mut spec = pod("fsgroup", "Never", json!([sh("app", &script)]));
    spec["spec"]["securityContext"] = json!({ "runAsUser": 1000, "fsGroup": 1001 });
    spec["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "sec", "mountPath": "/sec" }]);
    spec["spec"]["volumes"] = json!([
        { "name": "sec", "projected": { "defaultMode": 0o440, "sources": [{ "secret": { "name": "creds" } }] } },
    ]);
    ns.create_pod(&node, spec).await?;
    assert_eq!(succeeds(&ns, "fsgroup", "app").await?, "ok");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_updated_config_map_reaches_the_mounted_file() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-update").await?;
    config_map(&ns, "live", &[("k", "v1")]).await?;
    let script = "until grep -q v2 /cfg/k; do sleep 0.2; done; cat /cfg/k > /dev/termination-log";
    let mut spec = pod("watcher", "Never", json!([sh("app", script)]));
    spec["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "cfg", "mountPath": "/cfg" }]);
    spec["spec"]["volumes"] = json!([{ "name": "cfg", "configMap": { "name": "live" } }]);
    ns.create_pod(&node, spec).await?;
    wait_pod(
        &ns,
        "watcher",
        Duration::from_secs(60),
        "watcher to run",
        |p| (phase(p) == "Running").then_some(()),
    )
    .await?;
    let api: Api<ConfigMap> = Api::namespaced(ns.pods().into_client(), &ns.name);
    api.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "v2" } })),
    )
    .await?;
    assert_eq!(succeeds(&ns, "watcher", "app").await?, "v2");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn downward_api_files_hold_labels_annotations_and_limits() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-downward").await?;
    let script = "{ cat /info/labels; echo '|'; cat /info/annotations; echo '|'; cat /info/name; \
                  echo '|'; cat /info/cpu; } > /dev/termination-log";
    let mut spec = pod("downward", "Never", json!([sh("app", script)]));
    spec["metadata"]["labels"] = json!({ "app": "web", "tier": "front" });
    spec["metadata"]["annotations"] = json!({ "note": "hi" });
    spec["spec"]["containers"][0]["resources"] = json!({ "limits": { "cpu": "250m" } });
    spec["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "info", "mountPath": "/info" }]);
    spec["spec"]["volumes"] = json!([{ "name": "info", "downwardAPI": { "items": [
        { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
        { "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } },
        { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
        { "path": "cpu", "resourceFieldRef": { "containerName": "app", "resource": "limits.cpu", "divisor": "1m" } },
    ] } }]);
    ns.create_pod(&node, spec).await?;
    let message = succeeds(&ns, "downward", "app").await?;
    let parts: Vec<&str> = message.split('|').map(str::trim).collect();
    assert_eq!(
        parts,
        [
            "app=\"web\"\ntier=\"front\"",
            "note=\"hi\"",
            "downward",
            "250"
        ],
        "{message}"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_empty_dir_is_shared_by_init_and_app_and_a_memory_one_is_tmpfs() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-empty").await?;
    let mut spec = pod(
        "shared",
        "Never",
        json!([sh(
            "app",
            &format!(
                "{CHECK}check \"$(cat /data/hello)\" from-init shared; \
                 check \"$(grep -c ' /mem tmpfs ' /proc/mounts)\" 1 memory-is-tmpfs; \
                 check \"$(grep -c ' /data tmpfs ' /proc/mounts)\" 0 disk-is-not-tmpfs; \
                 echo ok > /dev/termination-log"
            )
        )]),
    );
    spec["spec"]["initContainers"] = json!([sh("init", "echo from-init > /data/hello")]);
    spec["spec"]["initContainers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/data" }]);
    spec["spec"]["containers"][0]["volumeMounts"] = json!([
        { "name": "data", "mountPath": "/data" },
        { "name": "mem", "mountPath": "/mem" },
    ]);
    spec["spec"]["volumes"] = json!([
        { "name": "data", "emptyDir": {} },
        { "name": "mem", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
    ]);
    ns.create_pod(&node, spec).await?;
    assert_eq!(succeeds(&ns, "shared", "app").await?, "ok");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn host_path_types_are_checked_and_created() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-hostpath").await?;
    // A file where a directory is wanted: refused with upstream's message, never started.
    let mut wrong = pod("wrong", "Never", json!([sh("app", "true")]));
    wrong["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "h", "mountPath": "/h" }]);
    wrong["spec"]["volumes"] =
        json!([{ "name": "h", "hostPath": { "path": "/etc/hostname", "type": "Directory" } }]);
    ns.create_pod(&node, wrong).await?;
    wait_event(&ns, "wrong", "FailedMount", |m| {
        m.contains("hostPath type check failed: /etc/hostname is not a directory")
    })
    .await?;
    let reason = wait_pod(
        &ns,
        "wrong",
        Duration::from_secs(10),
        "a waiting reason",
        |p| waiting_reason(p, "app"),
    )
    .await?;
    assert_eq!(reason, "ContainerCreating");

    // DirectoryOrCreate makes the directory on the host, and the container writes into it.
    let host_dir = format!("/tmp/nodus-e2e-{}", ns.name);
    let mut made = pod(
        "made",
        "Never",
        json!([sh("app", "echo from-pod > /h/file")]),
    );
    made["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "h", "mountPath": "/h" }]);
    made["spec"]["volumes"] =
        json!([{ "name": "h", "hostPath": { "path": host_dir, "type": "DirectoryOrCreate" } }]);
    ns.create_pod(&node, made).await?;
    succeeds(&ns, "made", "app").await?;
    let written = std::fs::read_to_string(format!("{host_dir}/file"));
    let _ = std::fs::remove_dir_all(&host_dir);
    assert_eq!(
        written.context("the file the pod wrote")?.trim(),
        "from-pod"
    );
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_missing_config_map_waits_with_failed_mount_until_it_appears() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-missing").await?;
    let mut spec = pod(
        "late",
        "Never",
        json!([sh("app", "cat /cfg/k > /dev/termination-log")]),
    );
    spec["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "cfg", "mountPath": "/cfg" }]);
    spec["spec"]["volumes"] = json!([{ "name": "cfg", "configMap": { "name": "later" } }]);
    ns.create_pod(&node, spec).await?;
    wait_event(&ns, "late", "FailedMount", |m| {
        m == "MountVolume.SetUp failed for volume \"cfg\" : configmap \"later\" not found"
    })
    .await?;
    let pod = ns.pods().get("late").await?;
    assert_eq!(
        waiting_reason(&pod, "app").as_deref(),
        Some("ContainerCreating")
    );
    assert_eq!(phase(&pod), "Pending");

    config_map(&ns, "later", &[("k", "arrived")]).await?;
    assert_eq!(succeeds(&ns, "late", "app").await?, "arrived");
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn sub_paths_mount_one_entry_and_never_lead_outside_the_volume() -> Result<()> {
    let (_cluster, ns, node) = setup("vol-subpath").await?;
    config_map(&ns, "app", &[("app.conf", "x=1"), ("other", "y")]).await?;
    let mut one = pod(
        "one-file",
        "Never",
        json!([sh(
            "app",
            "{ cat /etc/app.conf; ls /etc/other 2>&1 | wc -l; } > /dev/termination-log; test ! -e /etc/other"
        )]),
    );
    one["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf" }]);
    one["spec"]["volumes"] = json!([{ "name": "cfg", "configMap": { "name": "app" } }]);
    ns.create_pod(&node, one).await?;
    let message = succeeds(&ns, "one-file", "app").await?;
    assert!(message.starts_with("x=1"), "{message}");

    // A symlink planted by an init container to the host's /etc: the app never starts.
    let mut planted = pod(
        "planted",
        "Never",
        json!([sh("app", "cat /leak/hostname > /dev/termination-log")]),
    );
    planted["spec"]["initContainers"] = json!([sh("init", "ln -s /etc /data/evil")]);
    planted["spec"]["initContainers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/data" }]);
    planted["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/leak", "subPath": "evil" }]);
    planted["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    ns.create_pod(&node, planted).await?;

    // `..` arriving through subPathExpr, which the API cannot see before expansion.
    let mut climbing = pod("climbing", "Never", json!([sh("app", "ls /up")]));
    climbing["spec"]["containers"][0]["env"] =
        json!([{ "name": "UP", "value": "../../../../../etc" }]);
    climbing["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/up", "subPathExpr": "$(UP)" }]);
    climbing["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    ns.create_pod(&node, climbing).await?;

    for (name, expected) in [
        ("planted", "subPath \"evil\" leads outside its volume"),
        ("climbing", "must not contain '..'"),
    ] {
        let message = wait_pod(
            &ns,
            name,
            Duration::from_secs(60),
            &format!("{name} to be refused"),
            |p| {
                let waiting = container(p, "app")?.state.as_ref()?.waiting.as_ref()?;
                (waiting.reason.as_deref() == Some("CreateContainerConfigError"))
                    .then(|| waiting.message.clone().unwrap_or_default())
            },
        )
        .await?;
        assert!(message.contains(expected), "{name}: {message}");
        let pod = ns.pods().get(name).await?;
        let app = container(&pod, "app").context("app status")?;
        assert!(
            app.state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_none()
        );
        assert_eq!(app.restart_count, 0);
    }
    ns.delete_pods().await
}

/// The projected service-account volume and the service variables, end to end: the pod
/// reads its token, CA and namespace, reaches the API server through the `kubernetes`
/// Service from its own network namespace, and hands token and CA out; the API then accepts
/// that token over TLS verified by that CA at the Service's address. (The TLS call itself is
/// made from the host: busybox's built-in TLS cannot negotiate with Go's TLS stack, and the
/// images with a real client arrive with the conformance work.)
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pods_token_ca_and_service_variables_reach_the_api() -> Result<()> {
    let (cluster, ns, node) = setup("vol-token").await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(ns.pods().into_client(), &ns.name);
    let db: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": { "name": "web-db" },
        "spec": { "ports": [{ "name": "pg", "port": 5432 }] },
    }))?;
    let db = services.create(&PostParams::default(), &db).await?;
    let db_ip = db
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service's cluster IP")?;
    let api_ip = cluster_ip_of_kubernetes(&ns).await?;
    nodus_e2e::wait_programmed(&api_ip).await?;

    // Plain HTTP to the TLS port: Go answers "400 Bad Request", which proves the path.
    let script = format!(
        "{CHECK}D=/var/run/secrets/kubernetes.io/serviceaccount; \
         check \"$(cat $D/namespace)\" {ns} namespace-file; \
         check \"$WEB_DB_SERVICE_PORT_PG\" 5432 service-port-variable; \
         out=$(wget -q -S -O /dev/null http://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/ 2>&1); \
         echo \"$out\" | grep -q '400 Bad Request' || {{ echo \"api: $out\" > /dev/termination-log; exit 1; }}; \
         {{ echo $WEB_DB_SERVICE_HOST; cat $D/token; echo; cat $D/ca.crt; }} > /dev/termination-log",
        ns = ns.name
    );
    let mut spec = pod("caller", "Never", json!([sh("app", &script)]));
    spec["spec"]["automountServiceAccountToken"] = true.into();
    ns.create_pod(&node, spec).await?;
    let message = succeeds(&ns, "caller", "app").await?;
    let mut lines = message.splitn(3, '\n');
    let (host, token, ca) = (
        lines.next().context("host")?,
        lines.next().context("token")?,
        lines.next().context("CA")?,
    );
    assert_eq!(host, db_ip, "WEB_DB_SERVICE_HOST");
    let cluster_ca = std::fs::read_to_string(cluster.ca_cert())?;
    assert_eq!(ca.trim(), cluster_ca.trim(), "ca.crt is the cluster's CA");

    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca)?;
    let kubeconfig = dir.path().join("pod.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{api_ip}:443\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            ca_file.display()
        ),
    )?;
    let answer = nodus_e2e::kubectl(&kubeconfig, &["get", "--raw", "/api"])?;
    ensure!(answer.contains("\"kind\":\"APIVersions\""), "{answer}");
    ns.delete_pods().await
}

async fn cluster_ip_of_kubernetes(ns: &TestNamespace) -> Result<String> {
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(ns.pods().into_client(), "default");
    services
        .get("kubernetes")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the kubernetes Service's cluster IP")
}

/// A self-signed CA certificate in PEM, made by openssl.
fn ca_certificate(subject: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={subject}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl")?;
    ensure!(status.success(), "openssl req failed");
    Ok(std::fs::read_to_string(cert)?)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn cluster_trust_bundles_project_by_name_and_by_signer_and_selector() -> Result<()> {
    use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
    let (cluster, ns, node) = setup("vol-ctb").await?;
    let bundles: Api<ClusterTrustBundle> = Api::all(cluster.admin().await?);
    let (a, b) = (
        ca_certificate("nodus-e2e-a")?,
        ca_certificate("nodus-e2e-b")?,
    );
    // Cluster-scoped: named after the test's namespace, deleted at the end.
    let signer = format!("example.com/{}", ns.name);
    let prefix = signer.replace('/', ":");
    let unsigned = format!("{}-plain", ns.name);
    let made = [
        (unsigned.clone(), None, json!({}), a.clone()),
        (
            format!("{prefix}:alive"),
            Some(&signer),
            json!({ "alive": "true" }),
            b.clone(),
        ),
        (
            format!("{prefix}:dead"),
            Some(&signer),
            json!({ "alive": "false" }),
            format!("{a}{b}"),
        ),
    ];
    for (name, signer, labels, pem) in &made {
        let bundle: ClusterTrustBundle = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": { "signerName": signer, "trustBundle": pem },
        }))?;
        bundles.create(&PostParams::default(), &bundle).await?;
    }
    let script = format!(
        "{CHECK}\
         check \"$(grep -c BEGIN /ctb/by-name.pem)\" 1 by-name; \
         check \"$(grep -c BEGIN /ctb/alive.pem)\" 1 alive-only; \
         check \"$(grep -c BEGIN /ctb/all.pem)\" 2 each-certificate-once; \
         check \"$(stat -L -c %s /ctb/none.pem)\" 0 optional-and-none-selected; \
         check \"$(stat -L -c %a /ctb/all.pem)\" 644 mode; \
         echo ok > /dev/termination-log"
    );
    let mut spec = pod("trust", "Never", json!([sh("app", &script)]));
    spec["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "ctb", "mountPath": "/ctb" }]);
    spec["spec"]["volumes"] = json!([{ "name": "ctb", "projected": { "sources": [
        { "clusterTrustBundle": { "name": unsigned, "path": "by-name.pem" } },
        { "clusterTrustBundle": { "signerName": signer, "labelSelector": { "matchLabels": { "alive": "true" } }, "path": "alive.pem" } },
        { "clusterTrustBundle": { "signerName": signer, "labelSelector": {}, "path": "all.pem" } },
        { "clusterTrustBundle": { "signerName": signer, "optional": true, "path": "none.pem" } },
    ]}}]);
    ns.create_pod(&node, spec).await?;
    let outcome = succeeds(&ns, "trust", "app").await;

    // One that is not optional and names no bundle waits, saying why.
    let mut missing = pod("missing", "Never", json!([sh("app", "true")]));
    missing["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "ctb", "mountPath": "/ctb" }]);
    missing["spec"]["volumes"] = json!([{ "name": "ctb", "projected": { "sources": [
        { "clusterTrustBundle": { "name": "nodus-e2e-does-not-exist", "path": "ca.pem" } },
    ]}}]);
    ns.create_pod(&node, missing).await?;
    let waited = wait_event(&ns, "missing", "FailedMount", |m| {
        m.ends_with("while getting ClusterTrustBundle nodus-e2e-does-not-exist: not found")
    })
    .await;
    for (name, ..) in &made {
        bundles.delete(name, &Default::default()).await?;
    }
    assert_eq!(outcome?, "ok");
    waited?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn claims_volumes_and_classes_in_use_stay_until_released() -> Result<()> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let (cluster, ns, node) = setup("vol-protect").await?;
    let client = cluster.admin().await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "resources": { "requests": { "storage": "1Mi" } },
        },
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let mut scratch = claim.clone();
    scratch.metadata.name = Some("scratch".into());
    claims.create(&PostParams::default(), &scratch).await?;
    let mut user = pod("user", "Never", json!([sh("app", "sleep 600")]));
    user["spec"]["volumes"] =
        json!([{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]);
    ns.create_pod(&node, user).await?;
    claims.delete("data", &Default::default()).await?;
    claims.delete("scratch", &Default::default()).await?;
    // The unused claim going shows the controller has looked at both; the used one is
    // held by kubernetes.io/pvc-protection while the pod exists.
    nodus_e2e::poll(
        Duration::from_secs(30),
        "the unused claim to go",
        || async { Ok(claims.get_opt("scratch").await?.is_none().then_some(())) },
    )
    .await?;
    let held = claims.get("data").await?;
    ensure!(held.metadata.deletion_timestamp.is_some(), "being deleted");
    ns.delete_pods().await?;
    nodus_e2e::poll(Duration::from_secs(30), "the claim to go", || async {
        Ok(claims.get_opt("data").await?.is_none().then_some(()))
    })
    .await?;

    // An unbound volume is released at once (kubernetes.io/pv-protection).
    let volumes: Api<PersistentVolume> = Api::all(client);
    let name = format!("{}-pv", ns.name);
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "capacity": { "storage": "1Mi" },
            "accessModes": ["ReadWriteOnce"],
            "hostPath": { "path": "/tmp/nodus-e2e-unused" },
        },
    }))?;
    volumes.create(&PostParams::default(), &volume).await?;
    volumes.delete(&name, &Default::default()).await?;
    nodus_e2e::poll(Duration::from_secs(30), "the volume to go", || async {
        Ok(volumes.get_opt(&name).await?.is_none().then_some(()))
    })
    .await?;

    // A volume attributes class stays while a claim names it (kubernetes.io/vac-protection).
    use k8s_openapi::api::storage::v1::VolumeAttributesClass;
    let classes: Api<VolumeAttributesClass> = Api::all(cluster.admin().await?);
    let (used, unused) = (format!("{}-used", ns.name), format!("{}-unused", ns.name));
    for class in [&used, &unused] {
        let made: VolumeAttributesClass = serde_json::from_value(json!({
            "metadata": { "name": class }, "driverName": "example.com/csi",
            "parameters": { "iops": "100" },
        }))?;
        classes.create(&PostParams::default(), &made).await?;
    }
    let mut fast = claim.clone();
    fast.metadata.name = Some("fast".into());
    if let Some(spec) = fast.spec.as_mut() {
        spec.volume_attributes_class_name = Some(used.clone());
    }
    claims.create(&PostParams::default(), &fast).await?;
    classes.delete(&used, &Default::default()).await?;
    classes.delete(&unused, &Default::default()).await?;
    nodus_e2e::poll(
        Duration::from_secs(30),
        "the unused class to go",
        || async { Ok(classes.get_opt(&unused).await?.is_none().then_some(())) },
    )
    .await?;
    ensure!(
        classes.get_opt(&used).await?.is_some(),
        "kept while a claim names it"
    );
    claims.delete("fast", &Default::default()).await?;
    nodus_e2e::poll(Duration::from_secs(30), "the class to go", || async {
        Ok(classes.get_opt(&used).await?.is_none().then_some(()))
    })
    .await
}

/// A signer as a real one would run beside the cluster: it issues every PodCertificateRequest
/// of the namespace addressed to it, from its own CA, for at most a day and at most what the
/// request allows. The SPIFFE path is the service account's, or the `e2e.nodus.dev/path`
/// annotation's.
async fn sign_pending(
    api: &Api<k8s_openapi::api::certificates::v1::PodCertificateRequest>,
    signer: &str,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
) -> Result<usize> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    let mut issued = 0;
    for mut request in api.list(&Default::default()).await?.items {
        let done = request
            .status
            .as_ref()
            .is_some_and(|s| s.certificate_chain.is_some());
        if request.spec.signer_name != signer || done {
            continue;
        }
        let der = request.spec.stub_pkc_s10_request.0.clone();
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der.into())?;
        let lifetime = i64::from(request.spec.max_expiration_seconds.unwrap_or(86400)).min(86400);
        let start = Timestamp::now().as_second() - 120;
        let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs);
        csr.params.not_before = at(start)?;
        csr.params.not_after = at(start + lifetime)?;
        let path = request
            .spec
            .unverified_user_annotations
            .as_ref()
            .and_then(|a| a.get("e2e.nodus.dev/path").cloned())
            .unwrap_or_else(|| {
                format!(
                    "/ns/{}/sa/{}",
                    request.metadata.namespace.clone().unwrap_or_default(),
                    request.spec.service_account_name
                )
            });
        csr.params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://cluster.local{path}").try_into()?,
        )];
        let certificate = csr.signed_by(&ca.0, &ca.1)?;
        let time = |secs: i64| -> Result<Time> { Ok(Time(Timestamp::from_second(secs)?)) };
        request.status = Some(
            k8s_openapi::api::certificates::v1::PodCertificateRequestStatus {
                certificate_chain: Some(certificate.pem()),
                not_before: Some(time(start)?),
                not_after: Some(time(start + lifetime)?),
                begin_refresh_at: Some(time(start + lifetime - 1800)?),
                conditions: Some(vec![Condition {
                    type_: "Issued".into(),
                    status: "True".into(),
                    reason: "Issued".into(),
                    message: "issued by the e2e signer".into(),
                    last_transition_time: time(Timestamp::now().as_second())?,
                    observed_generation: None,
                }]),
            },
        );
        let name = request.metadata.name.clone().unwrap_or_default();
        api.replace_status(&name, &PostParams::default(), &request)
            .await?;
        issued += 1;
    }
    Ok(issued)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn pod_certificates_are_asked_for_issued_and_projected_with_their_key() -> Result<()> {
    use k8s_openapi::api::certificates::v1::PodCertificateRequest;
    let (cluster, ns, node) = setup("vol-podcert").await?;
    let requests: Api<PodCertificateRequest> = Api::namespaced(cluster.admin().await?, &ns.name);
    let signer = "e2e.nodus.dev/signer";
    let ca = {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key)?, key)
    };
    let script = "cat /tls/chain.pem; sleep 3600";
    let mut spec = pod("holder", "Never", json!([sh("app", script)]));
    spec["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "tls", "mountPath": "/tls" }]);
    spec["spec"]["volumes"] = json!([{ "name": "tls", "projected": { "sources": [
        { "podCertificate": {
            "signerName": signer, "keyType": "ED25519", "maxExpirationSeconds": 3600,
            "credentialBundlePath": "bundle.pem", "keyPath": "key.pem", "certificateChainPath": "chain.pem",
            "userAnnotations": { "e2e.nodus.dev/path": "/custom" },
        } },
    ]}}]);
    ns.create_pod(&node, spec).await?;
    // Nothing runs until the signer has answered.
    let request = nodus_e2e::poll(
        Duration::from_secs(30),
        "a PodCertificateRequest",
        || async {
            Ok(requests
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .next())
        },
    )
    .await?;
    let holder = ns.pods().get("holder").await?;
    ensure!(phase(&holder) == "Pending", "{:?}", holder.status);
    let pod_uid = holder.metadata.uid.clone().unwrap_or_default();
    ensure!(
        request.spec.pod_name == "holder" && request.spec.pod_uid == pod_uid,
        "{request:?}"
    );
    ensure!(
        request.spec.node_name == node && request.spec.service_account_name == "default",
        "{request:?}"
    );
    ensure!(
        request.spec.max_expiration_seconds == Some(3600),
        "{request:?}"
    );
    let owner = request
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    ensure!(
        owner.iter().any(|o| o.kind == "Pod" && o.uid == pod_uid),
        "{owner:?}"
    );
    sign_pending(&requests, signer, &ca).await?;
    wait_pod(
        &ns,
        "holder",
        Duration::from_secs(60),
        "holder to run",
        |p| (phase(p) == "Running").then_some(()),
    )
    .await?;
    let read = |file: &str| cluster.kubectl(&["exec", "-n", &ns.name, "holder", "--", "cat", file]);
    let (key, chain, bundle) = (
        read("/tls/key.pem")?,
        read("/tls/chain.pem")?,
        read("/tls/bundle.pem")?,
    );
    ensure!(
        bundle == format!("{key}{chain}"),
        "the bundle is the key, then the chain"
    );
    // The certificate was issued to the key in the volume, for the hour asked, with the
    // path the pod's annotation gave the signer.
    let key = rcgen::KeyPair::from_pem(&key)?;
    let pem = x509_parser::pem::parse_x509_pem(chain.as_bytes())?.1;
    let certificate = pem.parse_x509()?;
    ensure!(
        certificate.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        "the certificate is not for the projected key"
    );
    let validity = certificate.validity();
    ensure!(
        validity.not_after.timestamp() - validity.not_before.timestamp() == 3600,
        "{validity:?}"
    );
    let uris: Vec<String> = certificate
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    ensure!(uris == ["spiffe://cluster.local/custom"], "{uris:?}");

    // A key type nodus cannot make: the pod waits, saying why.
    let mut rsa = pod("rsa", "Never", json!([sh("app", "true")]));
    rsa["spec"]["containers"][0]["volumeMounts"] = json!([{ "name": "tls", "mountPath": "/tls" }]);
    rsa["spec"]["volumes"] = json!([{ "name": "tls", "projected": { "sources": [
        { "podCertificate": { "signerName": signer, "keyType": "RSA3072", "credentialBundlePath": "bundle.pem" } },
    ]}}]);
    ns.create_pod(&node, rsa).await?;
    wait_event(&ns, "rsa", "FailedMount", |m| {
        m.contains("key type \"RSA3072\" is not supported by nodus")
    })
    .await?;
    ns.delete_pods().await
}
