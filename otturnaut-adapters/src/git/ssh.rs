//! The `ssh` side of a fetch: the deploy key on disk and the command line gix
//! runs. The key lives in a file only as long as one fetch needs it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use otturnaut_core::{Error, Result, Secret};

/// Creates the directory holding deploy keys and our own `known_hosts`,
/// readable only by us.
pub(crate) fn ensure_ssh_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::failed(format!("creating ssh directory {}", dir.display()), e))
}

/// Creates `path` empty with mode 0600 if it does not exist, without
/// following a symlink planted there: ssh would otherwise create our
/// `known_hosts` with whatever the umask allows.
pub(crate) fn ensure_private_file(path: &Path) -> Result<()> {
    let opened = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::failed(format!("opening {}", path.display()), e))?;
    let meta = opened.metadata().map_err(|e| Error::failed(format!("checking {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::failed(format!("opening {}", path.display()), "not a regular file"));
    }
    Ok(())
}

/// Writes the deploy key to `path`, created with mode 0600 so it is never
/// readable by anyone else, not even for an instant (ssh also refuses keys
/// that others can read).
pub(crate) fn write_key(path: &Path, key: &Secret) -> Result<()> {
    let what = || format!("writing the deploy key to {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::failed(what(), e))?;
    // Keys pasted from elsewhere often carry CRLF or lack the final newline;
    // OpenSSH rejects both as "invalid format".
    let mut text = key.expose().replace("\r\n", "\n");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // No fsync: the file only has to outlive this fetch, not a crash.
    file.write_all(text.as_bytes()).map_err(|e| Error::failed(what(), e))
}

/// Deletes a key file; a missing file is fine.
pub(crate) fn remove_file_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not delete deploy key file"),
    }
}

/// What `ssh` is told for one fetch.
#[derive(Debug)]
pub(crate) struct SshOptions {
    pub known_hosts: PathBuf,
    /// `known_hosts` pins the keys: never learn a new one.
    pub pinned: bool,
    pub key: Option<PathBuf>,
    /// Where ssh's stderr goes (see `Failure::with_ssh_stderr`).
    pub stderr_log: PathBuf,
    pub connect_timeout: Duration,
}

impl SshOptions {
    /// The `core.sshCommand` gix runs (through `sh -c`, appending its own
    /// arguments). With a deploy key, the agent and the user's default keys
    /// are ignored so exactly that key is offered. Host keys are learnt on
    /// first use into our own `known_hosts`, leaving `~/.ssh` alone, and then
    /// checked. `BatchMode` makes ssh fail instead of prompting.
    pub fn command(&self) -> String {
        let mut cmd = String::from("ssh");
        let mut opt = |o: &str| {
            cmd.push_str(" -o ");
            cmd.push_str(o);
        };
        opt("BatchMode=yes");
        // Trust on first use unless the operator pinned the keys.
        opt(if self.pinned { "StrictHostKeyChecking=yes" } else { "StrictHostKeyChecking=accept-new" });
        opt(&shell_quote(&format!("UserKnownHostsFile={}", ssh_path(&self.known_hosts))));
        // Rounded up and one more second, so a hung server trips our own
        // timeout (reported as such) rather than ssh's.
        opt(&format!("ConnectTimeout={}", self.connect_timeout.as_secs() + 2));
        // A server that stops answering mid-transfer is noticed within a minute.
        opt("ServerAliveInterval=15");
        opt("ServerAliveCountMax=4");
        // Keeps "Permanently added … to the list of known hosts" out of our stderr.
        opt("LogLevel=ERROR");
        if let Some(key) = &self.key {
            opt("IdentityAgent=none");
            opt("IdentitiesOnly=yes");
            // Not `-i`: ssh checks that path before expanding `%` tokens,
            // so a path holding `%` cannot be written for both.
            opt(&shell_quote(&format!("IdentityFile={}", ssh_path(key))));
        }
        // gix appends its arguments after this; a redirection may stand
        // anywhere in a shell command.
        cmd.push_str(" 2>>");
        cmd.push_str(&shell_quote(&self.stderr_log.to_string_lossy()));
        cmd
    }
}

/// A path as ssh reads it in an option: `%` starts a token (`%d`, `%u`…),
/// and whitespace separates several files unless the path is double-quoted.
fn ssh_path(path: &Path) -> String {
    let p = path.to_string_lossy().replace('%', "%%");
    if p.chars().any(char::is_whitespace) { format!("\"{p}\"") } else { p }
}

/// Quotes `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(ssh_path(Path::new("/a b/%d")), "\"/a b/%%d\"");
        assert_eq!(ssh_path(Path::new("/a/b")), "/a/b");
    }

    #[test]
    fn command_pins_the_key_and_known_hosts() {
        let with_key = SshOptions {
            known_hosts: "/w/ssh/known_hosts".into(),
            pinned: false,
            key: Some("/w/ssh/a.key".into()),
            stderr_log: "/w/ssh/a.log".into(),
            connect_timeout: Duration::from_millis(1500),
        }
        .command();
        for part in [
            "-o IdentityAgent=none",
            "-o IdentitiesOnly=yes",
            "-o StrictHostKeyChecking=accept-new",
            "-o BatchMode=yes",
            "-o 'UserKnownHostsFile=/w/ssh/known_hosts'",
            "-o ConnectTimeout=3",
            "-o 'IdentityFile=/w/ssh/a.key'",
            "2>>'/w/ssh/a.log'",
        ] {
            assert!(with_key.contains(part), "{part} missing from {with_key}");
        }
        let without = SshOptions {
            known_hosts: "/k".into(),
            pinned: true,
            key: None,
            stderr_log: "/l".into(),
            connect_timeout: Duration::ZERO,
        }
        .command();
        assert!(!without.contains("IdentityFile") && without.contains("ConnectTimeout=2"));
        assert!(without.contains("-o StrictHostKeyChecking=yes") && !without.contains("accept-new"), "{without}");
    }
}
