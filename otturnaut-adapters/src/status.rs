//! What is live, read from Docker labels and Caddy: the objects of
//! `otturnaut status --json` and of the HTTP API's `GET /v1/apps`.

use std::collections::BTreeSet;

use futures_util::{StreamExt, stream};
use otturnaut_core::{
    AppId, ManagedContainer, ManagedImage, Release, ReleaseInfo, ReleaseState, RouteTarget, RuntimeOptions,
    live_container, releases,
};
use otturnaut_steps::release_of;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

use crate::{Agent, AgentConfig};

/// One app as `status --json` shows it. Fields of the live release are null
/// when the app has none.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppStatus {
    /// The app.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub app: AppId,
    /// True when the app has a live release.
    pub live: bool,
    /// The live release's deployment id.
    pub deployment: Option<String>,
    /// The live release's image, as the user knows it.
    pub image: Option<String>,
    /// The commit the live release was built from (git deploys).
    pub commit: Option<String>,
    /// The live container's host port.
    pub port: Option<u16>,
    /// The port the app listens on inside its container.
    pub container_port: Option<u16>,
    /// The live release's domains.
    pub domains: Vec<String>,
    /// Where people reach the app.
    pub urls: Vec<String>,
    /// True when the live release has domains but Caddy does not route them
    /// to it (after a Caddy restart, say): `otturnaut reconcile` restores it.
    pub route_missing: bool,
    /// The live container.
    pub container: Option<ContainerStatus>,
    /// The live release's volumes, limits, networks, command and log
    /// options, as deployed (empty: none).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub runtime: RuntimeOptions,
    /// Grace between SIGTERM and SIGKILL the live release was deployed with
    /// (`10s`); null for releases recorded before it was.
    pub stop_timeout: Option<String>,
    /// How long a drain of the live release may wait (`30s`); null likewise.
    pub drain_timeout: Option<String>,
    /// When the live container last started (RFC 3339, from Docker).
    pub started: Option<String>,
    /// Managed containers of the app: live, kept for a rollback, or left
    /// over (which `otturnaut reconcile` removes).
    pub containers: usize,
    /// Release images of the app (live, retained or left over).
    pub images: usize,
    /// Releases kept for `otturnaut rollback` (`otturnaut releases` lists them).
    pub retained: usize,
}

/// A container as `status` shows it.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerStatus {
    /// Docker's id, shortened as `docker ps` shows it.
    pub id: String,
    /// Its name, `otturnaut-{app}-{deployment}`.
    pub name: String,
    /// Docker's state word: running, exited, restarting…
    pub state: String,
}

/// How many live containers' start times are read from Docker at once.
const INSPECTS_AT_ONCE: usize = 16;

/// Every app with resources (or just `only`): one list each of containers,
/// images, routes and fetched sources however many apps, then one inspect
/// per live container (its start time, which no list carries), several at
/// once.
pub async fn statuses(agent: &Agent, only: Option<&AppId>) -> otturnaut_core::Result<Vec<AppStatus>> {
    let a = &agent.adapters;
    let (containers, images, routes, sources) =
        tokio::try_join!(a.runtime.list(None), a.builder.list_images(None), a.router.routes(), a.fetcher.leftovers())?;
    // The apps `apps_with_resources` finds, from the lists read here.
    let apps: BTreeSet<AppId> = match only {
        Some(app) => BTreeSet::from([app.clone()]),
        None => containers
            .iter()
            .map(|c| c.app.clone())
            .chain(images.iter().map(|i| i.app.clone()))
            .chain(routes.iter().map(|(app, _)| app.clone()))
            .chain(sources.into_iter().map(|(app, _)| app))
            .collect(),
    };
    let all = apps.into_iter().map(|app| {
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
        async move {
            let mut status = app_status(agent, &agent.config, app, live, &mine, &my_images).await;
            status.route_missing = route_missing;
            status.retained = retained;
            status
        }
    });
    // `buffered` keeps the apps' order (sorted by name).
    Ok(stream::iter(all).buffered(INSPECTS_AT_ONCE).collect().await)
}

async fn app_status(
    agent: &Agent,
    config: &AgentConfig,
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
        stop_timeout: None,
        drain_timeout: None,
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
        .or_else(|| {
            images.iter().find(|i| i.tags.contains(&r.image) || i.id == r.image.as_str()).and_then(|i| i.commit.clone())
        })
        .map(String::from);
    s.deployment = Some(r.deployment.to_string());
    s.image = Some(r.image.to_string());
    s.port = Some(r.host_port.get());
    s.container_port = container.and_then(|c| c.container_port).map(|p| p.get());
    s.urls = config.urls(&r.domains);
    s.domains = r.domains.iter().map(ToString::to_string).collect();
    s.container =
        container.map(|c| ContainerStatus { id: c.id.0.clone(), name: c.name.clone(), state: c.state.clone() });
    let record = container.and_then(|c| c.record.as_ref());
    s.runtime = record.map(|r| r.runtime.clone()).unwrap_or_default();
    let shown = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
    s.stop_timeout = shown(record.and_then(|r| r.stop_timeout));
    s.drain_timeout = shown(record.and_then(|r| r.drain_timeout));
    s.started = agent.adapters.runtime.status(&r.container).await.ok().and_then(|status| status.started);
    s
}

/// A Unix time as RFC 3339, to the second.
pub fn rfc3339(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// One release as `releases --json` (and `GET /v1/apps/{app}/releases`) shows it.
pub fn release_json(r: &ReleaseInfo) -> Value {
    json!({
        "deployment": r.deployment,
        "state": r.state,
        "image": r.image,
        "commit": r.commit,
        "created": rfc3339(r.created),
        "domains": r.domains,
        "container_port": r.container_port,
        // Only the live release holds a host port.
        "port": if r.state == ReleaseState::Live { r.host_port } else { None },
        "rollback_of": r.rollback_of,
        "container": r.container.0,
    })
}
