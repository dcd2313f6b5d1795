//! ServiceAccounts: every active namespace has the ServiceAccount `default`, which pods
//! without `spec.serviceAccountName` run as (the API server's ServiceAccount admission
//! refuses them until it exists).
//!
//! Invariants: a missing `default` is created, bare, as upstream creates it; an existing one
//! is never changed, whatever it holds; no other ServiceAccount is touched. Upstream:
//! `pkg/controller/serviceaccount/serviceaccounts_controller.go` with
//! kube-controller-manager's default `ServiceAccounts: [default]`.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::ObjectMeta;
use tokio_util::sync::CancellationToken;

use super::per_namespace::{self, Kept, Write};

pub const NAME: &str = "default";

/// Keeps `default` in every active namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultAccount;

impl Kept for DefaultAccount {
    type Object = ServiceAccount;
    const NAME: &'static str = NAME;

    fn write(&self, existing: Option<&ServiceAccount>) -> Option<Write<ServiceAccount>> {
        desired(existing)
    }
}

/// The ServiceAccount to create, if the namespace has none named `default`.
pub fn desired(existing: Option<&ServiceAccount>) -> Option<Write<ServiceAccount>> {
    if existing.is_some() {
        return None;
    }
    Some(Write::Create(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }))
}

/// Keeps `default` in every active namespace until cancelled.
pub async fn run(client: Client, cancel: CancellationToken) {
    per_namespace::run(client, DefaultAccount, "ServiceAccount", cancel).await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus};

    use super::*;

    fn namespace(phase: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                ..ObjectMeta::default()
            },
            status: Some(NamespaceStatus {
                phase: Some(phase.into()),
                ..NamespaceStatus::default()
            }),
            ..Namespace::default()
        }
    }

    #[test]
    fn an_active_namespace_without_default_gets_a_bare_one() {
        let active = namespace("Active");
        let Some(Write::Create(account)) =
            per_namespace::plan(&DefaultAccount, Some(&active), None)
        else {
            panic!("expected a create");
        };
        assert_eq!(
            account,
            ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            }
        );
    }

    #[test]
    fn an_existing_default_is_never_changed_and_terminating_namespaces_get_none() {
        let customised = ServiceAccount {
            automount_service_account_token: Some(false),
            ..desired(None)
                .and_then(|w| match w {
                    Write::Create(sa) => Some(sa),
                    Write::Update(_) => None,
                })
                .expect("a create")
        };
        let active = namespace("Active");
        assert_eq!(
            per_namespace::plan(&DefaultAccount, Some(&active), Some(&customised)),
            None
        );
        let terminating = namespace("Terminating");
        assert_eq!(
            per_namespace::plan(&DefaultAccount, Some(&terminating), None),
            None
        );
    }
}
