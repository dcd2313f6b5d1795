//! TLS bootstrap on the running node, as a joining worker does it: nodus restarted with only a
//! bootstrap token (`--bootstrap-kubeconfig`) asks for its client certificate, nodus-control
//! approves and signs it, and the node carries on with the new identity (its Lease renewed as
//! `system:node:NAME`). A token the API server does not know ends nodus at once with a clear
//! message and nothing written. `nodus join` finds the cluster through the cluster-info the
//! harness publishes (as `kubeadm init`) and nodus-control's bootstrap signer signs, and
//! refuses what does not check out; expired tokens lose their signature and are deleted.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use kube::config::Kubeconfig;

const WAIT: Duration = Duration::from_secs(90);

/// A kubeconfig for the cluster's API server that authenticates with `token`.
fn bootstrap_kubeconfig(cluster: &nodus_e2e::Cluster, token: &str, path: &Path) -> Result<()> {
    kubeconfig_for(cluster, serde_json::json!({ "token": token }), path)
}

/// A kubeconfig for the cluster's API server whose user is `user` (a kubeconfig user entry).
fn kubeconfig_for(
    cluster: &nodus_e2e::Cluster,
    user: serde_json::Value,
    path: &Path,
) -> Result<()> {
    let admin = Kubeconfig::read_from(cluster.admin_kubeconfig())?;
    let server_cluster = admin
        .clusters
        .first()
        .context("the admin kubeconfig's cluster")?;
    let mut config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": server_cluster.cluster }],
        "users": [{ "name": "bootstrap", "user": user }],
        "contexts": [{ "name": "bootstrap", "context": { "cluster": "c", "user": "bootstrap" } }],
        "current-context": "bootstrap",
    });
    // The admin kubeconfig may name its CA by a path relative to its own directory.
    if let Some(ca) = server_cluster
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority.as_ref())
    {
        config["clusters"][0]["cluster"]["certificate-authority"] = cluster
            .admin_kubeconfig()
            .parent()
            .context("a directory")?
            .join(ca)
            .to_string_lossy()
            .into();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// A bootstrap token Secret as `kubeadm token create` makes it (for authentication and
/// signing), expiring in an hour; returns `id.secret`.
fn create_token(cluster: &nodus_e2e::Cluster, id: &str, secret: &str) -> Result<String> {
    create_token_expiring(
        cluster,
        id,
        secret,
        Timestamp::now() + Duration::from_secs(3600),
    )
}

fn create_token_expiring(
    cluster: &nodus_e2e::Cluster,
    id: &str,
    secret: &str,
    expiration: Timestamp,
) -> Result<String> {
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bootstrap-token-{id}, namespace: kube-system}}\n\
         type: bootstrap.kubernetes.io/token\nstringData:\n  token-id: {id}\n  token-secret: {secret}\n\
         \x20 expiration: \"{expiration}\"\n  usage-bootstrap-authentication: \"true\"\n\
         \x20 usage-bootstrap-signing: \"true\"\n\
         \x20 auth-extra-groups: system:bootstrappers:kubeadm:default-node-token\n"
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest)?;
    cluster.kubectl(&["apply", "-f", &file.path().to_string_lossy()])?;
    Ok(format!("{id}.{secret}"))
}

/// The subject of the first certificate in a PEM file, as openssl prints it.
fn subject(pem: &Path) -> Result<String> {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(pem)
        .output()?;
    ensure!(
        output.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn bootstrapped(cluster: &nodus_e2e::Cluster, dir: &Path, id: &str) -> Result<()> {
    let node = cluster.node_name();
    let admin = cluster.admin().await?;
    let restarted = Timestamp::now();
    let args = format!(
        "--kubeconfig {0}/kubelet.conf --bootstrap-kubeconfig {0}/bootstrap.conf --cert-dir {0}/pki",
        dir.display()
    );
    cluster.script_with_nodus_args(&["restart", "nodus"], &args)?;

    // The request: made with the bootstrap token, approved, issued.
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let requester = format!("system:bootstrap:{id}");
    let issued = nodus_e2e::poll(
        WAIT,
        "an issued certificate for the bootstrap token",
        || async {
            let list = csrs.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|c| {
                c.spec.username.as_deref() == Some(requester.as_str())
                    && c.status.as_ref().is_some_and(|s| s.certificate.is_some())
            }))
        },
    )
    .await?;
    ensure!(
        issued.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet",
        "{:?}",
        issued.spec.signer_name
    );
    let approved = issued
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Approved" && c.status == "True")
        });
    ensure!(approved, "the request was approved");

    // The files: the certificate for this node, and a kubeconfig that uses it (written last).
    nodus_e2e::poll(WAIT, "the kubeconfig written", || async {
        Ok(dir.join("kubelet.conf").exists().then_some(()))
    })
    .await?;
    let current = dir.join("pki/kubelet-client-current.pem");
    let subject = subject(&current)?;
    ensure!(
        subject.contains(&format!("CN=system:node:{node}")) && subject.contains("O=system:nodes"),
        "{subject}"
    );
    let kubeconfig = std::fs::read_to_string(dir.join("kubelet.conf"))?;
    ensure!(
        kubeconfig.contains(&current.to_string_lossy().into_owned()),
        "{kubeconfig}"
    );

    // The node goes on with it: its Lease is renewed after the restart.
    lease_renewed_after(
        admin,
        &node,
        restarted,
        "the Lease renewed with the new identity",
    )
    .await?;
    delete_csr(&csrs, &issued).await
}

