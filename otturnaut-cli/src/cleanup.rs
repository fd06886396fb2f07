//! `otturnaut undeploy` and `otturnaut reconcile`.

use otturnaut_adapters::maintenance::MaintenanceError;
use otturnaut_core::AppId;
use otturnaut_steps::{Residue, remove_app_volumes};
use serde_json::json;

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal};
use crate::output::Out;
use crate::{connect, input, print_fatal, settings, take_lock};

fn exit_of(residue: &[Residue]) -> Exit {
    if residue.is_empty() { Exit::Ok } else { Exit::Residue }
}

fn say_residue(out: &Out, residue: &[Residue]) {
    if residue.is_empty() {
        return;
    }
    out.say(format!("{} could not remove {} resource(s):", out.paint.red("✗"), residue.len()));
    for r in residue {
        out.say(format!("    - {r}"));
    }
    out.say("  run `otturnaut reconcile` to try again");
}

fn fail(out: &Out, fatal: Fatal, result: &str, app: Option<&str>) -> Exit {
    print_fatal(out, &fatal);
    if out.is_json() {
        out.json_line(&json!({
            "result": "failed",
            "command": result,
            "app": app,
            "done": [],
            "residue": [],
            "error": fatal.message,
            "exit_code": fatal.exit.code(),
        }));
    }
    fatal.exit
}

pub async fn undeploy(global: &GlobalArgs, app: &str, volumes: bool, json: bool) -> Exit {
    let out = Out::new(json);
    match run_undeploy(global, app, volumes, &out).await {
        Ok(exit) => exit,
        Err(fatal) => fail(&out, fatal, "undeploy", Some(app)),
    }
}

async fn run_undeploy(global: &GlobalArgs, app: &str, volumes: bool, out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let app = input::app_id(app)?;
    let agent = connect(&settings.agent).await?;
    let _lock = take_lock(out, &settings, &app, "undeploy").await?;
    let mut report = agent.undeploy(&app).await.map_err(|e| match e {
        MaintenanceError::Service { doing, error } => Fatal::service(&doing, &error),
        MaintenanceError::Lock(..) => Fatal::new(Exit::Failed, e.to_string()),
    })?;
    if volumes {
        remove_app_volumes(&agent.adapters, &app, &mut report).await;
    }
    let exit = exit_of(&report.residue);
    if out.is_json() {
        out.json_line(&json!({
            "result": if exit == Exit::Ok { "undeployed" } else { "failed" },
            "app": app,
            "done": report.done,
            "residue": report.residue,
            "exit_code": exit.code(),
        }));
    } else if report.done.is_empty() && report.residue.is_empty() {
        out.say(format!("{app} is not deployed: no route, container, image or source tree of it was found"));
    } else {
        say_done(out, &format!("undeployed {app}"), &report.done);
        say_residue(out, &report.residue);
    }
    Ok(exit)
}

fn say_done(out: &Out, title: &str, done: &[String]) {
    out.say(format!("{} {title}", out.paint.green("✓")));
    for d in done {
        out.say(format!("  {} {d}", out.paint.dim("·")));
    }
}

pub async fn reconcile(global: &GlobalArgs, apps: &[String], json: bool) -> Exit {
    let out = Out::new(json);
    match run_reconcile(global, apps, &out).await {
        Ok(exit) => exit,
        Err(fatal) => fail(&out, fatal, "reconcile", None),
    }
}

async fn run_reconcile(global: &GlobalArgs, only: &[String], out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let only: std::collections::BTreeSet<AppId> = only.iter().map(|a| input::app_id(a)).collect::<Result<_, _>>()?;
    crate::workdir::check_existing(&settings.agent.work_dir)?;
    let agent = connect(&settings.agent).await?;
    crate::workdir::prepare(&settings.agent.work_dir)?;
    let reconciled = agent.reconcile(only).await.map_err(|e| match e {
        // As for deploy: a planted link is refused, exit 2.
        MaintenanceError::Lock(app, e) => Fatal::new(
            if e.is_refused() { Exit::Usage } else { Exit::Failed },
            format!("{app}: {e}\nis --work-dir writable?"),
        ),
        MaintenanceError::Service { doing, error } => Fatal::service(&doing, &error),
    })?;
    let (reports, skipped) = (reconciled.reports, reconciled.skipped);
    for (app, why) in &skipped {
        out.human(format!("skipped {app}: {why}"));
    }
    for report in &reports {
        if !out.is_json() && !report.done.is_empty() {
            let app = report.app.as_ref().map(AppId::as_str).unwrap_or_default();
            say_done(out, &format!("reconciled {app}"), &report.done);
        }
    }
    let done: Vec<&String> = reports.iter().flat_map(|r| &r.done).collect();
    let residue: Vec<Residue> = reports.iter().flat_map(|r| r.residue.iter().cloned()).collect();
    let exit = exit_of(&residue);
    if out.is_json() {
        out.json_line(&json!({
            "result": if exit == Exit::Ok { "reconciled" } else { "failed" },
            "done": done,
            "residue": residue,
            "apps": reports,
            "skipped": skipped.iter().map(|(app, why)| json!({"app": app, "reason": why})).collect::<Vec<_>>(),
            "exit_code": exit.code(),
        }));
    } else {
        if done.is_empty() && residue.is_empty() {
            out.say(format!("{} nothing to repair or clean up", out.paint.green("✓")));
        }
        say_residue(out, &residue);
    }
    Ok(exit)
}
