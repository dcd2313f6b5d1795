//! The cluster CA as a certificate signer: issues a certificate for a verified request,
//! signed by the CA key, the way upstream's local signer does.
//!
//! Invariants: the certificate carries exactly the requested public key and the request's
//! subject and SANs (as Go re-encodes them), no extension of the request, the usages of
//! `spec.usages` only, `CA:FALSE`; its issuer is byte for byte the CA's subject (checked
//! when the CA is loaded), its AuthorityKeyIdentifier the CA's SubjectKeyIdentifier;
//! validity starts [`BACKDATE`] before now and lasts min(`expirationSeconds`, `duration`)
//! (at least [`MIN_TTL`]), never past the CA's own notAfter; serial numbers are random
//! 128-bit integers. Upstream: `pkg/controller/certificates/authority/{authority,policies}.go`
//! and `signer.go` (`sign`, `duration`).

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use super::Error;
use super::key;
use super::request::{Request, Subject};

/// kube-controller-manager's `--cluster-signing-duration` default: one year.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far before now a certificate's validity starts, for clocks behind the signer's.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Below this lifetime the end is not moved back by [`BACKDATE`] (5 minutes is about 1%
/// of 8 hours).
pub const SHORT: Duration = Duration::from_secs(8 * 3600);
/// The shortest lifetime given, whatever `expirationSeconds` asks: twice the backdate.
pub const MIN_TTL: Duration = Duration::from_secs(10 * 60);

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Something of the request this signer cannot put in a certificate (rcgen's model
    /// has no multi-valued RDNs, for one). Retrying cannot help.
    #[error("this signer cannot issue it: {0}")]
    Unsupported(String),
    /// Upstream's words.
    #[error("unrecognized usage values: {0:?}")]
    Usages(Vec<String>),
    #[error("the signer has expired: NotAfter={0}")]
    Expired(Timestamp),
    #[error("drawing a serial number from /dev/urandom")]
    Random(#[source] std::io::Error),
    #[error("building the certificate")]
    Build(#[source] rcgen::Error),
}

impl SignError {
    /// Whether the request can never be signed (the CSR is marked Failed), as opposed to
    /// a failure of the signer that a later try may not meet.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SignError::Unsupported(_) | SignError::Usages(_))
    }
}

/// The cluster CA, ready to sign; `duration` is the longest lifetime it gives
/// (`--cluster-signing-duration`).
pub struct Signer {
    /// The CA as rcgen's issuer: its subject and key identifier.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// Whether the CA has a SubjectKeyIdentifier to name as the AuthorityKeyIdentifier.
    names_its_key: bool,
    /// The CA's notAfter, in Unix seconds.
    not_after: i64,
    pub duration: Duration,
}

impl fmt::Debug for Signer {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("not_after", &self.not_after)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The CA in `ca_cert` and its key in `ca_key` (PEM files, as
    /// `--cluster-signing-cert-file` and `--cluster-signing-key-file` name them), with the
    /// default duration.
    pub fn from_files(ca_cert: &Path, ca_key: &Path) -> Result<Signer, Error> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert = read(ca_cert)?;
        let key = read(ca_key)?;
        Signer::load(
            &cert,
            &key,
            &ca_cert.display().to_string(),
            &ca_key.display().to_string(),
        )
    }

    /// The CA from PEM text.
    pub fn from_pem(ca_cert: &str, ca_key: &str) -> Result<Signer, Error> {
        Signer::load(ca_cert.as_bytes(), ca_key.as_bytes(), "(given)", "(given)")
    }

    fn load(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> Result<Signer, Error> {
        let invalid = |reason: String| Error::CaCertificate {
            file: cert_name.to_owned(),
            reason,
        };
        let block = x509_parser::pem::Pem::iter_from_buffer(cert_pem)
            .filter_map(Result::ok)
            .find(|b| b.label == "CERTIFICATE")
            .ok_or_else(|| invalid("no PEM CERTIFICATE block".into()))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|err| invalid(err.to_string()))?;
        let key = key::parse(key_pem).map_err(|source| Error::CaKey {
            file: key_name.to_owned(),
            source,
        })?;
        if ca.public_key().raw != key.public_key_der().as_slice() {
            return Err(Error::KeyMismatch {
                cert: cert_name.to_owned(),
                key: key_name.to_owned(),
            });
        }
        let key_id = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let mut params = CertificateParams::default();
        params.distinguished_name = exact_name(ca.subject()).map_err(invalid)?;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.use_authority_key_identifier_extension = false;
        let names_its_key = key_id.is_some();
        if let Some(id) = key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id);
        }
        let issuer = params
            .self_signed(&key)
            .map_err(|err| invalid(err.to_string()))?;
        // Clients chain a certificate to its CA by comparing the issuer's bytes with the
        // CA's subject: the name rcgen writes must be the very same.
        let (_, written) = x509_parser::parse_x509_certificate(issuer.der())
            .map_err(|err| invalid(err.to_string()))?;
        if written.subject().as_raw() != ca.subject().as_raw() {
            return Err(invalid(
                "its subject cannot be written again byte for byte".into(),
            ));
        }
        Ok(Signer {
            issuer,
            key,
            names_its_key,
            not_after: ca.validity().not_after.timestamp(),
            duration: DEFAULT_DURATION,
        })
    }

    /// Upstream's `duration`: the requested lifetime, within [`MIN_TTL`] and `duration`.
    pub fn ttl(&self, expiration_seconds: Option<i32>) -> Duration {
        let Some(seconds) = expiration_seconds else {
            return self.duration;
        };
        let requested = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        if requested > self.duration {
            self.duration
        } else {
            requested.max(MIN_TTL)
        }
    }

    /// A PEM certificate for `request` with `usages`, valid from about `now`.
    pub fn sign(
        &self,
        request: &Request,
        usages: &[String],
        expiration_seconds: Option<i32>,
        now: Timestamp,
    ) -> Result<String, SignError> {
        let (not_before, not_after) = validity(
            now.as_second(),
            self.ttl(expiration_seconds),
            self.not_after,
        )?;
        let (key_usages, extended) = key_usages(usages)?;
        let public_key = RequestKey::from_der(&request.public_key_info)?;
        let mut serial = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut serial))
            .map_err(SignError::Random)?;

        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(serial.to_vec()));
        // rcgen's time type comes from a crate that is not ours to name: the epoch it
        // makes plus a duration is one. Times before 1970 do not occur here.
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let at = |seconds: i64| epoch + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        params.distinguished_name = go_name(&request.subject)?;
        params.subject_alt_names = sans(request)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = key_usages;
        params.extended_key_usages = extended;
        params.use_authority_key_identifier_extension = self.names_its_key;
        let cert = params
            .signed_by(&public_key, &self.issuer, &self.key)
            .map_err(SignError::Build)?;
        // The guarantee that matters most, checked on the result: the key certified is
        // the one the requester proved it holds.
        let (_, issued) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|err| SignError::Unsupported(err.to_string()))?;
        if issued.public_key().raw != request.public_key_info.as_slice() {
            return Err(SignError::Unsupported(
                "the public key cannot be written again byte for byte".into(),
            ));
        }
        Ok(cert.pem())
    }
}

