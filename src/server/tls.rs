//! TLS for the kubelet API: the serving certificate (the files given by `--tls-cert-file` and
//! `--tls-private-key-file`; with `serverTLSBootstrap` the one issued through a CSR, read at
//! each handshake; or one made for this node at start, as the kubelet does without them),
//! and client certificates verified against `--client-ca-file`.
//!
//! Invariant: a client certificate is only ever trusted after rustls verified it against the
//! client CA; requests without one still reach the handler (bearer tokens, or anonymous when
//! enabled), which decides.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::node::cert_file::CertFile;

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("making a self-signed serving certificate")]
    SelfSigned(#[source] rcgen::Error),
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("using {path} as the client CA")]
    ClientCa {
        path: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum Serving {
    Files {
        cert: String,
        key: String,
    },
    /// Self-signed for these names and addresses.
    SelfSigned {
        hostname: String,
        ips: Vec<IpAddr>,
    },
    /// Issued through a certificate signing request into this file (certificate and key),
    /// which rotation replaces; until it exists, handshakes fail.
    Issued(PathBuf),
}

/// The issued serving certificate, as its file holds it now.
#[derive(Debug)]
struct IssuedCert(CertFile);

impl ResolvesServerCert for IssuedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

fn read(path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn serving(
    serving: &Serving,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    match serving {
        Serving::Issued(_) => unreachable!("an issued certificate is resolved per handshake"),
        Serving::Files { cert, key } => {
            let pem = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| Error::Empty {
                path: key.clone(),
                what: "PEM private key",
            })?;
            Ok((certificates(cert)?, key_der))
        }
        Serving::SelfSigned { hostname, ips } => {
            let mut names: Vec<String> = vec![hostname.clone()];
            names.extend(ips.iter().map(ToString::to_string));
            let certified = rcgen::generate_simple_self_signed(names).map_err(Error::SelfSigned)?;
            let key =
                PrivateKeyDer::try_from(certified.key_pair.serialize_der()).map_err(|_| {
                    Error::Empty {
                        path: "(generated)".into(),
                        what: "private key",
                    }
                })?;
            Ok((vec![certified.cert.der().clone()], key))
        }
    }
}

/// The server's TLS configuration.
pub fn config(
    serving_cert: &Serving,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?;
    let builder = match client_ca {
        Some(path) => {
            let shown = path.display().to_string();
            let mut roots = RootCertStore::empty();
            for cert in certificates(&shown)? {
                roots.add(cert).map_err(Error::Tls)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|source| Error::ClientCa {
                    path: shown,
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = match serving_cert {
        Serving::Issued(path) => builder.with_cert_resolver(Arc::new(IssuedCert(CertFile::new(
            path.clone(),
            path.clone(),
        )))),
        other => {
            let (chain, key) = serving(other)?;
            builder.with_single_cert(chain, key).map_err(Error::Tls)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names: CN as the user, each O as a group.
pub fn identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((user, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_subject_names_the_user_and_groups() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "kubeadm:cluster-admins");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            identity(cert.der()),
            Some((
                "kube-apiserver-kubelet-client".to_owned(),
                vec!["kubeadm:cluster-admins".to_owned()]
            ))
        );
    }

    #[test]
    fn a_self_signed_serving_config_builds() {
        let serving = Serving::SelfSigned {
            hostname: "vm".into(),
            ips: vec!["192.0.2.2".parse().expect("ip")],
        };
        assert!(config(&serving, None).is_ok());
    }
}
