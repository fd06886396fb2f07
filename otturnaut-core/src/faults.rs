//! Named fault points for tests and the fault-injection harness.
//!
//! A point is an adapter call (`start_container`, `remove_image`, …) and a
//! phase: before or after its side effect. `after` is the lost-response case:
//! the work was done, the caller sees an error.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use crate::{Error, Result};

/// Where in a call a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Before the side effect: nothing was done.
    Before,
    /// After the side effect: done, but the caller hears an error (a lost response).
    After,
}

/// What a fault does when its point is reached.
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

/// Every call a fault can be attached to: one per port method with a side
/// effect or a verdict (restoring the recorded release is `RecordState` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    /// `SourceFetcher::fetch`.
    Fetch,
    /// `SourceFetcher::remove`.
    RemoveSource,
    /// `ImageBuilder::build`.
    Build,
    /// `ImageBuilder::ensure_image`.
    EnsureImage,
    /// `ImageBuilder::tag_image`.
    TagImage,
    /// `ImageBuilder::remove_image` (and `prune_dangling`).
    RemoveImage,
    /// `StateStore::load`.
    LoadState,
    /// `PortAllocator::allocate`.
    AllocatePort,
    /// `PortAllocator::release`.
    ReleasePort,
    /// `ContainerRuntime::start`.
    StartContainer,
    /// `ContainerRuntime::stop`.
    StopContainer,
    /// `ContainerRuntime::remove`.
    RemoveContainer,
    /// `HealthProbe::check`.
    HealthCheck,
    /// `Router::set_route`.
    SwitchRoute,
    /// `Router::remove_route`.
    RemoveRoute,
    /// `Router::in_flight` (waiting for the old release to drain).
    Drain,
    /// `StateStore::record` and `StateStore::restore`.
    RecordState,
}

impl Call {
    /// Every call, in pipeline order.
    pub const ALL: [Call; 17] = [
        Call::Fetch,
        Call::RemoveSource,
        Call::Build,
        Call::EnsureImage,
        Call::TagImage,
        Call::RemoveImage,
        Call::LoadState,
        Call::AllocatePort,
        Call::ReleasePort,
        Call::StartContainer,
        Call::StopContainer,
        Call::RemoveContainer,
        Call::HealthCheck,
        Call::SwitchRoute,
        Call::RemoveRoute,
        Call::Drain,
        Call::RecordState,
    ];

    /// The name used in `OTTURNAUT_FAULTS` (`start_container`).
    pub fn name(self) -> &'static str {
        match self {
            Call::Fetch => "fetch",
            Call::RemoveSource => "remove_source",
            Call::Build => "build",
            Call::EnsureImage => "ensure_image",
            Call::TagImage => "tag_image",
            Call::RemoveImage => "remove_image",
            Call::LoadState => "load_state",
            Call::AllocatePort => "allocate_port",
            Call::ReleasePort => "release_port",
            Call::StartContainer => "start_container",
            Call::StopContainer => "stop_container",
            Call::RemoveContainer => "remove_container",
            Call::HealthCheck => "health_check",
            Call::SwitchRoute => "switch_route",
            Call::RemoveRoute => "remove_route",
            Call::Drain => "drain",
            Call::RecordState => "record_state",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Call {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Call::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Call::ALL.iter().map(|c| c.name()).collect();
            Error::invalid("fault call", s, format!("expected one of {}", names.join(", ")))
        })
    }
}

/// A fault point: a call and a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The call.
    pub call: Call,
    /// Before or after its side effect.
    pub phase: Phase,
    /// What happens there.
    pub mode: FaultMode,
}

impl Fault {
    /// A fault at `call`, `phase`, doing `mode`.
    pub fn new(call: Call, phase: Phase, mode: FaultMode) -> Self {
        Fault { call, phase, mode }
    }
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
            let names: Vec<&str> = Call::ALL.iter().map(|c| c.name()).collect();
            Error::invalid(
                "fault",
                s,
                format!("expected CALL.before|after:fail|fail_always|hang|panic, CALL one of {}", names.join(", ")),
            )
        };
        let (point, mode) = s.trim().split_once(':').ok_or_else(bad)?;
        let (call, phase) = point.split_once('.').ok_or_else(bad)?;
        let call: Call = call.parse().map_err(|_| bad())?;
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
        Ok(Fault { call, phase, mode })
    }
}

/// A set of faults, each firing as its mode says. Shared by the recording
/// fakes and the fault-injecting adapter wrapper.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<(Fault, bool)>>,
}

impl FaultPlan {
    /// A plan of these faults, none fired yet.
    pub fn new(faults: impl IntoIterator<Item = Fault>) -> Self {
        FaultPlan { rules: Mutex::new(faults.into_iter().map(|f| (f, false)).collect()) }
    }

    /// Parses a comma-separated list such as `start_container.after:fail,build.before:hang`.
    pub fn parse(s: &str) -> Result<Self> {
        let faults = s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect::<Result<Vec<Fault>>>()?;
        Ok(FaultPlan::new(faults))
    }

    /// Plans one more fault.
    pub fn add(&self, fault: Fault) {
        self.lock().push((fault, false));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Fault, bool)>> {
        // A panic while holding this lock cannot leave the rules inconsistent.
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by an adapter at a fault point; fails, hangs or panics as planned.
    pub async fn hit(&self, call: Call, phase: Phase) -> Result<()> {
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
            Some((FaultMode::FailOnce | FaultMode::FailAlways, name)) => {
                Err(Error::failed(call.name(), format!("injected fault at {name}")))
            }
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
        assert!(plan.hit(Call::StartContainer, Phase::Before).await.is_ok());
        assert!(plan.hit(Call::StartContainer, Phase::After).await.is_err());
        assert!(plan.hit(Call::StartContainer, Phase::After).await.is_ok());
        for _ in 0..3 {
            assert!(plan.hit(Call::RemoveImage, Phase::Before).await.is_err());
        }
        for bad in ["x.before:fail", "build.during:fail", "build.before:explode", "build"] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
        for call in Call::ALL {
            assert_eq!(call.name().parse::<Call>().ok(), Some(call));
            let fault = Fault::new(call, Phase::After, FaultMode::Hang);
            assert_eq!(fault.to_string().parse::<Fault>().ok(), Some(fault));
        }
    }
}
