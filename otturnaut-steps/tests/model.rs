//! Model test of the blue-green pipeline on recording fakes, with the
//! production state store ([`LabelState`]) over them: what is recorded as
//! live is read back from the fake world's live marks, exactly as the agent
//! reads Docker's.
//!
//! Random spec × random prior state × random fault plan (a step failing before
//! or after its side effect, undos failing for good, a panic, a hang, or the
//! deploy future dropped at a random await point). After each case the fake
//! world is compared with what the promise says it must be.
//!
//! Case count: `PROPTEST_CASES` (default 1000 here; CI uses the default).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use otturnaut_core::faults::{Call, Fault, FaultMode, Phase};
use otturnaut_core::testing::{Fake, Op, Resource, World};
use otturnaut_core::{
    AppId, ContainerPort, DeploySpec, Domain, EventSink, ImageRef, Release, ReleaseState, Source, Step,
};
use otturnaut_steps::{BlueGreen, DeployError, Deployed, ResidueKind, RetryPolicy, Strategy as _, list_releases};
use proptest::prelude::*;

mod common;

/// Forward calls a step fault can hit, and the step that must be named.
const FORWARD: &[(Call, Step)] = &[
    (Call::Fetch, Step::Fetch),
    (Call::Build, Step::Build),
    (Call::EnsureImage, Step::Build),
    (Call::LoadState, Step::LoadState),
    (Call::AllocatePort, Step::AllocatePort),
    (Call::StartContainer, Step::StartContainer),
    (Call::HealthCheck, Step::HealthCheck),
    (Call::SwitchRoute, Step::SwitchRoute),
    (Call::RecordState, Step::RecordState),
];

/// Calls only undos (and the post-commit retire) make.
const RELEASES: &[Call] =
    &[Call::RemoveSource, Call::RemoveImage, Call::ReleasePort, Call::RemoveContainer, Call::RemoveRoute];

/// Calls whose undo is the same call: failing them for good would also fail
/// their own undo, so only a single failure is planned there.
const SELF_UNDONE: &[Call] = &[Call::SwitchRoute, Call::RecordState];

#[derive(Clone, Debug)]
enum Plan {
    Clean,
    StepFault { call: Call, phase: Phase, always: bool },
    StepAndUndoFaults { call: Call, phase: Phase, undo: Vec<Call> },
    UndoFaultsOnly { undo: Vec<Call> },
    Panic { call: Call, phase: Phase },
    Hang { call: Call, phase: Phase },
    Drop { polls: usize },
}

#[derive(Clone, Debug)]
struct Case {
    git: bool,
    domains: Vec<Domain>,
    prior: Option<Vec<Domain>>,
    plan: Plan,
}

fn domains() -> impl Strategy<Value = Vec<Domain>> {
    prop::collection::vec(prop::sample::select(vec!["a.example", "b.example", "c.example"]), 0..3).prop_map(|v| {
        let mut d: Vec<Domain> = v.into_iter().filter_map(|s| s.parse().ok()).collect();
        d.sort();
        d.dedup();
        d
    })
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![Just(Phase::Before), Just(Phase::After)]
}

fn forward_call() -> impl Strategy<Value = Call> {
    prop::sample::select(FORWARD.iter().map(|(c, _)| *c).collect::<Vec<_>>())
}

fn undo_calls() -> impl Strategy<Value = Vec<Call>> {
    prop::sample::subsequence(RELEASES.to_vec(), 1..=RELEASES.len())
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        1 => Just(Plan::Clean),
        4 => (forward_call(), phase(), any::<bool>()).prop_map(|(call, phase, always)| Plan::StepFault {
            call,
            phase,
            always: always && !SELF_UNDONE.contains(&call),
        }),
        3 => (forward_call(), phase(), undo_calls()).prop_map(|(call, phase, undo)| Plan::StepAndUndoFaults { call, phase, undo }),
        1 => undo_calls().prop_map(|undo| Plan::UndoFaultsOnly { undo }),
        1 => (forward_call(), phase()).prop_map(|(call, phase)| Plan::Panic { call, phase }),
        1 => (forward_call(), phase()).prop_map(|(call, phase)| Plan::Hang { call, phase }),
        2 => (1usize..80).prop_map(|polls| Plan::Drop { polls }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), domains(), prop::option::of(domains()), plan()).prop_map(|(git, domains, prior, plan)| Case {
        git,
        domains,
        prior,
        plan,
    })
}

