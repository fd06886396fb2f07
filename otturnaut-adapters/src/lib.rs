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

/// An error with its causes joined: bollard's and reqwest's own messages
/// ("client error (Connect)", "error sending request") hide the useful part
/// ("Connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
