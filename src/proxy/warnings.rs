//! Warnings: Services the proxy had to leave out, told once per problem, in the log and as a
//! Warning event on the Service.
//!
//! Invariants: a problem is reported when it appears or changes, not on every sync (the loop
//! re-syncs at least every `--sync-period`); reporting never waits on the API server (events go
//! through a bounded queue to one publishing task, and are dropped with a log line when it is full).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::Client;
use nodus_net::proxy::model::ServiceError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mapping::{MappingError, ServiceKey};
use crate::events::Events;
/// The event reason; the note says what is wrong.
const REASON: &str = "ServiceNotProxied";

/// A Service left out of the ruleset, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// It could not be read as the proxy model.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The model refused it (invalid, or it conflicts with another Service).
    #[error(transparent)]
    Ruleset(#[from] ServiceError),
}

impl Skipped {
    /// The Service concerned.
    pub fn service(&self) -> ServiceKey {
        match self {
            Skipped::Mapping(err) => err.service().clone(),
            Skipped::Ruleset(err) => {
                let id = match err {
                    ServiceError::BadName { service, .. }
                    | ServiceError::BadPortName { service, .. }
                    | ServiceError::NoClusterIp { service }
                    | ServiceError::BadIp { service, .. }
                    | ServiceError::DuplicateFamily { service, .. }
                    | ServiceError::NoPorts { service }
                    | ServiceError::ZeroPort { service, .. }
                    | ServiceError::ZeroNodePort { service, .. }
                    | ServiceError::DuplicatePort { service, .. }
                    | ServiceError::DuplicatePortName { service, .. }
                    | ServiceError::UnnamedPort { service, .. }
                    | ServiceError::ZeroEndpointPort { service, .. }
                    | ServiceError::BadEndpointIp { service, .. }
                    | ServiceError::BadAffinityTimeout { service, .. }
                    | ServiceError::HealthCheckWithoutLocal { service }
                    | ServiceError::Conflict { service, .. } => service,
                };
                // The model's id is `namespace/name`, and neither part can hold a '/'.
                let (namespace, name) = id.split_once('/').unwrap_or(("", id));
                ServiceKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            }
        }
    }
}

/// Remembers what was reported, and publishes new problems.
#[derive(Debug)]
pub struct Warnings {
    events: Option<Events>,
    reported: HashMap<ServiceKey, String>,
}

impl Warnings {
    /// Publishes events as kube-proxy on `node` does, through a task that ends with `cancel`.
    pub fn start(client: Client, node: &str, cancel: CancellationToken) -> Self {
        Warnings {
            events: Some(Events::start(client, "kube-proxy", node, cancel)),
            reported: HashMap::new(),
        }
    }

    /// Logs only; for tests and for running without an API client.
    pub fn log_only() -> Self {
        Warnings {
            events: None,
            reported: HashMap::new(),
        }
    }

    /// Reports the Services skipped by the latest sync; `services` are the current objects, for
    /// the events' references. Returns how many problems were new.
    pub fn report(&mut self, skipped: &[Skipped], services: &[Arc<Service>]) -> usize {
        let mut now: HashMap<ServiceKey, String> = HashMap::new();
        for problem in skipped {
            // One Service may fail more than one way (e.g. two conflicts); the first one tells.
            now.entry(problem.service())
                .or_insert_with(|| problem.to_string());
        }
        for key in self.reported.keys() {
            if !now.contains_key(key) {
                info!(service = %key, "service is proxied again");
            }
        }
        let mut new = 0;
        for (key, message) in &now {
            if self.reported.get(key) == Some(message) {
                continue;
            }
            new += 1;
            warn!(service = %key, reason = %message, "service left out of the proxy rules");
            let Some(events) = &self.events else { continue };
            let object = services.iter().find(|s| ServiceKey::of(s) == *key);
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
                uid: object.and_then(|s| s.metadata.uid.clone()),
                ..ObjectReference::default()
            };
            events.warning(reference, REASON, message.clone());
        }
        self.reported = now;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_reported_when_they_appear_or_change() {
        let key = ServiceKey {
            namespace: "ns".into(),
            name: "bad".into(),
        };
        let no_ports = Skipped::Ruleset(ServiceError::NoPorts {
            service: "ns/bad".into(),
        });
        let bad_protocol = Skipped::Mapping(MappingError::UnsupportedProtocol {
            service: key.clone(),
            port: "x".into(),
            protocol: "QUIC".into(),
        });
        assert_eq!(no_ports.service(), key);
        assert_eq!(bad_protocol.service(), key);

        let mut warnings = Warnings::log_only();
        assert_eq!(warnings.report(std::slice::from_ref(&no_ports), &[]), 1);
        assert_eq!(
            warnings.report(std::slice::from_ref(&no_ports), &[]),
            0,
            "same problem again"
        );
        assert_eq!(
            warnings.report(std::slice::from_ref(&bad_protocol), &[]),
            1,
            "changed"
        );
        assert_eq!(warnings.report(&[], &[]), 0, "fixed");
        assert_eq!(warnings.report(&[no_ports], &[]), 1, "broken again");
    }
}
