//! The typestate deploy pipeline of Otturnaut.
//!
//! A deploy is a chain of tokens — [`Fetched`] → [`Built`] → [`PortHeld`] →
//! [`Running`] → [`Healthy`] → [`Routed`] → [`Committed`] — each owning the
//! resource its step acquired and the token before it. The compiler enforces
//! the order; a failing step rolls back every earlier one in reverse order;
//! a dropped token hands its undo to the [`Reaper`].
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
//! Steps cannot be skipped: a [`Built`] has no `switch_route`.
//!
//! ```compile_fail
//! async fn skip(built: otturnaut_steps::Built) {
//!     let _ = built.switch_route().await;
//! }
//! ```
//!
//! ```compile_fail
//! async fn unchecked(running: otturnaut_steps::Running) {
//!     // Routing traffic to a container that was never health-checked.
//!     let _ = running.switch_route().await;
//! }
//! ```
//!
//! ```compile_fail
//! async fn twice(built: otturnaut_steps::Built) {
//!     // Transitions consume the token: a resource cannot be used twice.
//!     let _a = built.allocate_port(None).await;
//!     let _b = built.allocate_port(None).await;
//! }
//! ```
//!
//! ```compile_fail
//! async fn commit_early(held: otturnaut_steps::PortHeld) {
//!     let _ = held.commit().await;
//! }
//! ```

mod locks;
mod reaper;
mod reconcile;
mod releases;
mod retire;
mod strategy;
mod tokens;
mod undo;

use std::fmt;

use otturnaut_core::{AppId, DeploymentId, Step};

pub use locks::AppLocks;
pub use reaper::Reaper;
pub use reconcile::{
    CleanupReport, apps_with_resources, domain_owner, live_release, reconcile, reconcile_app, undeploy_app,
};
pub use releases::{DEFAULT_KEEP, PruneReport, apply_retention, list_releases, prune, rollback_spec};
pub use strategy::{BlueGreen, Deployed, Strategy};
pub use tokens::{Built, Committed, Context, Fetched, Healthy, PortHeld, Routed, Running};
pub use undo::{Residue, RetryPolicy, UndoAction, UndoOutcome, UndoReport};

/// A deploy that did not reach its commit point.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploy of {app} failed at step {step}: {cause}; {}", Leftover(undo))]
    Failed {
        app: AppId,
        deployment: DeploymentId,
        step: Step,
        #[source]
        cause: otturnaut_core::Error,
        undo: UndoReport,
    },
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
    pub fn step(&self) -> Step {
        match self {
            DeployError::Failed { step, .. } => *step,
        }
    }

    pub fn cause(&self) -> &otturnaut_core::Error {
        match self {
            DeployError::Failed { cause, .. } => cause,
        }
    }

    pub fn undo(&self) -> &UndoReport {
        match self {
            DeployError::Failed { undo, .. } => undo,
        }
    }

    pub fn app(&self) -> &AppId {
        match self {
            DeployError::Failed { app, .. } => app,
        }
    }

    pub fn deployment(&self) -> &DeploymentId {
        match self {
            DeployError::Failed { deployment, .. } => deployment,
        }
    }
}
