//! The CA's private key: a PEM file in any of the three forms clusters keep it in — PKCS#8
//! (`PRIVATE KEY`, openssl genpkey), PKCS#1 (`RSA PRIVATE KEY`, kubeadm's default CA key) or
//! SEC1 (`EC PRIVATE KEY`, openssl ecparam) — made a signing key.
//!
//! Invariant: the key material is never logged or put in an error. ring (under rcgen) reads
//! only PKCS#8, so the other two are wrapped in a PKCS#8 envelope first, which is what Go's
//! `keyutil.ParsePrivateKeyPEM` accepts without one.

use rcgen::KeyPair;

/// Why the key file cannot be used; never carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM private key block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey,
    #[error("the EC key names no curve, or one other than P-256 and P-384")]
    Curve,
    #[error("the key is not one rcgen signs with (RSA, ECDSA P-256/P-384, Ed25519): {0}")]
    Unsupported(String),
}

// DER encodings (tag, length, value) of the AlgorithmIdentifier parts PKCS#8 needs.
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const NULL: &[u8] = &[0x05, 0x00];
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The signing key in `pem`.
pub fn parse(pem: &[u8]) -> Result<KeyPair, KeyError> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|b| {
            matches!(
                b.label.as_str(),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
            )
        })
        .ok_or(KeyError::NoKey)?;
    let pkcs8 = match block.label.as_str() {
        "RSA PRIVATE KEY" => pkcs8(&[RSA_ENCRYPTION, NULL].concat(), &block.contents),
        "EC PRIVATE KEY" => {
            let curve = sec1_curve(&block.contents).ok_or(KeyError::Curve)?;
            pkcs8(&[EC_PUBLIC_KEY, curve].concat(), &block.contents)
        }
        _ => block.contents,
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|err| KeyError::Unsupported(err.to_string()))
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let body = [&version[..], &tlv(0x30, algorithm), &tlv(0x04, key)].concat();
    tlv(0x30, &body)
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// One TLV at the start of `input`: (tag, value, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > std::mem::size_of::<usize>() || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The named curve in a SEC1 `ECPrivateKey`'s `[0] parameters`, if P-256 or P-384.
fn sec1_curve(der: &[u8]) -> Option<&'static [u8]> {
    let (tag, mut fields, _) = read_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    while !fields.is_empty() {
        let (tag, value, rest) = read_tlv(fields)?;
        if tag == 0xa0 {
            return [P256, P384].into_iter().find(|curve| *curve == value);
        }
        fields = rest;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test-only keys, made with `openssl genrsa -traditional 2048` and
    /// `openssl ecparam -name prime256v1 -genkey -noout`.
    pub(crate) const RSA_PKCS1: &str = include_str!("testdata/rsa-pkcs1.pem");
    pub(crate) const EC_SEC1: &str = include_str!("testdata/ec-sec1.pem");

    #[test]
    fn the_three_key_forms_are_read() {
        let rsa = parse(RSA_PKCS1.as_bytes()).expect("pkcs1");
        assert_eq!(rsa.algorithm(), &rcgen::PKCS_RSA_SHA256);
        let ec = parse(EC_SEC1.as_bytes()).expect("sec1");
        assert_eq!(ec.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let generated = KeyPair::generate().expect("key");
        let again = parse(generated.serialize_pem().as_bytes()).expect("pkcs8");
        assert_eq!(again.public_key_der(), generated.public_key_der());
    }

    #[test]
    fn what_is_not_a_key_is_said_so() {
        assert_eq!(parse(b"nothing").err(), Some(KeyError::NoKey));
        let cert_only = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(parse(cert_only.as_bytes()).err(), Some(KeyError::NoKey));
        let broken = "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(parse(broken.as_bytes()).err(), Some(KeyError::Curve));
        let junk = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse(junk.as_bytes()),
            Err(KeyError::Unsupported(_))
        ));
    }

    #[test]
    fn lengths_use_the_long_form_past_127_bytes() {
        assert_eq!(tlv(0x04, &[7; 3]), vec![0x04, 3, 7, 7, 7]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, value, rest) = read_tlv(&long).expect("tlv");
        assert_eq!((tag, value.len(), rest.len()), (0x04, 300, 0));
        assert_eq!(read_tlv(&[0x04, 0x05, 1]), None, "truncated");
    }
}
