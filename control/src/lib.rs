//! nodus-control: the control plane companion of the nodus node agent: the scheduler
//! (`scheduler`) and the controllers (`controllers`, one module each), chosen with
//! `components`, run by the replica that holds the leader lease (`leader`), with `/healthz`
//! and `/metrics` beside them (`serve`).

pub mod components;
pub mod controllers;
pub mod leader;
pub mod scheduler;
pub mod serve;

pub use nodus_api::quantity;
