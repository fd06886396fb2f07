use std::fmt;

use serde::{Deserialize, Serialize};

/// What a secret prints and serializes as.
pub const REDACTED: &str = "***";

/// A value that must never reach a log, an event, an error message or a
/// serialized document: env values, build args, SSH keys, repository
/// credentials. `Debug`, `Display` and `Serialize` all give `***`; only
/// [`Secret::expose`] gives the value, so every place that really sends it
/// (the Docker request, the deploy key file) is greppable.
///
/// Architecture invariant: a secret is never formatted or serialized as
/// itself: not in events, errors, logs, labels or JSON.
///
/// Serializing redacts because a `DeploySpec` is serialized for people and
/// tools (JSON output, test snapshots, bug reports) far more often than it is
/// sent anywhere; a caller that needs the values must read them through
/// `expose`. Deserializing takes the real value, so specs can still be read
/// from a file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the one place that must use it (the container's env, the
    /// build, the key file). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn never_serialized_but_read_back() {
        let s = Secret::new("hunter2");
        assert_eq!(serde_json::to_string(&s).expect("ser"), "\"***\"");
        let read: Secret = serde_json::from_str("\"hunter2\"").expect("de");
        assert_eq!(read.expose(), "hunter2");
    }
}
