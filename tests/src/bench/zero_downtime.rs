//! Zero downtime: clients at fixed concurrency through Caddy while the app
//! is redeployed back to back, with the agent's drain and with a naive
//! retire (no drain, no stop grace), in each client mode.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use otturnaut_core::{DeployEvent, EventSink, Step};
use otturnaut_steps::Strategy as _;

use super::app::{Rig, app_id, domain, image_spec};
use super::load::{self, Mode};

/// How the old release is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retire {
    /// The agent's defaults: wait for Caddy's in-flight count of the old
    /// upstream to reach 0 (up to 30 s), then SIGTERM with 10 s grace.
    Drain,
    /// `timeouts.drain = 0`, `timeouts.stop = 0`: stopped right after the switch.
    Naive,
}

impl Retire {
    pub fn name(self) -> &'static str {
        match self {
            Retire::Drain => "exact drain",
            Retire::Naive => "naive (no drain)",
        }
    }
}

/// Request shape: mostly short, one in `LONG_EVERY` long enough to be in
/// flight across a route switch.
pub const SHORT_MS: u64 = 50;
pub const LONG_MS: u64 = 1000;
pub const LONG_EVERY: u64 = 40;

#[derive(Debug, Clone)]
pub struct Row {
    pub migrate_req: Option<bool>,
    pub retire: Retire,
    pub mode: Mode,
    pub redeploys: u32,
    pub failed_deploys: u32,
    pub load: load::Report,
    /// How long each drain waited (agent mode: until 0 in flight).
    pub drains: Vec<Duration>,
    /// Drains that ended in an error (the old release was then stopped
    /// without knowing whether requests were in flight).
    pub drain_errors: u32,
    pub deploys: Vec<Duration>,
}

impl Row {
    /// Versions seen that the run deployed (`r0`..`rN`), and anything else.
    pub fn versions_seen(&self) -> (usize, usize) {
        let expected: BTreeSet<String> = (0..=self.redeploys).map(|i| format!("r{i}")).collect();
        let seen = self.load.versions.keys().filter(|v| expected.contains(*v)).count();
        (seen, self.load.versions.len() - seen)
    }
}

/// One zero-downtime run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub migrate_req: Option<bool>,
    pub retire: Retire,
    pub mode: Mode,
    /// [`SHORT_MS`] and [`LONG_EVERY`] for the zero-downtime table. The
    /// reset comparison asks for 0 ms and [`RESET_LONG_EVERY`], so that
    /// clients reuse connections many times per reload and the rare resets
    /// become frequent enough to compare.
    pub short_ms: u64,
    pub long_every: u64,
    pub redeploys: u32,
    /// The app closes its connection after every response (`BENCH_CLOSE=1`,
    /// like busybox httpd) instead of keeping it alive.
    pub upstream_closes: bool,
}

/// One request in this many is long in the reset comparison: enough for the
/// drain to have something to wait for, few enough that clients spend most
/// of their time on short requests, between which resets happen.
pub const RESET_LONG_EVERY: u64 = 400;

pub async fn run_one(rig: &Rig, index: usize, plan: Plan, concurrency: usize) -> Result<Row> {
    let Plan { migrate_req, retire, mode, short_ms, long_every, redeploys, upstream_closes } = plan;
    let app = app_id(&format!("zd-{index}"));
    let spec = |version: &str| {
        let mut spec = image_spec(&app, version);
        if upstream_closes {
            super::app::set_env(&mut spec, "BENCH_CLOSE", "1");
        }
        spec
    };
    let _ = rig.undeploy(&app).await;
    rig.strategy.execute(spec("r0"), &EventSink::discard()).await.with_context(|| format!("first deploy of {app}"))?;
    let config = load::Config::through_caddy(rig, &app, (mode, concurrency), (short_ms, long_every), redeploys);
    let running = load::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut row = Row {
        migrate_req,
        retire,
        mode,
        redeploys,
        failed_deploys: 0,
        load: load::Report::default(),
        drains: Vec::new(),
        drain_errors: 0,
        deploys: Vec::new(),
    };
    for i in 1..=redeploys {
        let mut spec = spec(&format!("r{i}"));
        if retire == Retire::Naive {
            spec.timeouts.drain = Duration::ZERO;
            spec.timeouts.stop = Duration::ZERO;
        }
        let (events, mut rx) = EventSink::channel();
        match rig.strategy.execute(spec, &events).await {
            Ok(done) => row.deploys.push(done.elapsed),
            Err(e) => {
                row.failed_deploys += 1;
                eprintln!("bench: redeploy {i} of {app} failed: {e}");
            }
        }
        while let Ok(event) = rx.try_recv() {
            match event {
                DeployEvent::StepFinished { step: Step::Drain, elapsed_ms, .. } => {
                    row.drains.push(Duration::from_millis(elapsed_ms));
                }
                DeployEvent::StepFailed { step: Step::Drain, error, .. } => {
                    row.drain_errors += 1;
                    eprintln!("bench: the drain of redeploy {i} of {app} failed: {error}");
                }
                _ => {}
            }
        }
    }
    // Long requests started just before the last switch finish before the
    // load stops, so none is cut off by the bench itself.
    tokio::time::sleep(Duration::from_millis(LONG_MS + 500)).await;
    row.load = running.stop().await;
    rig.undeploy(&app).await?;
    if row.load.requests == 0 {
        bail!("the load generator sent no request to {app}");
    }
    Ok(row)
}

