//! Infrastructure faults: Caddy dying just before the route switch (and
//! coming back with or without its autosaved config), the Docker daemon
//! restarting during the health check (opt-in), a crash-looping release, a
//! failing build, a full disk under the work dir, and signals during a real
//! build and a real health check.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cases::LiveApp;
use super::check::{self, Verdict, next_version};
use super::cli::Outcome;
use super::cli::is_step_event;
use super::dockerd::Dockerd;
use super::prober::{Expect, Prober};
use super::snapshot::{Snapshot, diff};
use super::world::{RUN_LIMIT, Runtime, Src, World, via_caddy};
use otturnaut_core::AppId;
use otturnaut_tests::fixtures::Behaviour;

#[derive(Clone, Debug)]
pub struct InfraRow {
    pub name: &'static str,
    pub verdict: Verdict,
    pub exit: String,
    pub probes: String,
    pub took: Duration,
}

fn row(name: &'static str, verdict: Verdict, exit: Option<i32>, probes: String, started: Instant) -> InfraRow {
    InfraRow { name, verdict, exit: exit.map_or("killed".into(), |c| c.to_string()), probes, took: started.elapsed() }
}

async fn live_app(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<LiveApp> {
    match slot.take() {
        Some(la) => Ok(la),
        None => LiveApp::new(world).await,
    }
}

/// Caddy is killed the moment the health check passes, so the route switch
/// finds it gone; it is restarted with `--resume`. The deploy must fail
/// clearly (exit 4, Caddy named), and once Caddy is back the old release
/// serves and nothing of the failed deploy is left.
pub async fn caddy_dies_before_the_switch(world: &mut World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let started = Instant::now();
    let la = live_app(world, slot).await?;
    let (app, live) = (la.app.clone(), la.live.clone());
    let before = world.observer.snapshot(&app).await?;
    let new_version = next_version(Some(&live));
    let prober = Prober::start(world.listen(), &World::domain(&app), Expect::Version(live.version.clone()));
    let mut running = world.cli.spawn(&world.deploy_args(&app, Src::Git(new_version), &[]), None)?;
    let mut v = Verdict::default();
    let healthy = running.wait_for(|e| is_step_event(e, "step_finished", "health_check"), RUN_LIMIT).await;
    if healthy.is_none() {
        v.problem("the health check never finished");
    }
    prober.expect(Expect::Paused);
    world.caddy.kill();
    let out = running.finish(RUN_LIMIT).await;
    world.caddy.restart(true).await?;
    prober.expect(Expect::Version(live.version.clone()));
    // Let the prober see the restarted Caddy serve.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probes = prober.stop().await;

    if out.code != Some(4) {
        v.problem(format!("expected exit 4 (Caddy unreachable), got {}", out.summary()));
    }
    let error = out.error();
    if !error.contains("Caddy") {
        v.problem(format!("the error does not name Caddy: {error:?}"));
    }
    let mut checked =
        check::failed(world, &app, &before, Some(&live), &out, None, false, Some(&probes), new_version).await?;
    checked.problems.retain(|p| !p.starts_with("expected exit"));
    v.absorb(checked);
    v.notes.push(format!("error: {}", error.lines().next().unwrap_or_default()));
    *slot = Some(la);
    Ok(row(
        "Caddy killed before the route switch, restarted with --resume",
        v,
        out.code,
        format!("{}/{}", probes.errors, probes.total),
        started,
    ))
}

/// Config writes in a Caddy log since `from` bytes: admin API requests other
/// than GET, and other than `POST /adapt` (the adapter's feature probe, which
/// loads nothing).
fn config_writes(log: &str, from: usize) -> Vec<String> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("received request") && !l.contains("/adapt"))
        .filter(|l| !l.contains("\"method\": \"GET\"") && !l.contains("\"method\":\"GET\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            format!("{} {}", v["method"].as_str().unwrap_or("?"), v["uri"].as_str().unwrap_or("?"))
        })
        .collect()
}

