//! Where source code comes from: repository URLs, refs and Dockerfile paths.
//! Each is checked here because each ends up on a `git`/`ssh` command line or
//! as a path inside a build context.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ids::string_newtype;

fn has_control_or_space(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A branch, a tag or a full commit SHA. Follows `git check-ref-format`, and
/// refuses anything `git` could read as an option.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct GitRef(String);
string_newtype!(GitRef);

impl GitRef {
    /// A full 40 (SHA-1) or 64 (SHA-256) hex digit commit id.
    pub fn is_full_sha(&self) -> bool {
        CommitSha::from_str(&self.0).is_ok()
    }
}

impl Default for GitRef {
    fn default() -> Self {
        GitRef("main".into())
    }
}

impl FromStr for GitRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Err(Error::invalid("git ref", s, reason));
        if s.is_empty() || s.len() > 255 {
            return bad("must be 1 to 255 characters");
        }
        if s.starts_with('-') {
            return bad("must not start with '-'");
        }
        if has_control_or_space(s) {
            return bad("must not contain spaces or control characters");
        }
        if s.contains("..") || s.contains("//") || s.contains("@{") || s == "@" {
            return bad("must not contain '..', '//' or '@{' (see git check-ref-format)");
        }
        if s.chars().any(|c| "~^:?*[\\".contains(c)) {
            return bad("must not contain any of ~ ^ : ? * [ \\");
        }
        if s.starts_with('/') || s.ends_with('/') || s.ends_with('.') || s.ends_with(".lock") {
            return bad("must not start or end with '/', or end with '.' or '.lock'");
        }
        if s.split('/').any(|part| part.starts_with('.')) {
            return bad("no path component may start with '.'");
        }
        Ok(GitRef(s.to_owned()))
    }
}

/// A resolved commit id as reported by the fetcher.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CommitSha(String);
string_newtype!(CommitSha);

impl FromStr for CommitSha {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if !(s.len() == 40 || s.len() == 64) || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid("commit SHA", s, "must be 40 or 64 hex digits"));
        }
        Ok(CommitSha(s.to_ascii_lowercase()))
    }
}

/// How a repository is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Https,
    Ssh,
    Git,
    File,
}

/// A repository URL: `https://`, `ssh://`, scp-like `user@host:path`, `git://`,
/// and `file://` only where the caller explicitly allows local repositories.
/// `ext::` and every other remote helper are refused: they run commands.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepoUrl(String);
string_newtype!(RepoUrl);

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({})", self.0)
    }
}

impl RepoUrl {
    /// Parses a URL, accepting `file://` as well: for local use (CLI, tests).
    pub fn parse_allowing_file(s: &str) -> Result<Self, Error> {
        Self::parse(s, true)
    }

    fn parse(s: &str, allow_file: bool) -> Result<Self, Error> {
        let bad = |reason: &str| Err(Error::invalid("repository URL", s, reason));
        if s.is_empty() || s.len() > 2048 {
            return bad("must be 1 to 2048 characters");
        }
        if s.starts_with('-') {
            return bad("must not start with '-'");
        }
        if has_control_or_space(s) {
            return bad("must not contain spaces or control characters");
        }
        if s.contains("::") {
            return bad("remote helpers such as ext:: are not allowed; use https://, ssh://, git:// or user@host:path");
        }
        let transport = if let Some((scheme, rest)) = s.split_once("://") {
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "https" => Transport::Https,
                "ssh" => Transport::Ssh,
                "git" => Transport::Git,
                "file" if allow_file => Transport::File,
                "file" => return bad("file:// repositories are only allowed for local use"),
                "http" => return bad("plain http:// is not allowed; use https://"),
                other => {
                    return bad(&format!(
                        "unsupported scheme {other:?}; use https://, ssh://, git:// or user@host:path"
                    ));
                }
            };
            if transport == Transport::File {
                if !rest.starts_with('/') || rest.len() < 2 {
                    return bad("a file:// URL needs an absolute path, e.g. file:///srv/repo.git");
                }
            } else {
                let authority = rest.split('/').next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                if host.is_empty() || host.starts_with('-') {
                    return bad("needs a host name that does not start with '-'");
                }
                if rest.len() <= authority.len() + 1 {
                    return bad("needs a repository path after the host");
                }
            }
            transport
        } else {
            // scp-like: [user@]host:path, with the ':' before any '/'.
            match s.split_once(':') {
                Some((userhost, path)) if !userhost.contains('/') => {
                    let host = userhost.rsplit('@').next().unwrap_or_default();
                    if host.is_empty() || host.starts_with('-') || path.is_empty() || path.starts_with('-') {
                        return bad("scp-like URLs look like git@host:owner/repo.git");
                    }
                    Transport::Ssh
                }
                _ => {
                    return bad("must be a URL (https://, ssh://, git://) or scp-like git@host:path");
                }
            }
        };
        let _ = transport;
        Ok(RepoUrl(s.to_owned()))
    }

    pub fn transport(&self) -> Transport {
        match self.0.split_once("://") {
            Some((scheme, _)) => match scheme.to_ascii_lowercase().as_str() {
                "https" => Transport::Https,
                "git" => Transport::Git,
                "file" => Transport::File,
                _ => Transport::Ssh,
            },
            None => Transport::Ssh,
        }
    }

    /// The URL without any user:password part, for logs and labels.
    pub fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((userinfo, host)) if userinfo.contains(':') => {
                        let user = userinfo.split(':').next().unwrap_or_default();
                        format!("{scheme}://{user}:***@{host}{path}")
                    }
                    _ => self.0.clone(),
                }
            }
            None => self.0.clone(),
        }
    }
}