/// Upstream's `PermissiveSigningPolicy` bounds, in Unix seconds: from [`BACKDATE`] before
/// `now`; to `now + ttl` for a short-lived certificate, `now + ttl - BACKDATE` otherwise;
/// never past the CA's `ca_not_after`.
pub fn validity(now: i64, ttl: Duration, ca_not_after: i64) -> Result<(i64, i64), SignError> {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let not_before = now.saturating_sub(secs(BACKDATE));
    let mut not_after = if ttl < SHORT {
        now.saturating_add(secs(ttl))
    } else {
        now.saturating_add(secs(ttl)).saturating_sub(secs(BACKDATE))
    };
    let expired = || SignError::Expired(Timestamp::from_second(ca_not_after).unwrap_or_default());
    if not_after >= ca_not_after {
        not_after = ca_not_after;
    }
    if not_before >= ca_not_after || now >= ca_not_after {
        return Err(expired());
    }
    Ok((not_before, not_after))
}

/// `keyUsagesFromStrings`: the key usages, and the extended ones in Go's order.
pub fn key_usages(
    usages: &[String],
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), SignError> {
    let mut basic = Vec::new();
    let mut extended: Vec<(u8, ExtendedKeyUsagePurpose)> = Vec::new();
    let mut unrecognized = Vec::new();
    for usage in usages {
        let key = match usage.as_str() {
            "signing" | "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
            "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
            "crl sign" => Some(KeyUsagePurpose::CrlSign),
            "encipher only" => Some(KeyUsagePurpose::EncipherOnly),
            "decipher only" => Some(KeyUsagePurpose::DecipherOnly),
            _ => None,
        };
        if let Some(key) = key {
            if !basic.contains(&key) {
                basic.push(key);
            }
            continue;
        }
        // Ranked as Go's x509.ExtKeyUsage constants, which it sorts by.
        let ext = match usage.as_str() {
            "any" => Some((0, ExtendedKeyUsagePurpose::Any)),
            "server auth" => Some((1, ExtendedKeyUsagePurpose::ServerAuth)),
            "client auth" => Some((2, ExtendedKeyUsagePurpose::ClientAuth)),
            "code signing" => Some((3, ExtendedKeyUsagePurpose::CodeSigning)),
            "email protection" | "s/mime" => Some((4, ExtendedKeyUsagePurpose::EmailProtection)),
            "ipsec end system" => Some((5, other(&[1, 3, 6, 1, 5, 5, 7, 3, 5]))),
            "ipsec tunnel" => Some((6, other(&[1, 3, 6, 1, 5, 5, 7, 3, 6]))),
            "ipsec user" => Some((7, other(&[1, 3, 6, 1, 5, 5, 7, 3, 7]))),
            "timestamping" => Some((8, ExtendedKeyUsagePurpose::TimeStamping)),
            "ocsp signing" => Some((9, ExtendedKeyUsagePurpose::OcspSigning)),
            "microsoft sgc" => Some((10, other(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3]))),
            "netscape sgc" => Some((11, other(&[2, 16, 840, 1, 113730, 4, 1]))),
            _ => None,
        };
        match ext {
            Some(ext) => extended.push(ext),
            None => unrecognized.push(usage.clone()),
        }
    }
    if !unrecognized.is_empty() {
        return Err(SignError::Usages(unrecognized));
    }
    extended.sort_by_key(|(rank, _)| *rank);
    extended.dedup_by_key(|(rank, _)| *rank);
    Ok((basic, extended.into_iter().map(|(_, e)| e).collect()))
}