/// Three live apps, for the cases that take every route away.
async fn three_live_apps(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<[LiveApp; 3]> {
    let first = live_app(world, slot).await?;
    Ok([first, LiveApp::new(world).await?, LiveApp::new(world).await?])
}

/// Serves every app again with `reconcile APP...` after Caddy came back
/// empty, and checks: each app answers its live version, reconcile changed
/// nothing in Docker (its routes are back as they were), every route came
/// back in one Caddy config write.
async fn reconcile_restores(
    world: &World,
    apps: &[LiveApp],
    before: &[Snapshot],
    v: &mut Verdict,
) -> anyhow::Result<Outcome> {
    let log_from = world.caddy.log().len();
    let names: Vec<&AppId> = apps.iter().map(|la| &la.app).collect();
    let rec = world.reconcile_apps(&names).await?;
    if rec.code != Some(0) {
        v.problem(format!("reconcile: {}", rec.summary()));
    }
    let writes = config_writes(&world.caddy.log(), log_from);
    if writes.len() != 1 {
        v.problem(format!("reconcile made {} Caddy config writes, not 1: {writes:?}", writes.len()));
    }
    let writes = writes.len();
    for (la, before) in apps.iter().zip(before) {
        match via_caddy(world, &la.app).await {
            Some((200, body)) if body == la.live.version => {}
            other => v.problem(format!("{} answers {other:?} after reconcile, not {}", la.app, la.live.version)),
        }
        let after = world.observer.snapshot(&la.app).await?;
        let changes = diff(before, &after);
        if !changes.is_empty() {
            v.problem(format!("{}: reconcile changed {changes:?}", la.app));
        }
    }
    v.notes.push(format!(
        "reconcile of {} apps: {:.0} ms, {writes} config write(s)",
        apps.len(),
        rec.elapsed.as_secs_f64() * 1000.0
    ));
    Ok(rec)
}

/// Checks that no app answers through Caddy and that `status` says each is
/// live with its route missing.
async fn routes_are_gone(world: &World, apps: &[LiveApp], v: &mut Verdict) -> anyhow::Result<()> {
    for la in apps {
        if via_caddy(world, &la.app).await.is_some_and(|(s, _)| s == 200) {
            v.problem(format!("{} still answers: Caddy kept its routes, so this case tests nothing", la.app));
        }
        let status = world.status(&la.app).await?;
        if status["live"] != true || status["route_missing"] != true {
            v.problem(format!("status of {} should say live, route missing: {status}", la.app));
        }
    }
    Ok(())
}

async fn keep_first(world: &World, slot: &mut Option<LiveApp>, apps: [LiveApp; 3]) -> anyhow::Result<()> {
    let [first, second, third] = apps;
    world.clean_up(&second.app).await?;
    world.clean_up(&third.app).await?;
    *slot = Some(first);
    Ok(())
}

/// Caddy restarted *without* its autosaved config (as Debian's unit and the
/// dev Caddy run it) while three apps are live: nothing routes to them. The
/// durable record is in Docker, so `reconcile` must serve all three again,
/// in one config write, removing nothing.
pub async fn caddy_loses_its_config(world: &mut World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let started = Instant::now();
    let apps = three_live_apps(world, slot).await?;
    let mut before = Vec::new();
    for la in &apps {
        before.push(world.observer.snapshot(&la.app).await?);
    }
    world.caddy.restart(false).await?;
    let mut v = Verdict::default();
    routes_are_gone(world, &apps, &mut v).await?;
    let rec = reconcile_restores(world, &apps, &before, &mut v).await?;
    keep_first(world, slot, apps).await?;
    Ok(row("Caddy restarted empty (no --resume), 3 apps live: reconcile serves all", v, rec.code, "-".into(), started))
}

/// A simulated reboot: Docker and Caddy both stopped, then started again,
/// Caddy empty. Docker brings the releases back (`unless-stopped`); the boot
/// reconcile (what `otturnaut-reconcile.service` runs) must serve every app
/// again without a redeploy. Only with `--docker-restart` (it restarts the
/// dockerd that `cargo xtask services up` started, see [`Dockerd`]).
pub async fn reboot(world: &mut World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let mut dockerd = Dockerd::recorded()?;
    let started = Instant::now();
    let apps = three_live_apps(world, slot).await?;
    let mut before = Vec::new();
    for la in &apps {
        before.push(world.observer.snapshot(&la.app).await?);
    }
    let mut v = Verdict::default();
    world.caddy.kill();
    dockerd.stop(&mut v).await;
    if let Err(e) = dockerd.start().await {
        v.problem(format!("Docker did not come back: {e:#}"));
    }
    world.caddy.restart(false).await?;
    // Docker restarts `unless-stopped` containers as it comes up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for la in &apps {
            let snap = world.observer.snapshot(&la.app).await?;
            running += snap.containers.iter().filter(|c| c.running && c.deployment == la.live.deployment).count();
        }
        if running == apps.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the reboot itself lost, apart from the routes.
    let mut rebooted = Vec::new();
    for la in &apps {
        rebooted.push(world.observer.snapshot(&la.app).await?);
    }
    routes_are_gone(world, &apps, &mut v).await?;
    // After the boot reconcile everything is as before the reboot, routes too.
    let rec = reconcile_restores(world, &apps, &before, &mut v).await?;
    for (b, a) in before.iter().zip(&rebooted) {
        let lost: Vec<String> =
            diff(b, a).iter().filter(|c| !c.added && c.item.kind != "route").map(ToString::to_string).collect();
        if !lost.is_empty() {
            v.problem(format!("the reboot itself lost {lost:?}"));
        }
    }
    keep_first(world, slot, apps).await?;
    Ok(row(
        "simulated reboot (Docker and Caddy restarted, Caddy empty): boot reconcile",
        v,
        rec.code,
        "-".into(),
        started,
    ))
}

