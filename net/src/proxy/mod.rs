//! The Service proxy (the kube-proxy role): a model of what to program, a pure ruleset builder,
//! and the code that applies a ruleset to the kernel and cleans up stale conntrack entries.
//!
//! Invariant: everything nodus programs lives in one nftables table, `inet nodus`; nothing else
//! on the machine is read or changed.

pub mod apply;
pub mod conntrack;
pub mod model;
pub mod netlink;
pub mod ruleset;
pub mod tracer;
pub mod transaction;
