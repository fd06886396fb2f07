// Long file: the deploy command's outcomes (success, failure, signals, panics) are reported in one place.
//! `otturnaut deploy`.

use std::time::{Duration, Instant};

use otturnaut_adapters::Agent;
use otturnaut_core::{AppId, DeployEvent, DeploySpec, DeploymentId, EventSink, Release, Source, Step, Timeouts};
use otturnaut_steps::{
    BlueGreen, DeployError, Deployed, Residue, RetryPolicy, Strategy, UndoOutcome, domain_owner, live_release,
    reconcile_app,
};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::args::{DeployArgs, GlobalArgs};
use crate::exit::{Exit, Fatal, unavailable_advice};
use crate::output::{Out, elapsed};
use crate::settings::Settings;
use crate::{connect, input, print_fatal, settings, take_lock, urls};

/// What a deploy runs: a spec from the flags, or a rollback to a kept release.
#[derive(Clone, Copy)]
enum Request<'a> {
    Deploy(&'a DeployArgs),
    Rollback { app: &'a str, to: Option<&'a str> },
}

pub async fn run(global: &GlobalArgs, args: DeployArgs) -> Exit {
    let json = args.json;
    finish(global, Request::Deploy(&args), &args.app, json).await
}

/// `otturnaut rollback`: a deploy whose spec is a kept release's.
pub async fn rollback(global: &GlobalArgs, app: &str, to: Option<&str>, json: bool) -> Exit {
    finish(global, Request::Rollback { app, to }, app, json).await
}

async fn finish(global: &GlobalArgs, request: Request<'_>, app: &str, json: bool) -> Exit {
    let mut out = Out::new(json);
    match deploy(global, request, &mut out).await {
        Ok(exit) => exit,
        Err(fatal) => {
            out.stop_spinner();
            print_fatal(&out, &fatal);
            if out.is_json() {
                let rollback_of = match request {
                    Request::Rollback { to, .. } => to,
                    Request::Deploy(_) => None,
                };
                out.json_line(&json!({
                    "result": "failed",
                    "app": app,
                    "deployment": null,
                    "rollback_of": rollback_of,
                    "rolled_back": false,
                    "residue": [],
                    "error": fatal.message,
                    "exit_code": fatal.exit.code(),
                }));
            }
            fatal.exit
        }
    }
}

