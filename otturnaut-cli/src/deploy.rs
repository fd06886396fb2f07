//! `otturnaut deploy`: checks the input, takes the app's lock and renders
//! the library's [`DeployRun`](otturnaut_adapters::DeployRun): its events as
//! they come, then its [`Outcome`]. What an interrupted deploy means is
//! decided there; a signal here only cancels it.

use otturnaut_adapters::outcome::Live;
use otturnaut_adapters::{Ending, Outcome, StartError};
use otturnaut_core::{AppId, DeploySpec, Source};
use otturnaut_steps::Residue;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::args::{DeployArgs, GlobalArgs};
use crate::exit::{Exit, Fatal, unavailable_advice};
use crate::output::{Out, elapsed};
use crate::settings::Settings;
use crate::{connect, input, print_fatal, settings, take_lock};

/// What a deploy runs: a spec from the flags, or a rollback to a kept release.
#[derive(Clone, Copy)]
enum Request<'a> {
    Deploy(&'a DeployArgs),
    Rollback { app: &'a str, to: Option<&'a str> },
}

pub async fn run(global: &GlobalArgs, args: DeployArgs) -> Exit {
    finish(global, Request::Deploy(&args), &args.app, args.json).await
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
                let result =
                    otturnaut_adapters::outcome::not_started_json(app, rollback_of, &fatal.message, fatal.exit);
                out.json_line(&result);
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

/// A deploy that could not start, as the CLI reports it.
fn start_fatal(e: StartError) -> Fatal {
    match e {
        StartError::DomainTaken { .. } => Fatal::new(Exit::Usage, format!("invalid --domain: {e}")),
        StartError::Service { doing, error } => Fatal::service(&doing, &error),
        StartError::Lock(e) => Fatal::new(Exit::Failed, e.to_string()),
        StartError::NoRelease(why) => Fatal::new(Exit::Usage, why),
    }
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
        Some(spec) => {
            agent.check_deploy(&spec).await.map_err(start_fatal)?;
            spec
        }
        None => agent.check_rollback(&app, to.as_ref()).await.map_err(start_fatal)?,
    };
    if let Some(message) = crate::host::migrate_req_warning(&settings.agent.caddy_admin) {
        out.event(&otturnaut_core::DeployEvent::Warning { message });
    }
    let command = if spec.rollback_of().is_some() { "rollback" } else { "deploy" };
    let lock = take_lock(out, &settings, &spec.app, command).await?;
    let mut signals = Signals::install()?;
    let mut run = agent.start_deploy(spec.clone(), lock).await.map_err(start_fatal)?;
    out.human(describe_source(&spec));
    out.start_spinner();
    let canceller = run.canceller();
    let mut interrupted: Option<&'static str> = None;
    loop {
        tokio::select! {
            event = run.next_event() => match event {
                Some(event) => out.event(&event),
                None => break,
            },
            name = signals.next() => {
                let app = &spec.app;
                if interrupted.is_some() {
                    return Ok(give_up(out, app, name, interrupted.unwrap_or(name)));
                }
                interrupted = Some(name);
                out.stop_spinner();
                let during = match out.running_steps() {
                    steps if steps.is_empty() => String::new(),
                    steps => format!(" during {steps}"),
                };
                out.say(format!("{name}{during}: stopping the deploy of {app} and undoing what it did… (again to give up)"));
                canceller.cancel(name);
            }
        }
    }
    let outcome = run.outcome().await;
    out.stop_spinner();
    if out.is_json() {
        out.json_line(&outcome.to_json());
    } else {
        human(out, &settings, &spec, &outcome);
    }
    Ok(outcome.exit())
}

/// A second signal while the first one's rollback runs: stop waiting.
fn give_up(out: &Out, app: &AppId, again: &str, first: &str) -> Exit {
    let message = format!(
        "{again} again: gave up rolling back the deploy of {app}; what it created may be left behind, \
         run `otturnaut reconcile`"
    );
    out.say(format!("{} {message}", out.paint.red("✗")));
    if out.is_json() {
        out.json_line(&json!({
            "result": "failed", "app": app, "deployment": null, "interrupted": first,
            "rolled_back": false, "residue": [], "error": message, "exit_code": Exit::Residue.code(),
        }));
    }
    Exit::Residue
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

/// The outcome for a person, on stderr.
fn human(out: &Out, settings: &Settings, spec: &DeploySpec, o: &Outcome) {
    let p = out.paint;
    let app = &o.app;
    let took = elapsed(o.elapsed);
    match &o.ending {
        Ending::Deployed { deployed: d, urls, .. } => {
            let r = &d.release;
            out.say(format!("{} {} {} in {took}", p.green("✓"), p.bold("deployed"), r.app));
            let row = |k: &str, v: &str| format!("  {} {v}", p.dim(&format!("{k:<11}")));
            out.say(row("deployment", r.deployment.as_str()));
            if let Some(of) = &d.rollback_of {
                out.say(row("rolled back", &format!("to release {of}, as it was deployed")));
            }
            out.say(row("image", r.image.as_str()));
            if let Some(commit) = &r.commit {
                out.say(row("commit", commit.as_str()));
            }
            out.say(row("port", &format!("{} → container port {}", r.host_port, spec.container_port)));
            for url in urls {
                out.say(row("url", &p.bold(url)));
            }
            if urls.is_empty() {
                let direct = format!("http://{}:{}/", settings.agent.bind_address, r.host_port);
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
        }
        Ending::Failed { step, cause, undo, residue, live } => {
            out.say(format!("{} deploy of {app} failed at step {step} after {took}:", p.red("✗")));
            for line in cause.to_string().lines() {
                out.say(format!("    {line}"));
            }
            say_rollback(out, undo.len(), residue);
            out.say(format!("  {}", live_sentence(app, live)));
            if cause.is_unavailable() {
                out.say(format!("  {}", unavailable_advice(cause)));
            } else if residue.is_empty() {
                out.say(format!(
                    "  fix the cause and deploy again; `otturnaut logs {app}` shows the live release's output"
                ));
            }
        }
        Ending::Interrupted { cause, undo, residue, live } => {
            out.say(format!("{} deploy of {app} interrupted by {cause} after {took}", p.red("✗")));
            say_rollback(out, undo.len(), residue);
            out.say(format!("  {}", live_sentence(app, live)));
        }
        Ending::InterruptedAfterCommit { cause, residue, .. } => {
            out.say(format!(
                "{} deployed {app}; {cause} arrived after the new release went live, so retiring the old one \
                 was cut short and finished at once",
                p.green("✓")
            ));
            for r in residue {
                out.say(format!("  {} left {r}; `otturnaut reconcile {app}` removes it", p.yellow("!")));
            }
        }
    }
}

/// What is live now, as a sentence.
fn live_sentence(app: &AppId, live: &Live) -> String {
    match live {
        Ok(Some(r)) => {
            format!("the previous release {} is still live on port {} ({})", r.deployment, r.host_port, r.image)
        }
        Ok(None) => format!("{app} has no live release (this was its first deploy)"),
        Err(e) => format!("could not check what is live for {app}: {e}"),
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