fn other(oid: &[u64]) -> ExtendedKeyUsagePurpose {
    ExtendedKeyUsagePurpose::Other(oid.to_vec())
}

/// The subject as Go marshals a `pkix.Name` again (`ToRDNSequence`): C, ST, L, street,
/// postal code, O, OU, CN, serial number, each a PrintableString when it can be, else
/// UTF8String. Go puts repeated values of one type in one multi-valued RDN, which rcgen
/// cannot write: such subjects are refused rather than changed.
fn go_name(subject: &Subject) -> Result<DistinguishedName, SignError> {
    let mut name = DistinguishedName::new();
    let lists: [(&str, DnType, &Vec<String>); 7] = [
        ("C", DnType::CountryName, &subject.country),
        ("ST", DnType::StateOrProvinceName, &subject.province),
        ("L", DnType::LocalityName, &subject.locality),
        (
            "STREET",
            DnType::CustomDnType(vec![2, 5, 4, 9]),
            &subject.street_address,
        ),
        (
            "POSTALCODE",
            DnType::CustomDnType(vec![2, 5, 4, 17]),
            &subject.postal_code,
        ),
        ("O", DnType::OrganizationName, &subject.organization),
        (
            "OU",
            DnType::OrganizationalUnitName,
            &subject.organizational_unit,
        ),
    ];
    for (label, kind, values) in lists {
        match values.as_slice() {
            [] => {}
            [value] => name.push(kind, go_string(value)),
            _ => {
                return Err(SignError::Unsupported(format!(
                    "a subject with more than one {label}"
                )));
            }
        }
    }
    if !subject.common_name.is_empty() {
        name.push(DnType::CommonName, go_string(&subject.common_name));
    }
    if !subject.serial_number.is_empty() {
        name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            go_string(&subject.serial_number),
        );
    }
    Ok(name)
}