/// SIGINT and SIGTERM, whichever comes first.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> Result<Signals, Fatal> {
        let setup =
            |kind| signal(kind).map_err(|e| Fatal::new(Exit::Failed, format!("cannot install a signal handler: {e}")));
        Ok(Signals { int: setup(SignalKind::interrupt())?, term: setup(SignalKind::terminate())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

enum Ending {
    Done(Box<Result<Deployed, DeployError>>),
    Interrupted(&'static str),
    /// An adapter (or the pipeline) panicked: handled like an interrupt.
    Panicked(String),
}

/// The message of a panic that ended the deploy task.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// The spec of a rollback of `app`: read-only, and an invalid `--to` (or
/// nothing to go back to) is a usage error.
async fn rollback_spec_of(agent: &Agent, app: &AppId, to: Option<&DeploymentId>) -> Result<DeploySpec, Fatal> {
    otturnaut_steps::rollback_spec(&agent.adapters, app, to, Timeouts::default())
        .await
        .map_err(|e| Fatal::service(&format!("finding the release of {app} to roll back to"), &e))
}

async fn deploy(global: &GlobalArgs, request: Request<'_>, out: &mut Out) -> Result<Exit, Fatal> {
    // Everything is checked before anything connects or is created.
    let settings = settings(global)?;
    let (app, spec, to) = match request {
        Request::Deploy(args) => {
            let spec = input::deploy_spec(args)?;
            (spec.app.clone(), Some(spec), None)
        }
        Request::Rollback { app, to } => {
            (input::app_id(app)?, None, to.map(|t| input::deployment_id("--to", t)).transpose()?)
        }
    };
    crate::workdir::check_existing(&settings.agent.work_dir)?;
    let agent = connect(&settings.agent).await?;
    let spec = match spec {
        Some(spec) => spec,
        None => rollback_spec_of(&agent, &app, to.as_ref()).await?,
    };
    let owner = domain_owner(&agent.adapters, &spec.app, &spec.domains)
        .await
        .map_err(|e| Fatal::service("checking which apps serve the domains", &e))?;
    if let Some((domain, owner)) = owner {
        return Err(Fatal::new(
            Exit::Usage,
            format!(
                "invalid --domain {domain}: it is already served by app {owner}; a domain has one owner \
                 (undeploy {owner}, or redeploy it without {domain}, first)"
            ),
        ));
    }
    agent.prepare().await.map_err(|e| Fatal::service("setting up our Caddy server", &e))?;
    if let Some(message) = crate::host::migrate_req_warning(&settings.agent.caddy_admin) {
        out.event(&DeployEvent::Warning { message });
    }
    let command = if spec.rollback_of().is_some() { "rollback" } else { "deploy" };
    let _lock = take_lock(out, &settings, &spec.app, command).await?;
    // Timed from here: waiting for another deploy is not this one's time.
    let started = Instant::now();
    let cleaned = clean_before(out, &agent, &spec.app).await?;
    // Read again under the lock: what was kept may have changed meanwhile.
    let spec = match spec.rollback_of() {
        Some(d) => rollback_spec_of(&agent, &app, Some(d)).await?,
        None => spec,
    };

    let strategy = BlueGreen::new(agent.adapters.clone()).keep(settings.keep);
    let (sink, mut rx) = EventSink::channel();
    let mut signals = Signals::install()?;
    out.human(describe_source(&spec));
    out.start_spinner();
    let mut deployment: Option<DeploymentId> = None;
    // Set once the new release is recorded: from then on nothing is undone.
    let mut committed = false;
    // A task of its own, so that a panic in the deploy ends only that task:
    // its tokens still hand their undos to the reaper, which keeps running.
    let mut deploy = tokio::spawn({
        let (strategy, spec, sink) = (strategy.clone(), spec.clone(), sink.clone());
        async move { strategy.execute(spec, &sink).await }
    });
    let ending = loop {
        tokio::select! {
            biased;
            Some(event) = rx.recv() => {
                match &event {
                    DeployEvent::Started { deployment: d, .. } => deployment = Some(d.clone()),
                    DeployEvent::StepFinished { step: Step::RecordState, .. } => committed = true,
                    _ => {}
                }
                out.event(&event);
            }
            result = &mut deploy => break match result {
                Ok(result) => Ending::Done(Box::new(result)),
                Err(e) => Ending::Panicked(panic_message(e)),
            },
            name = signals.next() => break Ending::Interrupted(name),
        }
    };
    if matches!(ending, Ending::Interrupted(_)) {
        // Drop the deploy future and wait until it is gone: its tokens hand
        // their undos to the reaper before `flush` is asked for.
        deploy.abort();
        let _ = deploy.await;
    }
    while let Ok(event) = rx.try_recv() {
        out.event(&event);
    }

    let report = Report { out, settings: &settings, agent: &agent, spec: &spec, started, cleaned };
    match ending {
        Ending::Done(result) => match *result {
            Ok(deployed) => Ok(report.deployed(&deployed)),
            Err(e) => Ok(report.failed(&e).await),
        },
        Ending::Interrupted(name) => Ok(report.interrupted(name, deployment, committed, &strategy, &mut signals).await),
        Ending::Panicked(message) => {
            let cause = format!("a panic ({message})");
            Ok(report.interrupted(&cause, deployment, committed, &strategy, &mut signals).await)
        }
    }
}

fn describe_source(spec: &DeploySpec) -> String {
    match &spec.source {
        Source::Git { url, git_ref, .. } => format!("source: {} at {git_ref}", url.redacted()),
        Source::Image { reference } => format!("source: image {reference}"),
        Source::Release { deployment, image, .. } => {
            format!("rolling back to release {deployment} (image {image}): no fetch, no build")
        }
    }
}

/// Removes what earlier interrupted deploys of `app` left behind: this
/// process holds the app's lock, so nothing of it is in progress.
async fn clean_before(out: &mut Out, agent: &Agent, app: &AppId) -> Result<Vec<String>, Fatal> {
    let report = reconcile_app(&agent.adapters, app, RetryPolicy::default())
        .await
        .map_err(|e| Fatal::service(&format!("checking {app} for leftovers of earlier deploys"), &e))?;
    if !report.done.is_empty() {
        out.human(format!("cleaned up leftovers of an earlier deploy of {app}:"));
    }
    for done in &report.done {
        if out.is_json() {
            out.event(&DeployEvent::Warning { message: format!("cleaned up before deploying: {done}") });
        } else {
            out.say(format!("  {} {done}", out.paint.yellow("↺")));
        }
    }
    for residue in &report.residue {
        out.event(&DeployEvent::Warning {
            message: format!("could not clean up a leftover of an earlier deploy: {residue}"),
        });
    }
    Ok(report.done)
}

struct Report<'a> {
    out: &'a mut Out,
    settings: &'a Settings,
    agent: &'a Agent,
    spec: &'a DeploySpec,
    started: Instant,
    cleaned: Vec<String>,
}

impl Report<'_> {
    fn deployed(self, d: &Deployed) -> Exit {
        let out = self.out;
        out.stop_spinner();
        let r = &d.release;
        let urls = urls(&self.settings.agent, &r.domains);
        if out.is_json() {
            out.json_line(&json!({
                "result": "deployed",
                "app": r.app,
                "deployment": r.deployment,
                "image": r.image,
                "commit": r.commit,
                "port": r.host_port,
                "container_port": self.spec.container_port,
                "domains": r.domains,
                "urls": urls,
                "previous": d.previous.as_ref().map(|p| &p.deployment),
                "rollback_of": d.rollback_of,
                "rolled_back": false,
                "residue": d.residue,
                "cleaned": self.cleaned,
                "error": null,
                "elapsed_ms": millis(self.started.elapsed()),
                "exit_code": Exit::Ok.code(),
            }));
            return Exit::Ok;
        }
        let p = out.paint;
        out.say(format!("{} {} {} in {}", p.green("✓"), p.bold("deployed"), r.app, elapsed(self.started.elapsed())));
        let row = |k: &str, v: &str| format!("  {} {v}", p.dim(&format!("{k:<11}")));
        out.say(row("deployment", r.deployment.as_str()));
        if let Some(of) = &d.rollback_of {
            out.say(row("rolled back", &format!("to release {of}, as it was deployed")));
        }
        out.say(row("image", &r.image));
        if let Some(commit) = &r.commit {
            out.say(row("commit", commit.as_str()));
        }
        out.say(row("port", &format!("{} → container port {}", r.host_port, self.spec.container_port)));
        for url in &urls {
            out.say(row("url", &p.bold(url)));
        }
        if urls.is_empty() {
            let direct = format!("http://{}:{}/", self.settings.agent.bind_address, r.host_port);
            out.say(row("reach at", &format!("{direct} (no --domain, so no route in Caddy)")));
        }
        if let Some(previous) = &d.previous {
            out.say(row("replaced", &format!("{} (drained, stopped, kept for a rollback)", previous.deployment)));
        }
        for residue in &d.residue {
            out.say(format!(
                "  {} retiring the previous release left {residue}; `otturnaut reconcile` removes it",
                p.yellow("!")
            ));
        }
        Exit::Ok
    }

    async fn failed(self, e: &DeployError) -> Exit {
        let cause = e.cause();
        let residue = &e.undo().residue;
        let exit = if cause.is_unavailable() {
            Exit::Unavailable
        } else if residue.is_empty() {
            Exit::Failed
        } else {
            Exit::Residue
        };
        let (live, live_json) = live_now(self.agent, &self.spec.app).await;
        let out = self.out;
        out.stop_spinner();
        if out.is_json() {
            out.json_line(&json!({
                "result": "failed",
                "app": e.app(),
                "deployment": e.deployment(),
                "step": e.step(),
                "rollback_of": self.spec.rollback_of(),
                "rolled_back": residue.is_empty(),
                "residue": residue,
                "undo": e.undo().outcomes,
                "live": live_json,
                "cleaned": self.cleaned,
                "error": cause.to_string(),
                "elapsed_ms": millis(self.started.elapsed()),
                "exit_code": exit.code(),
            }));
        }
        if !out.is_json() {
            let p = out.paint;
            out.say(format!(
                "{} deploy of {} failed at step {} after {}:",
                p.red("✗"),
                e.app(),
                e.step(),
                elapsed(self.started.elapsed())
            ));
            for line in cause.to_string().lines() {
                out.say(format!("    {line}"));
            }
            say_rollback(out, e.undo().outcomes.len(), residue);
            out.say(format!("  {live}"));
            if cause.is_unavailable() {
                out.say(format!("  {}", unavailable_advice(cause)));
            } else if residue.is_empty() {
                out.say(format!(
                    "  fix the cause and deploy again; `otturnaut logs {}` shows the live release's output",
                    e.app()
                ));
            }
        }
        exit
    }

    /// The deploy was stopped by `signal` (or a panic). Before the commit,
    /// what it did is undone; after it, the new release stays live and only
    /// the old one's retirement is cut short (the sweep below finishes it).
    async fn interrupted(
        self,
        signal: &str,
        deployment: Option<DeploymentId>,
        committed: bool,
        strategy: &BlueGreen,
        signals: &mut Signals,
    ) -> Exit {
        let app = self.spec.app.clone();
        let out = self.out;
        out.stop_spinner();
        let during = match out.running_steps() {
            steps if steps.is_empty() => String::new(),
            steps => format!(" during {steps}"),
        };
        out.say(format!("{signal}{during}: stopping the deploy of {app} and undoing what it did… (again to give up)"));
        let undo = tokio::select! {
            report = strategy.reaper().flush() => report,
            again = signals.next() => {
                let message = format!(
                    "{again} again: gave up rolling back the deploy of {app}; what it created may be left behind, \
                     run `otturnaut reconcile`"
                );
                out.say(format!("{} {message}", out.paint.red("✗")));
                if out.is_json() {
                    out.json_line(&json!({
                        "result": "failed", "app": app, "deployment": deployment, "interrupted": signal,
                        "rolled_back": false, "residue": [], "error": message, "exit_code": Exit::Residue.code(),
                    }));
                }
                return Exit::Residue;
            }
        };
        for o in &undo.outcomes {
            out.event(&undo_event(o));
        }
        // A final sweep, as `reconcile` would: it also catches what finished
        // on the daemon's side after the deploy was dropped (a build, say).
        let residue: Vec<Residue> = match reconcile_app(&self.agent.adapters, &app, RetryPolicy::default()).await {
            Ok(sweep) => {
                for done in &sweep.done {
                    out.event(&DeployEvent::UndoFinished {
                        resource: done.clone(),
                        ok: true,
                        attempts: 1,
                        error: None,
                    });
                }
                sweep.residue
            }
            Err(e) => {
                out.event(&DeployEvent::Warning { message: format!("could not check {app} for leftovers: {e}") });
                // Port reservations live in this process and end with it.
                undo.residue.into_iter().filter(|r| r.kind != "port").collect()
            }
        };
        if committed {
            let done = Done { agent: self.agent, spec: self.spec, cleaned: &self.cleaned, started: self.started };
            return committed_then_interrupted(out, done, signal, deployment, residue).await;
        }
        let exit = if residue.is_empty() { Exit::Failed } else { Exit::Residue };
        let (live, live_json) = live_now(self.agent, &app).await;
        if out.is_json() {
            out.json_line(&json!({
                "result": "failed",
                "app": app,
                "deployment": deployment,
                "rollback_of": self.spec.rollback_of(),
                "interrupted": signal,
                "rolled_back": residue.is_empty(),
                "residue": residue,
                "undo": undo.outcomes,
                "live": live_json,
                "cleaned": self.cleaned,
                "error": format!("interrupted by {signal}"),
                "elapsed_ms": millis(self.started.elapsed()),
                "exit_code": exit.code(),
            }));
        }
        if !out.is_json() {
            out.say(format!(
                "{} deploy of {app} interrupted by {signal} after {}",
                out.paint.red("✗"),
                elapsed(self.started.elapsed())
            ));
            say_rollback(out, undo.outcomes.len(), &residue);
            out.say(format!("  {live}"));
        }
        exit
    }
}

/// What [`committed_then_interrupted`] reports on.
struct Done<'a> {
    agent: &'a Agent,
    spec: &'a DeploySpec,
    cleaned: &'a [String],
    started: Instant,
}

