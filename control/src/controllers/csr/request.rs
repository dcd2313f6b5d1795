//! Certificate requests: the PEM PKCS#10 request of a CertificateSigningRequest, parsed and
//! its self-signature verified, reduced to what the approver and the signers look at and
//! what goes into a certificate — the subject as Go's `pkix.Name` keeps it, the subject
//! alternative names, the public key.
//!
//! Invariants: a [`Request`] exists only for a request whose signature verifies with its own
//! key (the proof that the requester holds the private key); the subject keeps only the
//! attribute types Go's `pkix.Name` knows, as upstream's signer re-encodes `cr.Subject`;
//! unknown extensions are ignored, as Go ignores them. Upstream: `capihelper.ParseCSR`
//! (`pkg/apis/certificates/helpers.go`) and `x509.ParseCertificateRequest` +
//! `CheckSignature` in `pkg/controller/certificates/authority/authority.go`.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Why a request cannot be used; the spec is immutable, so none of these heals by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Upstream's words.
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotPem,
    #[error("the request is not a PKCS#10 certification request: {0}")]
    Der(String),
    #[error("the request's signature does not verify with its own key: {0}")]
    Signature(String),
    #[error("subject attribute {oid} is not a string Go's x509 reads")]
    SubjectString { oid: String },
    #[error("the subject alternative names cannot be parsed: {0}")]
    SubjectAltNames(String),
}

/// A subject as Go's `pkix.Name` holds it after `FillFromRDNSequence`: the attribute types
/// it knows, repeated ones as lists, the common name and serial number the last given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub organizational_unit: Vec<String>,
    pub locality: Vec<String>,
    pub province: Vec<String>,
    pub street_address: Vec<String>,
    pub postal_code: Vec<String>,
    pub serial_number: String,
    pub common_name: String,
}

/// A parsed, verified certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subject: Subject,
    pub dns_names: Vec<String>,
    pub email_addresses: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub uris: Vec<String>,
    /// The SubjectPublicKeyInfo, DER, as the request carries it.
    pub public_key_info: Vec<u8>,
}

impl Request {
    /// Whether the request names any subject alternative name.
    pub fn has_sans(&self) -> bool {
        !(self.dns_names.is_empty()
            && self.email_addresses.is_empty()
            && self.ip_addresses.is_empty()
            && self.uris.is_empty())
    }
}

// X.520 attribute types, as Go's `crypto/x509/pkix` names them.
const COUNTRY: &[u64] = &[2, 5, 4, 6];
const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
const ORGANIZATIONAL_UNIT: &[u64] = &[2, 5, 4, 11];
const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
const LOCALITY: &[u64] = &[2, 5, 4, 7];
const PROVINCE: &[u64] = &[2, 5, 4, 8];
const STREET_ADDRESS: &[u64] = &[2, 5, 4, 9];
const POSTAL_CODE: &[u64] = &[2, 5, 4, 17];

/// Parses `spec.request` (PEM) and verifies its signature.
pub fn parse(pem: &[u8]) -> Result<Request, Malformed> {
    // Go's pem.Decode takes the first block, whatever precedes it.
    let block = x509_parser::pem::Pem::iter_from_buffer(pem)
        .next()
        .and_then(Result::ok)
        .ok_or(Malformed::NotPem)?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(Malformed::NotPem);
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|err| Malformed::Der(err.to_string()))?;
    csr.verify_signature()
        .map_err(|err| Malformed::Signature(err.to_string()))?;
    let info = &csr.certification_request_info;
    let subject = subject(&info.subject)?;
    let mut request = Request {
        subject,
        dns_names: Vec::new(),
        email_addresses: Vec::new(),
        ip_addresses: Vec::new(),
        uris: Vec::new(),
        public_key_info: info.subject_pki.raw.to_vec(),
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    add_san(&mut request, name)?;
                }
            }
            // Go reads the names of a SAN extension it cannot parse as an error.
            ParsedExtension::ParseError { error } => {
                return Err(Malformed::Der(error.to_string()));
            }
            _ => {}
        }
    }
    Ok(request)
}

/// Go's `parseSANExtension`: e-mail, DNS, URI and IP names; the other kinds are skipped.
fn add_san(request: &mut Request, name: &GeneralName<'_>) -> Result<(), Malformed> {
    let ia5 = |s: &str| {
        if s.is_ascii() {
            Ok(s.to_owned())
        } else {
            Err(Malformed::SubjectAltNames(format!(
                "{s:?} is not an IA5String"
            )))
        }
    };
    match name {
        GeneralName::DNSName(dns) => request.dns_names.push(ia5(dns)?),
        GeneralName::RFC822Name(email) => request.email_addresses.push(ia5(email)?),
        GeneralName::URI(uri) => request.uris.push(ia5(uri)?),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()),
                n => {
                    return Err(Malformed::SubjectAltNames(format!(
                        "an IP address of {n} bytes"
                    )));
                }
            };
            request.ip_addresses.push(ip);
        }
        _ => {}
    }
    Ok(())
}

