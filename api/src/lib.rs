//! nodus-api: what the Kubernetes API means, shared by the agent (kubelet and kube-proxy
//! roles) and nodus-control, so that both read an object the same way. Today: resource
//! quantities. Node selectors, tolerations and pod requests, which the kubelet's
//! admission and the scheduler both evaluate, belong here next.

pub mod quantity;