fn spec(case: &Case, app: &AppId) -> DeploySpec {
    let source = if case.git {
        Source::Git {
            url: "https://example.test/o/r.git".parse().expect("url"),
            git_ref: Default::default(),
            dockerfile: Default::default(),
            build_args: BTreeMap::new(),
            build_secrets: BTreeMap::new(),
            ssh_key: None,
        }
    } else {
        Source::Image { reference: "prebuilt:1".parse::<ImageRef>().expect("image") }
    };
    let mut spec = DeploySpec::new(app.clone(), source, ContainerPort::try_from(8080).expect("port"));
    spec.domains = case.domains.clone();
    spec
}

/// How a case ended.
enum End {
    Done(Box<Result<Deployed, DeployError>>),
    /// Dropped (cancelled, hung and timed out, or panicked) before finishing.
    Abandoned,
}

async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = polled {
            return Some(out);
        }
    }
    None
}

fn kinds_of_diff(before: &World, after: &World, app: &AppId) -> Vec<ResidueKind> {
    let mut kinds = Vec::new();
    kinds.extend(after.sources.difference(&before.sources).map(|_| ResidueKind::SourceDir));
    kinds.extend(after.images.difference(&before.images).map(|_| ResidueKind::Image));
    kinds.extend(after.ports.keys().filter(|k| !before.ports.contains_key(*k)).map(|_| ResidueKind::Port));
    kinds.extend(
        after.containers.keys().filter(|k| !before.containers.contains_key(*k)).map(|_| ResidueKind::Container),
    );
    // A live mark is an image tag: a mark left behind shows as an image.
    if after.routes.get(app) != before.routes.get(app) {
        kinds.push(ResidueKind::Route);
    }
    kinds.sort();
    kinds
}

/// This deployment's acquires and releases must read A1..An, Rn..R1: each
/// resource released exactly once, in exact reverse order.
fn assert_reverse_order(log: &[Op], prior_route: Option<&Resource>) -> Result<(), TestCaseError> {
    let ops: Vec<&Op> = log
        .iter()
        .filter(|op| match op {
            Op::Acquire(r) | Op::Release(r) => Some(r) != prior_route,
        })
        .collect();
    let acquired: Vec<&Resource> =
        ops.iter().filter_map(|op| if let Op::Acquire(r) = op { Some(r) } else { None }).collect();
    let expected: Vec<Op> = acquired
        .iter()
        .map(|r| Op::Acquire((*r).clone()))
        .chain(acquired.iter().rev().map(|r| Op::Release((*r).clone())))
        .collect();
    let got: Vec<Op> = ops.into_iter().cloned().collect();
    prop_assert_eq!(got, expected, "acquire/release log is not A1..An Rn..R1");
    Ok(())
}

fn sorted(it: impl Iterator<Item = ResidueKind>) -> Vec<ResidueKind> {
    let mut v: Vec<ResidueKind> = it.collect();
    v.sort();
    v
}

fn is_sub_multiset(small: &[ResidueKind], big: &[ResidueKind]) -> bool {
    let mut big = big.to_vec();
    small.iter().all(|x| match big.iter().position(|y| y == x) {
        Some(i) => {
            big.remove(i);
            true
        }
        None => false,
    })
}

