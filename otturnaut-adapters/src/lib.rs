//! The port traits of `otturnaut-core`, implemented against the real world:
//! Docker through bollard, Caddy's admin API through reqwest, git through gix,
//! host ports through the kernel, health through TCP/HTTP probes.
//!
//! It is also where a program that deploys starts: connect an [`Agent`],
//! [`validate`] a [`DeployRequest`](otturnaut_core::DeployRequest), and
//! [`Agent::deploy`] it. The run yields its events, then an [`Outcome`]:
//! deployed, failed and rolled back, failed with residue, or interrupted
//! before or after the commit. Dropping the run before its end rolls the
//! deploy back; the app's lock (shared with the `otturnaut` CLI and daemon)
//! is held throughout.
//!
//! ```no_run
//! use otturnaut_adapters::{Agent, AgentConfig};
//! use otturnaut_core::DeployRequest;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let agent = Agent::connect(&AgentConfig { work_dir: "/tmp/otturnaut".into(), ..AgentConfig::default() }).await?;
//! let request = DeployRequest {
//!     image: Some("nginx:1.27-alpine".into()),
//!     container_port: Some(80),
//!     domains: vec!["web.localhost".into()],
//!     ..DeployRequest::default()
//! };
//! let mut run = agent.deploy(otturnaut_adapters::validate(&request, "web")?).await?;
//! while let Some(event) = run.next_event().await {
//!     println!("{}", serde_json::to_string(&event)?);
//! }
//! let outcome = run.outcome().await;
//! println!("{}", outcome.to_json()); // the same object as `otturnaut deploy --json` prints last
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod agent;
pub mod caddy;
pub mod docker;
#[cfg(feature = "faults")]
pub mod faults;
pub mod git;
pub mod health;
pub mod lock;
pub mod maintenance;
pub mod outcome;
pub mod ports;
mod request;
mod run;
pub mod status;
pub mod swarm;

pub use agent::{Agent, AgentConfig, RuntimeKind};
pub use outcome::{Ending, ExitStatus, Outcome};
pub use request::validate;
pub use run::{Canceller, DeployRun, LOCK_TIMEOUT, StartError};

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