/// The upstream keep-alive settings of the app's route in a reload run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamIdle {
    /// As the adapter writes the route: idle connections close after 2 s.
    Adapter,
    /// The route's `transport` removed: Caddy's defaults (2 min).
    CaddyDefault,
}

impl UpstreamIdle {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamIdle::Adapter => "2s (the adapter's)",
            UpstreamIdle::CaddyDefault => "Caddy's default (2m)",
        }
    }
}

/// Caddy reloads alone, no deploy: `reloads` config changes back to back
/// (a route of another app switching ports) while clients hammer a release
/// that never changes. Whatever fails here is Caddy's reload, not the agent.
#[derive(Debug, Clone)]
pub struct ReloadRow {
    pub migrate_req: Option<bool>,
    pub mode: Mode,
    pub reloads: u32,
    pub load: load::Report,
    /// Restarts of the app's container during the run, and its last lines if any.
    pub app_restarts: u32,
    pub app_log: Vec<String>,
    pub upstream_idle: UpstreamIdle,
    /// Most connections from Caddy to the app's port seen during the run
    /// (sampled every 10 reloads).
    pub peak_open: Option<usize>,
}

pub async fn reload_stress(
    rig: &Rig,
    migrate_req: Option<bool>,
    mode: Mode,
    reloads: u32,
    concurrency: usize,
    upstream_idle: UpstreamIdle,
) -> Result<ReloadRow> {
    use otturnaut_core::RouteTarget;

    let app = app_id("reload");
    let other = app_id("reload-other");
    let _ = rig.undeploy(&app).await;
    rig.strategy
        .execute(image_spec(&app, "steady"), &EventSink::discard())
        .await
        .with_context(|| format!("deploying {app}"))?;
    if upstream_idle == UpstreamIdle::CaddyDefault {
        let path = format!("/id/{}", otturnaut_adapters::caddy::route_id(&app));
        let mut route: serde_json::Value =
            serde_json::from_str(&rig.caddy.call(reqwest::Method::GET, &path, None).await?)?;
        let Some(handler) = route["handle"][0].as_object_mut() else {
            bail!("the route of {app} has no handler: {route}");
        };
        handler.remove("transport");
        rig.caddy.call(reqwest::Method::PATCH, &path, Some(&route)).await?;
    }
    let config = load::Config {
        addr: rig.caddy.listen,
        host: domain(&app).to_string(),
        concurrency,
        mode,
        timeout: Duration::from_secs(10),
        short_ms: 0,
        long_ms: 0,
        long_every: 1_000_000,
        max_duration: Duration::from_secs(60) + Duration::from_millis(200) * reloads,
    };
    let app_port = rig.adapters.router.route(&app).await?.map(|r| r.port.get()).unwrap_or_default();
    let running = load::start(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ports = [31901u16, 31902];
    let mut peak_open = None;
    for i in 0..reloads {
        let port = otturnaut_core::HostPort::try_from(ports[i as usize % 2])?;
        let target = RouteTarget { domains: vec![domain(&other)], port };
        rig.adapters.router.set_route(&other, &target).await?;
        if i % 10 == 9
            && let Some(n) = open_connections_to(app_port).await
        {
            peak_open = peak_open.max(Some(n));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = running.stop().await;
    let mut app_restarts = 0;
    let mut app_log = Vec::new();
    for c in rig.adapters.runtime.list(Some(&app)).await? {
        let id = c.id.0.clone();
        let out = super::machine::stdout(&["docker", "inspect", "-f", "{{.RestartCount}}", &id]).await?;
        app_restarts += out.trim().parse::<u32>().unwrap_or(0);
        if app_restarts > 0 {
            app_log = rig.adapters.runtime.logs(&c.id, 5).await.unwrap_or_default();
        }
    }
    rig.adapters.router.remove_route(&other).await?;
    rig.undeploy(&app).await?;
    Ok(ReloadRow { migrate_req, mode, reloads, load: report, app_restarts, app_log, upstream_idle, peak_open })
}

/// Established TCP connections to port `port` (Caddy's ends), from `ss`.
async fn open_connections_to(port: u16) -> Option<usize> {
    let filter = format!("( dport = :{port} )");
    let out = super::machine::stdout(&["ss", "-Htn", "state", "established", &filter]).await.ok()?;
    Some(out.lines().filter(|l| !l.trim().is_empty()).count())
}