/// Waits until the node's Lease is renewed after `after`.
async fn lease_renewed_after(
    admin: kube::Client,
    node: &str,
    after: Timestamp,
    what: &str,
) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(admin, "kube-node-lease");
    nodus_e2e::poll(WAIT, what, || async {
        let lease = leases.get(node).await?;
        let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
        Ok(renewed.filter(|t| *t > after).map(|_| ()))
    })
    .await
}

async fn delete_csr(
    csrs: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
) -> Result<()> {
    csrs.delete(
        csr.metadata.name.as_deref().unwrap_or_default(),
        &DeleteParams::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_node_joins_with_a_bootstrap_token() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let dir = tempfile::tempdir()?;
    let (id, secret) = ("nodus1", "0123456789abcdef");
    let token = create_token(&cluster, id, secret)?;
    bootstrap_kubeconfig(&cluster, &token, &dir.path().join("bootstrap.conf"))?;
    let result = bootstrapped(&cluster, dir.path(), id).await;
    // Back to the harness's identity whatever happened.
    let restored = cluster.script(&["restart", "nodus"]);
    cluster.kubectl(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ])?;
    result?;
    restored
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_unknown_token_ends_nodus_with_a_clear_error_and_nothing_written() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let nodus = std::env::var("NODUS_E2E_NODUS_BIN")
        .context("NODUS_E2E_NODUS_BIN is not set: run these tests through e2e/test")?;
    let dir = tempfile::tempdir()?;
    bootstrap_kubeconfig(
        &cluster,
        "nobody.0123456789abcdef",
        &dir.path().join("bootstrap.conf"),
    )?;
    // Only the bootstrap runs before anything touches the node, so the running agent is safe.
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(nodus)
            .arg("--kubeconfig")
            .arg(dir.path().join("kubelet.conf"))
            .arg("--bootstrap-kubeconfig")
            .arg(dir.path().join("bootstrap.conf"))
            .arg("--cert-dir")
            .arg(dir.path().join("pki"))
            .output(),
    )
    .await
    .context("nodus must give up at once")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "a non-zero exit: {stderr}");
    ensure!(
        stderr.contains("refused the certificate request") && stderr.contains("Unauthorized"),
        "the reason: {stderr}"
    );
    ensure!(
        !dir.path().join("kubelet.conf").exists() && !dir.path().join("pki").exists(),
        "nothing written"
    );
    Ok(())
}

/// `openssl ARGS` with `input` on stdin: its stdout.
fn openssl(args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "openssl {args:?} failed");
    Ok(output.stdout)
}

/// The signature nodus-control's bootstrap signer puts in cluster-info for token `id`.
async fn signed_for(cluster: &nodus_e2e::Cluster, id: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let maps: Api<ConfigMap> = Api::namespaced(cluster.admin().await?, "kube-public");
    let key = format!("jws-kubeconfig-{id}");
    nodus_e2e::poll(
        WAIT,
        "the bootstrap signer's signature in cluster-info",
        || async {
            let info = maps.get("cluster-info").await?;
            Ok(info.data.and_then(|d| d.get(&key).cloned()))
        },
    )
    .await
}

