//! The Node: registration, the Lease heartbeat, and status with its conditions.
//!
//! Timeline of one agent run:
//! ```text
//! start ── runtime check ──> register (create, or take over the existing Node)
//!                              ├─ lease task:  renew every 10 s, forever
//!                              └─ status task: post on change, at least every 5 min
//! ```

pub mod address;
pub mod bootstrap;
pub mod cert_file;
pub mod client;
pub mod conditions;
pub mod lease;
pub mod machine;
pub mod notify;
pub mod pod_cidr;
pub mod pod_routes;
pub mod register;
pub mod rotation;
pub mod runtime;
pub mod status;
