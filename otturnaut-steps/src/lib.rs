//! The typestate deploy pipeline of Otturnaut.
//!
//! A deploy is a chain of tokens — [`Fetched`] → [`Built`] → [`PortHeld`] →
//! [`Running`] → [`Healthy`] → [`Routed`] → [`Committed`] — each owning the
//! resource its step acquired and the token before it. The compiler enforces
//! the order; a failing step rolls back every earlier one in reverse order;
//! a dropped token hands its undo to the [`Reaper`].
//!
//! Architecture invariant: this crate depends only on `otturnaut-core` (never
//! bollard, reqwest or gix: `tests/tests/tidy.rs` checks it), so the whole
//! pipeline runs, and is tested, on fakes.
//!
//! In order, the chain compiles:
//!
//! ```no_run
//! use otturnaut_steps::{Built, Committed, DeployError};
//! async fn in_order(built: Built) -> Result<Committed, DeployError> {
//!     built.allocate_port(None).await?.start_container().await?.health_check().await?.switch_route().await?.commit().await
//! }
//! ```
//!
//! Steps cannot be skipped: a [`Built`] has no `switch_route`. Each example
//! names the error it must fail with (checked by nightly rustdoc; stable only
//! checks that it fails), so a renamed method cannot make it pass for the
//! wrong reason.
//!
//! ```compile_fail,E0599
//! async fn skip(built: otturnaut_steps::Built) {
//!     let _ = built.switch_route().await;
//! }
//! ```
//!
//! ```compile_fail,E0599
//! async fn unchecked(running: otturnaut_steps::Running) {
//!     // Routing traffic to a container that was never health-checked.
//!     let _ = running.switch_route().await;
//! }
//! ```
//!
//! ```compile_fail,E0382
//! async fn twice(built: otturnaut_steps::Built) {
//!     // Transitions consume the token: a resource cannot be used twice.
//!     let _a = built.allocate_port(None).await;
//!     let _b = built.allocate_port(None).await;
//! }
//! ```
//!
//! ```compile_fail,E0599
//! async fn commit_early(held: otturnaut_steps::PortHeld) {
//!     let _ = held.commit().await;
//! }
//! ```

#![warn(missing_docs)]

mod handover;
mod locks;
mod reaper;
mod reconcile;
mod releases;
mod retire;
mod state;
mod strategy;
mod tokens;
mod undo;

use std::fmt;

use otturnaut_core::{AppId, DeploymentId, Step};

pub use locks::AppLocks;
pub use reaper::Reaper;
pub use reconcile::{
    CleanupReport, apps_with_resources, domain_owner, live_release, reconcile, reconcile_app, remove_app_volumes,
    undeploy_app,
};
pub use releases::{DEFAULT_KEEP, PruneReport, apply_retention, list_releases, prune, rollback_spec};
pub use state::{LabelState, release_of};
pub use strategy::{BlueGreen, Deployed, Strategy};
pub use tokens::{Built, Committed, Context, Fetched, Healthy, PortHeld, Routed, Running};
pub use undo::{Residue, ResidueKind, RetryPolicy, UndoAction, UndoOutcome, UndoReport};

/// A deploy that did not reach its commit point: which step failed, why,
/// and what its rollback came to.
#[derive(Debug, thiserror::Error)]
#[error("deploy of {app} failed at step {step}: {cause}; {}", Leftover(undo))]
pub struct DeployError {
    app: AppId,
    deployment: DeploymentId,
    step: Step,
    #[source]
    cause: otturnaut_core::Error,
    undo: UndoReport,
}

struct Leftover<'a>(&'a UndoReport);

impl fmt::Display for Leftover<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r.residue.is_empty() {
            write!(f, "rolled back ({} undo step(s)), the previous release is still live", r.outcomes.len())
        } else {
            let left: Vec<String> = r.residue.iter().map(ToString::to_string).collect();
            write!(f, "rollback left {} resource(s) behind: {}; run `otturnaut reconcile`", left.len(), left.join("; "))
        }
    }
}

impl DeployError {
    pub(crate) fn new(
        app: AppId,
        deployment: DeploymentId,
        step: Step,
        cause: otturnaut_core::Error,
        undo: UndoReport,
    ) -> Self {
        DeployError { app, deployment, step, cause, undo }
    }

    /// The parts, for a front end that keeps them: deployment, step, cause, undo.
    pub fn into_parts(self) -> (DeploymentId, Step, otturnaut_core::Error, UndoReport) {
        (self.deployment, self.step, self.cause, self.undo)
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Why it failed.
    pub fn cause(&self) -> &otturnaut_core::Error {
        &self.cause
    }

    /// What the rollback did and what it could not release.
    pub fn undo(&self) -> &UndoReport {
        &self.undo
    }

    /// The app being deployed.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// The deployment that failed.
    pub fn deployment(&self) -> &DeploymentId {
        &self.deployment
    }
}