/// kubeadm's --discovery-token-ca-cert-hash for the cluster CA.
fn ca_cert_hash(cluster: &nodus_e2e::Cluster) -> Result<String> {
    let ca = std::fs::read(cluster.ca_cert())?;
    let public = openssl(&["x509", "-pubkey", "-noout"], &ca)?;
    let der = openssl(&["pkey", "-pubin", "-outform", "der"], &public)?;
    let digest = openssl(&["dgst", "-sha256", "-r"], &der)?;
    let hex = String::from_utf8_lossy(&digest);
    Ok(format!(
        "sha256:{}",
        hex.split_whitespace().next().unwrap_or_default()
    ))
}

/// `nodus join ARGS` (with a kubeconfig, bootstrap kubeconfig and cert dir under `dir`),
/// given `deadline` to exit.
async fn nodus_join(
    dir: &Path,
    args: &[&str],
    deadline: Duration,
) -> Result<Option<std::process::Output>> {
    let nodus = std::env::var("NODUS_E2E_NODUS_BIN")
        .context("NODUS_E2E_NODUS_BIN is not set: run these tests through e2e/test")?;
    let child = tokio::process::Command::new(nodus)
        .arg("join")
        .args(args)
        .arg("--kubeconfig")
        .arg(dir.join("kubelet.conf"))
        .arg("--bootstrap-kubeconfig")
        .arg(dir.join("bootstrap.conf"))
        .arg("--cert-dir")
        .arg(dir.join("pki"))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    Ok(tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .ok()
        .transpose()?)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn nodus_join_discovers_the_cluster_and_refuses_what_does_not_check_out() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let (id, secret) = ("nodus2", "fedcba9876543210");
    let token = create_token(&cluster, id, secret)?;
    // The harness publishes cluster-info as kubeadm init does; nodus-control signs it.
    signed_for(&cluster, id).await?;
    let hash = ca_cert_hash(&cluster)?;
    let server = "127.0.0.1:6443";
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    let wrong_secret = format!("{id}.0000000000000000");
    // Each refusal: a non-zero exit that says why, and nothing written.
    let refusals: [(&[&str], &str); 4] = [
        (
            &[
                server,
                "--token",
                &token,
                "--discovery-token-ca-cert-hash",
                &wrong_hash,
            ],
            "matches no --discovery-token-ca-cert-hash",
        ),
        (
            &[
                server,
                "--token",
                &wrong_secret,
                "--discovery-token-ca-cert-hash",
                &hash,
            ],
            "signature does not match the token",
        ),
        (
            &[
                server,
                "--token",
                "zzzzzz.0000000000000000",
                "--discovery-token-ca-cert-hash",
                &hash,
            ],
            "is not signed for token \"zzzzzz\"",
        ),
        (
            &[
                "127.0.0.1:1",
                "--token",
                &token,
                "--discovery-token-ca-cert-hash",
                &hash,
            ],
            "reading cluster-info from kube-public at https://127.0.0.1:1",
        ),
    ];
    for (args, reason) in refusals {
        let dir = tempfile::tempdir()?;
        let output = nodus_join(dir.path(), args, WAIT)
            .await?
            .context("a refused join must end")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success() && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
        ensure!(
            std::fs::read_dir(dir.path())?.next().is_none(),
            "{args:?}: nothing written"
        );
    }

    // The real one: discovery writes the bootstrap kubeconfig, TLS bootstrap the kubeconfig.
    // It is stopped then (the cluster's own nodus is this node's agent), and until then its
    // agent keeps to its own directories, without the proxy role or a runtime.
    let dir = tempfile::tempdir()?;
    let joined = {
        let dir = dir.path().to_owned();
        let hash = hash.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let own = |name: &str| dir.join(name).to_string_lossy().into_owned();
            let (root, logs, cni) = (own("root"), own("logs"), own("cni"));
            let config = own("config.yaml");
            let runtime = format!("unix://{}", own("no-runtime.sock"));
            let args = [
                server,
                "--token",
                &token,
                "--discovery-token-ca-cert-hash",
                &hash,
                "--proxy-mode=none",
                "--port=10350",
                "--root-dir",
                &root,
                "--pod-logs-dir",
                &logs,
                "--cni-conf-dir",
                &cni,
                "--container-runtime-endpoint",
                &runtime,
                "--config",
                &config,
            ];
            nodus_join(&dir, &args, Duration::from_secs(60)).await
        })
    };
    let written = nodus_e2e::poll(WAIT, "the joined node's kubeconfig", || async {
        Ok(dir.path().join("kubelet.conf").exists().then_some(()))
    })
    .await;
    joined.abort();
    written?;
    // The server is the one cluster-info names (the node's address), as with kubeadm.
    let bootstrap = std::fs::read_to_string(dir.path().join("bootstrap.conf"))?;
    let named = format!("https://{}:6443", std::env::var("NODUS_E2E_NODE_IP")?);
    ensure!(
        bootstrap.contains(&token) && bootstrap.contains(&named),
        "{bootstrap}"
    );
    // The cluster's kubelet-config (as the harness publishes it, like kubeadm init) became
    // the agent's --config, its client CA the discovered one written beside the kubeconfig.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.yaml"))?)?;
    ensure!(config["maxPods"] == 150, "{config}");
    let ca_file = dir.path().join("pki/ca.crt");
    ensure!(
        config["authentication"]["x509"]["clientCAFile"] == ca_file.to_string_lossy().as_ref(),
        "{config}"
    );
    ensure!(std::fs::read(&ca_file)? == std::fs::read(cluster.ca_cert())?);
    let current = dir.path().join("pki/kubelet-client-current.pem");
    let subject = subject(&current)?;
    ensure!(
        subject.contains(&format!("CN=system:node:{}", cluster.node_name())),
        "{subject}"
    );

    cluster.kubectl(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ])?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn expired_tokens_lose_their_signature_and_are_deleted() -> Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let cluster = nodus_e2e::Cluster::from_env()?;
    let (id, secret) = ("nodus3", "aaaabbbbccccdddd");
    // Valid for a few seconds: signed first, then cleaned away.
    create_token_expiring(
        &cluster,
        id,
        secret,
        Timestamp::now() + Duration::from_secs(8),
    )?;
    signed_for(&cluster, id).await?;
    let admin = cluster.admin().await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    let name = format!("bootstrap-token-{id}");
    nodus_e2e::poll(WAIT, "the expired token deleted", || async {
        Ok(secrets.get_opt(&name).await?.is_none().then_some(()))
    })
    .await?;
    let maps: Api<ConfigMap> = Api::namespaced(admin, "kube-public");
    let key = format!("jws-kubeconfig-{id}");
    nodus_e2e::poll(WAIT, "its signature removed from cluster-info", || async {
        let info = maps.get("cluster-info").await?;
        Ok((!info.data.unwrap_or_default().contains_key(&key)).then_some(()))
    })
    .await
}