fn silence_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("injected panic"));
            if !injected {
                default(info);
            }
        }));
    });
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let fake = Fake::new();
    let app: AppId = "shop".parse().expect("app");
    let prior = case.prior.as_ref().map(|d| fake.seed_release(&app, d.clone()).expect("seeded"));
    // What is live, read by the production store from the live marks (no faults).
    let unfaulted = common::adapters(&fake.unfaulted());
    let recorded = || async { unfaulted.state.load(&app).await.map_err(|e| TestCaseError::fail(e.to_string())) };
    let recorded_before = recorded().await?;
    prop_assert_eq!(&recorded_before, &prior, "the seeded release is live");
    let before = fake.world();
    fake.clear_log();
    let spec = spec(&case, &app);
    let bg = BlueGreen::with_retry(common::adapters(&fake), RetryPolicy::immediate(3));
    let (events, mut rx) = EventSink::channel();

    let mut undo_faults: Vec<Call> = Vec::new();
    let mut step_fault: Option<(Call, bool)> = None;
    let fault = |call: Call, phase, mode| fake.fail(Fault::new(call, phase, mode));
    match &case.plan {
        Plan::Clean | Plan::Drop { .. } => {}
        Plan::StepFault { call, phase, always } => {
            fault(*call, *phase, if *always { FaultMode::FailAlways } else { FaultMode::FailOnce });
            step_fault = Some((*call, *always));
        }
        Plan::StepAndUndoFaults { call, phase, undo } => {
            fault(*call, *phase, FaultMode::FailOnce);
            step_fault = Some((*call, false));
            undo_faults = undo.clone();
        }
        Plan::UndoFaultsOnly { undo } => undo_faults = undo.clone(),
        Plan::Panic { call, phase } => fault(*call, *phase, FaultMode::Panic),
        Plan::Hang { call, phase } => {
            // A step with its own time limit turns a hang into a timeout failure.
            fault(*call, *phase, FaultMode::Hang);
            step_fault = Some((*call, false));
        }
    }
    for call in &undo_faults {
        fault(*call, Phase::Before, FaultMode::FailAlways);
    }

    let end = match &case.plan {
        Plan::Drop { polls } => match poll_then_drop(bg.execute(spec.clone(), &events), *polls).await {
            Some(r) => End::Done(Box::new(r)),
            None => End::Abandoned,
        },
        Plan::Hang { .. } => {
            match tokio::time::timeout(Duration::from_secs(3600), bg.execute(spec.clone(), &events)).await {
                Ok(r) => End::Done(Box::new(r)),
                Err(_) => End::Abandoned,
            }
        }
        Plan::Panic { .. } => {
            let bg2 = bg.clone();
            let (spec2, events2) = (spec.clone(), events.clone());
            match tokio::spawn(async move { bg2.execute(spec2, &events2).await }).await {
                Ok(r) => End::Done(Box::new(r)),
                Err(join) => {
                    prop_assert!(join.is_panic());
                    End::Abandoned
                }
            }
        }
        _ => End::Done(Box::new(bg.execute(spec.clone(), &events).await)),
    };
    let reaped = bg.reaper().flush().await;
    let after = fake.world();
    let recorded_after = recorded().await?;
    let log = fake.log();
    drop(events);
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }

    let prior_route =
        prior.as_ref().filter(|p| !p.domains.is_empty()).map(|p| Resource::Route(app.clone(), p.host_port));
    let committed = recorded_after.as_ref().map(|r| &r.deployment) != recorded_before.as_ref().map(|r| &r.deployment);

    match end {
        End::Done(done) => match *done {
            Ok(deployed) => {
                // A planned step fault that was reached must have failed the deploy.
                if let Some((call, _)) = step_fault {
                    prop_assert!(!fake.calls().contains(&call), "{call} failed but the deploy succeeded");
                }
                check_success(&after, recorded_after.as_ref(), &app, &spec, prior.as_ref(), &deployed)?;
                let mut residue_kinds: Vec<ResidueKind> = deployed.residue.iter().map(|r| r.kind).collect();
                residue_kinds.sort();
                let ideal = ideal_success_world(&before, &deployed, prior.as_ref(), &spec);
                prop_assert_eq!(
                    kinds_of_diff(&ideal, &after, &app),
                    residue_kinds.clone(),
                    "success residue must name exactly what is left"
                );
                if undo_faults.is_empty() {
                    prop_assert!(residue_kinds.is_empty());
                    prop_assert_eq!(&after, &ideal);
                    // The retired release is kept for a rollback (its kept mark), the new one live.
                    let listed =
                        list_releases(&unfaulted, &app).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let states: Vec<_> = listed.iter().map(|r| (r.deployment.clone(), r.state)).collect();
                    let mut expected = vec![(deployed.release.deployment.clone(), ReleaseState::Live)];
                    expected.extend(prior.iter().map(|p| (p.deployment.clone(), ReleaseState::Retained)));
                    prop_assert_eq!(states, expected);
                }
            }
            Err(err) => {
                // The planned step fault if it was reached; else removing the route
                // of an app that dropped all its domains (a forward use of remove_route).
                let calls = fake.calls();
                let reached = step_fault.map(|(c, _)| c).filter(|c| calls.iter().any(|x| x == c));
                let drops_route =
                    spec.domains.is_empty() && prior_route.is_some() && undo_faults.contains(&Call::RemoveRoute);
                let expected_step = match reached {
                    Some(call) => FORWARD.iter().find(|(c, _)| *c == call).map(|(_, s)| *s),
                    None if drops_route => Some(Step::SwitchRoute),
                    None => return Err(TestCaseError::fail(format!("unplanned failure: {err}"))),
                };
                prop_assert_eq!(Some(err.step()), expected_step, "error must name the failed step: {}", err);
                prop_assert!(err.to_string().contains(err.step().name()));
                prop_assert!(!committed, "a failed deploy must not change recorded state");
                let route_left = err.undo().residue.iter().any(|r| r.kind == ResidueKind::Route);
                prior_untouched(&before, &after, prior.as_ref(), route_left)?;
                prop_assert_eq!(&recorded_after, &recorded_before, "the previous release is still the live one");
                // What is left is exactly the residue that is certain, plus any of
                // the in-doubt residue (the failed step's own) that really exists.
                let residue = &err.undo().residue;
                let certain = sorted(residue.iter().filter(|r| !r.in_doubt).map(|r| r.kind));
                let possible = sorted(residue.iter().map(|r| r.kind));
                let left = kinds_of_diff(&before, &after, &app);
                prop_assert!(is_sub_multiset(&certain, &left), "certain residue {certain:?} not all left: {left:?}");
                prop_assert!(is_sub_multiset(&left, &possible), "left {left:?} but residue says only {possible:?}");
                prop_assert!(residue.iter().filter(|r| r.in_doubt).count() <= 1);
                if undo_faults.is_empty() {
                    prop_assert_eq!(&after, &before, "failed deploy must leave the world as it found it");
                    assert_reverse_order(&log, prior_route.as_ref())?;
                }
                prop_assert!(reaped.outcomes.is_empty(), "explicit rollback leaves nothing to the reaper");
            }
        },
        End::Abandoned => {
            if committed {
                // Dropped after the commit point: the new release is live;
                // retiring the old one is reconcile's job now.
                let new = recorded_after.as_ref().ok_or_else(|| TestCaseError::fail("no recorded release"))?;
                prop_assert!(after.containers.contains_key(&new.container.0));
                if !spec.domains.is_empty() {
                    prop_assert_eq!(after.routes.get(&app).map(|r| r.port), Some(new.host_port));
                }
            } else {
                prop_assert_eq!(&after, &before, "after the reaper ran, a dropped deploy leaves nothing");
                prior_untouched(&before, &after, prior.as_ref(), false)?;
                prop_assert_eq!(&recorded_after, &recorded_before);
                assert_reverse_order(&log, prior_route.as_ref())?;
            }
        }
    }
    // Secrets never reach events (the fake has none, but env would): events serialise.
    for e in &seen {
        prop_assert!(serde_json::to_string(e).is_ok());
    }
    Ok(())
}

