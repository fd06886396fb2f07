//! The fault matrix: every fault point (each adapter call, before and after
//! its side effect), undo faults combined with a forward failure, hangs ended
//! by a signal or a deadline, and panics — each on a fresh app and on an app
//! with a live release.

use std::time::{Duration, Instant};

use otturnaut_core::faults::{Call, Fault, FaultMode, Phase};
use otturnaut_core::{AppId, Step};

use super::check::{self, Live, Verdict, next_version};
use super::cli::is_step_event;
use super::prober::{Expect as ProbeExpect, Prober};
use super::world::{RUN_LIMIT, Src, World};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Fresh,
    Live,
    /// `otturnaut rollback` of the live app to its newest kept release.
    Rollback,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fresh => "fresh",
            Scenario::Live => "live",
            Scenario::Rollback => "rollback",
        }
    }
}

/// How the harness ends the deploy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Let it run to its end.
    Run,
    /// Send `signal` (`INT`/`TERM`) `delay` after `step` started.
    Signal { step: &'static str, signal: &'static str, delay: Duration },
}

/// What must come of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Fails at `step` (exit 1, or 3 with residue), the previous release
    /// serves throughout; `switched`: traffic may briefly have reached the new
    /// release (the fault is after the route switch).
    Fails { step: Option<&'static str>, switched: bool },
    /// Succeeds: the fault is after the commit, or an undo that a retry fixes,
    /// or never reached; the new release serves.
    Succeeds,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub group: &'static str,
    pub faults: Vec<Fault>,
    pub scenario: Scenario,
    pub image: bool,
    pub ending: Ending,
    pub extra: Vec<&'static str>,
    pub expect: Expect,
}

