//! Progress reporting: what a deploy is doing, for a library user or the CLI.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{AppId, DeploymentId};

/// The steps of a deploy, in the order the blue-green strategy runs them.
/// `Drain` onwards happen after the commit point and are never undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Cloning the git repository.
    Fetch,
    /// Building the image, or pulling and tagging a prebuilt one.
    Build,
    /// Reading which release is live now.
    LoadState,
    /// Reserving a host port.
    AllocatePort,
    /// Starting the new container.
    StartContainer,
    /// Waiting for it to pass its health check.
    HealthCheck,
    /// Pointing the app's Caddy route at it.
    SwitchRoute,
    /// Writing its live mark: the commit point.
    RecordState,
    /// Waiting for requests in flight to the old release.
    Drain,
    /// Stopping the old container.
    StopOld,
    /// Marking the old release as kept for a rollback.
    KeepOld,
    /// Returning its port to the pool.
    ReleaseOldPort,
    /// Removing releases beyond the number kept.
    RemoveOld,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 13] = [
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
        Step::KeepOld,
        Step::ReleaseOldPort,
        Step::RemoveOld,
    ];

    /// The name used in events and messages (`start_container`).
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
            Step::KeepOld => "keep_old",
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
    /// The deploy began, under this id.
    Started {
        /// The app.
        app: AppId,
        /// The new deployment's id.
        deployment: DeploymentId,
    },
    /// A step began.
    StepStarted {
        /// Which.
        step: Step,
    },
    /// A step succeeded.
    StepFinished {
        /// Which.
        step: Step,
        /// How long it took.
        elapsed_ms: u64,
        /// What it did, when there is something to say (the image, the port…).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A step failed (before the commit, a rollback follows).
    StepFailed {
        /// Which.
        step: Step,
        /// How long it ran.
        elapsed_ms: u64,
        /// Why.
        error: String,
    },
    /// One line of the build's output, secrets redacted.
    BuildLog {
        /// The line.
        line: String,
    },
    /// An undo began.
    UndoStarted {
        /// What it releases, as a sentence.
        resource: String,
    },
    /// An undo ended.
    UndoFinished {
        /// What it released, as a sentence.
        resource: String,
        /// Whether it succeeded.
        ok: bool,
        /// How many attempts it took.
        attempts: u32,
        /// The last attempt's error, if it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Something the user should know that did not stop the deploy.
    Warning {
        /// What.
        message: String,
    },
}

/// How many build log lines may wait in the channel for a consumer.
pub const LOG_BACKLOG: usize = 1024;

/// The longest build log line, in bytes: longer output is split (by the
/// builder) or cut (here, as a backstop). With [`LOG_BACKLOG`] it bounds
/// the memory queued build output can take: 1024 × 4 KiB = 4 MiB.
pub const MAX_LOG_LINE: usize = 4096;

/// Where events go. Cheap to clone; sending never blocks and never fails the
/// deploy (a consumer that went away just stops receiving).
///
/// Memory stays bounded without blocking. `emit` is called from sync code
/// (drop guards, the reaper, log callbacks), and a library caller may well
/// run the whole deploy before reading a single event, so a sink that waited
/// for room would deadlock or stall a deploy that holds the app's lock.
/// Instead the one event kind whose number the outside world controls,
/// `BuildLog`, has a budget of [`LOG_BACKLOG`] queued lines: past it, lines
/// are dropped and counted, and the count is delivered (in order) as one
/// `BuildLog` marker line before the next event that gets through. Every
/// other event is a step, undo or warning of the pipeline itself — a few
/// dozen per deploy — and is never dropped.
#[derive(Clone, Debug, Default)]
pub struct EventSink(Option<Lane>);

#[derive(Clone, Debug)]
struct Lane {
    tx: mpsc::UnboundedSender<DeployEvent>,
    budget: Arc<LogBudget>,
}

#[derive(Debug, Default)]
struct LogBudget {
    /// `BuildLog` events sent and not yet received.
    queued: AtomicUsize,
    /// `BuildLog` events dropped since the last marker.
    dropped: AtomicU64,
}

/// The receiving end of [`EventSink::channel`].
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<DeployEvent>,
    budget: Arc<LogBudget>,
}

