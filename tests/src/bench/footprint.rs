//! Footprint: the size of the `otturnaut` binary, the peak memory of a
//! deploy, how long `otturnaut status` takes with many apps, and how long
//! `otturnaut reconcile` takes to route all of them again after Caddy lost
//! every route (one config write).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::EventSink;
use otturnaut_steps::Strategy as _;

use super::app::{Rig, app_id, image_spec};
use super::cli::Cli;

#[derive(Debug, Clone)]
pub struct Footprint {
    pub binary_bytes: u64,
    /// Peak RSS of `otturnaut deploy` (a redeploy), in KiB.
    pub deploy_peak_kib: u64,
    pub deploy_wall: Duration,
    pub status_apps: usize,
    pub status: Vec<Duration>,
    pub status_peak_kib: u64,
    /// `otturnaut reconcile APP...` of every app after Caddy lost all their
    /// routes: each run restores all `status_apps` routes.
    pub restore: Vec<Duration>,
}

pub async fn run(rig: &Rig, cli: &Cli, status_apps: usize) -> Result<Footprint> {
    let binary_bytes = std::fs::metadata(&cli.bin)?.len();

    let app = app_id("footprint");
    let _ = rig.undeploy(&app).await;
    timed_run(cli, &Cli::deploy_args(&app, "f1")).await.context("first CLI deploy")?;
    let (deploy_peak_kib, deploy_wall) =
        timed_run(cli, &Cli::deploy_args(&app, "f2")).await.context("CLI redeploy under /usr/bin/time")?;
    rig.undeploy(&app).await?;

    // Many apps, deployed in batches from this process (quicker than the CLI).
    let apps: Vec<_> = (0..status_apps).map(|i| app_id(&format!("many-{i}"))).collect();
    for batch in apps.chunks(20) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|app| {
                let strategy = rig.strategy.clone();
                let spec = image_spec(app, "m1");
                tokio::spawn(async move { strategy.execute(spec, &EventSink::discard()).await })
            })
            .collect();
        for (app, task) in batch.iter().zip(tasks) {
            task.await?.with_context(|| format!("deploying {app} for the status measurement"))?;
        }
    }
    let mut status = Vec::new();
    let mut status_peak_kib = 0;
    let args = ["status".to_owned(), "--json".to_owned()];
    for _ in 0..3 {
        let t0 = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(120), cli.command(&args).output())
            .await
            .context("otturnaut status took more than 120 s")??;
        status.push(t0.elapsed());
        if !out.status.success() {
            bail!("otturnaut status failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let listed = count_listed(&out.stdout);
        if listed < status_apps {
            bail!("otturnaut status listed {listed} apps, expected at least {status_apps}");
        }
    }
    if let Ok((kib, _)) = timed_run(cli, &args).await {
        status_peak_kib = kib;
    }
    let mut restore = Vec::new();
    for _ in 0..3 {
        restore.push(restore_all(rig, cli, &apps).await?);
    }
    rig.undeploy_all(&apps).await?;
    Ok(Footprint { binary_bytes, deploy_peak_kib, deploy_wall, status_apps, status, status_peak_kib, restore })
}

/// Empties our server's route list (as a Caddy restart without `--resume`
/// does), then times `otturnaut reconcile` of every app and checks that every
/// route is back.
async fn restore_all(rig: &Rig, cli: &Cli, apps: &[otturnaut_core::AppId]) -> Result<Duration> {
    let url = format!("{}/config/apps/http/servers/otturnaut/routes", rig.caddy.admin_url);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let emptied = client.patch(&url).json(&serde_json::json!([])).send().await?;
    if !emptied.status().is_success() {
        bail!("emptying the route list: Caddy answered {}", emptied.status());
    }
    let mut args = vec!["reconcile".to_owned(), "--json".to_owned()];
    args.extend(apps.iter().map(ToString::to_string));
    let t0 = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), cli.command(&args).output())
        .await
        .context("otturnaut reconcile took more than 120 s")??;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!("otturnaut reconcile failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let routed = rig.agent.caddy.list_routes().await?.into_iter().filter(|(a, _)| apps.contains(a)).count();
    if routed != apps.len() {
        bail!("after reconcile {routed} of {} apps have a route", apps.len());
    }
    Ok(took)
}

/// How many apps a `status --json` document lists (an array, or an object
/// with an array of apps).
fn count_listed(stdout: &[u8]) -> usize {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(stdout) else { return 0 };
    match &doc {
        serde_json::Value::Array(a) => a.len(),
        serde_json::Value::Object(o) => o.values().filter_map(|v| v.as_array()).map(Vec::len).max().unwrap_or(0),
        _ => 0,
    }
}

/// Runs the CLI under `/usr/bin/time -v`: its peak RSS (KiB) and wall time.
async fn timed_run(cli: &Cli, args: &[String]) -> Result<(u64, Duration)> {
    let mut cmd = tokio::process::Command::new("/usr/bin/time");
    cmd.arg("-v").arg(&cli.bin);
    cli.prepare(&mut cmd, args);
    let t0 = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .context("otturnaut did not finish within 300 s")??;
    let wall = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("otturnaut {} failed ({}): {stderr}", args.join(" "), out.status);
    }
    let kib = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .context("/usr/bin/time -v printed no maximum resident set size")?;
    Ok((kib, wall))
}