impl Case {
    /// The plan as `OTTURNAUT_FAULTS` takes it: `build.before:hang,...`.
    pub fn plan(&self) -> String {
        self.faults.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn label(&self) -> String {
        let mut l = self.plan();
        if self.image {
            l.push_str(" (--image)");
        }
        if let Ending::Signal { signal, step, .. } = self.ending {
            l.push_str(&format!(" + SIG{signal} at {step}"));
        }
        if !self.extra.is_empty() {
            l.push_str(&format!(" ({})", self.extra.join(" ")));
        }
        l
    }
}

/// The step a forward call belongs to; `None` for calls only made by undos
/// and by retiring the previous release.
pub fn forward_step(call: Call) -> Option<Step> {
    Some(match call {
        Call::Fetch => Step::Fetch,
        Call::Build | Call::EnsureImage => Step::Build,
        Call::LoadState => Step::LoadState,
        Call::AllocatePort => Step::AllocatePort,
        Call::StartContainer => Step::StartContainer,
        Call::HealthCheck => Step::HealthCheck,
        Call::SwitchRoute => Step::SwitchRoute,
        Call::RecordState => Step::RecordState,
        _ => return None,
    })
}

/// The step a call of a rollback belongs to: its image is reused under the
/// new release's tag (`tag_image`, in the build step); there is no fetch.
fn rollback_step(call: Call) -> Option<Step> {
    match call {
        Call::TagImage => Some(Step::Build),
        Call::Fetch | Call::Build | Call::EnsureImage => None,
        other => forward_step(other),
    }
}

/// Calls a rollback never makes: no source, no build, no pull; the
/// route is put back with `switch_route`, a container removed only by undo.
const NOT_IN_A_ROLLBACK: &[Call] =
    &[Call::Fetch, Call::Build, Call::EnsureImage, Call::RemoveSource, Call::RemoveRoute];

/// Every call of a rollback × before/after its effect; undo faults; a
/// hang ended by a signal; a panic.
fn rollback_matrix(quick: bool) -> Vec<Case> {
    use FaultMode::{FailAlways, FailOnce, Hang, Panic};
    use Phase::{After, Before};
    let scenario = Scenario::Rollback;
    let mut cases = Vec::new();
    for call in Call::ALL.into_iter().filter(|c| !NOT_IN_A_ROLLBACK.contains(c)) {
        for phase in [Before, After] {
            if quick && phase == After && !matches!(call, Call::StartContainer | Call::SwitchRoute | Call::RecordState)
            {
                continue;
            }
            let expect = match rollback_step(call) {
                Some(step) => {
                    let switched = (call == Call::SwitchRoute && phase == After) || call == Call::RecordState;
                    Expect::Fails { step: Some(step.name()), switched }
                }
                None => Expect::Succeeds,
            };
            cases.push(case("rollback", vec![at(call, phase, FailOnce)], scenario, expect));
        }
    }
    for undo in [Call::RemoveContainer, Call::RemoveImage, Call::ReleasePort] {
        let faults = vec![at(undo, Before, FailAlways), at(Call::HealthCheck, Before, FailOnce)];
        cases.push(case("rollback", faults, scenario, fails(Step::HealthCheck)));
    }
    let c = case(
        "rollback",
        vec![at(Call::HealthCheck, Before, Hang)],
        scenario,
        Expect::Fails { step: None, switched: false },
    );
    cases.push(signal(c, Step::HealthCheck, "INT", 300));
    let c = case("rollback", vec![at(Call::Drain, Before, Hang)], scenario, Expect::Succeeds);
    cases.push(signal(c, Step::Drain, "INT", 300));
    cases.push(case(
        "rollback",
        vec![at(Call::StartContainer, After, Panic)],
        scenario,
        Expect::Fails { step: None, switched: false },
    ));
    cases
}

fn case(group: &'static str, faults: Vec<Fault>, scenario: Scenario, expect: Expect) -> Case {
    Case { group, faults, scenario, image: false, ending: Ending::Run, extra: Vec::new(), expect }
}

/// One fault point with its mode.
fn at(call: Call, phase: Phase, mode: FaultMode) -> Fault {
    Fault::new(call, phase, mode)
}

fn fails(step: Step) -> Expect {
    Expect::Fails { step: Some(step.name()), switched: false }
}

fn signal(mut c: Case, step: Step, signal: &'static str, delay_ms: u64) -> Case {
    c.ending = Ending::Signal { step: step.name(), signal, delay: Duration::from_millis(delay_ms) };
    c
}

/// The whole matrix (`quick`: forward fault points and a few of each other kind).
pub fn matrix(quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    use FaultMode::{FailAlways, FailOnce, Hang, Panic};
    use Phase::{After, Before};
    for scenario in [Scenario::Fresh, Scenario::Live] {
        for call in Call::ALL {
            for phase in [Before, After] {
                let faults = vec![at(call, phase, FailOnce)];
                let mut c = match forward_step(call) {
                    Some(step) => {
                        let switched = (call == Call::SwitchRoute && phase == After) || call == Call::RecordState;
                        case("fail", faults, scenario, Expect::Fails { step: Some(step.name()), switched })
                    }
                    None if quick => continue,
                    None => case("fail", faults, scenario, Expect::Succeeds),
                };
                c.image = call == Call::EnsureImage;
                if quick
                    && phase == After
                    && !matches!(call, Call::StartContainer | Call::SwitchRoute | Call::RecordState)
                {
                    continue;
                }
                cases.push(c);
            }
        }

        // Undos that keep failing, after a forward failure: residue, exit 3,
        // and reconcile clears it.
        for undo in [Call::RemoveContainer, Call::RemoveImage, Call::ReleasePort, Call::RemoveSource] {
            cases.push(case(
                "undo fault",
                vec![at(undo, Before, FailAlways), at(Call::HealthCheck, Before, FailOnce)],
                scenario,
                fails(Step::HealthCheck),
            ));
        }
        // Removing the route is the undo of a first deploy's switch; a
        // redeploy's undo puts the old route back with switch_route instead.
        cases.push(case(
            "undo fault",
            vec![at(Call::RemoveRoute, Before, FailAlways), at(Call::RecordState, Before, FailOnce)],
            scenario,
            Expect::Fails { step: Some(Step::RecordState.name()), switched: true },
        ));
        cases.push(case(
            "undo fault",
            vec![at(Call::SwitchRoute, Before, FailAlways)],
            scenario,
            fails(Step::SwitchRoute),
        ));
        cases.push(case(
            "undo fault",
            vec![at(Call::RemoveContainer, Before, Panic), at(Call::HealthCheck, Before, FailOnce)],
            scenario,
            fails(Step::HealthCheck),
        ));

        // After the commit: warnings, residue for reconcile, never a rollback.
        if !quick {
            for call in [
                Call::Drain,
                Call::StopContainer,
                Call::RemoveContainer,
                Call::RemoveImage,
                Call::ReleasePort,
                Call::RemoveSource,
            ] {
                cases.push(case("post-commit", vec![at(call, Before, FailAlways)], scenario, Expect::Succeeds));
            }
        }

        // Hangs, ended by a signal (or by the pipeline's own deadline).
        let hangs: &[(Call, Phase, Step, &str, u64, bool)] = &[
            (Call::Fetch, Before, Step::Fetch, "INT", 300, false),
            (Call::Build, Before, Step::Build, "TERM", 300, false),
            (Call::StartContainer, After, Step::StartContainer, "INT", 1500, false),
            (Call::HealthCheck, Before, Step::HealthCheck, "INT", 300, false),
            (Call::SwitchRoute, After, Step::SwitchRoute, "TERM", 1000, true),
            (Call::RecordState, Before, Step::RecordState, "INT", 300, true),
        ];
        for (i, &(call, phase, step, sig, delay, switched)) in hangs.iter().enumerate() {
            if quick && i % 2 == 1 {
                continue;
            }
            let c = case("hang", vec![at(call, phase, Hang)], scenario, Expect::Fails { step: None, switched });
            cases.push(signal(c, step, sig, delay));
        }
        let mut deadline = case("hang", vec![at(Call::HealthCheck, Before, Hang)], scenario, fails(Step::HealthCheck));
        deadline.extra = vec!["--health-timeout", "2s"];
        if !quick {
            cases.push(deadline);
        }
        // A signal after the commit must not be reported as a rollback.
        if scenario == Scenario::Live {
            let c = case("hang", vec![at(Call::Drain, Before, Hang)], scenario, Expect::Succeeds);
            cases.push(signal(c, Step::Drain, "INT", 300));
        }

        // Panics inside an adapter call.
        let panics: &[(Call, Phase, bool)] = &[
            (Call::Build, Before, false),
            (Call::StartContainer, After, false),
            (Call::HealthCheck, Before, false),
            (Call::SwitchRoute, After, true),
        ];
        for (i, &(call, phase, switched)) in panics.iter().enumerate() {
            if quick && i % 2 == 1 {
                continue;
            }
            cases.push(case("panic", vec![at(call, phase, Panic)], scenario, Expect::Fails { step: None, switched }));
        }
    }
    cases.extend(rollback_matrix(quick));
    cases
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: Case,
    pub verdict: Verdict,
    pub exit: String,
    pub probes: String,
    pub took: Duration,
}

/// An app with a live release, reused across cases while it stays clean.
#[derive(Debug)]
pub struct LiveApp {
    pub app: AppId,
    pub live: Live,
}

impl LiveApp {
    /// v1 live, v2 kept for a rollback.
    pub async fn new(world: &World) -> anyhow::Result<LiveApp> {
        let app = world.app("live");
        world.deploy_ok(&app, Src::Git("v2")).await?;
        world.deploy_ok(&app, Src::Git("v1")).await?;
        let snap = world.observer.snapshot(&app).await?;
        let live = Live::from_snapshot(&snap, "v1")
            .ok_or_else(|| anyhow::anyhow!("{app} has no live release after deploying it"))?;
        Ok(LiveApp { app, live })
    }

