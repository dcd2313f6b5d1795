//! nodus-net: the node's networking, independent of Kubernetes API types.
//!
//! Today it renders the CNI network configuration for the node's pod CIDR; the nftables
//! service proxy and the routes to other nodes' pod CIDRs will live here too.

pub mod cni;
