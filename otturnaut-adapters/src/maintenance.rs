//! Undeploy and reconcile under the apps' locks, for every front end.

use std::collections::BTreeSet;

use otturnaut_core::{AppId, Timeouts};
use otturnaut_steps::{CleanupReport, RetryPolicy, apply_retention, apps_with_resources, undeploy_app};

use crate::Agent;
use crate::lock::{self, LockError};

/// What a reconcile did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// One report per app reconciled.
    pub reports: Vec<CleanupReport>,
    /// Apps left alone because a deploy (or other command) held their lock.
    pub skipped: Vec<(AppId, String)>,
}

/// Why a maintenance command did nothing.
#[derive(Debug)]
pub enum MaintenanceError {
    /// The app's lock could not be taken.
    Lock(AppId, LockError),
    /// Docker, Caddy or the disk failed.
    Service {
        /// What was being done.
        doing: String,
        /// How it failed.
        error: otturnaut_core::Error,
    },
}

impl std::fmt::Display for MaintenanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaintenanceError::Lock(app, e) => write!(f, "{app}: {e}"),
            MaintenanceError::Service { doing, error } => write!(f, "{doing}: {error}"),
        }
    }
}

impl std::error::Error for MaintenanceError {}

impl Agent {
    /// Removes `app` entirely (the caller holds its lock).
    pub async fn undeploy(&self, app: &AppId) -> Result<CleanupReport, MaintenanceError> {
        undeploy_app(&self.adapters, app, Timeouts::default().stop, RetryPolicy::default())
            .await
            .map_err(|error| MaintenanceError::Service { doing: format!("undeploying {app}"), error })
    }

    /// Reconciles `only` (or every app with resources), skipping apps whose
    /// lock is held: a deploy in progress looks like leftovers. Every other
    /// app's lock is held at once, so that their routes are restored in one
    /// Caddy config change.
    pub async fn reconcile(&self, only: BTreeSet<AppId>) -> Result<Reconciled, MaintenanceError> {
        let apps = match only.is_empty() {
            false => only,
            true => apps_with_resources(&self.adapters)
                .await
                .map_err(|error| MaintenanceError::Service { doing: "listing Otturnaut's apps".into(), error })?,
        };
        let mut locks = Vec::new();
        let mut locked = BTreeSet::new();
        let mut done = Reconciled::default();
        let dir = self.locks_dir();
        for app in apps {
            match lock::try_lock(&dir, &app, "reconcile") {
                Ok(Ok(lock)) => {
                    locks.push(lock);
                    locked.insert(app);
                }
                Ok(Err(holder)) => {
                    let why = holder.describe(&app);
                    done.skipped.push((app, why));
                }
                Err(e) => {
                    let path = dir.join(format!("{app}.lock"));
                    return Err(MaintenanceError::Lock(app, LockError::Io(path, e)));
                }
            }
        }
        if !locked.is_empty() {
            done.reports = otturnaut_steps::reconcile(&self.adapters, &locked, RetryPolicy::default())
                .await
                .map_err(|error| MaintenanceError::Service { doing: "reconciling".into(), error })?;
        }
        // Kept releases beyond `keep` go too (a removal a deploy could not finish).
        for report in &mut done.reports {
            let Some(app) = report.app.clone() else { continue };
            let kept = apply_retention(&self.adapters, &app, self.config.keep, RetryPolicy::default())
                .await
                .map_err(|error| MaintenanceError::Service { doing: format!("applying retention to {app}"), error })?;
            report.done.extend(kept.done);
            report.residue.extend(kept.residue);
        }
        drop(locks);
        Ok(done)
    }
}
