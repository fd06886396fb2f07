//! Ports: the one the app listens on inside its container, the one we bind on
//! the host, and the range host ports are allocated from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

macro_rules! port_newtype {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, ": 1 to 65535, never 0.")]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(try_from = "u16", into = "u16")]
        pub struct $name(u16);

        impl $name {
            /// The port number.
            pub fn get(self) -> u16 {
                self.0
            }
        }

        impl TryFrom<u16> for $name {
            type Error = Error;
            fn try_from(v: u16) -> Result<Self, Error> {
                if v == 0 {
                    return Err(Error::invalid($what, "0", "must be between 1 and 65535"));
                }
                Ok($name(v))
            }
        }

        impl From<$name> for u16 {
            fn from(p: $name) -> u16 {
                p.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                let n: u16 =
                    s.trim().parse().map_err(|_| Error::invalid($what, s, "must be a number between 1 and 65535"))?;
                n.try_into().map_err(|_| Error::invalid($what, s, "must be between 1 and 65535"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

port_newtype!(ContainerPort, "container port");
port_newtype!(HostPort, "host port");

/// An inclusive range of host ports, e.g. `10000-20000`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    start: HostPort,
    end: HostPort,
}

impl PortRange {
    /// The ports `start..=end`; refuses a reversed range or one reaching
    /// below 1024 (privileged ports).
    pub fn new(start: u16, end: u16) -> Result<Self, Error> {
        let text = format!("{start}-{end}");
        if start < 1024 {
            return Err(Error::invalid(
                "port range",
                text,
                "must start at 1024 or above (privileged ports are not ours to hand out)",
            ));
        }
        if start > end {
            return Err(Error::invalid("port range", text, "start must not be greater than end"));
        }
        Ok(PortRange { start: HostPort(start), end: HostPort(end) })
    }

    /// The first port.
    pub fn start(self) -> HostPort {
        self.start
    }

    /// The last port (included).
    pub fn end(self) -> HostPort {
        self.end
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: HostPort) -> bool {
        self.start <= port && port <= self.end
    }

    /// How many ports there are.
    pub fn len(self) -> usize {
        usize::from(self.end.0 - self.start.0) + 1
    }

    /// Never true for a valid range; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Every port, in order.
    pub fn iter(self) -> impl Iterator<Item = HostPort> {
        (self.start.0..=self.end.0).map(HostPort)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { start: HostPort(10000), end: HostPort(20000) }
    }
}

impl FromStr for PortRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| Error::invalid("port range", s, "must look like START-END, e.g. 10000-20000"))?;
        let num = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| Error::invalid("port range", s, "START and END must be numbers between 1024 and 65535"))
        };
        PortRange::new(num(a)?, num(b)?)
    }
}

impl TryFrom<String> for PortRange {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ports_and_ranges() {
        assert!("0".parse::<HostPort>().is_err());
        assert!("65536".parse::<ContainerPort>().is_err());
        assert_eq!("8080".parse::<ContainerPort>().map(u16::from).ok(), Some(8080));
        let r: PortRange = "10000-10002".parse().expect("valid range");
        assert_eq!(r.iter().map(u16::from).collect::<Vec<_>>(), vec![10000, 10001, 10002]);
        for bad in ["", "10", "20000-10000", "80-90", "a-b", "1000-"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn range_parser_never_panics(s in "\\PC{0,20}") {
            if let Ok(r) = s.parse::<PortRange>() {
                prop_assert_eq!(r.to_string().parse::<PortRange>().ok(), Some(r));
            }
        }
    }
}
