//! Pods: running the pods bound to this node through the CRI runtime and reporting their
//! status as the kubelet does.
//!
//! ```text
//! API watch ──> dispatch ──(newest pod, per UID)──> worker ──> lifecycle::step (pure)
//!                  │                                   │  └──> status::pod_status (pure)
//!   runtime relist ┘ (wakes workers on change)         └──> CRI calls, events, status patch
//! ```
//! static_pods (manifest dir) ──> dispatch ──> mirror pods in the API (status target)
//! Upstream reference: the kubelet's pod workers (sync → terminating → terminated).

pub mod admission;
pub mod attempts;
pub mod cgroups;
pub mod container;
pub mod crashloop;
pub mod dispatch;
pub mod env;
pub mod ephemeral;
pub mod events;
pub mod eviction;
pub mod hooks;
pub mod host_files;
pub mod housekeeping;
pub mod images;
pub mod lifecycle;
pub mod log_rotation;
pub mod metadata;
pub mod mirror;
pub mod observed;
pub mod probe_grpc;
pub mod probe_http;
pub mod probe_tls;
pub mod probes;
pub mod pull_secrets;
pub mod qos;
pub mod resize;
pub mod sandbox;
pub mod service_env;
pub mod static_pods;
pub mod status;
pub mod sysctls;
pub mod worker;
