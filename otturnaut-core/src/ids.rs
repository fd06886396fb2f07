//! Identifiers that end up in container names, image tags, Caddy ids and env.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Implements the conversions every validated string newtype shares: parse
/// through `FromStr`, (de)serialise as the plain string, display as is.
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                value.parse()
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self, Error> {
                value.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_newtype;

/// A DNS label: lowercase `a-z`, `0-9` and `-`, 1 to 63 characters, no `-` at
/// either end. The same checks make it safe in a Docker name, an image
/// repository, a Caddy `@id` and a file name.
fn check_dns_label(what: &'static str, s: &str) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::invalid(what, s, reason));
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > 63 {
        return bad("must be at most 63 characters");
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return bad(&format!("may contain only lowercase letters, digits and '-' (found {c:?})"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    Ok(())
}

/// The name of an application, e.g. `shop-frontend`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(String);
string_newtype!(AppId);

impl ::std::fmt::Debug for AppId {
    fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
        write!(f, "AppId({})", self.0)
    }
}

impl FromStr for AppId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        check_dns_label("app id", s)?;
        Ok(AppId(s.to_owned()))
    }
}

/// One attempt to deploy an app. A lowercase ULID: 26 characters, sortable by
/// creation time, valid in Docker names and image tags.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentId(String);
string_newtype!(DeploymentId);

impl ::std::fmt::Debug for DeploymentId {
    fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
        write!(f, "DeploymentId({})", self.0)
    }
}

impl DeploymentId {
    /// A new id, later than every id made before it in an earlier millisecond.
    pub fn generate() -> Self {
        DeploymentId(ulid::Ulid::new().to_string().to_ascii_lowercase())
    }

    /// When the deployment was created, from the ULID's timestamp.
    pub fn created(&self) -> std::time::SystemTime {
        // A parsed id is always a valid ULID, so this cannot fail.
        ulid::Ulid::from_string(&self.0.to_ascii_uppercase()).map(|u| u.datetime()).unwrap_or(std::time::UNIX_EPOCH)
    }
}

impl FromStr for DeploymentId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() != 26 || s.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(Error::invalid("deployment id", s, "must be a 26-character lowercase ULID"));
        }
        ulid::Ulid::from_string(&s.to_ascii_uppercase())
            .map_err(|e| Error::invalid("deployment id", s, format!("not a ULID: {e}")))?;
        Ok(DeploymentId(s.to_owned()))
    }
}

/// A host name Caddy routes to the app, e.g. `shop.example.com`. Stored
/// lowercase; a single leading `*.` wildcard label is allowed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Domain(String);
string_newtype!(Domain);

impl Domain {
    /// `*.example.com`: one leading wildcard label, the only kind accepted.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// True when this wildcard covers the exact host `host`, as Caddy's host
    /// matcher does: `*.example.com` covers `a.example.com`, but neither
    /// `example.com` nor `a.b.example.com`.
    pub fn covers(&self, host: &Domain) -> bool {
        let Some(suffix) = self.0.strip_prefix("*.") else {
            return false;
        };
        !host.is_wildcard() && host.0.split_once('.').is_some_and(|(_, rest)| rest == suffix)
    }
}

/// The first of `domains` that another app already has, with that app.
/// Domains are lowercase once parsed, so equality is case-insensitive; two
/// identical wildcards conflict, while a wildcard and an exact host it covers
/// do not (the exact host wins, see the Caddy adapter).
pub fn domain_conflict<'a, I>(app: &AppId, domains: &[Domain], others: I) -> Option<(Domain, AppId)>
where
    I: IntoIterator<Item = (&'a AppId, &'a [Domain])>,
{
    others
        .into_iter()
        .filter(|(owner, _)| *owner != app)
        .find_map(|(owner, theirs)| domains.iter().find(|d| theirs.contains(d)).map(|d| (d.clone(), owner.clone())))
}

impl FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.to_ascii_lowercase();
        let bad = |reason: &str| Err(Error::invalid("domain", s, reason));
        if lower.is_empty() || lower.len() > 253 {
            return bad("must be 1 to 253 characters");
        }
        let rest = lower.strip_prefix("*.").unwrap_or(&lower);
        for label in rest.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("each dot-separated label must be 1 to 63 characters");
            }
            if !label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return bad("may contain only letters, digits, '-' and '.'");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label must not start or end with '-'");
            }
        }
        Ok(Domain(lower))
    }
}

/// The name of an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EnvName(String);
string_newtype!(EnvName);

impl FromStr for EnvName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut chars = s.chars();
        let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || s.len() > 256 {
            return Err(Error::invalid(
                "environment variable name",
                s,
                "must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)",
            ));
        }
        Ok(EnvName(s.to_owned()))
    }
}

/// A Docker image reference such as `nginx`, `registry:5000/team/app:1.2` or
/// `app@sha256:…`. Checked against Docker's reference grammar (simplified):
/// lowercase path components, an optional tag, an optional digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ImageRef(String);
string_newtype!(ImageRef);

