//! Trust bundles for `clusterTrustBundle` projections: the certificates of one
//! ClusterTrustBundle by name, or of every one with a signer name that a label selector picks,
//! joined into one PEM file — as upstream's kubelet (`pkg/kubelet/clustertrustbundle`).
//!
//! Invariants: the file holds each certificate once (bundles may share some), as PEM
//! `CERTIFICATE` blocks in a stable order (sorted by their DER bytes); a missing selector
//! matches no bundle (an empty one matches all, as a label selector does); nothing found is an
//! error unless the projection is optional, when the file is empty.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::ClusterTrustBundleProjection;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::node::runtime::error_chain;

/// Why a projection has no file; the text is what the FailedMount event says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ClusterTrustBundle projection requires either name or signerName to be set")]
    NoQuery,
    #[error("while getting ClusterTrustBundle {0}: not found")]
    NotFound(String),
    #[error("combination of signerName and labelSelector matched zero ClusterTrustBundles")]
    NoneMatched,
    #[error("invalid labelSelector: {0}")]
    Selector(String),
    #[error("reading ClusterTrustBundles: {0}")]
    Api(String),
}

/// The PEM file for one projection.
pub async fn fetch(
    client: &Client,
    projection: &ClusterTrustBundleProjection,
) -> Result<Vec<u8>, Error> {
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    let optional = projection.optional == Some(true);
    let failed = |err: kube::Error| Error::Api(error_chain(&err));
    let bundles = if let Some(name) = &projection.name {
        match api.get_opt(name).await.map_err(failed)? {
            Some(bundle) => vec![bundle],
            None if optional => return Ok(Vec::new()),
            None => return Err(Error::NotFound(name.clone())),
        }
    } else if let Some(signer) = projection.signer_name.as_deref().filter(|s| !s.is_empty()) {
        let found = match selector_query(projection.label_selector.as_ref())? {
            None => Vec::new(),
            Some(labels) => {
                let params = ListParams::default().labels(&labels);
                api.list(&params).await.map_err(failed)?.items
            }
        };
        let matched: Vec<ClusterTrustBundle> = found
            .into_iter()
            .filter(|b| b.spec.signer_name.as_deref() == Some(signer))
            .collect();
        if matched.is_empty() {
            return if optional {
                Ok(Vec::new())
            } else {
                Err(Error::NoneMatched)
            };
        }
        matched
    } else {
        return Err(Error::NoQuery);
    };
    Ok(normalize(
        bundles.iter().map(|b| b.spec.trust_bundle.as_str()),
    ))
}

/// A label selector as a list query: None for no selector (it matches nothing), `""` for an
/// empty one (everything).
pub fn selector_query(selector: Option<&LabelSelector>) -> Result<Option<String>, Error> {
    let Some(selector) = selector else {
        return Ok(None);
    };
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => return Err(Error::Selector(format!("unknown operator {other:?}"))),
        });
    }
    Ok(Some(terms.join(",")))
}

/// Every certificate of the bundles once, as PEM, in DER order.
pub fn normalize<'a>(bundles: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let certificates: BTreeSet<Vec<u8>> = bundles.into_iter().flat_map(pem_blocks).collect();
    let mut out = String::new();
    for der in certificates {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// The contents of each PEM block of `text` (of any type, as upstream reads them); text
/// between blocks and blocks that do not decode are skipped.
fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") && line.ends_with("-----") {
            body = Some(String::new());
        } else if line.starts_with("-----END ") && line.ends_with("-----") {
            if let Some(b) = body.take()
                && let Ok(der) = STANDARD.decode(b)
            {
                blocks.push(der);
            }
        } else if let Some(b) = body.as_mut() {
            // Headers (`Proc-Type: …`) are not base64.
            if !line.contains(':') {
                b.push_str(line);
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn pem(der: &[u8]) -> String {
        String::from_utf8(normalize([format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        )
        .as_str()]))
        .expect("utf-8")
    }

    #[test]
    fn bundles_join_into_each_certificate_once_in_a_stable_order() {
        let a = pem(b"certificate a");
        let b = pem(&[7u8; 100]);
        let both = format!("junk\n{b}between\n{a}");
        let joined = normalize([both.as_str(), a.as_str()]);
        let text = String::from_utf8(joined).expect("utf-8");
        assert_eq!(text, format!("{b}{a}"), "deduplicated, sorted by DER");
        // Long bodies wrap at 64 columns, as Go's encoder writes them.
        assert!(b.lines().all(|l| l.len() <= 64));
        assert_eq!(normalize(["no pem here"]), Vec::<u8>::new());
    }

    #[test]
    fn a_missing_selector_matches_nothing_and_an_empty_one_everything() {
        assert_eq!(selector_query(None), Ok(None));
        assert_eq!(
            selector_query(Some(&LabelSelector::default())),
            Ok(Some(String::new()))
        );
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "signer.alive".to_owned(),
                "true".to_owned(),
            )])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert_eq!(
            selector_query(Some(&selector)),
            Ok(Some("signer.alive=true,tier in (a,b)".into()))
        );
    }
}