impl EventReceiver {
    /// The next event; `None` once every sink is gone.
    pub async fn recv(&mut self) -> Option<DeployEvent> {
        let event = self.rx.recv().await;
        self.received(event.as_ref());
        event
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<DeployEvent, mpsc::error::TryRecvError> {
        let event = self.rx.try_recv();
        self.received(event.as_ref().ok());
        event
    }

    fn received(&self, event: Option<&DeployEvent>) {
        if let Some(DeployEvent::BuildLog { .. }) = event {
            self.budget.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl EventSink {
    /// A sink and the receiver of what is emitted into it.
    pub fn channel() -> (EventSink, EventReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(LogBudget::default());
        (EventSink(Some(Lane { tx, budget: budget.clone() })), EventReceiver { rx, budget })
    }

    /// A sink that drops every event.
    pub fn discard() -> EventSink {
        EventSink(None)
    }

    /// Sends `event`, never blocking: a build log line finding [`LOG_BACKLOG`]
    /// lines still queued is dropped (and counted) instead.
    pub fn emit(&self, event: DeployEvent) {
        let Some(lane) = &self.0 else { return };
        if let DeployEvent::BuildLog { line } = event {
            if !lane.take_log_slot() {
                lane.budget.dropped.fetch_add(1, Ordering::AcqRel);
                return;
            }
            lane.flush_dropped();
            let line = cut_line(line, MAX_LOG_LINE);
            let _ = lane.tx.send(DeployEvent::BuildLog { line });
        } else {
            lane.flush_dropped();
            let _ = lane.tx.send(event);
        }
    }

    /// Emits a [`DeployEvent::Warning`].
    pub fn warn(&self, message: impl Into<String>) {
        self.emit(DeployEvent::Warning { message: message.into() });
    }
}

impl Lane {
    fn take_log_slot(&self) -> bool {
        if self.budget.queued.fetch_add(1, Ordering::AcqRel) >= LOG_BACKLOG {
            self.budget.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Sends the "lines dropped" marker, if any were. The marker itself is a
    /// queued line: it is counted but may exceed the budget by one.
    fn flush_dropped(&self) {
        let n = self.budget.dropped.swap(0, Ordering::AcqRel);
        if n > 0 {
            self.budget.queued.fetch_add(1, Ordering::AcqRel);
            let line = format!("[otturnaut: {n} build log line(s) dropped: the output came faster than it was read]");
            let _ = self.tx.send(DeployEvent::BuildLog { line });
        }
    }
}

/// `line` cut to at most `max` bytes, on a character boundary.
pub fn cut_line(mut line: String, max: usize) -> String {
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DeployEvent {
    /// A [`DeployEvent::StepFinished`].
    pub fn step_finished(step: Step, elapsed: Duration, detail: Option<String>) -> Self {
        DeployEvent::StepFinished { step, elapsed_ms: millis(elapsed), detail }
    }

    /// A [`DeployEvent::StepFailed`].
    pub fn step_failed(step: Step, elapsed: Duration, error: &impl fmt::Display) -> Self {
        DeployEvent::StepFailed { step, elapsed_ms: millis(elapsed), error: error.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> DeployEvent {
        DeployEvent::BuildLog { line: format!("line {n}") }
    }

    #[test]
    fn an_unread_channel_holds_a_bounded_log_and_every_step_event() {
        let (sink, mut rx) = EventSink::channel();
        sink.emit(DeployEvent::StepStarted { step: Step::Build });
        for n in 0..(LOG_BACKLOG * 10) {
            sink.emit(log(n));
        }
        sink.emit(DeployEvent::BuildLog { line: "x".repeat(MAX_LOG_LINE * 3) });
        sink.emit(DeployEvent::step_finished(Step::Build, Duration::ZERO, None));
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let logs: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                DeployEvent::BuildLog { line } => Some(line),
                _ => None,
            })
            .collect();
        assert_eq!(logs.len(), LOG_BACKLOG + 1, "the budget and one marker");
        assert_eq!(logs[0], "line 0");
        let marker = logs[LOG_BACKLOG];
        assert!(marker.contains(&format!("{} build log line(s) dropped", LOG_BACKLOG * 9 + 1)), "{marker}");
        assert_eq!(events.first(), Some(&DeployEvent::StepStarted { step: Step::Build }));
        assert!(matches!(events.last(), Some(DeployEvent::StepFinished { step: Step::Build, .. })));

        // Read, the budget is free again; long lines are cut.
        sink.emit(DeployEvent::BuildLog { line: "é".repeat(MAX_LOG_LINE) });
        match rx.try_recv() {
            Ok(DeployEvent::BuildLog { line }) => assert!(line.len() <= MAX_LOG_LINE && line.starts_with('é')),
            other => panic!("{other:?}"),
        }
    }
}
