//! Rollback to a kept release: its wall time against a deploy of a prebuilt
//! image (both go through the same pipeline from the port step on; the
//! rollback reuses the kept image instead of pulling or building), and
//! requests through Caddy while rollbacks run back to back.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::{EventSink, Timeouts};
use otturnaut_steps::Strategy as _;

use super::app::{Rig, app_id, image_spec};
use super::cli::Cli;
use super::load::{self, Mode};
use super::zero_downtime::{LONG_EVERY, LONG_MS, SHORT_MS};

/// Rollbacks and prebuilt-image deploys of one app, alternating: through
/// the library, and as the `otturnaut` commands a user waits for.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub deploys: Vec<Duration>,
    pub rollbacks: Vec<Duration>,
    pub cli_deploys: Vec<Duration>,
    pub cli_rollbacks: Vec<Duration>,
}

async fn rollback(rig: &Rig, app: &otturnaut_core::AppId) -> Result<Duration> {
    let started = Instant::now();
    let done = rig
        .strategy
        .rollback(app, None, Timeouts::default(), &EventSink::discard())
        .await
        .with_context(|| format!("finding {app}'s kept release"))?
        .with_context(|| format!("rolling back {app}"))?;
    if done.rollback_of.is_none() {
        bail!("the rollback of {app} did not say which release it made live");
    }
    Ok(started.elapsed())
}

pub async fn timing(rig: &Rig, runs: u32) -> Result<Timing> {
    let app = app_id("relroll-time");
    let _ = rig.undeploy(&app).await;
    for v in ["r0", "r1"] {
        rig.strategy.execute(image_spec(&app, v), &EventSink::discard()).await.with_context(|| format!("{app} {v}"))?;
    }
    let mut t = Timing::default();
    for i in 0..runs {
        t.rollbacks.push(rollback(rig, &app).await?);
        let started = Instant::now();
        rig.strategy
            .execute(image_spec(&app, &format!("d{i}")), &EventSink::discard())
            .await
            .with_context(|| format!("deploy {i} of {app}"))?;
        t.deploys.push(started.elapsed());
    }
    rig.undeploy(&app).await?;
    Ok(t)
}

/// The same alternation through the `otturnaut` binary: each command's wall
/// time, from its start to its exit (its checks, lock and cleanup included).
pub async fn cli_timing(rig: &Rig, cli: &Cli, runs: u32, t: &mut Timing) -> Result<()> {
    let app = app_id("relroll-cli");
    let _ = rig.undeploy(&app).await;
    let run = |args: Vec<String>| async move {
        let started = Instant::now();
        let out = cli.command(&args).output().await.with_context(|| format!("running otturnaut {}", args[0]))?;
        if !out.status.success() {
            bail!("otturnaut {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok::<_, anyhow::Error>(started.elapsed())
    };
    for v in ["r0", "r1"] {
        run(Cli::deploy_args(&app, v)).await?;
    }
    for i in 0..runs {
        t.cli_rollbacks.push(run(vec!["rollback".into(), app.to_string()]).await?);
        t.cli_deploys.push(run(Cli::deploy_args(&app, &format!("d{i}"))).await?);
    }
    rig.undeploy(&app).await?;
    Ok(())
}

/// Requests through Caddy during rollbacks back to back, between two kept
/// releases, at the zero-downtime load.
#[derive(Debug, Clone)]
pub struct LoadRow {
    pub mode: Mode,
    pub rollbacks: u32,
    pub failed_rollbacks: u32,
    pub load: load::Report,
}

pub async fn under_load(rig: &Rig, mode: Mode, rollbacks: u32, concurrency: usize) -> Result<LoadRow> {
    let app = app_id(&format!("relroll-{}", mode.name().replace(|c: char| !c.is_ascii_alphanumeric(), "-")));
    let _ = rig.undeploy(&app).await;
    for v in ["r0", "r1"] {
        rig.strategy.execute(image_spec(&app, v), &EventSink::discard()).await.with_context(|| format!("{app} {v}"))?;
    }
    let config = load::Config::through_caddy(rig, &app, (mode, concurrency), (SHORT_MS, LONG_EVERY), rollbacks);
    let running = load::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut failed_rollbacks = 0;
    for i in 1..=rollbacks {
        if let Err(e) = rollback(rig, &app).await {
            failed_rollbacks += 1;
            eprintln!("bench: rollback {i} of {app} failed: {e:#}");
        }
    }
    // Long requests started before the last switch finish before the load stops.
    tokio::time::sleep(Duration::from_millis(LONG_MS + 500)).await;
    let load = running.stop().await;
    rig.undeploy(&app).await?;
    if load.requests == 0 {
        bail!("the load generator sent no request to {app}");
    }
    Ok(LoadRow { mode, rollbacks, failed_rollbacks, load })
}
