//! Labels: `--node-labels` parsing and the syntax rules for label keys, values and names.
//!
//! The restrictions mirror the kubelet's: labels in the `kubernetes.io` and `k8s.io`
//! namespaces are refused unless the NodeRestriction admission plugin would let a node set
//! them itself, so that registration never fails later at the API server.

use std::collections::BTreeMap;

/// Labels a node may set on itself in the kubernetes.io / k8s.io namespaces.
const ALLOWED_KUBERNETES_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/instance-type",
];

/// Namespaces in kubernetes.io whose labels a node may set freely.
const ALLOWED_KUBERNETES_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Parses `key=value,key2=value2`.
pub fn parse_node_labels(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut refused = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        validate_label_key(key)?;
        validate_label_value(value).map_err(|reason| format!("label {key}: {reason}"))?;
        if !allowed_for_node(key) {
            refused.push(key.to_owned());
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    if !refused.is_empty() {
        return Err(format!(
            "labels in the kubernetes.io or k8s.io namespace must begin with an allowed prefix ({}) \
             or be one of the allowed labels; refused: {}",
            ALLOWED_KUBERNETES_NAMESPACES.join(", "),
            refused.join(", ")
        ));
    }
    Ok(labels)
}

fn allowed_for_node(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let kubernetes = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if !kubernetes("kubernetes.io") && !kubernetes("k8s.io") {
        return true;
    }
    ALLOWED_KUBERNETES_LABELS.contains(&key)
        || ALLOWED_KUBERNETES_NAMESPACES
            .iter()
            .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")))
}

/// A qualified name: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        validate_dns_subdomain(prefix)
            .map_err(|reason| format!("label key {key:?}: prefix {reason}"))?;
    }
    validate_name_part(name).map_err(|reason| format!("label key {key:?}: {reason}"))
}

/// A label value: empty, or a name part as in a key.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name_part(value).map_err(|reason| format!("value {value:?}: {reason}"))
}

fn validate_name_part(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !name.chars().all(ok_char) || !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err("must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric".into());
    }
    Ok(())
}

/// A DNS subdomain (RFC 1123): at most 253 characters of lower-case alphanumerics, `-` and
/// `.`, each dot-separated label starting and ending alphanumeric. Node names are these.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(
            "must be a lower-case RFC 1123 subdomain (a-z, 0-9, '-', '.'; at most 253 characters)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_ignores_empty_items() {
        let labels = parse_node_labels("a=1, example.com/b=two,,node.kubernetes.io/pool=x,c=")
            .expect("valid");
        assert_eq!(labels.len(), 4);
        assert_eq!(labels["example.com/b"], "two");
        assert_eq!(labels["c"], "");
    }

    #[test]
    fn kubernetes_namespace_is_limited_to_what_a_node_may_set() {
        for allowed in [
            "topology.kubernetes.io/zone=z1",
            "kubelet.kubernetes.io/x=y",
            "sub.node.kubernetes.io/x=y",
            "kubernetes.io/hostname=h",
        ] {
            parse_node_labels(allowed).unwrap_or_else(|err| panic!("{allowed}: {err}"));
        }
        for refused in [
            "node-role.kubernetes.io/master=",
            "kubernetes.io/role=x",
            "foo.k8s.io/a=b",
        ] {
            let err = parse_node_labels(refused).expect_err(refused);
            assert!(err.contains("refused"), "{refused}: {err}");
        }
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "noequals",
            "-a=b",
            "a=-b",
            "UPPER.example/x=y",
            "a=b c",
            &format!("a={}", "x".repeat(64)),
        ] {
            assert!(parse_node_labels(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn dns_subdomains() {
        assert!(validate_dns_subdomain("node-1.example.com").is_ok());
        for bad in ["", "Node", "a..b", "-a", "a_b", &"a".repeat(254)] {
            assert!(validate_dns_subdomain(bad).is_err(), "{bad:?}");
        }
    }
}
