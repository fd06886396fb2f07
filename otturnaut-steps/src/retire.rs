//! After the commit point: drain and retire the previous release.
//!
//! Best effort by design. The new release is live and recorded, so nothing
//! here is ever undone; a failure becomes a warning, and whatever could not be
//! removed becomes residue that `reconcile` clears later.

use std::time::{Duration, Instant};

use otturnaut_core::traits::{image_tag, live_tag};
use otturnaut_core::{DeployEvent, Release, Step};

use crate::tokens::Context;
use crate::undo::{Residue, UndoAction, perform_with_retry};

/// How often Caddy's in-flight count is polled while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);

pub(crate) async fn retire(ctx: &Context, old: &Release, new: &Release) -> Vec<Residue> {
    let mut residue = Vec::new();
    if old.deployment == new.deployment || old.container == new.container {
        return residue;
    }
    let a = &ctx.adapters;
    let warn = |step: Step, started: Instant, e: &dyn std::fmt::Display| {
        ctx.events.emit(DeployEvent::step_failed(step, started.elapsed(), &e.to_string()));
        ctx.events.warn(format!("retiring {} of {}: {step} failed: {e}", old.deployment, old.app));
    };

    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::Drain });
    match drain(ctx, old).await {
        Ok(detail) => ctx.events.emit(DeployEvent::step_finished(Step::Drain, started.elapsed(), detail)),
        Err(e) => warn(Step::Drain, started, &e),
    }

    // A failed stop is only a warning: the forced removal below kills it anyway.
    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::StopOld });
    match a.runtime.stop(&old.container, ctx.spec.timeouts.stop).await {
        Ok(()) => ctx.events.emit(DeployEvent::step_finished(Step::StopOld, started.elapsed(), None)),
        Err(e) => warn(Step::StopOld, started, &e),
    }

    // The old live mark goes before the old release tag: an image is removed
    // with its last tag only. Removing the release tag of a prebuilt image
    // only untags it.
    let removals = [
        (Step::RemoveOld, UndoAction::RemoveContainer { name: old.container.clone() }),
        (Step::RemoveOld, UndoAction::RemoveImage { image: live_tag(&old.app, &old.deployment) }),
        (Step::RemoveOld, UndoAction::RemoveImage { image: image_tag(&old.app, &old.deployment) }),
        (Step::ReleaseOldPort, UndoAction::ReleasePort { deployment: old.deployment.clone() }),
    ];
    for (step, action) in removals {
        let started = Instant::now();
        ctx.events.emit(DeployEvent::StepStarted { step });
        match perform_with_retry(&action, a, ctx.retry).await {
            (_, Ok(())) => {
                ctx.events.emit(DeployEvent::step_finished(step, started.elapsed(), Some(action.to_string())))
            }
            (_, Err(e)) => {
                warn(step, started, &e);
                residue.push(Residue {
                    kind: action.kind().into(),
                    what: action.to_string(),
                    error: e.to_string(),
                    in_doubt: false,
                });
            }
        }
    }
    residue
}

/// Waits until Caddy reports no request in flight to the old upstream, or
/// the drain timeout passes (then retiring goes ahead anyway: the stop grace
/// still lets the app finish what it can).
async fn drain(ctx: &Context, old: &Release) -> Result<Option<String>, otturnaut_core::Error> {
    let now = Instant::now();
    let deadline = now.checked_add(ctx.spec.timeouts.drain).unwrap_or(now + otturnaut_core::MAX_DURATION);
    loop {
        let n = ctx.adapters.router.in_flight(old.host_port).await?;
        if n == 0 {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            ctx.events.warn(format!(
                "{n} request(s) still in flight to port {} after the drain timeout; stopping anyway",
                old.host_port
            ));
            return Ok(Some(format!("{n} still in flight")));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