/// A client certificate for this node signed by the cluster CA with exactly the given
/// validity (Unix seconds), as `openssl ca` makes it; the PEM holds certificate and key.
fn short_lived_node_certificate(
    cluster: &nodus_e2e::Cluster,
    work: &Path,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<Vec<u8>> {
    let run = |args: &[&str]| -> Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(work)
            .output()?;
        ensure!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    std::fs::write(work.join("index.txt"), "")?;
    std::fs::write(work.join("serial"), "1000\n")?;
    std::fs::write(
        work.join("ca.cnf"),
        "[ca]\ndefault_ca = local\n[local]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\nx509_extensions = client\n\
         [any]\ncommonName = supplied\norganizationName = optional\n\
         [client]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
    )?;
    let node = cluster.node_name();
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        &format!("/O=system:nodes/CN=system:node:{node}"),
    ])?;
    let stamp = |t: Timestamp| t.strftime("%Y%m%d%H%M%SZ").to_string();
    run(&[
        "ca",
        "-batch",
        "-notext",
        "-config",
        "ca.cnf",
        "-in",
        "req.csr",
        "-out",
        "cert.pem",
        "-cert",
        &cluster.ca_cert().to_string_lossy(),
        "-keyfile",
        &cluster.pki("ca.key").to_string_lossy(),
        "-startdate",
        &stamp(not_before),
        "-enddate",
        &stamp(not_after),
    ])?;
    let mut pem = std::fs::read(work.join("cert.pem"))?;
    pem.extend(std::fs::read(work.join("key.pem"))?);
    Ok(pem)
}

/// The notAfter of the first certificate in a PEM file, as Unix seconds.
fn not_after(pem: &Path) -> Result<i64> {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(pem)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let date = text.trim().trim_start_matches("notAfter=");
    let at: Timestamp = date
        .replace(' ', "T")
        .parse()
        .with_context(|| format!("openssl's notAfter {date:?}"))?;
    Ok(at.as_second())
}

