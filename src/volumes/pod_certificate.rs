//! Pod certificates for `podCertificate` projections (KEP-4317): for each such source the
//! agent makes a private key of the asked type, asks the named signer for a certificate with a
//! PodCertificateRequest (the pod's identity and a PKCS#10 request signed by the key), and once
//! the signer has issued one, the projection writes the key and chain into the volume — as
//! upstream's kubelet (`pkg/kubelet/podcertificate`).
//!
//! Invariants: the private key never leaves the agent's memory and the pod's volume; until the
//! first certificate is issued the volume cannot be set up (the pod waits in
//! ContainerCreating with a FailedMount event saying why); a request the signer denied or
//! failed is not made again for that pod, and says so; from the signer's `beginRefreshAt` on a
//! new key and request are made while the volume keeps the current pair, which is replaced
//! whole once the new one is issued. Keys: ECDSA P-256 and P-384 and Ed25519 (what the agent's
//! crypto library signs with); the RSA and P-521 types are refused with a clear error.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{PodCertificateRequest, PodCertificateRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, PodCertificateProjection, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::node::runtime::error_chain;

/// Why a projection has no credential yet; the text is what the FailedMount event says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "key type {0:?} is not supported by nodus (it makes ECDSAP256, ECDSAP384 and ED25519 keys)"
    )]
    KeyType(String),
    #[error("while generating keypair: {0}")]
    Key(String),
    #[error("while fetching service account: {0}")]
    ServiceAccount(String),
    #[error("while getting node object: {0}")]
    Node(String),
    #[error("while creating PodCertificateRequest: {0}")]
    Create(String),
    #[error("while reading PodCertificateRequest {name}: {message}")]
    Read { name: String, message: String },
    #[error("PodCertificateRequest {0} is not issued yet")]
    Waiting(String),
    #[error("PodCertificateRequest {name} was {condition}: {reason}: {message}")]
    Refused {
        name: String,
        condition: String,
        reason: String,
        message: String,
    },
}

/// An issued credential: the private key (PKCS#8 PEM) and the certificate chain (PEM, leaf
/// first), and when to ask for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub key: Vec<u8>,
    pub chain: Vec<u8>,
    pub refresh_at: Timestamp,
}

/// A request the signer has not answered yet, and the key it was made for.
#[derive(Debug, Clone)]
struct Request {
    name: String,
    key: Vec<u8>,
}

#[derive(Debug, Default)]
struct Projection {
    issued: Option<Credential>,
    request: Option<Request>,
    refused: Option<Error>,
}

/// What the signer said of a request.
enum Answer {
    Issued(Credential),
    Pending,
    Gone,
    Refused(Error),
}

/// One pod's podCertificate projections, by volume name and source index.
#[derive(Debug, Default)]
pub struct Credentials {
    projections: HashMap<(String, usize), Projection>,
    node_uid: Option<String>,
}

impl Credentials {
    /// The current credential of one projection, asking for one when there is none or a
    /// refresh is due.
    pub async fn get(
        &mut self,
        client: &Client,
        pod: &Pod,
        node_name: &str,
        (volume, index): (&str, usize),
        source: &PodCertificateProjection,
        now: Timestamp,
    ) -> Result<Credential, Error> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let mut state = self
            .projections
            .remove(&(volume.to_owned(), index))
            .unwrap_or_default();
        let result = async {
            if let Some(refused) = &state.refused {
                return Err(refused.clone());
            }
            if let Some(request) = state.request.clone() {
                match answer(client, &namespace, &request).await? {
                    Answer::Issued(credential) => {
                        state.issued = Some(credential);
                        state.request = None;
                    }
                    Answer::Pending => {}
                    Answer::Gone => state.request = None,
                    Answer::Refused(err) if state.issued.is_none() => {
                        state.refused = Some(err.clone());
                        return Err(err);
                    }
                    // A refused refresh leaves the current credential to run out.
                    Answer::Refused(_) => state.request = None,
                }
            }
            let due = state.issued.as_ref().is_none_or(|c| now >= c.refresh_at);
            if due && state.request.is_none() {
                let node_uid = self.node_uid(client, node_name).await?;
                state.request = Some(create(client, pod, node_name, &node_uid, source).await?);
            }
            match (&state.issued, &state.request) {
                (Some(credential), _) => Ok(credential.clone()),
                (None, Some(request)) => Err(Error::Waiting(request.name.clone())),
                (None, None) => Err(Error::Waiting(String::new())),
            }
        }
        .await;
        self.projections.insert((volume.to_owned(), index), state);
        result
    }

    async fn node_uid(&mut self, client: &Client, node_name: &str) -> Result<String, Error> {
        if let Some(uid) = &self.node_uid {
            return Ok(uid.clone());
        }
        let node = Api::<Node>::all(client.clone())
            .get(node_name)
            .await
            .map_err(|err| Error::Node(error_chain(&err)))?;
        let uid = node.metadata.uid.unwrap_or_default();
        self.node_uid = Some(uid.clone());
        Ok(uid)
    }

    /// Forgets projections the pod no longer has.
    pub fn retain(&mut self, keep: impl Fn(&str, usize) -> bool) {
        self.projections
            .retain(|(volume, index), _| keep(volume, *index));
    }
}

