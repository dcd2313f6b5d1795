//! Pull secrets: registry credentials from a pod's `imagePullSecrets`, matched to the
//! registry of the image being pulled, as the kubelet's keyring does for
//! `kubernetes.io/dockerconfigjson` and legacy `kubernetes.io/dockercfg` secrets.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use nodus_cri::api::AuthConfig;
use serde_json::Value;

/// The registry host an image reference pulls from (`docker.io` for short names).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

/// A registry key from a docker config (`https://index.docker.io/v1/`, `myreg:5000`) as a host.
fn key_host(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

fn entries(secret: &Secret) -> Option<serde_json::Map<String, Value>> {
    let data = secret.data.as_ref()?;
    if let Some(config) = data.get(".dockerconfigjson") {
        let parsed: Value = serde_json::from_slice(&config.0).ok()?;
        return parsed.get("auths")?.as_object().cloned();
    }
    let legacy = data.get(".dockercfg")?;
    serde_json::from_slice::<Value>(&legacy.0)
        .ok()?
        .as_object()
        .cloned()
}

/// The credentials for `image` among `secrets`, the first that matches its registry.
pub fn credentials(secrets: &[Secret], image: &str) -> Option<AuthConfig> {
    let registry = registry_of(image);
    secrets.iter().filter_map(entries).find_map(|auths| {
        let (_, entry) = auths.iter().find(|(key, _)| key_host(key) == registry)?;
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (mut username, mut password) = (field("username"), field("password"));
        if username.is_empty() {
            let auth = base64::engine::general_purpose::STANDARD
                .decode(field("auth"))
                .ok()?;
            let auth = String::from_utf8(auth).ok()?;
            let (user, pass) = auth.split_once(':')?;
            (username, password) = (user.to_owned(), pass.to_owned());
        }
        // No server address: the entry was matched to the image's registry here already,
        // and containerd 1.6 parses the address as a URL, so a schemeless key such as
        // `localhost:5000` would never match its host and the credentials would go unused.
        Some(AuthConfig {
            username,
            password,
            ..AuthConfig::default()
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(key: &str, json: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn registries() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1.36"), "docker.io");
        assert_eq!(registry_of("registry.k8s.io/pause:3.10"), "registry.k8s.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("myreg:5000/team/app:v1"), "myreg:5000");
    }

    #[test]
    fn matching_credentials_from_either_secret_format() {
        // "alice:secret" in base64.
        let json = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6c2VjcmV0"},"myreg:5000":{"username":"bob","password":"pw"}}}"#;
        let secrets = vec![secret(".dockerconfigjson", json)];
        let hub = credentials(&secrets, "busybox:1.36").expect("docker hub credentials");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "secret")
        );
        let own = credentials(&secrets, "myreg:5000/app").expect("own registry");
        assert_eq!(own.username, "bob");
        assert!(credentials(&secrets, "quay.io/app").is_none());
        let legacy = vec![secret(
            ".dockercfg",
            r#"{"quay.io":{"username":"carol","password":"x"}}"#,
        )];
        assert_eq!(
            credentials(&legacy, "quay.io/app").map(|a| a.username),
            Some("carol".into())
        );
    }
}