/// Go's asn1 string choice: PrintableString if every byte is in its set, else UTF8String.
fn go_string(value: &str) -> DnValue {
    let printable = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
    match rcgen::PrintableString::try_from(value) {
        Ok(s) if printable => DnValue::PrintableString(s),
        _ => DnValue::Utf8String(value.to_owned()),
    }
}

/// The CA's subject exactly as it is: one attribute per RDN, each type once, the string
/// types kept.
fn exact_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut out = DistinguishedName::new();
    let mut seen = Vec::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("its subject has a multi-valued RDN".into());
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .map(Iterator::collect)
            .ok_or("its subject has an attribute type too large")?;
        if seen.contains(&oid) {
            return Err(format!(
                "its subject has {} twice",
                attribute.attr_type().to_id_string()
            ));
        }
        seen.push(oid.clone());
        let value = attribute.attr_value();
        let text = || std::str::from_utf8(value.data).map_err(|e| e.to_string());
        let bad = |e: rcgen::Error| e.to_string();
        let dn_value = match value.header.tag() {
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => DnValue::BmpString(
                rcgen::BmpString::from_utf16be(value.data.to_vec()).map_err(bad)?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::UniversalString::from_utf32be(value.data.to_vec()).map_err(bad)?,
            ),
            other => return Err(format!("its subject has a value of type {other}")),
        };
        out.push(DnType::from_oid(&oid), dn_value);
    }
    Ok(out)
}

/// The request's SANs in Go's order: DNS names, e-mail addresses, IPs, URIs.
fn sans(request: &Request) -> Result<Vec<SanType>, SignError> {
    let ia5 = |s: &String| {
        rcgen::Ia5String::try_from(s.as_str()).map_err(|e| SignError::Unsupported(e.to_string()))
    };
    let mut out = Vec::new();
    for dns in &request.dns_names {
        out.push(SanType::DnsName(ia5(dns)?));
    }
    for email in &request.email_addresses {
        out.push(SanType::Rfc822Name(ia5(email)?));
    }
    out.extend(
        request
            .ip_addresses
            .iter()
            .map(|ip: &IpAddr| SanType::IpAddress(*ip)),
    );
    for uri in &request.uris {
        out.push(SanType::URI(ia5(uri)?));
    }
    Ok(out)
}

/// The requester's public key, for rcgen to write as the certificate's
/// SubjectPublicKeyInfo.
struct RequestKey {
    algorithm: &'static SignatureAlgorithm,
    key: Vec<u8>,
}

impl RequestKey {
    fn from_der(spki: &[u8]) -> Result<RequestKey, SignError> {
        let (_, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| SignError::Unsupported(format!("the public key: {e}")))?;
        let algorithm_oid = info.algorithm.algorithm.to_id_string();
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        // rcgen writes each key kind's AlgorithmIdentifier from the signature algorithm
        // that uses it; the result is compared with the request's after signing.
        let algorithm: &'static SignatureAlgorithm =
            match (algorithm_oid.as_str(), curve.as_deref()) {
                ("1.2.840.113549.1.1.1", _) => &rcgen::PKCS_RSA_SHA256,
                ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                }
                ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => &rcgen::PKCS_ECDSA_P384_SHA384,
                ("1.3.101.112", _) => &rcgen::PKCS_ED25519,
                (oid, curve) => {
                    return Err(SignError::Unsupported(format!(
                        "a public key of algorithm {oid}{}",
                        curve.map(|c| format!(" on curve {c}")).unwrap_or_default()
                    )));
                }
            };
        Ok(RequestKey {
            algorithm,
            key: info.subject_public_key.data.to_vec(),
        })
    }
}

