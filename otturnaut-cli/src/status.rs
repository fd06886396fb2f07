//! `otturnaut status`: what is live, read from Docker labels and Caddy.

use std::collections::BTreeSet;

use otturnaut_adapters::Agent;
use otturnaut_adapters::state::release_of;
use otturnaut_core::{
    AppId, ManagedContainer, ManagedImage, Release, ReleaseState, RouteTarget, RuntimeOptions, live_container, releases,
};
use otturnaut_steps::apps_with_resources;
use serde::Serialize;

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal};
use crate::output::Out;
use crate::{connect, input, print_fatal, settings, urls};

/// One app as `status --json` shows it. Fields of the live release are null
/// when the app has none.
#[derive(Debug, Serialize)]
struct AppStatus {
    app: AppId,
    live: bool,
    deployment: Option<String>,
    image: Option<String>,
    commit: Option<String>,
    port: Option<u16>,
    container_port: Option<u16>,
    domains: Vec<String>,
    urls: Vec<String>,
    /// True when the live release has domains but Caddy does not route them
    /// to it (after a Caddy restart, say): `otturnaut reconcile` restores it.
    route_missing: bool,
    container: Option<ContainerStatus>,
    /// The live release's volumes, limits, networks, command and log
    /// options, as deployed (empty: none).
    runtime: RuntimeOptions,
    /// When the live container last started (RFC 3339, from Docker).
    started: Option<String>,
    /// Managed containers of the app: live, kept for a rollback, or left
    /// over (which `otturnaut reconcile` removes).
    containers: usize,
    images: usize,
    /// Releases kept for `otturnaut rollback` (`otturnaut releases` lists them).
    retained: usize,
}

#[derive(Debug, Serialize)]
struct ContainerStatus {
    id: String,
    name: String,
    state: String,
}

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
    let a = &agent.adapters;
    let apps: BTreeSet<AppId> = match only {
        Some(app) => BTreeSet::from([app]),
        None => apps_with_resources(a).await.map_err(|e| Fatal::service("listing Otturnaut's apps", &e))?,
    };
    // One read of everything, however many apps: the live rule is pure.
    let (containers, images, routes) =
        tokio::try_join!(a.runtime.list(None), a.builder.list_images(None), a.router.routes())
            .map_err(|e| Fatal::service("listing Otturnaut's containers, images and routes", &e))?;

    let mut all = Vec::new();
    for app in apps {
        let route = routes.iter().find(|(a, _)| *a == app).map(|(_, t)| t);
        let live = live_container(&app, &containers, &images, route.map(|r| r.port))
            .and_then(|c| release_of(&app, c, &images));
        let route_missing = live.as_ref().is_some_and(|r| {
            !r.domains.is_empty() && route != Some(&RouteTarget { domains: r.domains.clone(), port: r.host_port })
        });
        let mine: Vec<&ManagedContainer> = containers.iter().filter(|c| c.app == app).collect();
        let my_images: Vec<&ManagedImage> = images.iter().filter(|i| i.app == app).collect();
        let retained = releases(&app, &containers, &images, route.map(|r| r.port))
            .iter()
            .filter(|r| r.state == ReleaseState::Retained)
            .count();
        let mut status = app_status(&agent, &settings.agent, app, live, &mine, &my_images).await;
        status.route_missing = route_missing;
        status.retained = retained;
        all.push(status);
    }

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

async fn app_status(
    agent: &Agent,
    config: &otturnaut_adapters::AgentConfig,
    app: AppId,
    live: Option<Release>,
    containers: &[&ManagedContainer],
    images: &[&ManagedImage],
) -> AppStatus {
    let mut s = AppStatus {
        app,
        live: live.is_some(),
        deployment: None,
        image: None,
        commit: None,
        port: None,
        container_port: None,
        domains: Vec::new(),
        urls: Vec::new(),
        route_missing: false,
        container: None,
        runtime: RuntimeOptions::default(),
        started: None,
        containers: containers.len(),
        images: images.len(),
        retained: 0,
    };
    let Some(r) = live else {
        return s;
    };
    let container = containers.iter().find(|c| c.id == r.container);
    s.commit = r
        .commit
        .clone()
        .or_else(|| images.iter().find(|i| i.tags.contains(&r.image) || i.id == r.image).and_then(|i| i.commit.clone()))
        .map(String::from);
    s.deployment = Some(r.deployment.to_string());
    s.image = Some(r.image.clone());
    s.port = Some(r.host_port.get());
    s.container_port = container.and_then(|c| c.container_port).map(|p| p.get());
    s.urls = urls(config, &r.domains);
    s.domains = r.domains.iter().map(ToString::to_string).collect();
    s.runtime = container.and_then(|c| c.record.as_ref()).map(|r| r.runtime.clone()).unwrap_or_default();
    s.container =
        container.map(|c| ContainerStatus { id: c.id.0.clone(), name: c.name.clone(), state: c.state.clone() });
    s.started = agent.adapters.runtime.status(&r.container).await.ok().and_then(|status| status.started);
    s
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
