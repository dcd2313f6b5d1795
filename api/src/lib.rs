//! nodus-api: what the Kubernetes API means, shared by the agent (kubelet and kube-proxy
//! roles) and nodus-control, so that both read an object the same way: resource
//! quantities, and node selection (selectors, required affinity, tolerations), which the
//! kubelet's admission and the scheduler both evaluate. Pod requests belong here next.

pub mod duration;
pub mod quantity;
pub mod selection;