/// A hostile repository whose Dockerfile's `LABEL`s claim to be the live
/// release of another app (its app id, a deployment id, its host port), with
/// a slow `RUN` after them: the legacy builder gives that step's intermediate
/// container those labels. While it builds (as app `evil`), `reconcile
/// victim`, `reconcile victim evil` and a deploy of the victim run. The
/// victim must be untouched by the reconciles and serve throughout.
pub async fn label_spoofing(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let started = Instant::now();
    let la = live_app(world, slot).await?;
    let (victim, live) = (la.app.clone(), la.live.clone());
    let spoof = Behaviour::Spoof {
        victim: victim.to_string(),
        deployment: otturnaut_core::DeploymentId::generate().to_string(),
        host_port: live.port,
        secs: 60,
    };
    let spoof_ref = format!("spoof-{victim}");
    world.add_ref(&spoof_ref, &spoof);
    let evil = world.app("evil");
    let mut v = Verdict::default();
    let before = world.observer.snapshot(&victim).await?;
    let prober = Prober::start(world.listen(), &World::domain(&victim), Expect::Version(live.version.clone()));
    let mut building = world.cli.spawn(&world.deploy_args(&evil, Src::Git(&spoof_ref), &[]), None)?;
    if building.wait_for(|e| is_step_event(e, "step_started", "build"), RUN_LIMIT).await.is_none() {
        v.problem("the spoofing build never started");
    }
    // Wait until the spoofing intermediate container exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut spoofing = false;
    while !spoofing && Instant::now() < deadline {
        let out = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=otturnaut.app={victim}"),
                "--filter",
                &format!("label=otturnaut.host_port={}", live.port),
            ])
            .output()
            .context("running docker ps")?;
        spoofing = String::from_utf8_lossy(&out.stdout).lines().count() > 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !spoofing {
        // BuildKit (the builder wherever the daemon has it) makes no
        // intermediate containers: nothing can wear the labels at all. The
        // reconciles and the deploy below still run during the build.
        v.notes.push("no intermediate container carried the spoofed labels (BuildKit makes none)".into());
    }
    for apps in [vec![&victim], vec![&victim, &evil]] {
        let rec = world.reconcile_apps(&apps).await?;
        if rec.code != Some(0) {
            v.problem(format!("reconcile {apps:?}: {}", rec.summary()));
        }
        let now = world.observer.snapshot(&victim).await?;
        let changes = diff(&before, &now);
        if !changes.is_empty() {
            v.problem(format!("reconcile {apps:?} changed the victim: {changes:?}"));
        }
    }
    let new_version = next_version(Some(&live));
    prober.expect(Expect::Anything);
    let out = world.deploy(&victim, Src::Git(new_version), None).await?;
    let mut after = Verdict::default();
    let new = check::deployed(world, &victim, Some(&live), &out, new_version, None, &mut after).await?;
    v.absorb(after);
    building.signal("INT")?;
    let evil_out = building.finish(RUN_LIMIT).await;
    let probes = prober.stop().await;
    if probes.errors > 0 {
        v.problem(format!("the victim failed {} of {} requests: {}", probes.errors, probes.total, probes.trail_text()));
    }
    if !matches!(evil_out.code, Some(1)) {
        v.notes.push(format!("the interrupted spoofing deploy: {}", evil_out.summary()));
    }
    *slot = new.map(|live| LiveApp { app: victim, live });
    let _ = world.clean_up(&evil).await;
    Ok(row(
        "Dockerfile LABELs spoof another app's release during its build",
        v,
        out.code,
        format!("{}/{}", probes.errors, probes.total),
        started,
    ))
}

