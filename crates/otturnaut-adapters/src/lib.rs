//! The port traits of `otturnaut-core`, implemented against the real world:
//! Docker through bollard, Caddy's admin API through reqwest, git through gix,
//! host ports through the kernel, health through TCP/HTTP probes.

mod agent;
pub mod caddy;
pub mod docker;
#[cfg(feature = "faults")]
pub mod faults;
pub mod git;
pub mod health;
pub mod ports;
pub mod state;

pub use agent::{Agent, AgentConfig};
