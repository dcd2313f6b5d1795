//! nodus-cri: a client for the Container Runtime Interface (CRI `runtime.v1`) over a unix socket.
//!
//! It knows nothing of Kubernetes API objects: the agent maps pods onto CRI requests. The
//! generated protocol types are re-exported as [`api`] so callers need not depend on the
//! code generator's crate directly.

mod endpoint;
mod error;
mod events;
mod metered;
mod runtime;
mod stale_tasks;

pub use endpoint::Endpoint;
pub use error::Error;
pub use events::RuntimeEvent;
pub use metered::{Observer, operation_type};
pub use runtime::{ExecOutput, Runtime, RuntimeCondition, RuntimeStatus, RuntimeVersion};

/// The CRI `runtime.v1` protocol types and generated clients.
pub use k8s_cri::v1 as api;