async fn rotated(cluster: &nodus_e2e::Cluster, dir: &Path) -> Result<()> {
    let node = cluster.node_name();
    let admin = cluster.admin().await?;
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    // A certificate that lives one minute: due for renewal within about 45 s.
    let now = Timestamp::now();
    let expires = now + Duration::from_secs(50);
    let pem = short_lived_node_certificate(cluster, dir, now - Duration::from_secs(10), expires)?;
    let first = pki.join("kubelet-client-first.pem");
    std::fs::write(&first, pem)?;
    let current = pki.join("kubelet-client-current.pem");
    std::os::unix::fs::symlink(&first, &current)?;
    let current_path = current.to_string_lossy().into_owned();
    kubeconfig_for(
        cluster,
        serde_json::json!({ "client-certificate": current_path, "client-key": current_path }),
        &dir.join("kubelet.conf"),
    )?;
    let args = format!(
        "--kubeconfig {0}/kubelet.conf --cert-dir {0}/pki --rotate-certificates",
        dir.display()
    );
    cluster.script_with_nodus_args(&["restart", "nodus"], &args)?;

    // The renewal: requested as the node itself, approved, issued, installed.
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let requester = format!("system:node:{node}");
    let issued = nodus_e2e::poll(WAIT, "an issued renewal requested by the node", || async {
        let list = csrs.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|c| {
            c.spec.username.as_deref() == Some(requester.as_str())
                && c.status.as_ref().is_some_and(|s| s.certificate.is_some())
        }))
    })
    .await?;
    nodus_e2e::poll(WAIT, "the renewed certificate installed", || async {
        Ok((not_after(&current)? > Timestamp::now().as_second() + 3600).then_some(()))
    })
    .await?;
    ensure!(
        subject(&current)?.contains(&format!("CN=system:node:{node}")),
        "the renewed certificate is the node's"
    );

    // The node carries on past the first certificate's end: every connection that used it
    // was closed, so the Lease is renewed with the new one.
    let after = expires + Duration::from_secs(2);
    lease_renewed_after(
        admin,
        &node,
        after,
        "the Lease renewed after the first certificate expired",
    )
    .await?;
    delete_csr(&csrs, &issued).await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_short_lived_client_certificate_is_rotated_and_the_node_carries_on() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let dir = tempfile::tempdir()?;
    let result = rotated(&cluster, dir.path()).await;
    let restored = cluster.script(&["restart", "nodus"]);
    result?;
    restored
}

/// `curl --cacert CA` against the kubelet API: the HTTP status once TLS verified the serving
/// certificate against the cluster CA for the node's IP, or the failure.
fn kubelet_api_verified(cluster: &nodus_e2e::Cluster, ip: &str) -> Result<String> {
    let ca = cluster.ca_cert().to_string_lossy().into_owned();
    let url = format!("https://{ip}:10250/healthz");
    nodus_e2e::curl([
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--cacert",
        &ca,
        &url,
    ])
}

async fn serving_bootstrapped(cluster: &nodus_e2e::Cluster, dir: &Path) -> Result<()> {
    let node = cluster.node_name();
    let ip = std::env::var("NODUS_E2E_NODE_IP")?;
    let args = format!("--cert-dir {} --rotate-server-certificates", dir.display());
    cluster.script_with_nodus_args(&["restart", "nodus"], &args)?;
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.admin().await?);
    let requester = format!("system:node:{node}");
    let pending = nodus_e2e::poll(WAIT, "the node's serving certificate request", || async {
        let list = csrs.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|c| {
            c.spec.signer_name == "kubernetes.io/kubelet-serving"
                && c.spec.username.as_deref() == Some(requester.as_str())
        }))
    })
    .await?;
    let name = pending.metadata.name.clone().unwrap_or_default();
    // Nothing to serve with until an admin approves it (nobody does so automatically).
    let before = kubelet_api_verified(cluster, &ip);
    ensure!(before.is_err(), "served before approval: {before:?}");
    cluster.kubectl(&["certificate", "approve", &name])?;
    nodus_e2e::poll(
        WAIT,
        "the kubelet API serving the issued certificate",
        || async { Ok(kubelet_api_verified(cluster, &ip).ok()) },
    )
    .await?;
    let subject = subject(&dir.join("kubelet-server-current.pem"))?;
    ensure!(
        subject.contains(&format!("CN=system:node:{node}")),
        "{subject}"
    );
    csrs.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn server_tls_bootstrap_serves_the_kubelet_api_with_an_approved_certificate() -> Result<()> {
    let cluster = nodus_e2e::Cluster::from_env()?;
    let dir = tempfile::tempdir()?;
    let result = serving_bootstrapped(&cluster, dir.path()).await;
    let restored = cluster.script(&["restart", "nodus"]);
    result?;
    restored
}