/// A new key of `key_type` and an empty PKCS#10 request signed by it (DER), as the kubelet
/// makes them: the signer only takes the public key from the request.
pub fn key_and_request(key_type: &str) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let algorithm = match key_type {
        "ECDSAP256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        "ECDSAP384" => &rcgen::PKCS_ECDSA_P384_SHA384,
        "ED25519" => &rcgen::PKCS_ED25519,
        other => return Err(Error::KeyType(other.to_owned())),
    };
    let key = rcgen::KeyPair::generate_for(algorithm).map_err(|e| Error::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let request = params
        .serialize_request(&key)
        .map_err(|e| Error::Key(e.to_string()))?;
    Ok((
        key.serialize_pem().into_bytes(),
        request.der().as_ref().to_vec(),
    ))
}

async fn create(
    client: &Client,
    pod: &Pod,
    node_name: &str,
    node_uid: &str,
    source: &PodCertificateProjection,
) -> Result<Request, Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let account_uid = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .get(&account)
        .await
        .map_err(|err| Error::ServiceAccount(error_chain(&err)))?
        .metadata
        .uid
        .unwrap_or_default();
    let (key, stub) = key_and_request(&source.key_type)?;
    let request = PodCertificateRequest {
        metadata: ObjectMeta {
            generate_name: Some("req-".into()),
            namespace: Some(namespace.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name.clone(),
                uid: pod_uid.clone(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: PodCertificateRequestSpec {
            signer_name: source.signer_name.clone(),
            pod_name,
            pod_uid,
            service_account_name: account,
            service_account_uid: account_uid,
            node_name: node_name.to_owned(),
            node_uid: node_uid.to_owned(),
            max_expiration_seconds: source.max_expiration_seconds,
            stub_pkc_s10_request: ByteString(stub),
            unverified_user_annotations: source.user_annotations.clone(),
        },
        status: None,
    };
    let made = Api::<PodCertificateRequest>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &request)
        .await
        .map_err(|err| Error::Create(error_chain(&err)))?;
    Ok(Request {
        name: made.metadata.name.unwrap_or_default(),
        key,
    })
}

async fn answer(client: &Client, namespace: &str, request: &Request) -> Result<Answer, Error> {
    let read = Api::<PodCertificateRequest>::namespaced(client.clone(), namespace)
        .get_opt(&request.name)
        .await
        .map_err(|err| Error::Read {
            name: request.name.clone(),
            message: error_chain(&err),
        })?;
    let Some(read) = read else {
        return Ok(Answer::Gone);
    };
    Ok(judge(&request.name, &request.key, &read))
}

/// What the signer's status says of a request for `key`.
fn judge(name: &str, key: &[u8], request: &PodCertificateRequest) -> Answer {
    let Some(status) = &request.status else {
        return Answer::Pending;
    };
    for condition in status.conditions.iter().flatten() {
        if matches!(condition.type_.as_str(), "Denied" | "Failed") && condition.status == "True" {
            return Answer::Refused(Error::Refused {
                name: name.to_owned(),
                condition: condition.type_.to_lowercase(),
                reason: condition.reason.clone(),
                message: condition.message.clone(),
            });
        }
    }
    let Some(chain) = status.certificate_chain.as_deref().map(clean_chain) else {
        return Answer::Pending;
    };
    if chain.is_empty() {
        return Answer::Pending;
    }
    let refresh_at = status
        .begin_refresh_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            // Halfway through its life, when the signer does not say.
            let (from, to) = (status.not_before.as_ref()?.0, status.not_after.as_ref()?.0);
            from.checked_add(to.duration_since(from) / 2).ok()
        })
        .unwrap_or_else(|| {
            Timestamp::now()
                .checked_add(SignedDuration::from_hours(1))
                .unwrap_or(Timestamp::MAX)
        });
    Answer::Issued(Credential {
        key: key.to_vec(),
        chain,
        refresh_at,
    })
}

