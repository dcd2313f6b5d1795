//! Bootstrap signer: the ConfigMap `kube-public/cluster-info` carries, for every bootstrap token
//! meant for signing, `jws-kubeconfig-<token id>`: a detached JWS (HS256, keyed by the token
//! secret) of its `kubeconfig`. A joining node (`kubeadm join`, `nodus join`) trusts the
//! kubeconfig once the signature checks out with the token it was given.
//!
//! Invariants: only `jws-kubeconfig-*` keys of `cluster-info` are written; a token that is
//! gone, expired or not for signing loses its signature; the signature is byte-for-byte what
//! upstream computes (joiners compare strings). Off by default, as upstream's
//! `bootstrap-signer-controller` (kubeadm turns it on). Upstream:
//! `pkg/controller/bootstrap/bootstrapsigner.go`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub const NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO: &str = "cluster-info";
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const SIGNATURE_PREFIX: &str = "jws-kubeconfig-";
/// Where bootstrap token Secrets live, and their type.
pub const TOKEN_NAMESPACE: &str = "kube-system";
pub const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// How often the tokens and cluster-info are looked at.
const PERIOD: Duration = Duration::from_secs(2);

/// A bootstrap token Secret, as far as signing and cleaning care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub id: String,
    pub secret: String,
    /// RFC 3339 expiry, if any.
    pub expiration: Option<k8s_openapi::jiff::Timestamp>,
    pub signing: bool,
}

impl Token {
    /// The token of a Secret, or `None` for a Secret that is not a well-formed bootstrap token
    /// (upstream ignores those too). Its name must be `bootstrap-token-<id>`.
    pub fn of(secret: &Secret) -> Option<Token> {
        if secret.type_.as_deref() != Some(TOKEN_TYPE) {
            return None;
        }
        let data = secret.data.as_ref()?;
        let get = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let name = secret.metadata.name.clone()?;
        let id = get("token-id")?;
        let token_secret = get("token-secret")?;
        if name != format!("bootstrap-token-{id}") {
            return None;
        }
        let expiration = match get("expiration") {
            Some(text) => Some(text.parse().ok()?),
            None => None,
        };
        Some(Token {
            name,
            id,
            secret: token_secret,
            expiration,
            signing: get("usage-bootstrap-signing").as_deref() == Some("true"),
        })
    }

    pub fn expired(&self, now: k8s_openapi::jiff::Timestamp) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

/// Upstream's detached JWS of `content` for a token: `header..signature`, the header exactly
/// `{"alg":"HS256","kid":"<id>"}`.
pub fn detached_signature(content: &str, id: &str, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"HS256\",\"kid\":\"{id}\"}}"));
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The signatures `cluster-info` should carry for `kubeconfig`, by key.
pub fn desired(
    kubeconfig: &str,
    tokens: &[Token],
    now: k8s_openapi::jiff::Timestamp,
) -> BTreeMap<String, String> {
    tokens
        .iter()
        .filter(|t| t.signing && !t.expired(now))
        .map(|t| {
            (
                format!("{SIGNATURE_PREFIX}{}", t.id),
                detached_signature(kubeconfig, &t.id, &t.secret),
            )
        })
        .collect()
}

/// The merge patch that brings `data` to the `desired` signatures (`null` removes a key), or
/// `None` when it has them.
pub fn patch(
    data: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    let mut changes = serde_json::Map::new();
    for (key, value) in desired {
        if data.get(key) != Some(value) {
            changes.insert(key.clone(), value.clone().into());
        }
    }
    for key in data.keys().filter(|k| k.starts_with(SIGNATURE_PREFIX)) {
        if !desired.contains_key(key) {
            changes.insert(key.clone(), serde_json::Value::Null);
        }
    }
    (!changes.is_empty()).then(|| serde_json::json!({ "data": changes }))
}

/// Bootstrap tokens in kube-system.
pub async fn tokens(client: &Client) -> Result<Vec<Token>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    let list = secrets
        .list(&ListParams::default().fields(&format!("type={TOKEN_TYPE}")))
        .await?;
    Ok(list.items.iter().filter_map(Token::of).collect())
}