impl ImageRef {
    /// One of our own tags, `otturnaut-{app}:{tag}`: valid by construction,
    /// since an app id is a DNS label and `tag` a deployment id with at most
    /// a `live-`/`kept-` prefix.
    pub(crate) fn ours(app: &AppId, tag: fmt::Arguments<'_>) -> ImageRef {
        ImageRef(format!("otturnaut-{app}:{tag}"))
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Err(Error::invalid("image reference", s, reason));
        if s.is_empty() || s.len() > 255 {
            return bad("must be 1 to 255 characters");
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let valid = d.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty()
                    && alg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && hex.len() >= 32
                    && hex.chars().all(|c| c.is_ascii_hexdigit())
            });
            if !valid {
                return bad("digest must look like sha256:<hex>");
            }
        }
        // A tag follows the last ':' only if no '/' comes after it (else it is a registry port).
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return bad("tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
            }
        }
        let mut parts = name.split('/').peekable();
        let mut first = true;
        while let Some(part) = parts.next() {
            let is_registry =
                first && parts.peek().is_some() && (part.contains('.') || part.contains(':') || part == "localhost");
            first = false;
            let ok = if is_registry {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            } else {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && part.ends_with(|c: char| c.is_ascii_alphanumeric())
            };
            if !ok {
                return bad("repository path components must be lowercase [a-z0-9._-]");
            }
        }
        Ok(ImageRef(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let d = |s: &str| s.parse::<Domain>().expect("valid domain");
        assert!(d("*.example.com").covers(&d("a.example.com")));
        assert!(d("*.EXAMPLE.com").covers(&d("A.example.COM")), "case-insensitive");
        assert!(!d("*.example.com").covers(&d("example.com")));
        assert!(!d("*.example.com").covers(&d("a.b.example.com")));
        assert!(!d("*.example.com").covers(&d("*.example.com")), "a wildcard is not an exact host");
        assert!(!d("a.example.com").covers(&d("a.example.com")), "only wildcards cover");
    }

    #[test]
    fn domain_conflicts_name_the_other_app() {
        let d = |s: &str| s.parse::<Domain>().expect("valid domain");
        let app = |s: &str| s.parse::<AppId>().expect("valid app");
        let (victim, evil) = (app("victim"), app("evil"));
        let theirs = vec![d("shop.localhost"), d("*.example.com")];
        let others = [(&victim, theirs.as_slice())];
        assert_eq!(domain_conflict(&evil, &[d("SHOP.localhost")], others), Some((d("shop.localhost"), victim.clone())));
        assert_eq!(domain_conflict(&evil, &[d("*.Example.com")], others), Some((d("*.example.com"), victim.clone())));
        assert_eq!(domain_conflict(&evil, &[d("a.example.com")], others), None, "exact beats wildcard");
        assert_eq!(domain_conflict(&victim, &[d("shop.localhost")], others), None, "its own domain");
    }

    #[test]
    fn app_ids() {
        for ok in ["a", "shop", "shop-frontend", "a1", &"x".repeat(63)] {
            assert!(ok.parse::<AppId>().is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Shop", "a_b", "a.b", "a b", &"x".repeat(64), "é"] {
            assert!(bad.parse::<AppId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deployment_ids_sort_by_time_and_round_trip() {
        let a = DeploymentId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = DeploymentId::generate();
        assert!(a < b);
        assert_eq!(a.as_str().parse::<DeploymentId>().ok(), Some(a.clone()));
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<DeploymentId>().is_err());
    }

    #[test]
    fn domains_and_images() {
        assert_eq!("Shop.Example.com".parse::<Domain>().map(String::from).ok(), Some("shop.example.com".into()));
        assert!("*.example.com".parse::<Domain>().is_ok());
        for bad in ["", "a..b", "-a.com", "a_b.com", "exa mple.com", "a.com/x"] {
            assert!(bad.parse::<Domain>().is_err(), "{bad}");
        }
        for ok in [
            "nginx",
            "nginx:1.25",
            "localhost:5000/team/app:v1",
            "otturnaut-hello:01h",
            "a/b@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert!(ok.parse::<ImageRef>().is_ok(), "{ok}");
        }
        for bad in ["", "Nginx", "a:", "a:-x", "a//b", "--help", "a b"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_round_trip(s in "\\PC{0,80}") {
            if let Ok(v) = s.parse::<AppId>() { prop_assert_eq!(v.as_str().parse::<AppId>().ok(), Some(v)); }
            if let Ok(v) = s.parse::<Domain>() { prop_assert_eq!(v.as_str().parse::<Domain>().ok(), Some(v)); }
            if let Ok(v) = s.parse::<EnvName>() { prop_assert_eq!(v.as_str().parse::<EnvName>().ok(), Some(v)); }
            if let Ok(v) = s.parse::<ImageRef>() { prop_assert_eq!(v.as_str().parse::<ImageRef>().ok(), Some(v)); }
            let _ = s.parse::<DeploymentId>();
        }

        #[test]
        fn valid_app_ids_are_accepted(s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            prop_assert!(s.parse::<AppId>().is_ok());
        }
    }
}
