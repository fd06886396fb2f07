// Long file: every runtime option's validated type with its parser and tests, kept together.
//! The validated values of [`crate::RuntimeOptions`]: limits, volumes,
//! networks, a command line and log options. Each parses from the form a
//! user types (`512m`, `1.5`, `data:/var/lib/app:ro`) and serialises back to
//! it, so a value that exists is one Docker accepts.
//!
//! (Over 500 lines with its unit tests: one small validated type per option, kept together.)

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ids::string_newtype;

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`.
macro_rules! via_string {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
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

/// What a message may repeat of a value: the start of it, printable.
fn shown(s: &str) -> String {
    s.chars().take(128).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A memory limit in bytes, written `512m`, `1g`, `300000k` or `1048576`
/// (`b`, `k`, `m`, `g`: powers of 1024, as `docker run --memory`). Docker
/// refuses less than 6 MiB.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MemorySize(u64);
via_string!(MemorySize);

impl MemorySize {
    /// 6 MiB, Docker's minimum.
    pub const MIN: u64 = 6 * 1024 * 1024;
    /// 1 TiB: more is a typo.
    pub const MAX: u64 = 1 << 40;

    /// The limit in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// `10m`, `1g`, `512k`, `100` (bytes): a size as Docker writes it.
fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn format_size(bytes: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return write!(f, "{}{unit}", bytes >> shift);
        }
    }
    write!(f, "{bytes}")
}

impl FromStr for MemorySize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let what = "memory limit";
        let bytes = parse_size(s).ok_or_else(|| {
            Error::invalid(what, shown(s), "expected a size such as 512m or 2g (k, m, g: KiB, MiB, GiB)")
        })?;
        if !(Self::MIN..=Self::MAX).contains(&bytes) {
            return Err(Error::invalid(what, shown(s), "must be at least 6m (Docker's minimum) and at most 1024g"));
        }
        Ok(MemorySize(bytes))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_size(self.0, f)
    }
}

/// A CPU limit in CPUs, `0.5` or `2`: at least 0.01, at most 1024, with at
/// most 9 decimals (Docker counts billionths).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Cpus(u64);
via_string!(Cpus);

impl Cpus {
    const NANO: u64 = 1_000_000_000;

    /// Billionths of a CPU, Docker's `NanoCpus`.
    pub fn nano(self) -> u64 {
        self.0
    }
}

impl FromStr for Cpus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad =
            || Error::invalid("cpu limit", shown(s), "expected a number of CPUs from 0.01 to 1024, e.g. 0.5 or 2");
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 || whole.len() > 4 {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
        let nano = whole * Self::NANO + frac;
        if !(Self::NANO / 100..=1024 * Self::NANO).contains(&nano) {
            return Err(bad());
        }
        Ok(Cpus(nano))
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / Self::NANO, self.0 % Self::NANO);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let frac = format!("{frac:09}");
        write!(f, "{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// The most processes (and threads) the container may run: 1 to 4194304
/// (the kernel's own ceiling).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct PidsLimit(i64);
via_string!(PidsLimit);

impl PidsLimit {
    /// The limit, as Docker's `PidsLimit` takes it.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl FromStr for PidsLimit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.parse::<i64>() {
            Ok(n) if (1..=4_194_304).contains(&n) => Ok(PidsLimit(n)),
            _ => Err(Error::invalid("pids limit", shown(s), "expected a whole number from 1 to 4194304")),
        }
    }
}

impl fmt::Display for PidsLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Docker volume or network name: a letter or digit, then letters,
/// digits, `_`, `.` and `-`; 2 to 64 characters (Docker's own rule, capped).
fn check_docker_name(what: &'static str, s: &str) -> Result<(), Error> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(2..=64).contains(&s.len()) || !first_ok || !rest_ok {
        return Err(Error::invalid(
            what,
            shown(s),
            "must be 2 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// A named Docker volume.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct VolumeName(String);
string_newtype!(VolumeName);

impl FromStr for VolumeName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        check_docker_name("volume name", s)?;
        Ok(VolumeName(s.to_owned()))
    }
}

/// A user-defined Docker network, joined by name.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct NetworkName(String);
string_newtype!(NetworkName);

impl FromStr for NetworkName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        check_docker_name("network name", s)?;
        // Docker's own modes are not networks to create or join by name.
        if matches!(s, "bridge" | "host" | "none" | "default") {
            return Err(Error::invalid(
                "network name",
                s,
                "is one of Docker's network modes, not a user-defined network",
            ));
        }
        Ok(NetworkName(s.to_owned()))
    }
}

/// An absolute path without `..`, `:` or control characters, at most 4096
/// bytes: safe in a `SRC:DST` mount string.
fn check_mount_path(what: &'static str, s: &str) -> Result<(), Error> {
    let path = Path::new(s);
    let ok = s.starts_with('/')
        && s.len() <= 4096
        && !s.contains(':')
        && !s.chars().any(char::is_control)
        && path.components().all(|c| !matches!(c, Component::ParentDir));
    if !ok {
        return Err(Error::invalid(what, shown(s), "must be an absolute path without '..', ':' or control characters"));
    }
    Ok(())
}

/// Where a volume's data comes from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum VolumeSource {
    /// A named Docker volume, created (and labelled with the app) if missing.
    Named(VolumeName),
    /// A host directory or file (absolute path).
    Bind(String),
}

/// `NAME:/path[:ro]` or `/host/path:/path[:ro]`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct VolumeSpec {
    /// The volume or host path mounted.
    pub source: VolumeSource,
    /// Where it appears in the container (absolute, not `/`).
    pub target: String,
    /// Mounted read-only (`:ro`); default read-write.
    pub read_only: bool,
}
via_string!(VolumeSpec);

impl FromStr for VolumeSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let what = "volume";
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts[..] {
            [source, target] => (source, target, false),
            [source, target, "ro"] => (source, target, true),
            [source, target, "rw"] => (source, target, false),
            _ => {
                return Err(Error::invalid(
                    what,
                    shown(s),
                    "expected NAME:/container/path or /host/path:/container/path, optionally followed by :ro",
                ));
            }
        };
        let source = if source.starts_with('/') {
            check_mount_path("volume host path", source)?;
            if Path::new(source).components().count() < 2 {
                // The whole host's file system in a container is root on the host.
                return Err(Error::invalid("volume host path", source, "must not be '/'"));
            }
            VolumeSource::Bind(source.to_owned())
        } else {
            VolumeSource::Named(source.parse()?)
        };
        check_mount_path("volume container path", target)?;
        if Path::new(target).components().count() < 2 {
            return Err(Error::invalid("volume container path", target, "must not be '/'"));
        }
        Ok(VolumeSpec { source, target: target.trim_end_matches('/').to_owned(), read_only })
    }
}

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            VolumeSource::Named(name) => write!(f, "{name}:{}", self.target)?,
            VolumeSource::Bind(path) => write!(f, "{path}:{}", self.target)?,
        }
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// A command line split like a shell would (quotes, escapes) but never run
/// by one: `--command "bundle exec puma -p 8080"`. At least one word; no NUL.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    /// The program and its arguments, as Docker's `Cmd`/`Entrypoint` take them.
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for CommandLine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let what = "command line";
        if s.contains('\0') || s.len() > 64 * 1024 {
            return Err(Error::invalid(what, shown(s), "must be at most 64 KiB without NUL bytes"));
        }
        let words = shlex::split(s)
            .ok_or_else(|| Error::invalid(what, shown(s), "has an unclosed quote or a trailing backslash"))?;
        CommandLine::try_from(words)
    }
}

impl TryFrom<Vec<String>> for CommandLine {
    type Error = Error;
    fn try_from(words: Vec<String>) -> Result<Self, Error> {
        if words.is_empty() {
            return Err(Error::invalid("command line", "", "must have at least one word"));
        }
        if words.iter().any(|w| w.contains('\0')) {
            return Err(Error::invalid("command line", "", "must not contain NUL bytes"));
        }
        Ok(CommandLine(words))
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> =
            self.0.iter().map(|w| shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned())).collect();
        f.write_str(&quoted.join(" "))
    }
}

/// Serialised as the list of words, the form Docker and the JSON API use.
impl Serialize for CommandLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Accepts the list of words or one string to split.
impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Words(Vec<String>),
            Line(String),
        }
        match Raw::deserialize(d)? {
            Raw::Words(words) => CommandLine::try_from(words),
            Raw::Line(line) => line.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// One option of Docker's `json-file` log driver, `KEY=VALUE`: `max-size`
/// (a size), `max-file` (1 to 100), `compress` (true/false), or `labels`,
/// `labels-regex`, `env`, `env-regex`, `tag` (free text).
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct LogOpt {
    key: String,
    value: String,
}
via_string!(LogOpt);

impl LogOpt {
    /// The json-file options Otturnaut sets unless told otherwise: rotation
    /// at 10 MiB, three files kept, so a chatty app cannot fill the disk.
    pub const DEFAULTS: [(&'static str, &'static str); 2] = [("max-size", "10m"), ("max-file", "3")];

    /// The option's name, e.g. `max-size`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The option's value as Docker takes it, e.g. `10m`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for LogOpt {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let what = "log option";
        let (key, value) = s.split_once('=').ok_or_else(|| Error::invalid(what, shown(s), "expected KEY=VALUE"))?;
        let valid = match key {
            "max-size" => parse_size(value).is_some_and(|n| n > 0),
            "max-file" => value.parse::<u32>().is_ok_and(|n| (1..=100).contains(&n)),
            "compress" => matches!(value, "true" | "false"),
            "labels" | "labels-regex" | "env" | "env-regex" | "tag" => {
                value.len() <= 1024 && !value.chars().any(char::is_control)
            }
            _ => {
                return Err(Error::invalid(
                    what,
                    shown(s),
                    "the json-file log driver knows max-size, max-file, compress, labels, labels-regex, env, env-regex and tag",
                ));
            }
        };
        if !valid {
            return Err(Error::invalid(
                what,
                shown(s),
                "max-size takes a size (e.g. 10m), max-file 1 to 100, compress true or false",
            ));
        }
        Ok(LogOpt { key: key.to_owned(), value: value.to_owned() })
    }
}

impl fmt::Display for LogOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_back() {
        for (raw, bytes, back) in [
            ("512m", 512 << 20, "512m"),
            ("1g", 1 << 30, "1g"),
            ("1536M", 1536 << 20, "1536m"),
            ("7340032", 7 << 20, "7m"),
            ("10000k", 10000 << 10, "10000k"),
            ("6MiB", 6 << 20, "6m"),
        ] {
            let m: MemorySize = raw.parse().expect(raw);
            assert_eq!(m.bytes(), bytes, "{raw}");
            assert_eq!(m.to_string(), back, "{raw}");
        }
        for bad in ["", "m", "5m", "-1g", "1.5g", "2t", "99999999999999999999g", "1025g", "12 m", "0x10m"] {
            assert!(bad.parse::<MemorySize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_are_exact_billionths() {
        for (raw, nano, back) in
            [("1.5", 1_500_000_000, "1.5"), ("2", 2_000_000_000, "2"), (".25", 250_000_000, "0.25")]
        {
            let c: Cpus = raw.parse().expect(raw);
            assert_eq!(c.nano(), nano);
            assert_eq!(c.to_string(), back);
        }
        for bad in ["", ".", "0", "0.001", "1025", "1.2.3", "-1", "1e3", "nan", "1.0000000001", "99999"] {
            assert!(bad.parse::<Cpus>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pids_limits_are_positive() {
        assert_eq!("100".parse::<PidsLimit>().expect("ok").get(), 100);
        for bad in ["0", "-1", "x", "4194305", ""] {
            assert!(bad.parse::<PidsLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_are_named_or_bound() {
        let v: VolumeSpec = "data:/var/lib/app".parse().expect("named");
        assert_eq!(v.source, VolumeSource::Named("data".parse().expect("name")));
        assert!(!v.read_only);
        let v: VolumeSpec = "/srv/conf:/etc/app/:ro".parse().expect("bind");
        assert_eq!(v.source, VolumeSource::Bind("/srv/conf".into()));
        assert_eq!((v.target.as_str(), v.read_only), ("/etc/app", true));
        assert_eq!(v.to_string(), "/srv/conf:/etc/app:ro");
        for bad in [
            "data",
            "data:relative",
            "data:/",
            "d:/x",
            "-data:/x",
            "data:/x:rx",
            "data:/a/../b",
            "../x:/y",
            "/a/../etc:/y",
            "data:/x:ro:ro",
            "da ta:/x",
            "/:/host",
            "//:/host",
            "",
        ] {
            assert!(bad.parse::<VolumeSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_exclude_dockers_modes() {
        assert!("backend".parse::<NetworkName>().is_ok());
        for bad in ["host", "bridge", "none", "x", "a/b", "-net", ""] {
            assert!(bad.parse::<NetworkName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn command_lines_split_like_a_shell_without_one() {
        let c: CommandLine = r#"sh -c 'echo "hi there"; exit 3' x\ y"#.parse().expect("ok");
        assert_eq!(c.words(), ["sh", "-c", r#"echo "hi there"; exit 3"#, "x y"]);
        let again: CommandLine = c.to_string().parse().expect("round trip");
        assert_eq!(again, c);
        let json: CommandLine = serde_json::from_str(r#"["a","b c"]"#).expect("list");
        assert_eq!(json.words(), ["a", "b c"]);
        assert_eq!(serde_json::to_string(&json).expect("ser"), r#"["a","b c"]"#);
        for bad in ["", "   ", "'unclosed", "a\\", "a\0b"] {
            assert!(bad.parse::<CommandLine>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<CommandLine>("[]").is_err());
    }

    #[test]
    fn log_options_are_json_file_ones() {
        for ok in ["max-size=50m", "max-file=5", "compress=true", "tag={{.Name}}"] {
            assert_eq!(ok.parse::<LogOpt>().expect(ok).to_string(), ok);
        }
        for bad in ["max-size=lots", "max-file=0", "max-file=1000", "compress=yes", "mode=non-blocking", "max-size"] {
            assert!(bad.parse::<LogOpt>().is_err(), "{bad}");
        }
    }
}
