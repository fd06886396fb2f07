//! Crash trials: SIGKILL `otturnaut deploy` at a chosen moment — right after
//! a chosen event of its `--json` stream plus a random delay, or after a
//! random time — then recover with `otturnaut reconcile APP` or with the next
//! deploy (which reconciles first), and check that nothing is orphaned, the
//! live release answers through Caddy, and the app's lock is free.

use std::time::{Duration, Instant};

use otturnaut_core::AppId;
use otturnaut_core::Step;

use super::cases::LiveApp;
use super::check::{Live, next_version};
use super::cli::is_step_event;
use super::prober::{Expect, Prober};
use super::rng::Rng;
use super::world::{RUN_LIMIT, Src, World, via_caddy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// After the `kind` (`step_started`/`step_finished`) event of `step`, plus `delay`.
    After { kind: &'static str, step: &'static str, delay: Duration },
    /// After `0` since the CLI was started.
    Delay(Duration),
}

impl Kill {
    pub fn text(&self) -> String {
        match self {
            Kill::After { kind, step, delay } => {
                let kind = kind.trim_start_matches("step_");
                format!("{step} {kind} +{}ms", delay.as_millis())
            }
            Kill::Delay(d) => format!("{}ms after start", d.as_millis()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recover {
    Reconcile,
    NextDeploy,
    /// Caddy restarted empty (losing every route), then `reconcile`: the last
    /// committed release must be served, from Docker's record alone.
    CaddyRestartThenReconcile,
}

impl Trial {
    pub fn kind(&self) -> &'static str {
        match (self.first, self.rollback) {
            (true, _) => "first",
            (_, true) => "rollback",
            _ => "redeploy",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub n: usize,
    /// A first deploy of a fresh app (else a redeploy of a live one).
    pub first: bool,
    /// A rollback of the live app to its newest kept release (no fetch, no
    /// build) instead of a redeploy.
    pub rollback: bool,
    pub kill: Kill,
    pub recover: Recover,
}

/// Every step event of `steps` but the last one's `step_finished`: after it
/// the process has next to nothing left to do, so a kill would come too late.
fn points(steps: &[Step]) -> Vec<(&'static str, &'static str)> {
    let mut all: Vec<_> =
        steps.iter().flat_map(|s| [("step_started", s.name()), ("step_finished", s.name())]).collect();
    all.pop();
    all
}

/// `count` trials from `seed`: a third first deploys, the rest redeploys;
/// kill points dealt from shuffled lists of every step event so all phases
/// are covered (0–100 ms after the event; 0–10 ms from the route switch on,
/// whose steps take milliseconds); every fifth a random time (0–2 s)
/// instead; recovery in turn by reconcile, the next deploy, and a Caddy
/// restart (empty) then reconcile.
pub fn plan(seed: u64, count: usize) -> Vec<Trial> {
    let mut rng = Rng::new(seed);
    let mut redeploy = points(&Step::ALL);
    let forward: Vec<Step> = Step::ALL.into_iter().filter(|s| !s.is_after_commit()).collect();
    let mut first = points(&forward);
    let rollback_steps: Vec<Step> = Step::ALL.into_iter().filter(|s| *s != Step::Fetch).collect();
    let mut rollback = points(&rollback_steps);
    rng.shuffle(&mut redeploy);
    rng.shuffle(&mut first);
    rng.shuffle(&mut rollback);
    let (mut r, mut f, mut b) = (0, 0, 0);
    (0..count)
        .map(|n| {
            let is_first = n % 3 == 2;
            // Every fourth trial that is not a first deploy rolls back.
            let is_rollback = !is_first && n % 4 == 1;
            let kill = if n % 5 == 4 {
                Kill::Delay(rng.millis(0, 2000))
            } else {
                let (list, cursor) = match (is_first, is_rollback) {
                    (true, _) => (&first, &mut f),
                    (_, true) => (&rollback, &mut b),
                    _ => (&redeploy, &mut r),
                };
                let (kind, step) = list[*cursor % list.len()];
                *cursor += 1;
                // From the route switch on, steps take milliseconds: a long
                // delay would land after the end of the deploy.
                let late = Step::ALL.iter().any(|s| s.name() == step && *s >= Step::SwitchRoute);
                Kill::After { kind, step, delay: if late { rng.millis(0, 10) } else { rng.millis(0, 100) } }
            };
            let recover = match n % 3 {
                0 => Recover::Reconcile,
                1 => Recover::NextDeploy,
                _ => Recover::CaddyRestartThenReconcile,
            };
            Trial { n, first: is_first, rollback: is_rollback, kill, recover }
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct TrialRow {
    pub trial: Trial,
    /// The last event the CLI printed before it died.
    pub last_event: String,
    /// Whether the CLI was still running at the kill point.
    pub killed: bool,
    /// Orphans right after the kill (before recovery).
    pub left_by_kill: usize,
    /// Which release is live after recovery: `old`, `new`, `next`, `none`.
    pub live_after: String,
    pub prober: String,
    pub problems: Vec<String>,
    pub took: Duration,
}

impl TrialRow {
    /// One line: the trial, where it was killed, and what recovery found.
    pub fn summary(&self) -> String {
        let t = &self.trial;
        format!(
            "[crash {:>2}] {:<8} kill at {:<32} last={:<28} {:?} live={} left={} prober={} ({:.1}s)",
            t.n,
            t.kind(),
            t.kill.text(),
            self.last_event,
            t.recover,
            self.live_after,
            self.left_by_kill,
            self.prober,
            self.took.as_secs_f64(),
        )
    }
}

fn describe(v: &serde_json::Value) -> String {
    let kind = v.get("event").and_then(|e| e.as_str()).unwrap_or("?");
    match v.get("step").and_then(|s| s.as_str()) {
        Some(step) => format!("{kind} {step}"),
        None => kind.to_owned(),
    }
}

pub async fn run(world: &mut World, trial: Trial, live_app: &mut Option<LiveApp>) -> anyhow::Result<TrialRow> {
    let started = Instant::now();
    let (app, old): (AppId, Option<Live>) = if trial.first {
        (world.app("k"), None)
    } else {
        let la = match live_app {
            Some(la) => la,
            None => live_app.insert(LiveApp::new(world).await?),
        };
        (la.app.clone(), Some(la.live.clone()))
    };
    let mut problems = Vec::new();
    let new_version = next_version(old.as_ref());
    let expect = old.as_ref().map_or(Expect::Anything, |l| Expect::Version(l.version.clone()));
    let prober = Prober::start(world.listen(), &World::domain(&app), expect);

    // Deploys alternate v1 and v2: the newest kept release is the other version.
    let src = if trial.rollback { Src::Rollback } else { Src::Git(new_version) };
    let mut running = world.cli.spawn(&world.deploy_args(&app, src, &[]), None)?;
    let reached = match trial.kill {
        Kill::After { kind, step, delay } => {
            let seen = running.wait_for(|v| is_step_event(v, kind, step), RUN_LIMIT).await.is_some();
            if seen {
                tokio::time::sleep(delay).await;
            }
            seen
        }
        Kill::Delay(d) => running.wait_for(|_| false, d).await.is_none(),
    };
    running.kill();
    let killed_out = running.finish(Duration::from_secs(30)).await;
    let killed = killed_out.code.is_none();
    if !reached {
        problems.push(format!("the deploy ended before the kill point: {}", killed_out.summary()));
    }
    let last_event = killed_out.events.last().map(describe).unwrap_or_else(|| "(none)".into());
    let killed_deployment = killed_out.deployment();
    let left_by_kill = world.observer.snapshot(&app).await?.orphans().len();

    let mut next_deployment = None;
    // The commit point is the live mark, written by the step `record_state`.
    let committed = killed_out.events.iter().any(|e| is_step_event(e, "step_finished", "record_state"));
    let next_version = match trial.recover {
        Recover::CaddyRestartThenReconcile => {
            prober.expect(Expect::Paused);
            world.caddy.restart(false).await?;
            // Every app of this Caddy lost its route: the shared live app too.
            let mut apps = vec![&app];
            apps.extend(live_app.as_ref().map(|la| &la.app).filter(|a| **a != app));
            let rec = world.reconcile_apps(&apps).await?;
            if rec.code != Some(0) {
                problems.push(format!("reconcile after the Caddy restart: {}", rec.summary()));
            }
            let last_committed =
                if committed { killed_deployment.clone() } else { old.as_ref().map(|o| o.deployment.clone()) };
            let live = world.observer.snapshot(&app).await?.live().map(|c| c.deployment.clone());
            // Killed during `record_state`: whether the mark was written
            // before the kill is not known, and either answer is right.
            let in_doubt = killed_out.events.last().is_some_and(|e| is_step_event(e, "step_started", "record_state"));
            if live != last_committed && !(in_doubt && live.is_some() && live == killed_deployment) {
                problems.push(format!(
                    "after the Caddy restart and reconcile, {live:?} is live, not the last committed {last_committed:?}"
                ));
            }
            let version = match &live {
                Some(d) if Some(d) == killed_deployment.as_ref() => Some(new_version.to_owned()),
                Some(_) => old.as_ref().map(|o| o.version.clone()),
                None => None,
            };
            if let Some(version) = version {
                prober.expect(Expect::Version(version));
            }
            None
        }
        Recover::Reconcile => {
            let rec = world.reconcile(&app).await?;
            if rec.code != Some(0) {
                problems.push(format!("reconcile: {}", rec.summary()));
            }
            None
        }
        Recover::NextDeploy => {
            // Whatever is live now, deploy the other version.
            let snap = world.observer.snapshot(&app).await?;
            let current = snap.live().map(|c| c.deployment.clone());
            let version = if current.is_some() && current == killed_deployment {
                next_version_of(new_version)
            } else {
                new_version
            };
            let out = world.deploy(&app, Src::Git(version), None).await?;
            if out.code != Some(0) {
                problems.push(format!("the next deploy failed: {}", out.summary()));
            }
            next_deployment = out.deployment();
            Some(version)
        }
    };
    let probes = prober.stop().await;

    // The checks.
    if !world.lock_is_free(&app)? {
        problems.push(format!("{app}'s lock is still held"));
    }
    let snap = world.observer.snapshot(&app).await?;
    if let Some(p) = snap.upstream_problem() {
        problems.push(p);
    }
    for item in snap.orphans() {
        problems.push(format!("orphan: {item}"));
    }
    let live = snap.live().cloned();
    let version_of = |dep: &str| -> Option<(&'static str, String)> {
        if old.as_ref().is_some_and(|o| o.deployment == dep) {
            Some(("old", old.as_ref().map(|o| o.version.clone()).unwrap_or_default()))
        } else if killed_deployment.as_deref() == Some(dep) {
            Some(("new", new_version.to_owned()))
        } else if next_deployment.as_deref() == Some(dep) {
            Some(("next", next_version.unwrap_or_default().to_owned()))
        } else {
            None
        }
    };
    let live_after = match &live {
        None => {
            if !trial.first || trial.recover == Recover::NextDeploy {
                problems.push("no release is live".into());
            }
            if snap.route.is_some() {
                problems.push("a route exists but no release is live".into());
            }
            "none".to_owned()
        }
        Some(c) => match version_of(&c.deployment) {
            None => {
                problems.push(format!("live container {} is none of this trial's deployments", c.name));
                "?".to_owned()
            }
            Some((which, version)) => {
                if trial.recover == Recover::NextDeploy && which != "next" {
                    problems.push(format!("after the next deploy, {which} is live instead of it"));
                }
                match via_caddy(world, &app).await {
                    Some((200, body)) if body == version => {}
                    other => problems.push(format!("through Caddy the app answers {other:?}, not {version}")),
                }
                if let Some(port) = c.port
                    && world.version_at(port).await.as_deref() != Some(version.as_str())
                {
                    problems.push(format!("the live container on port {port} does not answer {version}"));
                }
                if let Some(la) = live_app.as_mut()
                    && !trial.first
                {
                    la.live = Live { version, deployment: c.deployment.clone(), port: c.port.unwrap_or_default() };
                }
                which.to_owned()
            }
        },
    };
    if probes.errors > 0 {
        problems.push(format!("prober: {} of {} failed: {}", probes.errors, probes.total, probes.trail_text()));
    }
    if trial.first {
        if let Err(e) = world.clean_up(&app).await {
            problems.push(format!("cleaning up: {e:#}"));
        }
    } else if !problems.is_empty() {
        // Start the next redeploy trial from a clean app.
        let _ = world.undeploy(&app).await;
        *live_app = None;
    }
    Ok(TrialRow {
        trial,
        last_event,
        killed,
        left_by_kill,
        live_after,
        prober: format!("{}/{}", probes.errors, probes.total),
        problems,
        took: started.elapsed(),
    })
}

fn next_version_of(v: &str) -> &'static str {
    if v == "v1" { "v2" } else { "v1" }
}