/// The subject as `pkix.Name.FillFromRDNSequence` reads it.
fn subject(name: &X509Name<'_>) -> Result<Subject, Malformed> {
    let mut subject = Subject::default();
    for attribute in name.iter_attributes() {
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .map(Iterator::collect)
            .unwrap_or_default();
        let known = [
            COUNTRY,
            ORGANIZATION,
            ORGANIZATIONAL_UNIT,
            COMMON_NAME,
            SERIAL_NUMBER,
            LOCALITY,
            PROVINCE,
            STREET_ADDRESS,
            POSTAL_CODE,
        ];
        if !known.contains(&oid.as_slice()) {
            // Go keeps these in Names only; the name it marshals again leaves them out.
            continue;
        }
        let value = attribute.attr_value();
        let text = string_value(value.header.tag(), value.data).ok_or_else(|| {
            Malformed::SubjectString {
                oid: attribute.attr_type().to_id_string(),
            }
        })?;
        match oid.as_slice() {
            COUNTRY => subject.country.push(text),
            ORGANIZATION => subject.organization.push(text),
            ORGANIZATIONAL_UNIT => subject.organizational_unit.push(text),
            LOCALITY => subject.locality.push(text),
            PROVINCE => subject.province.push(text),
            STREET_ADDRESS => subject.street_address.push(text),
            POSTAL_CODE => subject.postal_code.push(text),
            SERIAL_NUMBER => subject.serial_number = text,
            _ => subject.common_name = text,
        }
    }
    Ok(subject)
}

/// Go's `parseASN1String`: the string types it reads, as text.
fn string_value(tag: Tag, data: &[u8]) -> Option<String> {
    match tag {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::NumericString => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        // Go takes T61String bytes as they are, one character each.
        Tag::T61String => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    /// A PEM request for `subject` (type, value pairs) and `sans`, signed by `key`.
    pub(crate) fn csr_pem(subject: &[(DnType, &str)], sans: Vec<SanType>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = sans;
        params
            .serialize_request(key)
            .expect("request")
            .pem()
            .expect("pem")
    }

    #[test]
    fn a_node_request_is_read_with_its_names_and_key() {
        let key = KeyPair::generate().expect("key");
        let pem = csr_pem(
            &[
                (DnType::OrganizationName, "system:nodes"),
                (DnType::CommonName, "system:node:n1"),
                (
                    DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
                    "x@y",
                ),
            ],
            vec![
                SanType::DnsName("n1".try_into().expect("ia5")),
                SanType::IpAddress("10.0.0.1".parse().expect("ip")),
            ],
            &key,
        );
        let request = parse(pem.as_bytes()).expect("valid");
        assert_eq!(request.subject.common_name, "system:node:n1");
        assert_eq!(request.subject.organization, vec!["system:nodes"]);
        assert_eq!(request.dns_names, vec!["n1"]);
        assert_eq!(
            request.ip_addresses,
            vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert!(request.email_addresses.is_empty() && request.uris.is_empty());
        assert!(request.has_sans());
        assert_eq!(request.public_key_info, key.public_key_der());
    }

    #[test]
    fn what_is_not_a_signed_request_is_malformed() {
        let key = KeyPair::generate().expect("key");
        let pem = csr_pem(&[(DnType::CommonName, "a")], vec![], &key);
        assert_eq!(parse(b"hello"), Err(Malformed::NotPem));
        let cert = pem
            .replace("CERTIFICATE REQUEST", "CERTIFICATE")
            .into_bytes();
        assert_eq!(parse(&cert), Err(Malformed::NotPem));

        // Flip one bit of the signature (the last byte of the DER).
        let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .expect("block")
            .expect("pem");
        let mut der = block.contents.clone();
        let last = der.len() - 1;
        der[last] ^= 1;
        let forged = pem_of("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            parse(forged.as_bytes()),
            Err(Malformed::Signature(_))
        ));
        let garbage = pem_of("CERTIFICATE REQUEST", b"\x30\x03\x02\x01");
        assert!(matches!(parse(garbage.as_bytes()), Err(Malformed::Der(_))));
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn go_string_types_are_read_and_others_refused() {
        assert_eq!(
            string_value(Tag::BmpString, &[0, b'h', 0, b'i']),
            Some("hi".into())
        );
        assert_eq!(string_value(Tag::T61String, &[0xe9]), Some("é".into()));
        assert_eq!(string_value(Tag::Integer, b"1"), None);
        assert_eq!(string_value(Tag::BmpString, &[0]), None);
    }
}
