//! TLS bootstrap, as the kubelet does it: when `--kubeconfig` is missing (or its client
//! certificate has expired) and `--bootstrap-kubeconfig` is given, ask the API server for a
//! node client certificate with the bootstrap credentials, wait for it to be approved and
//! issued, and write the certificate and a kubeconfig that uses it.
//!
//! ```text
//! bootstrap kubeconfig ─> new key ─> CSR (CN system:node:NAME, O system:nodes,
//!   signer kubernetes.io/kube-apiserver-client-kubelet) ─> wait: issued | denied | failed
//!   ─> CERT_DIR/kubelet-client-TIMESTAMP.pem (certificate and key)
//!   ─> CERT_DIR/kubelet-client-current.pem (symlink) ─> KUBECONFIG pointing at it
//! ```
//!
//! Invariants: nothing is written until the certificate is issued, and the kubeconfig last
//! (atomically), so a failed or interrupted bootstrap never leaves a half-joined node; every
//! failure is an error that says what to fix (a refused token, a denied request).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Api, Client};
use tracing::info;

/// The signer of node client certificates.
pub const CLIENT_KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates (approved by an admin, not automatically).
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The certificate the kubeconfig points at (the kubelet's name).
pub const CURRENT: &str = "kubelet-client-current.pem";
/// The kubelet API's serving certificate with `serverTLSBootstrap` (the kubelet's name).
pub const SERVING_CURRENT: &str = "kubelet-server-current.pem";

/// What a node certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// The node's client certificate for the API server.
    Client,
    /// The kubelet API's serving certificate, for these DNS names and addresses.
    Serving { names: Vec<String> },
}

