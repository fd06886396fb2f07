use std::fmt;
use std::time::Duration;

use crate::{AppId, ContainerId, HostPort, PortRange};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An outside service Otturnaut depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Docker,
    Caddy,
    Git,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Docker => "Docker",
            Service::Caddy => "Caddy",
            Service::Git => "git",
        })
    }
}

/// Everything that can go wrong below the pipeline: bad input, an unreachable
/// service, or an operation the outside world refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
    #[error("{service} is unreachable at {address}: {detail}")]
    Unavailable { service: Service, address: String, detail: String },
    #[error("{operation} failed: {detail}")]
    Failed { operation: String, detail: String },
    #[error("image build failed: {detail}{}", tail(log_tail))]
    BuildFailed { detail: String, log_tail: Vec<String> },
    #[error("container {container} exited with code {exit_code} during the health check{}", tail(logs))]
    ContainerExited { container: ContainerId, exit_code: i64, logs: Vec<String> },
    #[error("not healthy after {}: {last_error}", humantime::format_duration(*deadline))]
    Unhealthy { deadline: Duration, last_error: String },
    #[error("host port {0} is already in use")]
    PortTaken(HostPort),
    #[error("no free host port left in {0}")]
    PortsExhausted(PortRange),
    #[error("{operation} timed out after {}", humantime::format_duration(*after))]
    Timeout { operation: String, after: Duration },
    #[error("domain {domain} is already served by app {owner}")]
    DomainTaken { domain: crate::Domain, owner: AppId },
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() { String::new() } else { format!("; last lines:\n  {}", lines.join("\n  ")) }
}

impl Error {
    pub fn invalid(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { what, value: value.into(), reason: reason.into() }
    }

    pub fn failed(operation: impl Into<String>, detail: impl fmt::Display) -> Self {
        Error::Failed { operation: operation.into(), detail: detail.to_string() }
    }

    /// True when the cause is a service we could not reach at all (exit code 4
    /// in the CLI), as opposed to one that answered with a refusal.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
