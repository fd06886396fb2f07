//! The blocking part of a fetch: gix's clone, run on a blocking thread.

use std::io;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use otturnaut_core::GitRef;

/// Why a clone failed, sorted by what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The server answered, but has no such branch or tag.
    RefNotFound,
    /// The server would not send the requested commit: it does not exist, or
    /// the server does not allow fetching commits no ref points to.
    CommitRefused,
    /// The server could not be reached at all.
    Unreachable,
    /// The server refused: authentication, permissions, unadvertised commit…
    Other,
    /// The interrupt flag was raised (timeout or cancellation).
    Interrupted,
}

#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    /// gix's chain of messages, outermost first. May contain the raw URL.
    pub detail: String,
}

/// Shallow-clones (depth 1) `url` at `git_ref` into the existing, empty `dir`
/// and returns the hex id of the checked-out commit.
///
/// Depth 1 holds with protocol v2, which every current git server speaks.
/// Against a v0-only server (e.g. over ssh when sshd does not pass
/// `GIT_PROTOCOL`), gix 0.90 requests the `deepen-relative` capability along
/// with `deepen 1`, and the server answers with the full history: the
/// checkout is still the right commit, only the download is larger.
///
/// `config` holds `key=value` overrides such as `core.sshCommand`. The repository is
/// opened isolated: neither the user's git config nor `GIT_*` variables can
/// redirect the URL or swap the ssh command.
pub(crate) fn shallow_clone(
    url: &str,
    dir: &Path,
    git_ref: &GitRef,
    config: Vec<String>,
    interrupt: &AtomicBool,
) -> Result<String, Failure> {
    let open = gix::open::Options::isolated().config_overrides(config);
    let prepare =
        gix::clone::PrepareFetch::new(url, dir, gix::create::Kind::WithWorktree, gix::create::Options::default(), open)
            .map_err(|e| failure(&e, interrupt))?
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN));
    let mut prepare = if git_ref.is_full_sha() {
        prepare.with_revision(Some(git_ref.as_str()))
    } else {
        prepare.with_ref_name(Some(git_ref.as_str()))
    }
    .map_err(|e| failure(&e, interrupt))?;

    let (mut checkout, _) =
        prepare.fetch_then_checkout(gix::progress::Discard, interrupt).map_err(|e| failure(&e, interrupt))?;
    let (repo, _) = checkout.main_worktree(gix::progress::Discard, interrupt).map_err(|e| failure(&e, interrupt))?;
    // An interrupted checkout returns Ok with a partial tree.
    if interrupt.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    let commit = repo.head_commit().map_err(|e| failure(&e, interrupt))?;
    Ok(commit.id.to_string())
}

fn interrupted() -> Failure {
    Failure { kind: FailureKind::Interrupted, detail: "interrupted".into() }
}

fn failure(err: &gix::Error, interrupt: &AtomicBool) -> Failure {
    if interrupt.load(Ordering::SeqCst) {
        return interrupted();
    }
    let mut parts: Vec<String> = Vec::new();
    for e in err.iter_errors() {
        let text = e.to_string();
        let text = text.trim();
        // gix repeats a cause inside its context message now and then.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
    }
    let detail = parts.join(": ");
    let kind = if has_unreachable_io_error(err) { FailureKind::Unreachable } else { classify(&detail) };
    Failure { kind, detail }
}

impl Failure {
    /// Adds what ssh wrote to stderr. gix reads it on a separate thread and
    /// may report a bare "failed to fill whole buffer" before ssh's reason
    /// ("Permission denied", "Connection refused") arrives, so our own copy
    /// of stderr is what makes the error say why.
    pub fn with_ssh_stderr(mut self, stderr: &str) -> Failure {
        let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("; ");
        if tail.is_empty() || self.detail.contains(&tail) {
            return self;
        }
        self.detail = format!("{}; ssh said: {tail}", self.detail);
        if self.kind == FailureKind::Other {
            self.kind = classify(&self.detail);
        }
        self
    }
}

/// Sorts a failure by the words of gix's, git's and ssh's messages.
fn classify(detail: &str) -> FailureKind {
    const UNREACHABLE: [&str; 6] = [
        "Could not connect to git server",
        "Could not resolve",
        "Connection refused",
        "No route to host",
        "Connection timed out",
        "Network is unreachable",
    ];
    if UNREACHABLE.iter().any(|needle| detail.contains(needle)) {
        FailureKind::Unreachable
    } else if detail.contains("not our ref")
        || detail.contains("unadvertised")
        || detail.contains("didn't have the requested revision")
    {
        FailureKind::CommitRefused
    } else if detail.contains("didn't have any ref that matched") {
        FailureKind::RefNotFound
    } else {
        FailureKind::Other
    }
}

fn has_unreachable_io_error(err: &gix::Error) -> bool {
    err.iter_errors().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::TimedOut
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_stderr_explains_a_bare_io_error() {
        let bare = Failure { kind: FailureKind::Other, detail: "failed to fill whole buffer".into() };
        let denied = bare.with_ssh_stderr("\nroot@h: Permission denied (publickey).\n");
        assert_eq!(denied.kind, FailureKind::Other);
        assert_eq!(denied.detail, "failed to fill whole buffer; ssh said: root@h: Permission denied (publickey).");

        let bare = Failure { kind: FailureKind::Other, detail: "failed to fill whole buffer".into() };
        let refused = bare.with_ssh_stderr("ssh: connect to host h port 22: Connection refused\n");
        assert_eq!(refused.kind, FailureKind::Unreachable);

        let known = Failure { kind: FailureKind::RefNotFound, detail: "x".into() };
        assert_eq!(known.with_ssh_stderr("").detail, "x");
    }
}
