//! Kubelet certificates through CSRs, as nodus-control approves and signs them: a node
//! renewing its own client certificate is approved (after a SubjectAccessReview) and gets a
//! certificate from the cluster CA; a node asking for another node's name is not approved;
//! an approved serving certificate for names the requester may not claim is refused with
//! `Failed`, not signed.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use nodus_e2e::{Cluster, poll};

const WAIT: Duration = Duration::from_secs(30);

/// A PEM certificate request for `subject` with an EC key, and optional SANs.
fn request(dir: &std::path::Path, subject: &str, san: Option<&str>) -> Result<String> {
    let key = dir.join(format!("{}.key", subject.len()));
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", subject]);
    if let Some(san) = san {
        openssl.args(["-addext", &format!("subjectAltName={san}")]);
    }
    let output = openssl.output()?;
    ensure!(
        output.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn csr(name: &str, pem: &str, signer: &str, usages: &[&str]) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.as_bytes().to_vec()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        status: None,
    }
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> Option<(String, String)> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn node_client_certificates_are_approved_and_signed_for_their_own_node_only() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let node = cluster.node_name();
    let dir = tempfile::tempdir()?;
    // The node's own credentials make the requests, as a kubelet renewing would.
    let as_node: Api<CertificateSigningRequest> = Api::all(cluster.node_client().await?);
    let admin: Api<CertificateSigningRequest> = Api::all(cluster.admin().await?);
    let suffix = std::process::id();
    let own = format!("renew-{suffix}");
    let other = format!("other-{suffix}");
    let client_usages = ["digital signature", "client auth"];
    let signer = "kubernetes.io/kube-apiserver-client-kubelet";
    let pem = request(
        dir.path(),
        &format!("/O=system:nodes/CN=system:node:{node}"),
        None,
    )?;
    as_node
        .create(
            &PostParams::default(),
            &csr(&own, &pem, signer, &client_usages),
        )
        .await?;
    // An unexpected identity: an account that may create CSRs but is neither a node nor a
    // bootstrapper asks for a node's client certificate. (A node cannot even ask for another
    // node's name: the API server's NodeRestriction refuses it.)
    let stranger = request(
        dir.path(),
        "/O=system:nodes/CN=system:node:someone-else",
        None,
    )?;
    let token = csr_creator_token(&cluster, suffix).await?;
    let as_stranger: Api<CertificateSigningRequest> = Api::all(cluster.token_client(&token).await?);
    as_stranger
        .create(
            &PostParams::default(),
            &csr(&other, &stranger, signer, &client_usages),
        )
        .await?;

    let issued = poll(WAIT, "the node's own certificate", || async {
        let csr = as_node.get(&own).await?;
        Ok(csr.status.and_then(|s| s.certificate).map(|c| c.0))
    })
    .await?;
    let approved = condition(&admin.get(&own).await?, "Approved").context("Approved")?;
    assert_eq!(approved.0, "AutoApproved");
    let cert_file = dir.path().join("issued.crt");
    std::fs::write(&cert_file, &issued)?;
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(cluster.ca_cert())
        .arg(&cert_file)
        .output()?;
    ensure!(
        verify.status.success(),
        "the cluster CA signed it: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
            "-in",
        ])
        .arg(&cert_file)
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(
        text.contains(&format!("CN = system:node:{node}")) && text.contains("O = system:nodes"),
        "{text}"
    );
    ensure!(text.contains("TLS Web Client Authentication"), "{text}");

    // The stranger's request: no SubjectAccessReview lets it ask. Absence has
    // no event to wait for: give the controller, which had both requests from the start,
    // a few seconds more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending = admin.get(&other).await?;
    ensure!(
        condition(&pending, "Approved").is_none()
            && pending.status.and_then(|s| s.certificate).is_none(),
        "a request for another node's name stays pending"
    );

    // An admin approves a serving certificate the node asked for with names it may not
    // claim (an e-mail address): the signer refuses it.
    let serving = format!("serving-{suffix}");
    let bad = request(
        dir.path(),
        &format!("/O=system:nodes/CN=system:node:{node}"),
        Some("email:root@example.com"),
    )?;
    as_node
        .create(
            &PostParams::default(),
            &csr(
                &serving,
                &bad,
                "kubernetes.io/kubelet-serving",
                &["digital signature", "server auth"],
            ),
        )
        .await?;
    cluster.kubectl(&["certificate", "approve", &serving])?;
    let failed = poll(WAIT, "the serving request to fail", || async {
        Ok(condition(&admin.get(&serving).await?, "Failed"))
    })
    .await?;
    ensure!(
        admin
            .get(&serving)
            .await?
            .status
            .and_then(|s| s.certificate)
            .is_none()
    );
    ensure!(!failed.1.is_empty(), "the failure says why");
    for name in [own, other, serving] {
        admin.delete(&name, &DeleteParams::default()).await?;
    }
    let creator = format!("csr-creator-{suffix}");
    cluster.kubectl(&["delete", "-n", "default", "serviceaccount", &creator])?;
    cluster.kubectl(&["delete", "clusterrole,clusterrolebinding", &creator])?;
    Ok(())
}

/// A token of a fresh ServiceAccount allowed to create and read CSRs, nothing more.
async fn csr_creator_token(cluster: &Cluster, suffix: u32) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let name = format!("csr-creator-{suffix}");
    let manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: default}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {name}}}\n\
         rules: [{{apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [create, get]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}}}\n\
         subjects: [{{kind: ServiceAccount, name: {name}, namespace: default}}]\n"
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest)?;
    cluster.kubectl(&["apply", "-f", &file.path().to_string_lossy()])?;
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.admin().await?, "default");
    let issued: TokenRequest = accounts
        .create_subresource(
            "token",
            &name,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .context("the issued token")
}