impl PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.algorithm
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{BasicConstraints, DnType};
    use x509_parser::certificate::X509Certificate;

    use super::super::request::{self, tests::csr_pem};
    use super::*;

    /// A CA: its certificate PEM and key.
    pub(crate) fn ca(key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            DnValue::PrintableString("kubernetes-ca".try_into().expect("printable")),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.self_signed(key).expect("ca").pem()
    }

    pub(crate) fn signer() -> (Signer, String) {
        let key = KeyPair::generate().expect("key");
        let ca = ca(&key);
        (
            Signer::from_pem(&ca, &key.serialize_pem()).expect("signer"),
            ca,
        )
    }

    fn node_request(node: &str, sans: Vec<SanType>) -> (Request, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let cn = format!("system:node:{node}");
        let pem = csr_pem(
            &[
                (DnType::OrganizationName, "system:nodes"),
                (DnType::CommonName, cn.as_str()),
            ],
            sans,
            &key,
        );
        (request::parse(pem.as_bytes()).expect("request"), key)
    }

    fn usages(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .expect("block")
            .expect("pem")
            .contents
    }

    fn key_id(cert: &X509Certificate<'_>, authority: bool) -> Option<Vec<u8>> {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                ParsedExtension::SubjectKeyIdentifier(ski) if !authority => Some(ski.0.to_vec()),
                _ => None,
            })
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_kubelet_client_certificate_is_what_upstream_issues() {
        let (signer, ca_pem) = signer();
        let (request, key) = node_request("n1", vec![]);
        let now = Timestamp::from_second(NOW).expect("time");
        let pem = signer
            .sign(
                &request,
                &usages(&["digital signature", "client auth"]),
                None,
                now,
            )
            .expect("signed");
        let cert_der = der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
        let ca_der = der(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");

        let cn: Vec<_> = cert.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().expect("cn"), "system:node:n1");
        assert_eq!(
            cn[0].attr_value().header.tag(),
            Tag::PrintableString,
            "as Go writes it"
        );
        let o: Vec<_> = cert.subject().iter_organization().collect();
        assert_eq!(o[0].as_str().expect("o"), "system:nodes");
        assert_eq!(
            cert.issuer().as_raw(),
            ca.subject().as_raw(),
            "chains by name"
        );
        assert!(
            cert.verify_signature(Some(ca.public_key())).is_ok(),
            "signed by the CA key"
        );
        assert_eq!(
            key_id(&cert, true),
            key_id(&ca, false),
            "AKI is the CA's SKI"
        );
        assert!(key_id(&ca, false).is_some());
        assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());

        assert_eq!(
            cert.validity().not_before.timestamp(),
            NOW - 300,
            "backdated 5 minutes"
        );
        let year = 365 * 24 * 3600;
        assert_eq!(cert.validity().not_after.timestamp(), NOW + year - 300);

        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && !ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && !bc.value.ca);
        assert!(cert.subject_alternative_name().expect("san").is_none());
        assert!(cert.raw_serial().len() <= 17);
    }

    #[test]
    fn a_serving_certificate_keeps_its_names_and_usages() {
        let (signer, _) = signer();
        let (request, _) = node_request(
            "n1",
            vec![
                SanType::DnsName("n1".try_into().expect("ia5")),
                SanType::IpAddress("192.168.1.5".parse().expect("ip")),
            ],
        );
        let now = Timestamp::from_second(NOW).expect("time");
        let list = usages(&["key encipherment", "digital signature", "server auth"]);
        let pem = signer
            .sign(&request, &list, Some(3600), now)
            .expect("signed");
        let cert_der = der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
        let sans = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value;
        use x509_parser::extensions::GeneralName;
        assert!(matches!(
            sans.general_names.as_slice(),
            [
                GeneralName::DNSName("n1"),
                GeneralName::IPAddress([192, 168, 1, 5])
            ]
        ));
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            NOW + 3600,
            "short-lived: the end is not moved back"
        );
    }

    #[test]
    fn lifetimes_follow_the_request_within_bounds() {
        let (mut signer, _) = signer();
        assert_eq!(signer.ttl(None), DEFAULT_DURATION);
        assert_eq!(signer.ttl(Some(60)), MIN_TTL);
        assert_eq!(signer.ttl(Some(-5)), MIN_TTL);
        assert_eq!(signer.ttl(Some(7200)), Duration::from_secs(7200));
        assert_eq!(signer.ttl(Some(i32::MAX)), DEFAULT_DURATION);
        signer.duration = Duration::from_secs(3600);
        assert_eq!(signer.ttl(None), Duration::from_secs(3600));
        assert_eq!(signer.ttl(Some(7200)), Duration::from_secs(3600));
    }

    #[test]
    fn validity_is_backdated_and_bounded_by_the_ca() {
        let hour = Duration::from_secs(3600);
        type Case = (&'static str, Duration, i64, Option<(i64, i64)>);
        let cases: [Case; 5] = [
            (
                "short",
                hour,
                NOW + 10 * 3600,
                Some((NOW - 300, NOW + 3600)),
            ),
            (
                "at the horizon",
                SHORT,
                NOW + 10 * 3600,
                Some((NOW - 300, NOW + 8 * 3600 - 300)),
            ),
            (
                "past the CA",
                20 * hour,
                NOW + 10 * 3600,
                Some((NOW - 300, NOW + 10 * 3600)),
            ),
            ("CA expired", hour, NOW, None),
            ("CA just expired", hour, NOW - 1, None),
        ];
        for (name, ttl, ca_not_after, want) in cases {
            let got = validity(NOW, ttl, ca_not_after).ok();
            assert_eq!(got, want, "{name}");
        }
        assert!(matches!(
            validity(NOW, hour, NOW),
            Err(SignError::Expired(_))
        ));
    }

    #[test]
    fn usages_map_to_key_usages_in_go_order() {
        let (basic, extended) = key_usages(&usages(&[
            "client auth",
            "signing",
            "digital signature",
            "server auth",
            "ipsec user",
            "any",
        ]))
        .expect("known");
        assert_eq!(basic, vec![KeyUsagePurpose::DigitalSignature]);
        assert_eq!(
            extended,
            vec![
                ExtendedKeyUsagePurpose::Any,
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7]),
            ]
        );
        let err = key_usages(&usages(&["client auth", "flying"])).expect_err("unknown");
        assert_eq!(err.to_string(), r#"unrecognized usage values: ["flying"]"#);
        assert!(err.is_permanent());
    }

    #[test]
    fn subjects_are_written_as_go_writes_them_or_refused() {
        let subject = Subject {
            organization: vec!["system:masters".into()],
            common_name: "ad*min é".into(),
            country: vec!["DE".into()],
            ..Subject::default()
        };
        let name = go_name(&subject).expect("one value each");
        let written: Vec<(DnType, DnValue)> =
            name.iter().map(|(t, v)| (t.clone(), v.clone())).collect();
        assert_eq!(
            written,
            vec![
                (
                    DnType::CountryName,
                    DnValue::PrintableString("DE".try_into().expect("p"))
                ),
                (
                    DnType::OrganizationName,
                    DnValue::PrintableString("system:masters".try_into().expect("p"))
                ),
                (DnType::CommonName, DnValue::Utf8String("ad*min é".into())),
            ]
        );
        let groups = Subject {
            organization: vec!["a".into(), "b".into()],
            ..Subject::default()
        };
        let err = go_name(&groups).expect_err("two O");
        assert!(err.is_permanent());
        assert_eq!(
            err.to_string(),
            "this signer cannot issue it: a subject with more than one O"
        );
    }

    #[test]
    fn a_kubeadm_style_rsa_ca_signs_too() {
        let key = key::parse(key::tests::RSA_PKCS1.as_bytes()).expect("rsa");
        let ca_pem = ca(&key);
        let signer = Signer::from_pem(&ca_pem, key::tests::RSA_PKCS1).expect("signer");
        let (request, _) = node_request("n2", vec![]);
        let pem = signer
            .sign(
                &request,
                &usages(&["digital signature", "client auth"]),
                None,
                Timestamp::now(),
            )
            .expect("signed");
        let cert_der = der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
        let ca_der = der(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11",
            "sha256WithRSAEncryption"
        );
    }

    #[test]
    fn a_ca_and_a_foreign_key_or_missing_files_are_refused() {
        let key = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        let err = Signer::from_pem(&ca(&key), &other.serialize_pem()).expect_err("mismatch");
        assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
        let err = Signer::from_pem("nothing", &key.serialize_pem()).expect_err("no cert");
        assert!(matches!(err, Error::CaCertificate { .. }), "{err:?}");
        let missing = Path::new("/nonexistent/ca.crt");
        let err = Signer::from_files(missing, missing).expect_err("missing");
        assert_eq!(err.to_string(), "reading /nonexistent/ca.crt");
        assert!(
            !format!("{:?}", signer().0).contains("key:"),
            "the key stays out of Debug"
        );
    }
}
