// Long file: the three source newtypes (GitRef, RepoUrl, DockerfilePath) share their parsing rules and tests.
//! Where source code comes from: repository URLs, refs and Dockerfile paths.
//! Each is checked here because each ends up on a `git`/`ssh` command line or
//! as a path inside a build context.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ids::string_newtype;
use crate::secret::REDACTED;

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
    /// `https://`.
    Https,
    /// `ssh://` or `user@host:path`, with a deploy key.
    Ssh,
    /// `git://`, the git daemon's own protocol.
    Git,
    /// `file://`, a repository on this machine.
    File,
}

/// A repository URL: `https://`, `ssh://`, scp-like `user@host:path`, `git://`,
/// and `file://` only where the caller explicitly allows local repositories.
/// `ext::` and every other remote helper are refused: they run commands.
///
/// The URL may carry credentials (`https://user:token@host/…`, or a bare
/// token as the user), so it is handled like a [`crate::Secret`]: `Display`,
/// `Debug` and `Serialize` give [`RepoUrl::redacted`], and only
/// [`RepoUrl::expose`] gives the URL as written, for the fetcher.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepoUrl(String);

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({})", self.redacted())
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RepoUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RepoUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&str> for RepoUrl {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self, Error> {
        value.parse()
    }
}

/// The userinfo of `scheme://userinfo@host/…`: its byte range in `s`, if the
/// authority has one. The authority ends at the first `/`, `?` or `#`.
fn userinfo_range(s: &str) -> Option<(usize, usize)> {
    let start = s.find("://")? + 3;
    let rest = &s[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_len].rfind('@')?;
    Some((start, start + at))
}

/// `s` with anything that may be a credential replaced by `***`, for
/// messages about a string that may not even be a valid URL. Conservative:
/// for `scheme://…` everything before the last `@` goes (a password may hold
/// a `/`); scp-like `user:password@host:path` loses the part before the `@`.
pub fn redact_url_text(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        return match rest.rfind('@') {
            Some(at) => format!("{}://***{}", &s[..scheme_end], &rest[at..]),
            None => s.to_owned(),
        };
    }
    match s.split_once('@') {
        Some((user, host)) if user.contains(':') => format!("***@{host}"),
        _ => s.to_owned(),
    }
}

impl RepoUrl {
    /// Parses a URL, accepting `file://` as well: for local use (CLI, tests).
    pub fn parse_allowing_file(s: &str) -> Result<Self, Error> {
        Self::parse(s, true)
    }

