//! Undos on their way to be run: the [`Guard`] on every token, and the
//! [`PendingUndos`] of a rollback in progress. Both hold a [`Handover`], a
//! sender to the reaper tagged with the deployment, and hand it whatever did
//! not run when they are dropped (a cancelled future, a panic, an early return).
//!
//! Architecture invariant: nothing here awaits in `Drop`; a dropped token
//! only sends, and the reaper (`reaper.rs`) does the work.

use std::collections::VecDeque;
use std::fmt;

use otturnaut_core::{Adapters, AppId, DeploymentId, EventSink};
use tokio::sync::{mpsc, oneshot};

use crate::undo::{Owner, RetryPolicy, UndoAction, UndoReport, run_in_order};

/// What the reaper task receives.
pub(crate) enum Msg {
    Undo(Box<(Owner, UndoAction)>),
    Flush(oneshot::Sender<UndoReport>),
}

/// A sender to the reaper for the undos of one deployment. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handover {
    tx: mpsc::UnboundedSender<Msg>,
    owner: Owner,
}

impl Handover {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Msg>, app: AppId, deployment: DeploymentId) -> Self {
        Handover { tx, owner: Owner { app, deployment } }
    }

    fn send(&self, action: UndoAction) {
        if let Err(lost) = self.tx.send(Msg::Undo(Box::new((self.owner.clone(), action)))) {
            // The runtime is gone: nothing can run the undo now. `reconcile`
            // finds the resource later.
            if let Msg::Undo(undo) = lost.0 {
                let (owner, action) = *undo;
                tracing::error!(
                    app = %owner.app,
                    deployment = %owner.deployment,
                    "reaper stopped; left for reconcile: {action}"
                );
            }
        }
    }
}

/// Undos still to run. If the rollback running them is itself dropped
/// (cancelled), whatever has not finished goes to the reaper.
pub(crate) struct PendingUndos {
    actions: VecDeque<UndoAction>,
    /// The first action belongs to the step that failed: its resource may not exist.
    first_in_doubt: bool,
    /// Routine cleanup (not an undo) runs without undo events.
    quiet: bool,
    handover: Handover,
}

impl PendingUndos {
    pub(crate) fn new(actions: Vec<UndoAction>, handover: Handover) -> Self {
        PendingUndos { actions: actions.into(), first_in_doubt: false, quiet: false, handover }
    }

    /// Routine releases after a successful commit: same retries and reaper
    /// hand-over, but they are not undos, so no undo events.
    pub(crate) fn cleanup(actions: Vec<UndoAction>, handover: Handover) -> Self {
        let mut pending = PendingUndos::new(actions, handover);
        pending.quiet = true;
        pending
    }

    /// Undos after a failed step: `own` is that step's in-doubt undo (armed
    /// before its call), `older` those of the steps before it, newest first.
    pub(crate) fn after_failure(own: Option<UndoAction>, older: Vec<UndoAction>, handover: Handover) -> Self {
        let first_in_doubt = own.is_some();
        let mut pending = PendingUndos::new(own.into_iter().chain(older).collect(), handover);
        pending.first_in_doubt = first_in_doubt;
        pending
    }

    /// Runs every undo in order; a failing undo does not stop the rest.
    pub(crate) async fn run(mut self, adapters: &Adapters, events: &EventSink, retry: RetryPolicy) -> UndoReport {
        let owner = self.handover.owner.clone();
        run_in_order(&mut self.actions, &mut self.first_in_doubt, self.quiet, &owner, adapters, events, retry).await
    }
}

impl Drop for PendingUndos {
    fn drop(&mut self) {
        for action in self.actions.drain(..) {
            self.handover.send(action);
        }
    }
}

/// The safety net on every armed token: if the token is dropped without an
/// explicit rollback or commit (early return, panic, cancelled future), its
/// undo goes to the reaper, which performs it. Drop cannot await.
pub(crate) struct Guard {
    action: Option<UndoAction>,
    handover: Handover,
}

impl Guard {
    pub(crate) fn armed(action: UndoAction, handover: Handover) -> Self {
        Guard { action: Some(action), handover }
    }

    pub(crate) fn empty(handover: Handover) -> Self {
        Guard { action: None, handover }
    }

    /// Takes the undo out: the caller now runs it (rollback) or the resource
    /// is kept for good (commit).
    pub(crate) fn disarm(&mut self) -> Option<UndoAction> {
        self.action.take()
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Guard").field(&self.action).finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(action) = self.action.take() {
            self.handover.send(action);
        }
    }
}
