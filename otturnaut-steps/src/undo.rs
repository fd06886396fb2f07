//! Undo as plain data: what to release, performed with bounded retries.
//!
//! An [`UndoAction`] names its resource by values known before the acquiring
//! call (deployment id, image tag, container name), so it can be armed before
//! the side effect and performed by anyone holding the adapters: the explicit
//! rollback, or the reaper after a drop.
//!
//! Architecture invariant: this module knows nothing of who runs the undos.
//! `handover.rs` (the guards on tokens, and undos pending in a rollback) and
//! `reaper.rs` (the task performing what was dropped) build on it, never the
//! other way round.

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use otturnaut_core::{
    Adapters, AppId, ContainerId, DeployEvent, DeploymentId, EventSink, ImageRef, Release, RouteTarget,
};
use serde::{Deserialize, Serialize};

/// The release of one resource a deploy acquired, as plain data: armed before
/// the acquiring call, performed by the rollback or by the reaper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UndoAction {
    /// Delete the source tree (and key file) fetched for a deployment.
    RemoveSource {
        /// The app fetched for.
        app: AppId,
        /// The deployment fetched for.
        deployment: DeploymentId,
    },
    /// Remove one of our image tags (the image goes with its last tag).
    RemoveImage {
        /// The tag.
        image: ImageRef,
    },
    /// Give a deployment's host port back to the pool.
    ReleasePort {
        /// The deployment holding it.
        deployment: DeploymentId,
    },
    /// Kill and remove a container.
    RemoveContainer {
        /// Its name (known before it is created).
        name: ContainerId,
    },
    /// Put the app's route back as it was: to `previous`, or gone.
    RestoreRoute {
        /// The app.
        app: AppId,
        /// Where the route pointed before; `None`: there was none.
        previous: Option<RouteTarget>,
    },
    /// Put the app's recorded release back as it was.
    RestoreState {
        /// The app.
        app: AppId,
        /// The release live before; `None`: there was none.
        previous: Option<Release>,
    },
}

impl UndoAction {
    /// The kind of resource this undo releases, as its residue names it.
    pub fn kind(&self) -> ResidueKind {
        match self {
            UndoAction::RemoveSource { .. } => ResidueKind::SourceDir,
            UndoAction::RemoveImage { .. } => ResidueKind::Image,
            UndoAction::ReleasePort { .. } => ResidueKind::Port,
            UndoAction::RemoveContainer { .. } => ResidueKind::Container,
            UndoAction::RestoreRoute { .. } => ResidueKind::Route,
            UndoAction::RestoreState { .. } => ResidueKind::State,
        }
    }

    async fn perform(&self, a: &Adapters) -> otturnaut_core::Result<()> {
        match self {
            UndoAction::RemoveSource { app, deployment } => a.fetcher.remove(app, deployment).await,
            UndoAction::RemoveImage { image } => a.builder.remove_image(image).await,
            UndoAction::ReleasePort { deployment } => a.ports.release(deployment).await,
            UndoAction::RemoveContainer { name } => a.runtime.remove(name).await,
            UndoAction::RestoreRoute { app, previous: Some(target) } => a.router.set_route(app, target).await,
            UndoAction::RestoreRoute { app, previous: None } => a.router.remove_route(app).await,
            UndoAction::RestoreState { app, previous } => a.state.restore(app, previous.clone()).await,
        }
    }
}

impl fmt::Display for UndoAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UndoAction::RemoveSource { app, deployment } => write!(f, "remove source of {app} deployment {deployment}"),
            UndoAction::RemoveImage { image } => write!(f, "remove image {image}"),
            UndoAction::ReleasePort { deployment } => write!(f, "release the host port of deployment {deployment}"),
            UndoAction::RemoveContainer { name } => write!(f, "remove container {name}"),
            UndoAction::RestoreRoute { app, previous: Some(t) } => {
                write!(f, "restore {app}'s route to port {}", t.port)
            }
            UndoAction::RestoreRoute { app, previous: None } => write!(f, "remove {app}'s route"),
            UndoAction::RestoreState { app, previous: Some(r) } => {
                write!(f, "record {app}'s live release as {} again", r.deployment)
            }
            UndoAction::RestoreState { app, previous: None } => write!(f, "forget {app}'s recorded release"),
        }
    }
}

/// How hard to try an undo before reporting it as residue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times an undo is tried in all (at least once).
    pub attempts: u32,
    /// An undo attempt that takes longer than this counts as failed: a hung
    /// service must not hold a rollback forever.
    pub attempt_timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each.
    pub first_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, as Reactor does, backing off 100 ms, 200 ms, 400 ms, 800 ms.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            attempt_timeout: Duration::from_secs(60),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No waiting between attempts: for tests on fakes.
    pub fn immediate(attempts: u32) -> Self {
        RetryPolicy { attempts, first_backoff: Duration::ZERO, max_backoff: Duration::ZERO, ..RetryPolicy::default() }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.first_backoff.saturating_mul(1 << attempt.min(16)).min(self.max_backoff)
    }
}

/// The deployment an undo belongs to: undos of one deployment run in
/// reverse order of acquisition, those of different ones independently.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub(crate) app: AppId,
    pub(crate) deployment: DeploymentId,
}

