//! Controllers: the level-triggered reconcilers nodus-control runs beside the scheduler,
//! one module each. Today: the node taints that follow node conditions, and the
//! EndpointSlices of Services with selectors.

pub mod endpointslice;
pub mod node_taints;
