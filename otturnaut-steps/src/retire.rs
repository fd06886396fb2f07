//! After the commit point: drain and retire the previous release (stopped
//! and kept for a rollback), then remove releases beyond the retention.
//!
//! Best effort by design. The new release is live and recorded, so nothing
//! here is ever undone; a failure becomes a warning, and whatever could not be
//! removed becomes residue that `reconcile` clears later.

use std::time::{Duration, Instant};

use otturnaut_core::traits::{container_name, image_tag, kept_tag, live_tag};
use otturnaut_core::{DeployEvent, Release, Step};

use crate::tokens::Context;
use crate::undo::{Residue, ResidueKind, UndoAction, perform_with_retry};

/// How often Caddy's in-flight count is polled while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Time left for closed streams to be counted gone before the deadline.
const STREAM_CLOSE_MARGIN: Duration = Duration::from_secs(2);
/// A drain's first seconds belong to requests in flight at the switch (and,
/// on Caddy 2.8+, to its idle connections to a keep-alive app, closed after
/// the route's 2 s idle timeout): no stream close, hence no reload, then.
const STREAM_CLOSE_EARLIEST: Duration = Duration::from_secs(3);

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

    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::StopOld });
    match a.runtime.stop(&old.container, ctx.spec.timeouts.stop).await {
        Ok(()) => ctx.events.emit(DeployEvent::step_finished(Step::StopOld, started.elapsed(), None)),
        Err(e) => {
            // Kept, but still running unrouted and holding its port:
            // reconcile stops it.
            warn(Step::StopOld, started, &e);
            let name = container_name(&old.app, &old.deployment);
            residue.push(Residue {
                kind: ResidueKind::Container,
                what: format!("stop container {name} (kept for a rollback, still running)"),
                error: e.to_string(),
                // The stop may have happened before the error was reported.
                in_doubt: true,
            });
        }
    }

    // Kept before unmarked: the old release stays a release (for a
    // rollback) throughout. Without its kept mark, its live mark stays too:
    // the newer mark wins, and reconcile finishes the job.
    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::KeepOld });
    let kept =
        a.builder.tag_image(image_tag(&old.app, &old.deployment).as_str(), &kept_tag(&old.app, &old.deployment)).await;
    match kept {
        Ok(()) => {
            let unmark = UndoAction::RemoveImage { image: live_tag(&old.app, &old.deployment) };
            match perform_with_retry(&unmark, a, ctx.retry).await {
                (_, Ok(())) => ctx.events.emit(DeployEvent::step_finished(
                    Step::KeepOld,
                    started.elapsed(),
                    Some(format!("{} kept for a rollback", old.deployment)),
                )),
                (_, Err(e)) => {
                    warn(Step::KeepOld, started, &e);
                    residue.push(residue_of(&unmark, &e));
                }
            }
        }
        Err(e) => {
            warn(Step::KeepOld, started, &e);
            residue.push(Residue {
                kind: ResidueKind::Image,
                what: format!(
                    "mark {} of {} as kept ({})",
                    old.deployment,
                    old.app,
                    kept_tag(&old.app, &old.deployment)
                ),
                error: e.to_string(),
                in_doubt: false,
            });
        }
    }

    let release_port = UndoAction::ReleasePort { deployment: old.deployment.clone() };
    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::ReleaseOldPort });
    match perform_with_retry(&release_port, a, ctx.retry).await {
        (_, Ok(())) => ctx.events.emit(DeployEvent::step_finished(
            Step::ReleaseOldPort,
            started.elapsed(),
            Some(release_port.to_string()),
        )),
        (_, Err(e)) => {
            warn(Step::ReleaseOldPort, started, &e);
            residue.push(residue_of(&release_port, &e));
        }
    }
    residue
}