/// The contents of the PEM blocks of `text`, skipping text around them and their headers;
/// a block that is not base64 ends the list, as Go's `pem.Decode`.
fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match &mut body {
            None if line.starts_with("-----BEGIN ") && line.ends_with("-----") => {
                body = Some(String::new());
            }
            None => {}
            Some(collected) if line.starts_with("-----END ") => {
                match STANDARD.decode(collected.as_bytes()) {
                    Ok(der) => blocks.push(der),
                    Err(_) => return blocks,
                }
                body = None;
            }
            // Headers ("Proc-Type: ...") and the blank line after them.
            Some(collected) if collected.is_empty() && (line.contains(':') || line.is_empty()) => {}
            Some(collected) => collected.push_str(line),
        }
    }
    blocks
}

/// The chain's certificates alone, as bare `CERTIFICATE` PEM blocks (headers and text
/// between blocks dropped, as the kubelet cleans it).
fn clean_chain(chain: &str) -> Vec<u8> {
    let mut out = String::new();
    for der in pem_blocks(chain) {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = STANDARD.encode(&der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::certificates::v1::PodCertificateRequestStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn keys_and_requests_of_the_supported_types_parse() {
        for key_type in ["ECDSAP256", "ECDSAP384", "ED25519"] {
            let (key, request) = key_and_request(key_type).expect(key_type);
            assert!(String::from_utf8_lossy(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
            let (_, parsed) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&request)
                    .expect("a PKCS#10 request");
            // Empty, as the kubelet's: the signer takes only the public key.
            assert_eq!(parsed.certification_request_info.subject.iter().count(), 0);
        }
        assert_eq!(
            key_and_request("RSA3072").err(),
            Some(Error::KeyType("RSA3072".into()))
        );
    }

    fn request(status: PodCertificateRequestStatus) -> PodCertificateRequest {
        PodCertificateRequest {
            status: Some(status),
            ..PodCertificateRequest::default()
        }
    }

    #[test]
    fn an_issued_chain_is_cleaned_and_refreshes_when_the_signer_says() {
        let der = b"not really a certificate";
        let body = STANDARD.encode(der);
        let chain = format!(
            "leaf\n-----BEGIN CERTIFICATE-----\nHeader: x\n\n{body}\n-----END CERTIFICATE-----\n"
        );
        let refresh = Timestamp::from_second(1_000).expect("a time");
        let answer = judge(
            "req-1",
            b"KEY",
            &request(PodCertificateRequestStatus {
                certificate_chain: Some(chain),
                begin_refresh_at: Some(Time(refresh)),
                ..Default::default()
            }),
        );
        let Answer::Issued(credential) = answer else {
            panic!("issued");
        };
        assert_eq!(credential.key, b"KEY");
        assert_eq!(credential.refresh_at, refresh);
        assert_eq!(
            String::from_utf8_lossy(&credential.chain),
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        );
    }

    #[test]
    fn a_denied_request_says_why_and_an_unanswered_one_waits() {
        let denied = request(PodCertificateRequestStatus {
            conditions: Some(vec![Condition {
                type_: "Denied".into(),
                status: "True".into(),
                reason: "UnsupportedKeyType".into(),
                message: "use ED25519".into(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }]),
            ..Default::default()
        });
        let Answer::Refused(err) = judge("req-1", b"", &denied) else {
            panic!("refused");
        };
        assert_eq!(
            err.to_string(),
            "PodCertificateRequest req-1 was denied: UnsupportedKeyType: use ED25519"
        );
        assert!(matches!(
            judge("req-1", b"", &request(Default::default())),
            Answer::Pending
        ));
    }
}
