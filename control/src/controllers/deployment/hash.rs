//! Pod template hash: the `pod-template-hash` label that ties a ReplicaSet (and its pods) to
//! one version of a Deployment's template, and names it `<deployment>-<hash>`.
//!
//! Invariants: the hash is a pure function of the template and the Deployment's
//! collisionCount — FNV-32a, then the decimal number spelled in upstream's `SafeEncodeString`
//! alphabet (no vowels, no 0/1/3), so names look like upstream's — and is the same across
//! restarts. Upstream hashes a spew dump of the Go struct, which Rust cannot reproduce byte
//! for byte; this hashes canonical JSON (keys sorted, nulls and empty lists dropped). Nothing
//! relies on the two agreeing: the new ReplicaSet is found by comparing templates, not
//! hashes. Upstream: `pkg/controller/controller_utils.go` (`ComputeHash`),
//! `k8s.io/apimachinery/pkg/util/rand` (`SafeEncodeString`) and
//! `pkg/controller/deployment/util/deployment_util.go` (`EqualIgnoreHash`).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// Upstream's `DefaultDeploymentUniqueLabelKey`.
pub const LABEL: &str = "pod-template-hash";
/// Upstream's `rand.alphanums`: characters that cannot spell words.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Upstream's `SafeEncodeString`: each byte mapped into [`ALPHANUMS`].
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The template as compared and hashed: JSON without nulls and empty lists (which the API
/// server drops too) and without the hash label.
fn canonical(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(LABEL);
        if labels.is_empty()
            && let Some(meta) = value
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    prune(&mut value);
    value
}

fn prune(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| {
                !matches!(v, Value::Null) && !v.as_array().is_some_and(Vec::is_empty)
            });
            map.values_mut().for_each(prune);
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

/// JSON with object keys in sorted order, whatever map type serde_json was built with.
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Upstream's `ComputeHash`: the template, then collisionCount as 8 little-endian bytes
/// (a uint32 in a zeroed 8-byte buffer, as upstream writes it).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut text = String::new();
    write_sorted(&canonical(template), &mut text);
    let mut bytes = text.into_bytes();
    if let Some(count) = collision_count {
        let mut buffer = [0u8; 8];
        buffer[..4].copy_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&buffer);
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Upstream's `EqualIgnoreHash`: the same template but for the hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn template(image: &str, labels: &[(&str, &str)]) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn fnv32a_and_safe_encoding_match_the_reference_values() {
        // FNV-1a test vectors (Landon Curt Noll's table).
        for (input, want) in [
            ("", 0x811c_9dc5),
            ("a", 0xe40c_292c),
            ("foobar", 0xbf9c_f968),
        ] {
            assert_eq!(fnv32a(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn the_hash_is_stable_ignores_its_own_label_and_changes_with_collisions() {
        let plain = template("nginx:1.27", &[("app", "web")]);
        let hash = template_hash(&plain, None);
        assert_eq!(hash, template_hash(&plain.clone(), None), "deterministic");
        assert!(
            hash.len() <= 10 && hash.chars().all(|c| "456789bcdf".contains(c)),
            "{hash}"
        );
        let labelled = template("nginx:1.27", &[("app", "web"), (LABEL, &hash)]);
        assert_eq!(template_hash(&labelled, None), hash);
        assert!(equal_ignore_hash(&plain, &labelled));
        assert_ne!(template_hash(&plain, Some(1)), hash);
        assert_ne!(
            template_hash(&plain, Some(1)),
            template_hash(&plain, Some(2))
        );
        let other = template("nginx:1.28", &[("app", "web")]);
        assert_ne!(template_hash(&other, None), hash);
        assert!(!equal_ignore_hash(&plain, &other));
        // An empty list is the same as none, as the API server stores it.
        let mut empty = plain.clone();
        if let Some(spec) = empty.spec.as_mut() {
            spec.volumes = Some(Vec::new());
        }
        assert!(equal_ignore_hash(&plain, &empty));
    }
}
