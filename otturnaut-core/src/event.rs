//! Progress reporting: what a deploy is doing, for a library user or the CLI.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{AppId, DeploymentId};

/// The steps of a deploy, in the order the blue-green strategy runs them.
/// `Drain` onwards happen after the commit point and are never undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Fetch,
    Build,
    LoadState,
    AllocatePort,
    StartContainer,
    HealthCheck,
    SwitchRoute,
    RecordState,
    Drain,
    StopOld,
    RemoveOld,
    ReleaseOldPort,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Fetch,
        Step::Build,
        Step::LoadState,
        Step::AllocatePort,
        Step::StartContainer,
        Step::HealthCheck,
        Step::SwitchRoute,
        Step::RecordState,
        Step::Drain,
        Step::StopOld,
        Step::RemoveOld,
        Step::ReleaseOldPort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Build => "build",
            Step::LoadState => "load_state",
            Step::AllocatePort => "allocate_port",
            Step::StartContainer => "start_container",
            Step::HealthCheck => "health_check",
            Step::SwitchRoute => "switch_route",
            Step::RecordState => "record_state",
            Step::Drain => "drain",
            Step::StopOld => "stop_old",
            Step::RemoveOld => "remove_old",
            Step::ReleaseOldPort => "release_old_port",
        }
    }

    /// Steps after the commit point: their failures are warnings, not undos.
    pub fn is_after_commit(self) -> bool {
        self >= Step::Drain
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One progress event. Never carries a secret: env values, build args and
/// keys are not part of any variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeployEvent {
    Started {
        app: AppId,
        deployment: DeploymentId,
    },
    StepStarted {
        step: Step,
    },
    StepFinished {
        step: Step,
        elapsed_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    StepFailed {
        step: Step,
        elapsed_ms: u64,
        error: String,
    },
    BuildLog {
        line: String,
    },
    UndoStarted {
        resource: String,
    },
    UndoFinished {
        resource: String,
        ok: bool,
        attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Warning {
        message: String,
    },
}

/// Where events go. Cheap to clone; sending never blocks and never fails the
/// deploy (a consumer that went away just stops receiving).
#[derive(Clone, Debug, Default)]
pub struct EventSink(Option<mpsc::UnboundedSender<DeployEvent>>);

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<DeployEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink(Some(tx)), rx)
    }

    /// A sink that drops every event.
    pub fn discard() -> EventSink {
        EventSink(None)
    }

    pub fn emit(&self, event: DeployEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.emit(DeployEvent::Warning { message: message.into() });
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DeployEvent {
    pub fn step_finished(step: Step, elapsed: Duration, detail: Option<String>) -> Self {
        DeployEvent::StepFinished { step, elapsed_ms: millis(elapsed), detail }
    }

    pub fn step_failed(step: Step, elapsed: Duration, error: &impl fmt::Display) -> Self {
        DeployEvent::StepFailed { step, elapsed_ms: millis(elapsed), error: error.to_string() }
    }
}
