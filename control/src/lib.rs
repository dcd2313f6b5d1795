//! nodus-control: the control plane companion of the nodus node agent. Today it is the
//! scheduler (`scheduler`); the controllers (ReplicaSet, Deployment, EndpointSlice, node
//! lifecycle, ...) come next, each beside it as its own module.

pub mod controllers;
pub mod scheduler;

pub use nodus_api::quantity;