/// A signal after the commit point: the deploy succeeded, retiring the old
/// release was cut short and finished by the sweep. Exit 0, as for any
/// deploy whose retirement left something for `reconcile`.
async fn committed_then_interrupted(
    out: &Out,
    report: Done<'_>,
    signal: &str,
    deployment: Option<DeploymentId>,
    residue: Vec<Residue>,
) -> Exit {
    let app = &report.spec.app;
    let live = live_release(&report.agent.adapters, app).await.ok().flatten();
    if out.is_json() {
        out.json_line(&json!({
            "result": "deployed",
            "app": app,
            "deployment": deployment,
            "port": live.as_ref().map(|r| r.host_port),
            "domains": report.spec.domains,
            "rollback_of": report.spec.rollback_of(),
            "interrupted": signal,
            "rolled_back": false,
            "residue": residue,
            "live": live.as_ref().map(release_json),
            "cleaned": report.cleaned,
            "error": null,
            "elapsed_ms": millis(report.started.elapsed()),
            "exit_code": Exit::Ok.code(),
        }));
    } else {
        out.say(format!(
            "{} deployed {app}; {signal} arrived after the new release went live, so retiring the old one \
             was cut short and finished at once",
            out.paint.green("✓")
        ));
        for r in &residue {
            out.say(format!("  {} left {r}; `otturnaut reconcile {app}` removes it", out.paint.yellow("!")));
        }
    }
    Exit::Ok
}