impl FromStr for RepoUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s, false)
    }
}

/// A Dockerfile location relative to the root of the source tree, normalised
/// (`./a/../Dockerfile` is `Dockerfile`) and unable to point outside it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DockerfilePath(String);
string_newtype!(DockerfilePath);

impl DockerfilePath {
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Default for DockerfilePath {
    fn default() -> Self {
        DockerfilePath("Dockerfile".into())
    }
}

impl FromStr for DockerfilePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Err(Error::invalid("Dockerfile path", s, reason));
        if s.is_empty() || s.len() > 1024 {
            return bad("must be 1 to 1024 characters");
        }
        if s.chars().any(|c| c.is_control()) || s.contains('\\') {
            return bad("must not contain control characters or backslashes");
        }
        let mut out = PathBuf::new();
        for c in Path::new(s).components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return bad("must stay inside the source tree");
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return bad("must be relative to the repository root");
                }
            }
        }
        match out.to_str() {
            Some("") | None => bad("must name a file"),
            Some(p) => Ok(DockerfilePath(p.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refs() {
        for ok in ["main", "v1.2.3", "feature/x", "0123456789abcdef0123456789abcdef01234567"] {
            assert!(ok.parse::<GitRef>().is_ok(), "{ok}");
        }
        for bad in
            ["", "-main", "--upload-pack=x", "a..b", "a b", "a\nb", "a~1", "x.lock", "a//b", "/a", "@", ".hidden"]
        {
            assert!(bad.parse::<GitRef>().is_err(), "{bad}");
        }
        assert!(GitRef::try_from("0123456789abcdef0123456789abcdef01234567").map(|r| r.is_full_sha()).unwrap_or(false));
        assert!(!GitRef::default().is_full_sha());
    }

    #[test]
    fn urls() {
        for (ok, t) in [
            ("https://github.com/o/r.git", Transport::Https),
            ("ssh://git@host:2222/o/r.git", Transport::Ssh),
            ("git@github.com:o/r.git", Transport::Ssh),
            ("git://127.0.0.1/r.git", Transport::Git),
        ] {
            assert_eq!(ok.parse::<RepoUrl>().map(|u| u.transport()).ok(), Some(t), "{ok}");
        }
        for bad in [
            "",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "-oProxyCommand=x",
            "ssh://-oProxyCommand=x/r",
            "http://h/r",
            "ftp://h/r",
            "file:///srv/r",
            "git@host:-x",
            "https://host",
            "/srv/repo",
            "https://h/a b",
        ] {
            assert!(bad.parse::<RepoUrl>().is_err(), "{bad}");
        }
        assert!(RepoUrl::parse_allowing_file("file:///srv/r.git").is_ok());
        assert!(RepoUrl::parse_allowing_file("file://relative").is_err());
        let u: RepoUrl = "https://bot:tok3n@h/o/r".parse().expect("valid");
        assert_eq!(u.redacted(), "https://bot:***@h/o/r");
    }

    #[test]
    fn dockerfiles() {
        assert_eq!(DockerfilePath::from_str("./a/../Dockerfile").map(String::from).ok(), Some("Dockerfile".into()));
        assert_eq!(
            DockerfilePath::from_str("docker//prod.Dockerfile").map(String::from).ok(),
            Some("docker/prod.Dockerfile".into())
        );
        for bad in ["", "/etc/passwd", "../Dockerfile", "a/../../b", ".", "a\\b"] {
            assert!(bad.parse::<DockerfilePath>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_round_trip(s in "\\PC{0,80}") {
            if let Ok(v) = s.parse::<GitRef>() {
                prop_assert!(!v.as_str().starts_with('-') && !v.as_str().contains(".."));
                prop_assert_eq!(v.as_str().parse::<GitRef>().ok(), Some(v));
            }
            if let Ok(v) = RepoUrl::parse_allowing_file(&s) {
                prop_assert!(!v.as_str().contains("::"));
                prop_assert_eq!(RepoUrl::parse_allowing_file(v.as_str()).ok(), Some(v));
            }
            if let Ok(v) = s.parse::<DockerfilePath>() {
                prop_assert!(!v.as_path().is_absolute());
                prop_assert!(v.as_path().components().all(|c| matches!(c, Component::Normal(_))));
                prop_assert_eq!(v.as_str().parse::<DockerfilePath>().ok(), Some(v));
            }
        }
    }
}