/// The Docker daemon is restarted while the new container is being health
/// checked. Every container on the daemon stops; `unless-stopped` brings
/// ours back. Only with `--docker-restart`, and only for a dockerd that
/// `cargo xtask services up` started (see [`Dockerd`]).
pub async fn docker_restarts_during_the_health_check(
    world: &World,
    slot: &mut Option<LiveApp>,
) -> anyhow::Result<InfraRow> {
    let started = Instant::now();
    let mut dockerd = Dockerd::recorded()?;
    let la = live_app(world, slot).await?;
    let (app, live) = (la.app.clone(), la.live.clone());
    let before = world.observer.snapshot(&app).await?;
    let new_version = next_version(Some(&live));
    let prober = Prober::start(world.listen(), &World::domain(&app), Expect::Version(live.version.clone()));
    let mut running =
        world.cli.spawn(&world.deploy_args(&app, Src::Git("neverlisten"), &["--health-timeout", "60s"]), None)?;
    let mut v = Verdict::default();
    if running.wait_for(|e| is_step_event(e, "step_started", "health_check"), RUN_LIMIT).await.is_none() {
        v.problem("the health check never started");
    }
    prober.expect(Expect::Paused);
    dockerd.stop(&mut v).await;
    if let Err(e) = dockerd.start().await {
        v.problem(format!("Docker did not come back: {e:#}"));
    }
    let out = running.finish(RUN_LIMIT).await;
    // Give `unless-stopped` time to bring the old release back.
    let back = Instant::now() + Duration::from_secs(30);
    while via_caddy(world, &app).await.is_none_or(|(s, b)| s != 200 || b != live.version) && Instant::now() < back {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    prober.expect(Expect::Version(live.version.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probes = prober.stop().await;
    if !matches!(out.code, Some(1 | 3 | 4)) {
        v.problem(format!("expected the deploy to fail, got {}", out.summary()));
    }
    let mut checked =
        check::failed(world, &app, &before, Some(&live), &out, None, false, Some(&probes), new_version).await?;
    checked.problems.retain(|p| !p.starts_with("expected exit"));
    v.absorb(checked);
    *slot = Some(la);
    Ok(row(
        "Docker daemon restarted during the health check",
        v,
        out.code,
        format!("{}/{}", probes.errors, probes.total),
        started,
    ))
}

/// A deploy of a live app that must fail and roll back.
struct Attempt<'a> {
    name: &'static str,
    src: Src<'a>,
    extra: &'a [&'a str],
    /// Another `--work-dir`.
    work_dir: Option<&'a str>,
    /// `(step, signal, delay ms)`: signal the CLI that long after `step` started.
    signal: Option<(&'static str, &'static str, u64)>,
    /// The step the error must name.
    step: Option<&'static str>,
}

/// Runs `a`, judges it like a fault case; `check_outcome` adds the case's
/// own assertions.
/// A signalled deploy must roll back and exit promptly, not wait out its step.
fn stops_within_30s(out: &super::cli::Outcome, v: &mut Verdict) {
    if out.elapsed > Duration::from_secs(30) {
        v.problem(format!("took {:.1}s to stop", out.elapsed.as_secs_f64()));
    }
}

async fn failing_deploy(
    world: &World,
    slot: &mut Option<LiveApp>,
    a: Attempt<'_>,
    check_outcome: impl FnOnce(&super::cli::Outcome, &mut Verdict),
) -> anyhow::Result<InfraRow> {
    let started = Instant::now();
    let la = live_app(world, slot).await?;
    let (app, live) = (la.app.clone(), la.live.clone());
    let before = world.observer.snapshot(&app).await?;
    let prober = Prober::start(world.listen(), &World::domain(&app), Expect::Version(live.version.clone()));
    let args = world.deploy_args(&app, a.src, a.extra);
    let mut cli = world.cli.clone();
    if let Some(dir) = a.work_dir {
        let i = cli.global.iter().position(|g| g == "--work-dir").context("--work-dir flag")?;
        cli.global[i + 1] = dir.to_owned();
    }
    let mut running = cli.spawn(&args, None)?;
    let mut v = Verdict::default();
    if let Some((step, sig, delay)) = a.signal {
        if running.wait_for(|e| is_step_event(e, "step_started", step), RUN_LIMIT).await.is_some() {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            running.signal(sig)?;
        } else {
            v.problem(format!("step {step} never started"));
        }
    }
    let out = running.finish(RUN_LIMIT).await;
    let probes = prober.stop().await;
    check_outcome(&out, &mut v);
    let checked = check::failed(world, &app, &before, Some(&live), &out, a.step, false, Some(&probes), "").await?;
    v.absorb(checked);
    if !v.passed() {
        v.notes.push(out.summary());
    }
    *slot = Some(la);
    Ok(row(a.name, v, out.code, format!("{}/{}", probes.errors, probes.total), started))
}

/// A release that exits at once (and is restarted by `unless-stopped`):
/// the health check must say so — exit code and logs — without waiting out
/// its 60 s deadline.
pub async fn crash_looping_release(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    // On a cluster the start waits for every task to run, and sees one
    // that exited already as often as the health check does.
    let swarm = matches!(world.runtime, Runtime::Swarm(_));
    let a = Attempt {
        name: "new release crash-loops (exit 3)",
        src: Src::Git("crash"),
        extra: &["--health-timeout", "60s"],
        work_dir: None,
        signal: None,
        step: if swarm { None } else { Some("health_check") },
    };
    failing_deploy(world, slot, a, |out, v| {
        let step = out.str_field("step");
        if swarm && !matches!(step, Some("start_container" | "health_check")) {
            v.problem(format!("the error names step {step:?}, not start_container or health_check"));
        }
        let e = out.error();
        if !e.contains("exited with code 3") || !e.contains("boom") {
            v.problem(format!("the error does not give the exit code and the logs: {e:?}"));
        }
        if out.elapsed > Duration::from_secs(20) {
            v.problem(format!("took {:.1}s: it waited for the deadline", out.elapsed.as_secs_f64()));
        }
        v.notes.push(format!("failed after {:.1}s", out.elapsed.as_secs_f64()));
    })
    .await
}

pub async fn failing_build(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let a = Attempt {
        name: "build fails (RUN exits 7)",
        src: Src::Git("failbuild"),
        extra: &[],
        work_dir: None,
        signal: None,
        step: Some("build"),
    };
    failing_deploy(world, slot, a, |out, v| {
        let e = out.error();
        if !e.contains("about to fail") {
            v.problem(format!("the error does not show the build's last lines: {e:?}"));
        }
    })
    .await
}

/// The work dir is a 256 KiB tmpfs: the clone runs out of space (ENOSPC).
pub async fn disk_full(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let mount = world.root().join("small-work");
    std::fs::create_dir_all(&mount)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&mount)
        .status()
        .context("running mount")?;
    anyhow::ensure!(status.success(), "mounting a tmpfs at {} failed (needs root)", mount.display());
    let dir = mount.display().to_string();
    let a = Attempt {
        name: "work dir full (tmpfs, ENOSPC during the clone)",
        src: Src::Git("v2"),
        extra: &[],
        work_dir: Some(&dir),
        signal: None,
        step: Some("fetch"),
    };
    let result = failing_deploy(world, slot, a, |out, v| {
        let e = out.error().to_lowercase();
        if !e.contains("no space") && !e.contains("os error 28") {
            v.problem(format!("the error does not say the disk is full: {e:?}"));
        }
    })
    .await;
    let leftover: Vec<String> = walk(&mount).into_iter().filter(|p| !p.starts_with("locks")).collect();
    let _ = Command::new("umount").arg(&mount).status();
    let mut row = result?;
    if !leftover.is_empty() {
        row.verdict.problem(format!("left in the full work dir: {leftover:?}"));
    }
    Ok(row)
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["src", "ssh"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            out.extend(rd.flatten().map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())));
        }
    }
    out
}

/// SIGINT while a real (slow) build runs.
pub async fn sigint_during_build(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let a = Attempt {
        name: "SIGINT during a real build",
        src: Src::Git("slowbuild"),
        extra: &[],
        work_dir: None,
        signal: Some(("build", "INT", 1500)),
        step: None,
    };
    failing_deploy(world, slot, a, stops_within_30s).await
}

/// SIGTERM while a real health check waits for a server that never listens.
pub async fn sigterm_during_health_check(world: &World, slot: &mut Option<LiveApp>) -> anyhow::Result<InfraRow> {
    let a = Attempt {
        name: "SIGTERM during a real health check",
        src: Src::Git("neverlisten"),
        extra: &["--health-timeout", "60s"],
        work_dir: None,
        signal: Some(("health_check", "TERM", 1500)),
        step: None,
    };
    failing_deploy(world, slot, a, stops_within_30s).await
}
