//! Authentication and authorization of kubelet API requests, as the kubelet's webhook modes do:
//! a verified client certificate names the user (CN) and groups (O); otherwise a bearer token
//! is checked with a TokenReview; otherwise the request is anonymous, refused unless
//! `--anonymous-auth` allows it. Every request is then checked with a SubjectAccessReview on
//! the Node object, with the kubelet's mapping of paths to subresources.
//!
//! Decisions are cached as upstream's defaults: allowed for 5 minutes, denied for 30 seconds;
//! token reviews for 2 minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
const TOKEN_TTL: Duration = Duration::from_secs(120);

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a request asks for, as a SubjectAccessReview states it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// Upstream's `GetRequestAttributes`: the verb from the HTTP method, the subresource from the
/// path's first element (`nodes/proxy` for everything without its own).
pub fn attributes(method: &hyper::Method, path: &str) -> Attributes {
    let verb = match *method {
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "get",
    };
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let subresource = match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "checkpoint" => "checkpoint",
        "configz" => "configz",
        "healthz" => "healthz",
        "pods" => "pods",
        _ => "proxy",
    };
    Attributes { verb, subresource }
}

/// Why a request is turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Unauthorized")]
    Unauthenticated,
    #[error("Forbidden (user={user}, verb={verb}, resource=nodes, subresource({subresource}))")]
    Forbidden {
        user: String,
        verb: &'static str,
        subresource: &'static str,
    },
    #[error("authorization check failed: {0}")]
    Unavailable(String),
}

/// The authenticator and authorizer, with their caches.
pub struct Gate {
    client: Client,
    node_name: String,
    anonymous: bool,
    tokens: Mutex<HashMap<String, (Option<User>, Instant)>>,
    decisions: Mutex<HashMap<(User, Attributes), (bool, Instant)>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("node_name", &self.node_name)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub fn new(client: Client, node_name: String, anonymous: bool) -> Gate {
        Gate {
            client,
            node_name,
            anonymous,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// The user behind a request: its verified certificate's, its token's, or anonymous.
    pub async fn authenticate(
        &self,
        certificate: Option<User>,
        bearer: Option<&str>,
    ) -> Result<User, Refusal> {
        if let Some(user) = certificate {
            return Ok(user);
        }
        if let Some(token) = bearer {
            return self
                .review_token(token)
                .await?
                .ok_or(Refusal::Unauthenticated);
        }
        if self.anonymous {
            Ok(User::anonymous())
        } else {
            Err(Refusal::Unauthenticated)
        }
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, Refusal> {
        if let Some((user, at)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(user.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        let user = status
            .user
            .filter(|_| status.authenticated == Some(true))
            .map(|u| User {
                name: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            });
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), (user.clone(), Instant::now()));
        Ok(user)
    }

    /// Whether `user` may do `attributes` on this node.
    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> Result<(), Refusal> {
        let key = (user.clone(), attributes.clone());
        let cached = self
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let allowed = match cached {
            Some((allowed, at))
                if at.elapsed() < if allowed { ALLOWED_TTL } else { DENIED_TTL } =>
            {
                allowed
            }
            _ => {
                let allowed = self.review_access(user, attributes).await?;
                self.decisions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (allowed, Instant::now()));
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                user: user.name.clone(),
                verb: attributes.verb,
                subresource: attributes.subresource,
            })
        }
    }

    async fn review_access(&self, user: &User, attributes: &Attributes) -> Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attributes.verb.to_owned()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(attributes.subresource.to_owned()),
                    name: Some(self.node_name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let get = hyper::Method::GET;
        assert_eq!(
            attributes(&get, "/containerLogs/ns/pod/c").subresource,
            "proxy"
        );
        assert_eq!(attributes(&get, "/stats/summary").subresource, "stats");
        assert_eq!(attributes(&get, "/metrics/resource").subresource, "metrics");
        assert_eq!(attributes(&get, "/logs/syslog").subresource, "log");
        assert_eq!(attributes(&get, "/healthz").subresource, "healthz");
        assert_eq!(
            attributes(&hyper::Method::POST, "/exec/a/b/c").verb,
            "create"
        );
    }
}
