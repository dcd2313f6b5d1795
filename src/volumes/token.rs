//! Service account tokens for `serviceAccountToken` projections, from the TokenRequest API,
//! bound to the pod (so they stop working when it is deleted), and renewed as the kubelet does:
//! once 80% of a token's lifetime has passed, or after 24 hours, whichever comes first.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};

/// The lifetime asked for when the projection does not say (upstream's default).
pub const DEFAULT_EXPIRATION: i64 = 3600;
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A token and when to fetch a new one.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub renew_at: SystemTime,
    /// What it was asked for, so a changed projection asks again.
    pub audience: String,
    pub expiration_seconds: i64,
}

impl Token {
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.renew_at
    }
}

/// When a token issued at `issued` and valid until `expires` should be renewed.
pub fn renew_at(issued: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    issued + (lifetime.mul_f64(0.8)).min(MAX_AGE)
}

/// Asks for a token of the pod's service account for `audience` (empty: the apiserver's own).
pub async fn request(
    client: &Client,
    pod: &Pod,
    audience: &str,
    expiration_seconds: i64,
) -> Result<Token, kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audience.is_empty()).then(|| vec![audience.to_owned()]),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = SystemTime::now();
    let answer: TokenRequest = api
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await?;
    let status = answer.status.unwrap_or_default();
    let lifetime = Duration::from_secs(u64::try_from(expiration_seconds).unwrap_or(0));
    let expires = status
        .expiration_timestamp
        .map_or(issued + lifetime, |t| SystemTime::from(t.0));
    Ok(Token {
        value: status.token.unwrap_or_default(),
        renew_at: renew_at(issued, expires),
        audience: audience.to_owned(),
        expiration_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_at_80_percent_or_after_a_day() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_at(t0, t0 + hour), t0 + Duration::from_secs(2880));
        assert_eq!(renew_at(t0, t0 + hour * 24 * 365), t0 + MAX_AGE);
    }
}
