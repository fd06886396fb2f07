use std::fmt;
use std::time::Duration;

use crate::{AppId, ContainerId, HostPort, PortRange};

/// The result of everything in core and the port traits.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An outside service Otturnaut depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The Docker Engine API.
    Docker,
    /// Caddy's admin API.
    Caddy,
    /// A git server.
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
    /// Input that fails validation; nothing was done with it.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What it is meant to be (`app id`, `image reference`, …).
        what: &'static str,
        /// The value given (never a secret).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A service could not be reached at all.
    #[error("{service} is unreachable at {address}: {detail}")]
    Unavailable {
        /// Which one.
        service: Service,
        /// Where it was looked for.
        address: String,
        /// The connection error.
        detail: String,
    },
    /// A service answered, refusing or failing the operation.
    #[error("{operation} failed: {detail}")]
    Failed {
        /// What was being done, on what.
        operation: String,
        /// Why it failed.
        detail: String,
    },
    /// The image build failed.
    #[error("image build failed: {detail}{}", tail(log_tail))]
    BuildFailed {
        /// The builder's error.
        detail: String,
        /// The last lines of the build log.
        log_tail: Vec<String>,
    },
    /// The new container exited while being health-checked.
    #[error("container {container} exited with code {exit_code} during the health check{}", tail(logs))]
    ContainerExited {
        /// The container.
        container: ContainerId,
        /// Its exit code.
        exit_code: i64,
        /// Its last log lines.
        logs: Vec<String>,
    },
    /// The new container never passed its health check.
    #[error("not healthy after {}: {last_error}", humantime::format_duration(*deadline))]
    Unhealthy {
        /// How long the check tried.
        deadline: Duration,
        /// What the last attempt saw.
        last_error: String,
    },
    /// Someone else took the host port (the pipeline then tries another).
    #[error("host port {0} is already in use")]
    PortTaken(HostPort),
    /// Every port of the range is in use.
    #[error("no free host port left in {0}")]
    PortsExhausted(PortRange),
    /// An operation took longer than it may.
    #[error("{operation} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// What was being done.
        operation: String,
        /// The limit it hit.
        after: Duration,
    },
    /// Another app's route already serves the domain.
    #[error("domain {domain} is already served by app {owner}")]
    DomainTaken {
        /// The domain.
        domain: crate::Domain,
        /// The app that has it.
        owner: AppId,
    },
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() { String::new() } else { format!("; last lines:\n  {}", lines.join("\n  ")) }
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { what, value: value.into(), reason: reason.into() }
    }

    /// An [`Error::Failed`].
    pub fn failed(operation: impl Into<String>, detail: impl fmt::Display) -> Self {
        Error::Failed { operation: operation.into(), detail: detail.to_string() }
    }

    /// True when the cause is a service we could not reach at all (exit code 4
    /// in the CLI), as opposed to one that answered with a refusal.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
