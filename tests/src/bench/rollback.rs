//! Rollback latency: deploys that fail their health check, from the call to
//! a clean state (the failed release gone, the old one still routed and
//! answering).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::{DeployEvent, EventSink};
use otturnaut_steps::Strategy as _;

use super::app::{Rig, app_id, domain, image_spec, set_env};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// The server exits at once: the probe sees the container die.
    Crash,
    /// The server never listens: the probe gives up at its deadline.
    NeverListens,
}

impl Case {
    pub const ALL: [Case; 2] = [Case::Crash, Case::NeverListens];

    pub fn name(self) -> &'static str {
        match self {
            Case::Crash => "server exits at start",
            Case::NeverListens => "never listens (deadline 2 s)",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Case::Crash => "exit",
            Case::NeverListens => "never-listen",
        }
    }
}

pub const NEVER_LISTENS_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Run {
    /// From the deploy call to its error, everything undone.
    pub total: Duration,
    /// From the call until the health check was reported failed.
    pub detected: Duration,
    /// From the failure report to the deploy's return: the rollback proper.
    pub rollback: Duration,
    /// Whether the state afterwards was clean (and if not, why).
    pub clean: std::result::Result<(), String>,
}

pub async fn run(rig: &Rig, case: Case, runs: u32) -> Result<Vec<Run>> {
    let app = app_id(&format!("rollback-{}", case.mode()));
    let _ = rig.undeploy(&app).await;
    let good = rig
        .strategy
        .execute(image_spec(&app, "good"), &EventSink::discard())
        .await
        .with_context(|| format!("first deploy of {app}"))?;
    let mut out = Vec::new();
    for i in 1..=runs {
        let mut spec = image_spec(&app, &format!("bad{i}"));
        set_env(&mut spec, "BENCH_MODE", case.mode());
        if case == Case::NeverListens {
            spec.health.deadline = NEVER_LISTENS_DEADLINE;
        }
        let (events, mut rx) = EventSink::channel();
        let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let watcher = {
            let failed_at = Arc::clone(&failed_at);
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if matches!(event, DeployEvent::StepFailed { .. }) {
                        let mut slot = failed_at.lock().unwrap_or_else(|e| e.into_inner());
                        slot.get_or_insert_with(Instant::now);
                    }
                }
            })
        };
        let t0 = Instant::now();
        let result = rig.strategy.execute(spec, &events).await;
        let total = t0.elapsed();
        drop(events);
        let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
        let error = match result {
            Ok(done) => bail!("a deploy meant to fail ({}) went live: {}", case.name(), done.release.deployment),
            Err(e) => e,
        };
        let detected = failed_at.lock().unwrap_or_else(|e| e.into_inner()).map_or(total, |t| t - t0);
        let clean = check_clean(rig, &app, &good.release, error.deployment().as_str()).await;
        out.push(Run { total, detected, rollback: total.saturating_sub(detected), clean });
    }
    rig.undeploy(&app).await?;
    Ok(out)
}

/// The old release alone is left, routed and answering.
async fn check_clean(
    rig: &Rig,
    app: &otturnaut_core::AppId,
    good: &otturnaut_core::Release,
    failed: &str,
) -> std::result::Result<(), String> {
    let containers = rig.adapters.runtime.list(Some(app)).await.map_err(|e| e.to_string())?;
    if let Some(left) = containers.iter().find(|c| c.deployment.as_str() == failed) {
        return Err(format!("the failed release's container {} is still there ({})", left.name, left.state));
    }
    if containers.len() != 1 || containers[0].id != good.container || !containers[0].running {
        return Err(format!("expected only the old release running, found {containers:?}"));
    }
    let route = rig.adapters.router.route(app).await.map_err(|e| e.to_string())?;
    if route.as_ref().map(|r| r.port) != Some(good.host_port) {
        return Err(format!("the route points to {route:?}, not to the old release's port {}", good.host_port));
    }
    let answer = crate::caddy_proc::client()
        .get(format!("http://{}/version", rig.caddy.listen))
        .header("Host", domain(app).to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    if answer.trim() != "good" {
        return Err(format!("Caddy answered {answer:?} instead of the old release"));
    }
    Ok(())
}
