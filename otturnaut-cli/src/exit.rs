//! Exit codes, and the errors that end a command with one.

use std::fmt;

/// What the process exit code tells a script; the library's, so that
/// `exit_code` in a result object and the CLI's exit agree.
pub use otturnaut_adapters::ExitStatus as Exit;

/// A bad input value: `what` names the flag (or env var, or config key) it
/// came from. The message never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub what: String,
    pub message: String,
}

impl Invalid {
    pub fn new(what: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { what: what.into(), message: message.into() }
    }
}

/// A refused request field, named as the `deploy` flag that sets it.
impl From<otturnaut_core::InvalidField> for Invalid {
    fn from(e: otturnaut_core::InvalidField) -> Self {
        Invalid::new(crate::args::deploy_flag(e.field), e.message)
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.message)
    }
}

/// A command that could not go on: the message for a person, and the exit code.
#[derive(Debug)]
pub struct Fatal {
    pub exit: Exit,
    pub message: String,
}

impl Fatal {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Fatal { exit, message: message.into() }
    }

    /// An error from Docker or Caddy while `doing` something: unreachable
    /// services exit 4 with advice, anything else 1.
    pub fn service(doing: &str, e: &otturnaut_core::Error) -> Self {
        if e.is_unavailable() {
            Fatal::new(Exit::Unavailable, format!("{doing}: {e}\n{}", unavailable_advice(e)))
        } else if matches!(e, otturnaut_core::Error::Invalid { .. }) {
            Fatal::new(Exit::Usage, format!("{doing}: {e}"))
        } else {
            Fatal::new(Exit::Failed, format!("{doing}: {e}"))
        }
    }
}

impl From<Invalid> for Fatal {
    fn from(i: Invalid) -> Self {
        Fatal::new(Exit::Usage, format!("{i}\nnothing was changed; see `otturnaut help`"))
    }
}

/// What to do about an unreachable service.
pub fn unavailable_advice(e: &otturnaut_core::Error) -> &'static str {
    match e {
        otturnaut_core::Error::Unavailable { service: otturnaut_core::Service::Docker, .. } => {
            "is Docker running? Start it (`systemctl start docker`, or `cargo xtask services up` on a dev machine), \
             or set DOCKER_HOST to where it listens."
        }
        otturnaut_core::Error::Unavailable { service: otturnaut_core::Service::Caddy, .. } => {
            "is Caddy running? Start it (`systemctl start caddy`, or `cargo xtask services up` on a dev machine), \
             or point --caddy-admin / OTTURNAUT_CADDY_ADMIN at its admin API."
        }
        _ => "check that the service is running and reachable.",
    }
}