/// What one undo came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoOutcome {
    /// The app and deployment whose resource it released.
    pub app: AppId,
    /// The deployment that acquired it.
    pub deployment: DeploymentId,
    /// The undo, as a sentence (`remove container otturnaut-shop-01h…`).
    pub action: String,
    /// Whether it succeeded in the end.
    pub ok: bool,
    /// How many attempts it took (or were made before giving up).
    pub attempts: u32,
    /// The last attempt's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What kind of resource a [`Residue`] is. Serialised as the lowercase
/// word (`source_dir`, `image`, …) that the CLI's and daemon's JSON show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidueKind {
    /// A fetched source tree (and key file) on disk.
    SourceDir,
    /// An image tag: a release tag, a live or kept mark.
    Image,
    /// A host port held in the agent's pool.
    Port,
    /// A container.
    Container,
    /// An app's Caddy route, not put back as it was.
    Route,
    /// The app's live mark, not put back as it was.
    State,
    /// A named volume of an app (`undeploy --volumes`).
    Volume,
}

impl ResidueKind {
    /// The word used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            ResidueKind::SourceDir => "source_dir",
            ResidueKind::Image => "image",
            ResidueKind::Port => "port",
            ResidueKind::Container => "container",
            ResidueKind::Route => "route",
            ResidueKind::State => "state",
            ResidueKind::Volume => "volume",
        }
    }
}

impl fmt::Display for ResidueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something an undo (or a post-commit retire) could not release: it still
/// exists and `reconcile` will clear it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residue {
    /// What kind of resource is left.
    pub kind: ResidueKind,
    /// What is left, e.g. `remove container otturnaut-shop-01h…`.
    pub what: String,
    /// Why it could not be released (the last attempt's error).
    pub error: String,
    /// The step that would have created it failed, so it may never have
    /// existed: the undo was attempted to be safe and could not confirm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_doubt: bool,
}

impl fmt::Display for Residue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let maybe = if self.in_doubt { "possibly " } else { "" };
        write!(f, "{maybe}a {} (could not {}: {})", self.kind, self.what, self.error)
    }
}

/// Every undo a rollback ran, in order, and what is left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    /// Every undo run, in order.
    pub outcomes: Vec<UndoOutcome>,
    /// What the undos could not release.
    pub residue: Vec<Residue>,
}

impl UndoReport {
    /// True when everything was released.
    pub fn is_clean(&self) -> bool {
        self.residue.is_empty()
    }
}

/// Runs one undo, retrying with backoff; never gives up early.
pub(crate) async fn perform_with_retry(
    action: &UndoAction,
    adapters: &Adapters,
    retry: RetryPolicy,
) -> (u32, Result<(), otturnaut_core::Error>) {
    let attempts = retry.attempts.max(1);
    let mut last = Ok(());
    for attempt in 1..=attempts {
        // A panicking adapter must not take the rest of the rollback (or the
        // reaper task) down with it: count it as a failed attempt.
        let attempt_fut = AssertUnwindSafe(action.perform(adapters)).catch_unwind();
        last = match tokio::time::timeout(retry.attempt_timeout, attempt_fut).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(otturnaut_core::Error::failed(action.to_string(), format!("panicked: {}", why.unwrap_or_default())))
            }
            Err(_) => {
                Err(otturnaut_core::Error::Timeout { operation: action.to_string(), after: retry.attempt_timeout })
            }
        };
        if last.is_ok() || attempt == attempts {
            return (attempt, last);
        }
        tokio::time::sleep(retry.backoff(attempt - 1)).await;
    }
    (attempts, last)
}

/// Runs `actions` front to back, removing each once it is done (so a caller
/// cancelled mid-way still holds exactly what did not run); a failing undo does
/// not stop the rest. If `first_in_doubt`, the first belongs to the step that
/// failed and may never have existed. `quiet`: routine cleanup, no undo events.
pub(crate) async fn run_in_order(
    actions: &mut VecDeque<UndoAction>,
    first_in_doubt: &mut bool,
    quiet: bool,
    owner: &Owner,
    adapters: &Adapters,
    events: &EventSink,
    retry: RetryPolicy,
) -> UndoReport {
    let mut report = UndoReport::default();
    while let Some(action) = actions.front().cloned() {
        if !quiet {
            events.emit(DeployEvent::UndoStarted { resource: action.to_string() });
        }
        let (attempts, result) = perform_with_retry(&action, adapters, retry).await;
        actions.pop_front();
        let in_doubt = std::mem::take(first_in_doubt);
        let error = result.err().map(|e| e.to_string());
        if !quiet {
            events.emit(DeployEvent::UndoFinished {
                resource: action.to_string(),
                ok: error.is_none(),
                attempts,
                error: error.clone(),
            });
        }
        if let Some(e) = &error {
            report.residue.push(Residue { kind: action.kind(), what: action.to_string(), error: e.clone(), in_doubt });
        }
        report.outcomes.push(UndoOutcome {
            app: owner.app.clone(),
            deployment: owner.deployment.clone(),
            action: action.to_string(),
            ok: error.is_none(),
            attempts,
            error,
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residue_kinds_serialise_as_the_words_the_json_always_had() {
        let all = [
            (ResidueKind::SourceDir, "source_dir"),
            (ResidueKind::Image, "image"),
            (ResidueKind::Port, "port"),
            (ResidueKind::Container, "container"),
            (ResidueKind::Route, "route"),
            (ResidueKind::State, "state"),
            (ResidueKind::Volume, "volume"),
        ];
        for (kind, word) in all {
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::Value::from(word)));
            assert_eq!(kind.to_string(), word);
            assert_eq!(serde_json::from_value::<ResidueKind>(word.into()).ok(), Some(kind));
        }
    }
}
