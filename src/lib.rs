//! nodus: a Kubernetes node agent, the kubelet and kube-proxy roles in one program.
//!
//! Dependencies point down: this crate maps Kubernetes API objects onto the runtime
//! (`nodus-cri`) and the network (`nodus-net`); those crates know nothing of Kubernetes.

pub mod agent;
pub mod backoff;
pub mod config;
pub mod events;
pub mod join;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod server;
pub mod stats;
pub mod volumes;

pub use nodus_api::quantity;
