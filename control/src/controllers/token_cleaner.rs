//! Token cleaner: deletes bootstrap token Secrets once their `expiration` has passed, so an
//! expired token can no longer be listed, signed for or used. Off by default, as upstream's
//! `token-cleaner-controller` (kubeadm turns it on). Upstream:
//! `pkg/controller/bootstrap/tokencleaner.go`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::bootstrap_signer::{TOKEN_NAMESPACE, tokens};

const PERIOD: Duration = Duration::from_secs(5);

async fn clean_once(client: &Client) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    for token in tokens(client).await?.into_iter().filter(|t| t.expired(now)) {
        // Only the Secret that was seen expired: one recreated meanwhile under the same name
        // is another token.
        let Some(seen) = secrets.get_opt(&token.name).await? else {
            continue;
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: seen.metadata.uid.clone(),
                resource_version: seen.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(&token.name, &params).await {
            Ok(_) => info!(secret = %token.name, "expired bootstrap token deleted"),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Runs until `cancel`.
pub async fn run(client: Client, cancel: CancellationToken) {
    super::periodically(PERIOD, cancel, "cleaning bootstrap tokens", || {
        clean_once(&client)
    })
    .await
}