/// Waits until Caddy reports no request in flight to the old upstream, or
/// the drain timeout passes (then retiring goes ahead anyway: the stop grace
/// still lets the app finish what it can).
///
/// Where upgraded streams (WebSockets) outlive the switch, what is still open
/// `stream_close_delay + STREAM_CLOSE_MARGIN` before the deadline is asked to
/// close then (see [`otturnaut_core::traits::Router::close_streams`]): its
/// clients get a close frame, not the dropped connection of a stopped app.
/// So late, because it closes every app's streams and reloads Caddy.
async fn drain(ctx: &Context, old: &Release) -> Result<Option<String>, otturnaut_core::Error> {
    let router = &ctx.adapters.router;
    let now = Instant::now();
    let deadline = now.checked_add(ctx.spec.timeouts.drain).unwrap_or(now + otturnaut_core::MAX_DURATION);
    let mut close_at = match router.stream_close_delay().await {
        Ok(delay) => delay.and_then(|d| stream_close_time(now, deadline, d)),
        Err(e) => {
            tracing::warn!(error = %e, "could not tell whether open streams outlive the switch");
            None
        }
    };
    let mut detail = None;
    loop {
        let n = router.in_flight(old.host_port).await?;
        if n == 0 {
            return Ok(detail);
        }
        if Instant::now() >= deadline {
            ctx.events.warn(format!(
                "{n} request(s) still in flight to port {} after the drain timeout; stopping anyway",
                old.host_port
            ));
            return Ok(Some(format!("{n} still in flight")));
        }
        if close_at.is_some_and(|t| Instant::now() >= t) {
            close_at = None;
            let waited = now.elapsed().as_secs_f64();
            match router.close_streams().await {
                Ok(()) => {
                    tracing::info!(app = %old.app, connections = n, "asked Caddy to close the streams still open");
                    detail = Some(format!("{n} connection(s) open after {waited:.1} s: streams closed by Caddy"));
                }
                Err(e) => ctx.events.warn(format!(
                    "{n} connection(s) still open to port {} after {waited:.1} s, and Caddy could not be asked to \
                     close streams cleanly ({e}); they end when the release stops",
                    old.host_port
                )),
            }
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// When to ask for open streams to be closed, `delay` before they close: in
/// time for them to be closed before `deadline`, and not within
/// [`STREAM_CLOSE_EARLIEST`] of the drain's start. `None` if the drain is too
/// short for both.
fn stream_close_time(start: Instant, deadline: Instant, delay: Duration) -> Option<Instant> {
    let at = deadline.checked_sub(delay)?.checked_sub(STREAM_CLOSE_MARGIN)?;
    (at >= start + STREAM_CLOSE_EARLIEST).then_some(at)
}

fn residue_of(action: &UndoAction, e: &otturnaut_core::Error) -> Residue {
    Residue { kind: action.kind(), what: action.to_string(), error: e.to_string(), in_doubt: false }
}

/// Removes the app's retained releases beyond `keep` after a deploy: each
/// removal is a `remove_old` step; a failure is residue, never a failed deploy.
pub(crate) async fn retain(ctx: &Context, keep: usize) -> Vec<Residue> {
    let started = Instant::now();
    ctx.events.emit(DeployEvent::StepStarted { step: Step::RemoveOld });
    match crate::releases::apply_retention(&ctx.adapters, &ctx.spec.app, keep, ctx.retry).await {
        Ok(report) => {
            for r in &report.residue {
                ctx.events.warn(format!("removing releases beyond keep = {keep}: {r}"));
            }
            let detail = match report.done.len() {
                0 => format!("nothing beyond keep = {keep}"),
                n => format!("{n} release(s) beyond keep = {keep}: {}", report.done.join("; ")),
            };
            ctx.events.emit(DeployEvent::step_finished(Step::RemoveOld, started.elapsed(), Some(detail)));
            report.residue
        }
        Err(e) => {
            ctx.events.emit(DeployEvent::step_failed(Step::RemoveOld, started.elapsed(), &e.to_string()));
            ctx.events.warn(format!("could not apply retention to {}: {e}", ctx.spec.app));
            Vec::new()
        }
    }
}
