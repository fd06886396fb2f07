//! How a deploy ended, as every front end reports it: the CLI prints it
//! (`deploy --json`'s last line is [`Outcome::to_json`]) and the HTTP API
//! streams the very same object as its last line.

use std::time::Duration;

use otturnaut_core::{AppId, ContainerPort, DeploymentId, Domain, Release, Step};
use otturnaut_steps::{Deployed, Residue, UndoOutcome};
use serde_json::{Value, json};

/// What a script reads from the end of a deploy: the CLI's exit code, and
/// `exit_code` in the result object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done.
    Ok = 0,
    /// Failed and rolled back: the previous release (if any) is live, nothing is left over.
    Failed = 1,
    /// Invalid input or usage: nothing was done.
    Usage = 2,
    /// Failed, and cleaning up left something behind: run `otturnaut reconcile`.
    Residue = 3,
    /// Docker or Caddy could not be reached.
    Unavailable = 4,
}

impl ExitStatus {
    /// The process exit code (the CLI's, and `exit_code` in the result object).
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The end of one deploy.
#[derive(Debug)]
pub struct Outcome {
    /// The app deployed.
    pub app: AppId,
    /// None only when the deploy ended before it got an id.
    pub deployment: Option<DeploymentId>,
    /// For a rollback: the retained release it made live again.
    pub rollback_of: Option<DeploymentId>,
    /// How it ended.
    pub ending: Ending,
    /// Leftovers of earlier interrupted deploys removed before this one ran.
    pub cleaned: Vec<String>,
    /// From taking the app's lock to the end.
    pub elapsed: Duration,
}

/// The four ways a deploy ends.
#[derive(Debug)]
pub enum Ending {
    /// The new release is live (its retirement of the old one may have left
    /// residue: warnings only).
    Deployed {
        /// The new release, the retired one and the retirement's residue.
        deployed: Deployed,
        /// The port the app listens on inside its container.
        container_port: ContainerPort,
        /// Where people reach the app.
        urls: Vec<String>,
    },
    /// A step failed before the commit: what the deploy did was undone, but
    /// for `residue`. The previous release (`live`) keeps serving.
    Failed {
        /// The step that failed.
        step: Step,
        /// Why.
        cause: otturnaut_core::Error,
        /// Every undo the rollback ran.
        undo: Vec<UndoOutcome>,
        /// What the rollback could not release.
        residue: Vec<Residue>,
        /// The app's live release, read back after the rollback.
        live: Live,
    },
    /// Cancelled (a signal, a cancel request, a dropped handle, a panic)
    /// before the commit: rolled back like a failure.
    Interrupted {
        /// What interrupted it.
        cause: String,
        /// Every undo the rollback ran.
        undo: Vec<UndoOutcome>,
        /// What the rollback could not release.
        residue: Vec<Residue>,
        /// The app's live release, read back after the rollback.
        live: Live,
    },
    /// Cancelled after the commit: the new release is live, retiring the old
    /// one was cut short and finished by a sweep (`residue` is what it left).
    InterruptedAfterCommit {
        /// What interrupted it.
        cause: String,
        /// The new release's domains.
        domains: Vec<Domain>,
        /// What the sweep could not clean up.
        residue: Vec<Residue>,
        /// The app's live release (the new one), read back after the sweep.
        live: Live,
    },
}

/// What is live after a deploy that did not go through, as read back.
pub type Live = Result<Option<Release>, String>;

impl Outcome {
    /// `deployed` or `failed`.
    pub fn result(&self) -> &'static str {
        match self.ending {
            Ending::Deployed { .. } | Ending::InterruptedAfterCommit { .. } => "deployed",
            Ending::Failed { .. } | Ending::Interrupted { .. } => "failed",
        }
    }

    /// True when the new release is live (even if interrupted after the commit).
    pub fn is_deployed(&self) -> bool {
        self.result() == "deployed"
    }

    /// What is left that `otturnaut reconcile` would remove.
    pub fn residue(&self) -> &[Residue] {
        match &self.ending {
            Ending::Deployed { deployed, .. } => &deployed.residue,
            Ending::Failed { residue, .. }
            | Ending::Interrupted { residue, .. }
            | Ending::InterruptedAfterCommit { residue, .. } => residue,
        }
    }