/// The previous release keeps running, marked live and (unless restoring its
/// route is what failed, which the residue then says) routed.
fn prior_untouched(
    before: &World,
    after: &World,
    prior: Option<&Release>,
    route_may_differ: bool,
) -> Result<(), TestCaseError> {
    if let Some(p) = prior {
        prop_assert_eq!(before.containers.get(&p.container.0), after.containers.get(&p.container.0));
        if !route_may_differ {
            prop_assert_eq!(before.routes.get(&p.app), after.routes.get(&p.app));
        }
        prop_assert!(after.images.contains(&otturnaut_core::traits::live_tag(&p.app, &p.deployment)));
        prop_assert!(after.images.contains(&p.image));
        prop_assert_eq!(before.ports.get(&p.deployment), after.ports.get(&p.deployment));
    }
    Ok(())
}

fn check_success(
    after: &World,
    recorded: Option<&Release>,
    app: &AppId,
    spec: &DeploySpec,
    prior: Option<&Release>,
    deployed: &Deployed,
) -> Result<(), TestCaseError> {
    let new = &deployed.release;
    prop_assert_eq!(recorded, Some(new), "the store reads back the release the deploy committed");
    prop_assert!(after.containers.get(&new.container.0).is_some_and(|c| c.running && c.port == new.host_port));
    if spec.domains.is_empty() {
        prop_assert!(!after.routes.contains_key(app));
    } else {
        prop_assert_eq!(after.routes.get(app).map(|r| (&r.domains, r.port)), Some((&spec.domains, new.host_port)));
    }
    prop_assert_eq!(deployed.previous.as_ref(), prior);
    Ok(())
}