    /// Makes sure only the live release exists; replaces the app if not.
    /// On a cluster its route must dial its tasks: a node lost meanwhile
    /// (another test's) moved some, and reconcile brings the route in line.
    async fn ensure_clean(&mut self, world: &World) -> anyhow::Result<()> {
        let mut snap = world.observer.snapshot(&self.app).await?;
        if snap.upstream_problem().is_some() {
            world.reconcile(&self.app).await?;
            snap = world.observer.snapshot(&self.app).await?;
        }
        let clean = snap.orphans().is_empty()
            && snap.live().map(|c| &c.deployment) == Some(&self.live.deployment)
            && snap.upstream_problem().is_none();
        if !clean {
            let _ = world.undeploy(&self.app).await;
            *self = LiveApp::new(world).await?;
        }
        Ok(())
    }
}

/// Runs one case; `live` is the shared live app (for `Scenario::Live`).
pub async fn run(world: &World, case: &Case, live_app: &mut Option<LiveApp>) -> anyhow::Result<Row> {
    let started = Instant::now();
    let (app, live) = match case.scenario {
        Scenario::Fresh => (world.app("f"), None),
        Scenario::Live | Scenario::Rollback => {
            if live_app.is_none() {
                *live_app = Some(LiveApp::new(world).await?);
            }
            let la = live_app.as_mut().expect("just set");
            la.ensure_clean(world).await?;
            (la.app.clone(), Some(la.live.clone()))
        }
    };
    let new_version = next_version(live.as_ref());
    // Deploys alternate v1 and v2, so the newest kept release is the other version.
    let src = match (case.scenario, case.image) {
        (Scenario::Rollback, _) => Src::Rollback,
        (_, true) => Src::Image(new_version),
        (_, false) => Src::Git(new_version),
    };
    let before = world.observer.snapshot(&app).await?;
    let expect = live.as_ref().map_or(ProbeExpect::Anything, |l| ProbeExpect::Version(l.version.clone()));
    let prober = Prober::start(world.listen(), &World::domain(&app), expect);

    let mut running = world.cli.spawn(&world.deploy_args(&app, src, &case.extra), Some(&case.plan()))?;
    let mut signal_problem = None;
    if let Ending::Signal { step, signal, delay } = case.ending {
        let started = running.wait_for(|v| is_step_event(v, "step_started", step), RUN_LIMIT).await;
        if started.is_some() {
            tokio::time::sleep(delay).await;
            running.signal(signal)?;
        } else {
            signal_problem = Some(format!("step {step} never started, so SIG{signal} was not sent"));
        }
    }
    let out = running.finish(RUN_LIMIT).await;
    let probes = prober.stop().await;
    let text = out.text();
    // A hang shows no "injected" text: it ends by a signal or a deadline.
    let reached = text.contains("injected fault at")
        || text.contains("injected panic at")
        || case.faults.iter().any(|f| f.mode == FaultMode::Hang);

    let mut verdict = match case.expect {
        Expect::Fails { step, switched } => {
            check::failed(world, &app, &before, live.as_ref(), &out, step, switched, Some(&probes), new_version).await?
        }
        Expect::Succeeds => {
            let mut v = Verdict::default();
            let new = check::deployed(world, &app, live.as_ref(), &out, new_version, Some(&probes), &mut v).await?;
            if let (Some(la), Some(new)) = (live_app.as_mut(), new)
                && case.scenario != Scenario::Fresh
            {
                la.live = new;
            }
            v
        }
    };
    if case.image && !world.image_exists(new_version) {
        verdict.problem(format!(
            "the prebuilt image {} is gone: Otturnaut removed an image it does not own",
            world.image(new_version)
        ));
    }
    if !out.stray_stdout.is_empty() {
        verdict.problem(format!("stdout has lines that are not JSON: {:?}", out.stray_stdout));
    }
    if let Some(p) = signal_problem {
        verdict.problem(p);
    }
    if !reached && case.expect != Expect::Succeeds {
        verdict.problem("the fault was never reached (is the binary built with --features faults?)");
    }
    if !reached {
        verdict.notes.push("not reached".into());
    } else if case.expect == Expect::Succeeds
        && case.faults.last().is_some_and(|f| f.mode == FaultMode::FailOnce)
        && out.warnings().is_empty()
        && out.residue().is_empty()
    {
        verdict.notes.push("fired, the retry succeeded".into());
    }
    if case.scenario == Scenario::Fresh
        && let Err(e) = world.clean_up(&app).await
    {
        verdict.problem(format!("cleaning up: {e:#}"));
    }
    if !verdict.passed() {
        verdict.notes.push(out.summary());
    }
    Ok(Row {
        case: case.clone(),
        verdict,
        exit: out.code.map_or_else(|| "killed".to_owned(), |c| c.to_string()),
        probes: format!(
            "{}/{}{}",
            probes.errors,
            probes.total,
            if probes.wrong > 0 { format!(" (+{} new)", probes.wrong) } else { String::new() }
        ),
        took: started.elapsed(),
    })
}