    /// True for a failure that left nothing behind.
    pub fn rolled_back(&self) -> bool {
        !self.is_deployed() && self.residue().is_empty()
    }

    /// The exit status a front end reports for this outcome.
    pub fn exit(&self) -> ExitStatus {
        match &self.ending {
            Ending::Deployed { .. } | Ending::InterruptedAfterCommit { .. } => ExitStatus::Ok,
            Ending::Failed { cause, .. } if cause.is_unavailable() => ExitStatus::Unavailable,
            _ if self.residue().is_empty() => ExitStatus::Failed,
            _ => ExitStatus::Residue,
        }
    }

    /// The result object, as `deploy --json` prints it last.
    pub fn to_json(&self) -> Value {
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        let exit_code = self.exit().code();
        let (app, deployment, cleaned, rollback_of) = (&self.app, &self.deployment, &self.cleaned, &self.rollback_of);
        match &self.ending {
            Ending::Deployed { deployed: d, container_port, urls } => {
                let r = &d.release;
                json!({
                    "result": "deployed",
                    "app": r.app,
                    "deployment": r.deployment,
                    "image": r.image,
                    "commit": r.commit,
                    "port": r.host_port,
                    "container_port": container_port,
                    "domains": r.domains,
                    "urls": urls,
                    "previous": d.previous.as_ref().map(|p| &p.deployment),
                    "rollback_of": rollback_of,
                    "rolled_back": false,
                    "residue": d.residue,
                    "cleaned": cleaned,
                    "error": null,
                    "elapsed_ms": elapsed_ms,
                    "exit_code": exit_code,
                })
            }
            Ending::Failed { step, cause, undo, residue, live } => json!({
                "result": "failed",
                "app": app,
                "deployment": deployment,
                "step": step,
                "rollback_of": rollback_of,
                "rolled_back": residue.is_empty(),
                "residue": residue,
                "undo": undo,
                "live": live_json(live),
                "cleaned": cleaned,
                "error": cause.to_string(),
                "elapsed_ms": elapsed_ms,
                "exit_code": exit_code,
            }),
            Ending::Interrupted { cause, undo, residue, live } => json!({
                "result": "failed",
                "app": app,
                "deployment": deployment,
                "rollback_of": rollback_of,
                "interrupted": cause,
                "rolled_back": residue.is_empty(),
                "residue": residue,
                "undo": undo,
                "live": live_json(live),
                "cleaned": cleaned,
                "error": format!("interrupted by {cause}"),
                "elapsed_ms": elapsed_ms,
                "exit_code": exit_code,
            }),
            Ending::InterruptedAfterCommit { cause, domains, residue, live } => {
                let live = live.as_ref().ok().and_then(Option::as_ref);
                json!({
                    "result": "deployed",
                    "app": app,
                    "deployment": deployment,
                    "port": live.map(|r| r.host_port),
                    "domains": domains,
                    "rollback_of": rollback_of,
                    "interrupted": cause,
                    "rolled_back": false,
                    "residue": residue,
                    "live": live.map(release_json),
                    "cleaned": cleaned,
                    "error": null,
                    "elapsed_ms": elapsed_ms,
                    "exit_code": exit_code,
                })
            }
        }
    }
}

fn live_json(live: &Live) -> Value {
    live.as_ref().ok().and_then(Option::as_ref).map_or(Value::Null, release_json)
}

/// A release as the result object shows it.
pub fn release_json(r: &Release) -> Value {
    json!({
        "deployment": r.deployment,
        "image": r.image,
        "port": r.host_port,
        "domains": r.domains,
        "commit": r.commit,
    })
}

/// The result object of a deploy that never started (bad input, a service
/// down, the lock not had): nothing was done.
pub fn not_started_json(app: &str, rollback_of: Option<&str>, error: &str, exit: ExitStatus) -> Value {
    json!({
        "result": "failed",
        "app": app,
        "deployment": null,
        "rollback_of": rollback_of,
        "rolled_back": false,
        "residue": [],
        "error": error,
        "exit_code": exit.code(),
    })
}
