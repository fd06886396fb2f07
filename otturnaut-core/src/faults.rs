//! Named fault points for tests and the fault-injection harness.
//!
//! A point is an adapter call (`start_container`, `remove_image`, …) and a
//! phase: before or after its side effect. `after` is the lost-response case:
//! the work was done, the caller sees an error.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Before,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultMode {
    /// Fail the first time the point is reached, then behave.
    FailOnce,
    /// Fail every time.
    FailAlways,
    /// Never return (until the caller is cancelled); the first time only.
    Hang,
    /// Panic; the first time only.
    Panic,
}

/// Every call a fault can be attached to, named as in `OTTURNAUT_FAULTS`.
pub const CALLS: &[&str] = &[
    "fetch",
    "remove_source",
    "build",
    "ensure_image",
    "tag_image",
    "remove_image",
    "load_state",
    "allocate_port",
    "release_port",
    "start_container",
    "stop_container",
    "remove_container",
    "health_check",
    "switch_route",
    "remove_route",
    "drain",
    "record_state",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub call: String,
    pub phase: Phase,
    pub mode: FaultMode,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Before => "before",
            Phase::After => "after",
        };
        let mode = match self.mode {
            FaultMode::FailOnce => "fail",
            FaultMode::FailAlways => "fail_always",
            FaultMode::Hang => "hang",
            FaultMode::Panic => "panic",
        };
        write!(f, "{}.{phase}:{mode}", self.call)
    }
}

impl FromStr for Fault {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "fault",
                s,
                format!("expected CALL.before|after:fail|fail_always|hang|panic, CALL one of {}", CALLS.join(", ")),
            )
        };
        let (point, mode) = s.trim().split_once(':').ok_or_else(bad)?;
        let (call, phase) = point.split_once('.').ok_or_else(bad)?;
        if !CALLS.contains(&call) {
            return Err(bad());
        }
        let phase = match phase {
            "before" => Phase::Before,
            "after" => Phase::After,
            _ => return Err(bad()),
        };
        let mode = match mode {
            "fail" | "fail_once" => FaultMode::FailOnce,
            "fail_always" => FaultMode::FailAlways,
            "hang" => FaultMode::Hang,
            "panic" => FaultMode::Panic,
            _ => return Err(bad()),
        };
        Ok(Fault { call: call.to_owned(), phase, mode })
    }
}

/// A set of faults, each firing as its mode says. Shared by the recording
/// fakes and the fault-injecting adapter wrapper.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<(Fault, bool)>>,
}

impl FaultPlan {
    pub fn new(faults: impl IntoIterator<Item = Fault>) -> Self {
        FaultPlan { rules: Mutex::new(faults.into_iter().map(|f| (f, false)).collect()) }
    }

    /// Parses a comma-separated list such as `start_container.after:fail,build.before:hang`.
    pub fn parse(s: &str) -> Result<Self> {
        let faults = s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect::<Result<Vec<Fault>>>()?;
        Ok(FaultPlan::new(faults))
    }

    pub fn add(&self, fault: Fault) {
        self.lock().push((fault, false));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Fault, bool)>> {
        // A panic while holding this lock cannot leave the rules inconsistent.
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by an adapter at a fault point; fails, hangs or panics as planned.
    pub async fn hit(&self, call: &str, phase: Phase) -> Result<()> {
        let mode = {
            let mut rules = self.lock();
            let found = rules
                .iter_mut()
                .find(|(f, fired)| f.call == call && f.phase == phase && !(f.mode != FaultMode::FailAlways && *fired));
            match found {
                Some((f, fired)) => {
                    *fired = true;
                    Some((f.mode, f.to_string()))
                }
                None => None,
            }
        };
        match mode {
            None => Ok(()),
            Some((FaultMode::FailOnce | FaultMode::FailAlways, name)) => Err(Error::Injected(name)),
            Some((FaultMode::Hang, _)) => std::future::pending().await,
            Some((FaultMode::Panic, name)) => panic!("injected panic at {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plan_parses_and_fires_as_told() {
        let plan = FaultPlan::parse("start_container.after:fail, remove_image.before:fail_always").expect("valid");
        assert!(plan.hit("start_container", Phase::Before).await.is_ok());
        assert!(plan.hit("start_container", Phase::After).await.is_err());
        assert!(plan.hit("start_container", Phase::After).await.is_ok());
        for _ in 0..3 {
            assert!(plan.hit("remove_image", Phase::Before).await.is_err());
        }
        for bad in ["x.before:fail", "build.during:fail", "build.before:explode", "build"] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }
}