impl Purpose {
    fn signer(&self) -> &'static str {
        match self {
            Purpose::Client => CLIENT_KUBELET_SIGNER,
            Purpose::Serving { .. } => SERVING_SIGNER,
        }
    }

    fn file_prefix(&self) -> &'static str {
        match self {
            Purpose::Client => "kubelet-client",
            Purpose::Serving { .. } => "kubelet-server",
        }
    }

    /// The file name of the certificate in use.
    pub fn current(&self) -> &'static str {
        match self {
            Purpose::Client => CURRENT,
            Purpose::Serving { .. } => SERVING_CURRENT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the bootstrap kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("the bootstrap kubeconfig {0} names no cluster with a server")]
    NoCluster(PathBuf),
    #[error("building a client from the bootstrap kubeconfig")]
    Client(#[source] kube::Error),
    #[error("making the key and certificate request")]
    Key(#[source] rcgen::Error),
    #[error("the API server refused the certificate request (is the bootstrap token valid?)")]
    Create(#[source] kube::Error),
    #[error("waiting for certificate request {name}")]
    Wait {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("certificate request {name} was {condition}: {reason} {message}")]
    Refused {
        name: String,
        condition: String,
        reason: String,
        message: String,
    },
    #[error("certificate request {name} was not issued within {waited:?} (nobody approved it?)")]
    Timeout { name: String, waited: Duration },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the bootstrap needs.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: PathBuf,
    pub cert_dir: PathBuf,
    /// How long to wait for approval and issuance.
    pub wait: Duration,
}

/// Whether `kubeconfig` can be used as it is: it exists and any client certificate file it
/// names has not expired (a kubeconfig without one, e.g. a token, is taken as it is).
pub fn usable(kubeconfig: &Path) -> bool {
    let Ok(config) = Kubeconfig::read_from(kubeconfig) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    config
        .auth_infos
        .iter()
        .filter_map(|a| a.auth_info.as_ref()?.client_certificate.as_ref())
        .all(|file| not_after(Path::new(file)).is_some_and(|end| end > now))
}

/// The expiry (Unix seconds) of the first certificate in a PEM file.
pub fn not_after(file: &Path) -> Option<i64> {
    validity(&std::fs::read(file).ok()?).map(|(_, end)| end)
}

/// The validity (Unix seconds: not before, not after) of the first certificate in `pem`.
pub fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Runs the bootstrap (see the module docs) and returns the kubeconfig's path.
pub async fn run(b: &Bootstrap) -> Result<PathBuf, Error> {
    let path = &b.bootstrap_kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    let cluster = current_cluster(&kubeconfig).ok_or_else(|| Error::NoCluster(path.clone()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.clone(),
            source,
        })?;
    let client = Client::try_from(config).map_err(Error::Client)?;
    let pem = request_certificate(&client, &b.node_name, &Purpose::Client, b.wait).await?;
    let (file, current) = install(&b.cert_dir, &Purpose::Client, &pem)?;
    write_kubeconfig(&b.kubeconfig, &cluster, &current)?;
    info!(kubeconfig = %b.kubeconfig.display(), certificate = %file.display(), "TLS bootstrap done");
    Ok(b.kubeconfig.clone())
}

/// Asks for a node certificate through `client` (the bootstrap token's, or the node's own
/// when renewing) and waits until it is issued; returns the certificate and the new key, in
/// one PEM.
pub async fn request_certificate(
    client: &Client,
    node_name: &str,
    purpose: &Purpose,
    wait: Duration,
) -> Result<Vec<u8>, Error> {
    let key = rcgen::KeyPair::generate().map_err(Error::Key)?;
    let mut params = match purpose {
        Purpose::Client => rcgen::CertificateParams::default(),
        // Names that parse as IP addresses become IP SANs, the rest DNS SANs.
        Purpose::Serving { names } => {
            rcgen::CertificateParams::new(names.clone()).map_err(Error::Key)?
        }
    };
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params.serialize_request(&key).map_err(Error::Key)?;
    let request = request.pem().map_err(Error::Key)?;

    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = csrs
        .create(
            &PostParams::default(),
            &CertificateSigningRequest {
                metadata: ObjectMeta {
                    generate_name: Some("node-csr-".to_owned()),
                    ..ObjectMeta::default()
                },
                spec: CertificateSigningRequestSpec {
                    request: ByteString(request.into_bytes()),
                    signer_name: purpose.signer().to_owned(),
                    // An ECDSA key: no key encipherment, as the kubelet asks for one.
                    usages: Some(vec![
                        "digital signature".into(),
                        match purpose {
                            Purpose::Client => "client auth".into(),
                            Purpose::Serving { .. } => "server auth".into(),
                        },
                    ]),
                    ..CertificateSigningRequestSpec::default()
                },
                status: None,
            },
        )
        .await
        .map_err(Error::Create)?;
    let name = created.metadata.name.unwrap_or_default();
    info!(csr = %name, node = %node_name, signer = purpose.signer(), "waiting for the certificate");
    let mut pem = wait_issued(&csrs, &name, wait).await?;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(key.serialize_pem().as_bytes());
    Ok(pem)
}

/// Writes a new certificate and key as `kubelet-{client,server}-<time>.pem` in `cert_dir` and
/// points `kubelet-{client,server}-current.pem` at it; returns both paths.
pub fn install(
    cert_dir: &Path,
    purpose: &Purpose,
    pem: &[u8],
) -> Result<(PathBuf, PathBuf), Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let file = cert_dir.join(format!(
        "{}-{}.pem",
        purpose.file_prefix(),
        now.strftime("%Y-%m-%d-%H-%M-%S")
    ));
    write_private(&file, pem).map_err(write_error(&file))?;
    let current = cert_dir.join(purpose.current());
    replace_symlink(&file, &current)?;
    Ok((file, current))
}

/// The kubeconfig's current context, if it names one that exists.
pub fn current_context(kubeconfig: &Kubeconfig) -> Option<&Context> {
    kubeconfig
        .current_context
        .as_ref()
        .and_then(|c| kubeconfig.contexts.iter().find(|n| &n.name == c))
        .and_then(|n| n.context.as_ref())
}

/// The current context's cluster (or the only one).
fn current_cluster(kubeconfig: &Kubeconfig) -> Option<Cluster> {
    let wanted = current_context(kubeconfig).map(|c| c.cluster.clone());
    let named = match wanted {
        Some(name) => kubeconfig.clusters.iter().find(|c| c.name == name),
        None => kubeconfig.clusters.first(),
    }?;
    named.cluster.clone().filter(|c| c.server.is_some())
}

async fn wait_issued(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    wait: Duration,
) -> Result<Vec<u8>, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let csr = csrs.get(name).await.map_err(|source| Error::Wait {
            name: name.to_owned(),
            source,
        })?;
        let status = csr.status.unwrap_or_default();
        if let Some(refused) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True")
        {
            return Err(Error::Refused {
                name: name.to_owned(),
                condition: refused.type_.to_lowercase(),
                reason: refused.reason.clone().unwrap_or_default(),
                message: refused.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(cert.0);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                name: name.to_owned(),
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` readable by root only, atomically (credentials: keys, tokens).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn replace_symlink(target: &Path, link: &Path) -> Result<(), Error> {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(write_error(&tmp))?;
    std::fs::rename(&tmp, link).map_err(write_error(link))
}

/// A kubeconfig for `cluster` whose user is the certificate and key in `pem`.
fn write_kubeconfig(path: &Path, cluster: &Cluster, pem: &Path) -> Result<(), Error> {
    let pem = pem.display().to_string();
    let config = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(cluster.clone()),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pem.clone()),
                client_key: Some(pem),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("default-context".into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    };
    // JSON is YAML: every kubeconfig reader takes it.
    let text = serde_json::to_vec_pretty(&config).expect("a kubeconfig serializes");
    write_private(path, &text).map_err(write_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and key valid until `not_after` (Unix seconds), as one PEM.
    fn certificate(not_after: i64) -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(vec!["node".into()]).expect("params");
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(not_after - 7200).expect("a time");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("a time");
        let cert = params.self_signed(&key).expect("signed");
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_kubeconfig_is_usable_while_its_certificate_is_valid() {
        let dir = tempfile::tempdir().expect("a directory");
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let cluster = Cluster {
            server: Some("https://192.0.2.1:6443".into()),
            certificate_authority_data: Some("Q0E=".into()),
            ..Cluster::default()
        };
        for (name, not_after, usable_) in
            [("valid", now + 3600, true), ("expired", now - 60, false)]
        {
            let pem = dir.path().join(format!("{name}.pem"));
            std::fs::write(&pem, certificate(not_after)).expect("writing the certificate");
            let kubeconfig = dir.path().join(format!("{name}.conf"));
            write_kubeconfig(&kubeconfig, &cluster, &pem).expect("writing the kubeconfig");
            assert_eq!(usable(&kubeconfig), usable_, "{name}");
            // What nodus writes reads back with the same cluster and the certificate as user.
            let read = Kubeconfig::read_from(&kubeconfig).expect("a kubeconfig");
            let read_cluster = current_cluster(&read).expect("the cluster");
            assert_eq!(read_cluster.server, cluster.server);
            assert_eq!(
                read_cluster.certificate_authority_data,
                cluster.certificate_authority_data
            );
            let user = read.auth_infos[0].auth_info.as_ref().expect("a user");
            assert_eq!(user.client_certificate.as_deref(), pem.to_str());
            assert_eq!(user.client_key.as_deref(), pem.to_str());
        }
        assert!(!usable(&dir.path().join("missing.conf")));
    }
}