    fn parse(s: &str, allow_file: bool) -> Result<Self, Error> {
        // The value is quoted in the error: never with its credentials.
        let bad = |reason: &str| Err(Error::invalid("repository URL", redact_url_text(s), reason));
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
        if let Some((scheme, rest)) = s.split_once("://") {
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "https" => Transport::Https,
                "ssh" => Transport::Ssh,
                "git" => Transport::Git,
                "file" if allow_file => Transport::File,
                "file" => return bad("file:// repositories are only allowed for local use"),
                "http" => return bad("plain http:// is not allowed; use https://"),
                other => {
                    return bad(&format!(
                        "unsupported scheme {:?}; use https://, ssh://, git:// or user@host:path",
                        redact_url_text(other)
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
                // One reading of where the credentials end, shared by
                // `redacted` and git: an '@' past the host is refused.
                if rest[authority.len()..].contains('@') || authority.contains(['?', '#']) {
                    return bad("'@' may only separate credentials from the host, before the first '/'");
                }
            }
        } else {
            // scp-like: [user@]host:path, with the ':' before any '/'.
            match s.split_once(':') {
                Some((userhost, path)) if !userhost.contains('/') => {
                    let host = userhost.rsplit('@').next().unwrap_or_default();
                    if host.is_empty() || host.starts_with('-') || path.is_empty() || path.starts_with('-') {
                        return bad("scp-like URLs look like git@host:owner/repo.git");
                    }
                    if path.contains('@') {
                        return bad("scp-like URLs carry no password; use an SSH key (--ssh-key)");
                    }
                }
                _ => {
                    return bad("must be a URL (https://, ssh://, git://) or scp-like git@host:path");
                }
            }
        }
        Ok(RepoUrl(s.to_owned()))
    }

    /// The URL as written, credentials included: only for handing to git.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// How the repository is reached.
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

    /// The host the URL names (without user or port), for policy checks
    /// such as "is this git:// server on this machine". `None` for file://.
    pub fn host(&self) -> Option<&str> {
        let authority = match self.0.split_once("://") {
            Some((_, rest)) => rest.split('/').next().unwrap_or_default(),
            None => self.0.split(':').next().unwrap_or_default(),
        };
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = if let Some(v6) = host_port.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            host_port.split(':').next().unwrap_or_default()
        };
        (!host.is_empty()).then_some(host)
    }

    /// The part of the userinfo that is a credential: the password of
    /// `user:password@`, or for https and git:// a bare user (a token).
    /// SSH user names (`git@…`) are not secrets.
    pub fn credential(&self) -> Option<&str> {
        let (start, end) = userinfo_range(&self.0)?;
        let userinfo = &self.0[start..end];
        let secret = match userinfo.split_once(':') {
            Some((_, password)) => password,
            None if self.transport() == Transport::Ssh => return None,
            None => userinfo,
        };
        (!secret.is_empty()).then_some(secret)
    }

    /// The URL without any credentials, for logs, errors and labels:
    /// `https://bot:***@h/r`, `https://***@h/r` for a token-only URL.
    pub fn redacted(&self) -> String {
        let Some((start, end)) = userinfo_range(&self.0) else {
            return self.0.clone();
        };
        let userinfo = &self.0[start..end];
        let shown = match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}"),
            None if self.transport() == Transport::Ssh => userinfo.to_owned(),
            None => REDACTED.to_owned(),
        };
        format!("{}{shown}{}", &self.0[..start], &self.0[end..])
    }

    /// This URL with `credentials` (`user:password` or a token) as its
    /// userinfo, replacing any it had. Only for https:// URLs: other
    /// transports authenticate otherwise (an SSH key).
    pub fn with_credentials(&self, credentials: &crate::Secret) -> Result<Self, Error> {
        if self.transport() != Transport::Https {
            return Err(Error::invalid(
                "repository URL",
                self.redacted(),
                "credentials can only be given for https:// URLs; use an SSH key for ssh",
            ));
        }
        let raw = credentials.expose().trim();
        if raw.is_empty() || raw.contains(['\n', '\r']) {
            return Err(Error::invalid("repository credentials", REDACTED, "must be one line: TOKEN or USER:PASSWORD"));
        }
        let userinfo = match raw.split_once(':') {
            Some((user, password)) => format!("{}:{}", percent_encode(user), percent_encode(password)),
            None => percent_encode(raw),
        };
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("https", &self.0));
        let without = match userinfo_range(&self.0) {
            Some((_, end)) => &self.0[end + 1..],
            None => rest,
        };
        Ok(RepoUrl(format!("{scheme}://{userinfo}@{without}")))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    /// The path, relative to the build context.
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
        assert_eq!(u.credential(), Some("tok3n"));
        assert_eq!(u.to_string(), "https://bot:***@h/o/r");
        assert_eq!(format!("{u:?}"), "RepoUrl(https://bot:***@h/o/r)");
        assert_eq!(serde_json::to_string(&u).expect("ser"), "\"https://bot:***@h/o/r\"");
        assert_eq!(u.expose(), "https://bot:tok3n@h/o/r");
    }

    #[test]
    fn token_only_urls_are_redacted_and_ssh_users_kept() {
        let u: RepoUrl = "https://ghp_T0KEN@github.com/o/r.git".parse().expect("valid");
        assert_eq!(u.redacted(), "https://***@github.com/o/r.git");
        assert_eq!(u.credential(), Some("ghp_T0KEN"));
        let u: RepoUrl = "git://T0KEN@127.0.0.1/r.git".parse().expect("valid");
        assert_eq!(u.redacted(), "git://***@127.0.0.1/r.git");
        let u: RepoUrl = "ssh://git@h:2222/o/r.git".parse().expect("valid");
        assert_eq!((u.redacted().as_str(), u.credential()), ("ssh://git@h:2222/o/r.git", None));
        let u: RepoUrl = "git@h:o/r.git".parse().expect("valid");
        assert_eq!((u.redacted().as_str(), u.host()), ("git@h:o/r.git", Some("h")));
        let u: RepoUrl = "https://u:p@h:8443/r".parse().expect("valid");
        assert_eq!(u.host(), Some("h"));
    }

    #[test]
    fn invalid_urls_are_quoted_without_credentials() {
        for bad in [
            "https://bot:s3cr3t@h",
            "https://s3cr3t@h",
            "https://bot:s3/cr3t@h/",
            "ftp://bot:s3cr3t@h/r",
            "https://bot:s3cr3t@h/a b",
            "bot:s3cr3t@h:r",
            "http://bot:s3cr3t@h/r",
        ] {
            let e = bad.parse::<RepoUrl>().expect_err(bad).to_string();
            assert!(!e.contains("s3cr3t") && !e.contains("cr3t"), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_from_a_file_are_encoded_into_https_urls_only() {
        let u: RepoUrl = "https://old@h/o/r.git".parse().expect("valid");
        let with = u.with_credentials(&crate::Secret::new("bot:p@ss/w:rd")).expect("https");
        assert_eq!(with.expose(), "https://bot:p%40ss%2Fw%3Ard@h/o/r.git");
        assert_eq!(with.redacted(), "https://bot:***@h/o/r.git");
        let token = "https://h/o/r.git"
            .parse::<RepoUrl>()
            .expect("valid")
            .with_credentials(&crate::Secret::new("tok"))
            .expect("ok");
        assert_eq!(token.expose(), "https://tok@h/o/r.git");
        assert!("git@h:o/r".parse::<RepoUrl>().expect("valid").with_credentials(&crate::Secret::new("t")).is_err());
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
                prop_assert!(!v.expose().contains("::"));
                if v.credential().is_some() {
                    let shown = RepoUrl::parse_allowing_file(&v.redacted()).ok();
                    prop_assert_eq!(shown.as_ref().and_then(|r| r.credential()), Some("***"));
                }
                prop_assert_eq!(RepoUrl::parse_allowing_file(v.expose()).ok(), Some(v));
            }
            if let Ok(v) = s.parse::<DockerfilePath>() {
                prop_assert!(!v.as_path().is_absolute());
                prop_assert!(v.as_path().components().all(|c| matches!(c, Component::Normal(_))));
                prop_assert_eq!(v.as_str().parse::<DockerfilePath>().ok(), Some(v));
            }
        }
    }
}
