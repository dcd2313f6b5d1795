//! `nodus join`: kubeadm's token discovery, then TLS bootstrap and the agent.
//!
//! ```text
//! GET kube-public/configmaps/cluster-info (anonymous, server not yet trusted)
//!   ─> its `jws-kubeconfig-ID` must be the token's signature of its `kubeconfig` (HS256,
//!      keyed by the token secret): proof the server knows the token
//!   ─> the CA in that kubeconfig must have a public key pinned by --discovery-token-ca-cert-hash
//!   ─> GET cluster-info again, now trusting only that CA
//!   ─> write the bootstrap kubeconfig (server, CA, token)
//!   ─> GET kube-system/configmaps/kubelet-config with the token (kubeadm publishes the
//!      cluster's KubeletConfiguration there): written as the agent's --config, its client
//!      CA pointed at the discovered CA ─> TLS bootstrap ─> run
//! ```
//!
//! Invariants: nothing is written before every check passed; every refusal says which check
//! failed and what to look at.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::Kubeconfig;
use kube::{Api, Client};

const CLUSTER_INFO: &str = "cluster-info";
const PUBLIC: &str = "kube-public";
/// Where kubeadm publishes the cluster's KubeletConfiguration (under the key `kubelet`).
const KUBELET_CONFIG: &str = "kubelet-config";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--token {0:?} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")]
    Token(String),
    #[error("{0:?} is not an API server URL")]
    Server(String),
    #[error("--discovery-token-ca-cert-hash {0:?} is not sha256:<64 hex digits>")]
    Hash(String),
    #[error(
        "give --discovery-token-ca-cert-hash sha256:<hash of the CA's public key> (kubeadm token \
         create --print-join-command prints it), or --discovery-token-unsafe-skip-ca-verification"
    )]
    NoHash,
    #[error("reading {CLUSTER_INFO} from {PUBLIC} at {server}")]
    Fetch {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("{CLUSTER_INFO} has no {0}")]
    Missing(String),
    #[error(
        "{CLUSTER_INFO} is not signed for token {0:?}: the token is unknown, expired, or not \
         meant for signing (is the token right?)"
    )]
    Unsigned(String),
    #[error("{CLUSTER_INFO}'s signature does not match the token: wrong token secret?")]
    BadSignature,
    #[error("{CLUSTER_INFO}'s kubeconfig: {0}")]
    Kubeconfig(String),
    #[error(
        "the cluster CA's public key ({found}) matches no --discovery-token-ca-cert-hash: a \
         different cluster, or a wrong hash"
    )]
    CaMismatch { found: String },
    #[error("reading kube-system/{KUBELET_CONFIG} at {server}")]
    KubeletConfig {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("kube-system/{KUBELET_CONFIG}: {0}")]
    BadKubeletConfig(String),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `nodus join` is given.
#[derive(Debug, Clone)]
pub struct Join {
    pub server: String,
    pub token: String,
    pub ca_cert_hashes: Vec<String>,
    pub unsafe_skip_ca_verification: bool,
}

/// The bootstrap token, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Token {
    pub fn parse(raw: &str) -> Result<Token, Error> {
        let bad = || Error::Token(raw.to_owned());
        let (id, secret) = raw.split_once('.').ok_or_else(bad)?;
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        if !(ok(id, 6) && ok(secret, 16)) {
            return Err(bad());
        }
        Ok(Token {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// Checks a detached JWS (`header..signature`, HS256) of `content` made with the token, as
/// the bootstrap signer makes it.
pub fn verify_detached(jws: &str, content: &str, token: &Token) -> Result<(), Error> {
    let (header, signature) = jws.split_once("..").ok_or(Error::BadSignature)?;
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::BadSignature)?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|_| Error::BadSignature)?;
    if header_value["alg"] != "HS256" || header_value["kid"] != token.id.as_str() {
        return Err(Error::BadSignature);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Error::BadSignature)?;
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes());
    ring::hmac::verify(&key, input.as_bytes(), &signature).map_err(|_| Error::BadSignature)
}

/// The pin of every certificate in `pem`: `sha256:` and the hex SHA-256 of its
/// SubjectPublicKeyInfo, as kubeadm computes --discovery-token-ca-cert-hash.
pub fn ca_pins(pem: &[u8]) -> Result<Vec<String>, Error> {
    let mut pins = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| Error::Kubeconfig(format!("its CA is not PEM: {e}")))?;
        let cert = item
            .parse_x509()
            .map_err(|e| Error::Kubeconfig(format!("its CA is not a certificate: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        pins.push(format!("sha256:{hex}"));
    }
    if pins.is_empty() {
        return Err(Error::Kubeconfig("its CA holds no certificate".to_owned()));
    }
    Ok(pins)
}

fn check_hashes(hashes: &[String]) -> Result<(), Error> {
    for hash in hashes {
        let hex = hash.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Hash(hash.clone()));
        }
    }
    Ok(())
}

/// The discovered cluster: its API server and CA (PEM).
#[derive(Debug, Clone)]
pub struct Discovered {
    pub server: String,
    pub ca_pem: Vec<u8>,
}