fn release_json(r: &Release) -> Value {
    json!({
        "deployment": r.deployment,
        "image": r.image,
        "port": r.host_port,
        "domains": r.domains,
        "commit": r.commit,
    })
}

/// What is live now, as a sentence (and as JSON).
async fn live_now(agent: &Agent, app: &AppId) -> (String, Value) {
    match live_release(&agent.adapters, app).await {
        Ok(Some(r)) => (
            format!("the previous release {} is still live on port {} ({})", r.deployment, r.host_port, r.image),
            release_json(&r),
        ),
        Ok(None) => (format!("{app} has no live release (this was its first deploy)"), Value::Null),
        Err(e) => (format!("could not check what is live for {app}: {e}"), Value::Null),
    }
}

fn say_rollback(out: &Out, undos: usize, residue: &[Residue]) {
    if residue.is_empty() {
        out.say(format!("  rolled back ({undos} undo step(s)); nothing of this deploy is left"));
    } else {
        out.say(format!("  {} the rollback left {} resource(s) behind:", out.paint.red("✗"), residue.len()));
        for r in residue {
            out.say(format!("    - {r}"));
        }
        out.say("  run `otturnaut reconcile` to remove them");
    }
}

fn undo_event(o: &UndoOutcome) -> DeployEvent {
    DeployEvent::UndoFinished { resource: o.action.clone(), ok: o.ok, attempts: o.attempts, error: o.error.clone() }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
