//! Writing a plan of EndpointSlices, shared by the EndpointSlice and mirroring controllers:
//! creates, then updates, then deletes, stopping at the first failure; and the record of
//! those writes that the slice store must show before their owner is reconciled again.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tracing::debug;

use super::Plan;
use crate::controllers::namespace_terminating;

/// A write the slice store must show before the owner is reconciled again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// Created or updated: present with at least this generation (the API server bumps it
    /// on every change of an EndpointSlice).
    Present {
        name: String,
        generation: i64,
    },
    Gone {
        name: String,
    },
}

/// The writes of an owner's last reconcile, which the store must show (or time must pass)
/// before it is reconciled again.
#[derive(Debug)]
pub(crate) struct Expectation {
    pub since: tokio::time::Instant,
    pub writes: Vec<Written>,
}

/// Whether the slice store shows `write` (of a slice in `namespace`).
pub(crate) fn met(store: &Store<EndpointSlice>, namespace: &str, write: &Written) -> bool {
    match write {
        Written::Present { name, generation } => store
            .get(&ObjectRef::new(name).within(namespace))
            .is_some_and(|s| s.metadata.generation.unwrap_or(0) >= *generation),
        Written::Gone { name } => store
            .get(&ObjectRef::new(name).within(namespace))
            .is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("creating an EndpointSlice for {owner}")]
    Create {
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating EndpointSlice {namespace}/{name}")]
    Update {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting EndpointSlice {namespace}/{name}")]
    Delete {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The slice changed or went since the store showed it: the watch brings the news, and
    /// the owner is reconciled again without backing off.
    #[error("EndpointSlice {namespace}/{name} changed since it was read")]
    Stale { namespace: String, name: String },
}

impl WriteError {
    pub fn is_stale(&self) -> bool {
        matches!(self, WriteError::Stale { .. })
    }
}

/// A conflict or a missing object: the store was behind.
fn stale(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict() || status.is_not_found())
}

/// Makes the plan's writes in `namespace`, recording each in `writes`; `owner` names what
/// they are for ("service ns/name", "Endpoints ns/name") in errors and logs.
pub(crate) async fn write(
    api: &Api<EndpointSlice>,
    namespace: &str,
    owner: &str,
    plan: Plan,
    writes: &mut Vec<Written>,
) -> Result<(), WriteError> {
    let (created, updated, deleted) = (plan.create.len(), plan.update.len(), plan.delete.len());
    let present = |slice: &EndpointSlice| Written::Present {
        name: slice.name_any(),
        generation: slice.metadata.generation.unwrap_or(0),
    };
    for slice in &plan.create {
        match api.create(&PostParams::default(), slice).await {
            Ok(made) => writes.push(present(&made)),
            // Upstream drops the owner then: its slices would go with the namespace.
            Err(err) if namespace_terminating(&err) => {
                debug!(
                    owner,
                    "namespace is being deleted; no EndpointSlices for it"
                );
                return Ok(());
            }
            Err(source) => {
                return Err(WriteError::Create {
                    owner: owner.to_owned(),
                    source,
                });
            }
        }
    }
    for slice in &plan.update {
        // The slice carries the resourceVersion the store showed: the write is conditional.
        let name = slice.name_any();
        match api.replace(&name, &PostParams::default(), slice).await {
            Ok(made) => writes.push(present(&made)),
            Err(err) if stale(&err) => {
                return Err(WriteError::Stale {
                    namespace: namespace.to_owned(),
                    name,
                });
            }
            Err(source) => {
                return Err(WriteError::Update {
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    for doomed in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: doomed.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&doomed.name, &params).await {
            Ok(_) => {}
            // Already gone (or replaced by another of the same name, which a watch event
            // brings back here): either way, not ours to delete now.
            Err(err) if stale(&err) => {}
            Err(source) => {
                return Err(WriteError::Delete {
                    namespace: namespace.to_owned(),
                    name: doomed.name.clone(),
                    source,
                });
            }
        }
        writes.push(Written::Gone {
            name: doomed.name.clone(),
        });
    }
    debug!(owner, created, updated, deleted, "EndpointSlices written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_they_are_about_and_only_stale_is_stale() {
        let stale = WriteError::Stale {
            namespace: "ns".into(),
            name: "web-abc".into(),
        };
        assert_eq!(
            stale.to_string(),
            "EndpointSlice ns/web-abc changed since it was read"
        );
        assert!(stale.is_stale());
    }
}