/// Token discovery (see the module docs).
pub async fn discover(join: &Join) -> Result<Discovered, Error> {
    let token = Token::parse(&join.token)?;
    check_hashes(&join.ca_cert_hashes)?;
    if join.ca_cert_hashes.is_empty() && !join.unsafe_skip_ca_verification {
        return Err(Error::NoHash);
    }
    let server = if join.server.contains("://") {
        join.server.clone()
    } else {
        format!("https://{}", join.server)
    };
    let url: http::Uri = server
        .parse()
        .map_err(|_| Error::Server(join.server.clone()))?;

    // Not yet trusted: the signature and the pin are what make the answer trustworthy.
    let mut config = kube::Config::new(url.clone());
    config.accept_invalid_certs = true;
    let info = fetch(config, &server).await?;
    let data = info.data.unwrap_or_default();
    let kubeconfig = data
        .get("kubeconfig")
        .ok_or_else(|| Error::Missing("kubeconfig".to_owned()))?;
    let jws = data
        .get(&format!("jws-kubeconfig-{}", token.id))
        .ok_or_else(|| Error::Unsigned(token.id.clone()))?;
    verify_detached(jws, kubeconfig, &token)?;

    let parsed = Kubeconfig::from_yaml(kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let cluster = parsed
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| Error::Kubeconfig("no cluster".to_owned()))?;
    let ca_pem = STANDARD
        .decode(
            cluster
                .certificate_authority_data
                .as_deref()
                .ok_or_else(|| Error::Kubeconfig("no certificate-authority-data".to_owned()))?,
        )
        .map_err(|e| Error::Kubeconfig(format!("certificate-authority-data: {e}")))?;
    let pins = ca_pins(&ca_pem)?;
    if !join.unsafe_skip_ca_verification
        && !pins.iter().any(|p| {
            join.ca_cert_hashes
                .iter()
                .any(|h| h.eq_ignore_ascii_case(p))
        })
    {
        return Err(Error::CaMismatch {
            found: pins.join(", "),
        });
    }
    let discovered_server = cluster.server.unwrap_or(server);

    // Now trusting only the pinned CA: the same server must answer.
    let mut trusted = kube::Config::new(url);
    trusted.root_cert = Some(vec![pem_to_der(&ca_pem)?]);
    fetch(trusted, &discovered_server).await?;
    Ok(Discovered {
        server: discovered_server,
        ca_pem,
    })
}

fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, Error> {
    let (_, item) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| Error::Kubeconfig(format!("its CA is not PEM: {e}")))?;
    Ok(item.contents)
}

async fn fetch(config: kube::Config, server: &str) -> Result<ConfigMap, Error> {
    let fetch_error = |source| Error::Fetch {
        server: server.to_owned(),
        source,
    };
    let client = Client::try_from(config).map_err(fetch_error)?;
    let maps: Api<ConfigMap> = Api::namespaced(client, PUBLIC);
    maps.get(CLUSTER_INFO).await.map_err(fetch_error)
}

/// The cluster's KubeletConfiguration as kubeadm publishes it, read with the bootstrap token
/// from the discovered (now trusted) server; `None` when the cluster has none or does not let
/// the token read it (a cluster not made by kubeadm).
pub async fn kubelet_config(discovered: &Discovered, token: &str) -> Result<Option<String>, Error> {
    let fail = |source| Error::KubeletConfig {
        server: discovered.server.clone(),
        source,
    };
    let url: http::Uri = discovered
        .server
        .parse()
        .map_err(|_| Error::Server(discovered.server.clone()))?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(vec![pem_to_der(&discovered.ca_pem)?]);
    config.auth_info.token = Some(token.to_owned().into());
    let client = Client::try_from(config).map_err(fail)?;
    let maps: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    match maps.get_opt(KUBELET_CONFIG).await {
        Ok(map) => Ok(map.and_then(|m| m.data?.get("kubelet").cloned())),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        Err(source) => Err(fail(source)),
    }
}

/// The cluster's KubeletConfiguration for this node: its client CA file (kubeadm names
/// `/etc/kubernetes/pki/ca.crt`) replaced by `ca_file`, where the discovered CA is written.
/// The result is JSON, which YAML readers take as it is.
pub fn localize_kubelet_config(yaml: &str, ca_file: &Path) -> Result<String, Error> {
    let mut config: serde_json::Value = serde_saphyr::from_str(yaml)
        .map_err(|e| Error::BadKubeletConfig(format!("not YAML: {e}")))?;
    if config.get("kind").and_then(serde_json::Value::as_str) != Some("KubeletConfiguration") {
        return Err(Error::BadKubeletConfig(
            "not a KubeletConfiguration".to_owned(),
        ));
    }
    if let Some(x509) = config
        .pointer_mut("/authentication/x509")
        .and_then(serde_json::Value::as_object_mut)
        && x509.contains_key("clientCAFile")
    {
        x509.insert(
            "clientCAFile".to_owned(),
            ca_file.display().to_string().into(),
        );
    }
    Ok(serde_json::to_string_pretty(&config).expect("JSON"))
}

/// Writes the bootstrap kubeconfig for `discovered` and `token` at `path` (root-only).
pub fn write_bootstrap_kubeconfig(
    path: &Path,
    discovered: &Discovered,
    token: &str,
) -> Result<(), Error> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "kubernetes", "cluster": {
            "server": discovered.server,
            "certificate-authority-data": STANDARD.encode(&discovered.ca_pem),
        }}],
        "users": [{ "name": "tls-bootstrap-token-user", "user": { "token": token } }],
        "contexts": [{ "name": "tls-bootstrap-token-user@kubernetes", "context": {
            "cluster": "kubernetes", "user": "tls-bootstrap-token-user",
        }}],
        "current-context": "tls-bootstrap-token-user@kubernetes",
    });
    let text = serde_json::to_vec_pretty(&config).expect("JSON");
    crate::node::bootstrap::write_private(path, &text).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
