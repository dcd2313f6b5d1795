//! Controllers: the level-triggered reconcilers nodus-control runs beside the scheduler,
//! one module each. Today: the node taints that follow node conditions.

pub mod node_taints;
