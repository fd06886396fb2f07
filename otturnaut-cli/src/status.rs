//! `otturnaut status`: what is live, read from Docker labels and Caddy.

use otturnaut_adapters::status::{AppStatus, statuses};

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal};
use crate::output::Out;
use crate::{connect, input, print_fatal, settings};

pub async fn run(global: &GlobalArgs, app: Option<&str>, json: bool) -> Exit {
    let out = Out::new(json);
    match status(global, app, &out).await {
        Ok(exit) => exit,
        Err(fatal) => {
            print_fatal(&out, &fatal);
            fatal.exit
        }
    }
}

async fn status(global: &GlobalArgs, app: Option<&str>, out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let only = app.map(input::app_id).transpose()?;
    let agent = connect(&settings.agent).await?;
    let all = statuses(&agent, only.as_ref())
        .await
        .map_err(|e| Fatal::service("listing Otturnaut's containers, images and routes", &e))?;

    if out.is_json() {
        out.json_line(&all);
        return Ok(Exit::Ok);
    }
    let mut stdout = Vec::new();
    if all.is_empty() {
        stdout.push("no apps deployed".to_owned());
    }
    for s in &all {
        stdout.extend(human(s));
    }
    println!("{}", stdout.join("\n"));
    Ok(Exit::Ok)
}

fn human(s: &AppStatus) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(deployment) = &s.deployment else {
        if s.containers == 0 && s.images == 0 {
            lines.push(format!("{}  not deployed", s.app));
            return lines;
        }
        lines.push(format!(
            "{}  no live release ({} container(s), {} image(s) left over; `otturnaut reconcile` removes them)",
            s.app, s.containers, s.images
        ));
        return lines;
    };
    let state = s.container.as_ref().map_or("unknown", |c| c.state.as_str());
    let since = s.started.as_deref().map(|t| format!(" since {t}")).unwrap_or_default();
    lines.push(format!("{}  {state}{since}", s.app));
    if s.route_missing {
        lines.push("  live, route missing: run `otturnaut reconcile` (Caddy does not route its domains to it)".into());
    }
    let row = |k: &str, v: &str| format!("  {k:<11} {v}");
    lines.push(row("deployment", deployment));
    lines.push(row("image", s.image.as_deref().unwrap_or_default()));
    if let Some(commit) = &s.commit {
        lines.push(row("commit", commit));
    }
    let port = s.port.map(|p| p.to_string()).unwrap_or_default();
    match s.container_port {
        Some(cp) => lines.push(row("port", &format!("{port} → container port {cp}"))),
        None => lines.push(row("port", &port)),
    }
    for url in &s.urls {
        lines.push(row("url", url));
    }
    let o = &s.runtime;
    for v in &o.volumes {
        lines.push(row("volume", &v.to_string()));
    }
    let limits: Vec<String> = [
        o.memory.map(|m| format!("memory {m}")),
        o.cpus.map(|c| format!("cpus {c}")),
        o.pids_limit.map(|p| format!("pids {p}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !limits.is_empty() {
        lines.push(row("limits", &limits.join(", ")));
    }
    for n in &o.networks {
        lines.push(row("network", n.as_str()));
    }
    if s.retained > 0 {
        lines.push(row("kept", &format!("{} release(s) for rollback; `otturnaut releases {}`", s.retained, s.app)));
    }
    let leftovers = s.containers.saturating_sub(1 + s.retained);
    if leftovers > 0 {
        lines.push(row("leftovers", &format!("{leftovers} other container(s); `otturnaut reconcile` removes them")));
    }
    lines
}
