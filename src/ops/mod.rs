//! What operators see and run: metrics and status, the control endpoint,
//! `erlmesh doctor`, and the check for nodes exposed to the network.

pub mod control;
pub mod doctor;
pub mod exposure;
pub mod metrics;