/// The world a successful deploy must leave: the new release in, the old one kept.
fn ideal_success_world(before: &World, deployed: &Deployed, prior: Option<&Release>, spec: &DeploySpec) -> World {
    let mut w = before.clone();
    let new = &deployed.release;
    if let Some(p) = prior {
        // Retired, and kept for a rollback: stopped, its live mark replaced
        // by its kept mark, its port back in the pool.
        if let Some(c) = w.containers.get_mut(&p.container.0) {
            c.running = false;
        }
        w.images.remove(&otturnaut_core::traits::live_tag(&p.app, &p.deployment));
        w.images.insert(otturnaut_core::traits::kept_tag(&p.app, &p.deployment));
        w.ports.remove(&p.deployment);
    }
    // Every release has its own tag, built or prebuilt, and runs it.
    let tag = otturnaut_core::traits::image_tag(&new.app, &new.deployment);
    w.images.insert(tag.clone());
    w.images.insert(otturnaut_core::traits::live_tag(&new.app, &new.deployment));
    w.ports.insert(new.deployment.clone(), new.host_port);
    w.containers.insert(
        new.container.0.clone(),
        otturnaut_core::testing::FakeContainer {
            app: new.app.clone(),
            deployment: new.deployment.clone(),
            image: tag,
            reference: new.image.clone(),
            port: new.host_port,
            running: true,
            domains: spec.domains.clone(),
        },
    );
    if spec.domains.is_empty() {
        w.routes.remove(&new.app);
    } else {
        w.routes.insert(
            new.app.clone(),
            otturnaut_core::RouteTarget { domains: spec.domains.clone(), port: new.host_port },
        );
    }
    w
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn blue_green_model(case in case()) {
        silence_injected_panics();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(run_case(case))?;
    }
}

#[test]
fn model_case_count_is_at_least_1000_by_default() {
    // Visible in the test list and asserted, so a config change cannot quietly shrink the model test.
    if std::env::var("PROPTEST_CASES").is_err() {
        assert!(cases() >= 1000);
    }
    eprintln!("blue_green_model runs {} cases", cases());
}
