//! The `editthinker` binary's wiring: configuration, telemetry and roles.
//! Business logic lives in the other crates.

pub mod client;
pub mod config;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod retention;
pub mod roles;
pub mod telemetry;
pub mod usage;