async fn sign_once(client: &Client) -> Result<(), kube::Error> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(info) = maps.get_opt(CLUSTER_INFO).await? else {
        return Ok(());
    };
    let data = info.data.unwrap_or_default();
    let Some(kubeconfig) = data.get(KUBECONFIG_KEY) else {
        return Ok(());
    };
    let want = desired(
        kubeconfig,
        &tokens(client).await?,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if let Some(patch) = patch(&data, &want) {
        maps.patch(CLUSTER_INFO, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(signatures = want.len(), "cluster-info signatures updated");
    }
    Ok(())
}

/// Runs until `cancel`.
pub async fn run(client: Client, cancel: CancellationToken) {
    super::periodically(PERIOD, cancel, "signing cluster-info", || {
        sign_once(&client)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_upstreams_byte_for_byte() {
        // The vectors of k8s.io/cluster-bootstrap/token/jws.
        let content = "Hello from the other side. I must have called a thousand times.";
        assert_eq!(
            detached_signature(content, "joshua", "my voice is my passcode"),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        assert_eq!(
            detached_signature("", "joshua", "my voice is my passcode"),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            detached_signature(content, "joshua", ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
    }

    fn token(id: &str, signing: bool, expiration: Option<&str>) -> Token {
        Token {
            name: format!("bootstrap-token-{id}"),
            id: id.into(),
            secret: "0123456789abcdef".into(),
            expiration: expiration.map(|e| e.parse().expect("a time")),
            signing,
        }
    }

    #[test]
    fn only_live_signing_tokens_sign_and_stale_signatures_go() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-26T12:00:00Z".parse().expect("a time");
        let tokens = [
            token("aaaaaa", true, None),
            token("bbbbbb", true, Some("2026-11-26T11:00:00Z")),
            token("cccccc", false, None),
            token("dddddd", true, Some("2026-11-27T00:00:00Z")),
        ];
        let want = desired("kubeconfig text", &tokens, now);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["jws-kubeconfig-aaaaaa", "jws-kubeconfig-dddddd"]
        );
        let mut data = BTreeMap::from([
            ("kubeconfig".to_owned(), "kubeconfig text".to_owned()),
            ("jws-kubeconfig-bbbbbb".to_owned(), "old".to_owned()),
            (
                "jws-kubeconfig-aaaaaa".to_owned(),
                want["jws-kubeconfig-aaaaaa"].clone(),
            ),
        ]);
        let change = patch(&data, &want).expect("a change");
        assert_eq!(
            change["data"]["jws-kubeconfig-bbbbbb"],
            serde_json::Value::Null
        );
        assert_eq!(
            change["data"]["jws-kubeconfig-dddddd"],
            want["jws-kubeconfig-dddddd"].as_str()
        );
        assert!(
            change["data"].get("jws-kubeconfig-aaaaaa").is_none(),
            "unchanged is left alone"
        );
        assert!(
            change["data"].get("kubeconfig").is_none(),
            "only signatures are written"
        );
        data.remove("jws-kubeconfig-bbbbbb");
        data.extend(want.clone());
        assert_eq!(patch(&data, &want), None);
    }

    #[test]
    fn secrets_that_are_not_well_formed_tokens_are_ignored() {
        use k8s_openapi::ByteString;
        let secret = |name: &str, ty: &str, pairs: &[(&str, &str)]| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(ty.into()),
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let good = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-signing", "true"),
        ];
        assert!(
            Token::of(&secret("bootstrap-token-abcdef", TOKEN_TYPE, &good))
                .is_some_and(|t| t.signing)
        );
        assert!(Token::of(&secret("bootstrap-token-other", TOKEN_TYPE, &good)).is_none());
        assert!(Token::of(&secret("bootstrap-token-abcdef", "Opaque", &good)).is_none());
        let bad_time = [good[0], good[1], ("expiration", "tomorrow")];
        assert!(Token::of(&secret("bootstrap-token-abcdef", TOKEN_TYPE, &bad_time)).is_none());
    }
}
