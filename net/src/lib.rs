//! nodus-net: the node's networking, independent of Kubernetes API types.
//!
//! It renders the CNI network configuration for the node's pod CIDR (`cni`) and holds the Service
//! proxy (`proxy`): the model, the pure nftables ruleset builder, applying it to the kernel, and
//! conntrack cleanup; and the routes to other nodes' pod CIDRs (`routes`, host-gateway mode).

pub mod cni;
pub mod proxy;
pub mod routes;
