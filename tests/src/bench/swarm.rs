//! Redeploys on the Swarm cluster of `cargo xtask services up --swarm 3`:
//! Otturnaut's blue-green (a new service, health on every task, one route
//! write, the old service retired) against Docker's own rolling update,
//! `docker service update --update-order start-first`, of the same change
//! (the app's `APP_VERSION`), each under the zero-downtime load through the
//! rig's private Caddy.
//!
//! Both run the fixture image from the cluster's registry, two tasks on the
//! three nodes, the port published in host mode (no IPVS here, so no routing
//! mesh). Docker's update needs a free node for each new task (start-first,
//! same host port), which two tasks on three nodes leave. Caddy's route for
//! Docker's service dials the port on every node, as a static front of a
//! Swarm service must (tasks move between nodes); the adapter writes it, so
//! it has the same retries and passive health as Otturnaut's routes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use async_trait::async_trait;
use otturnaut_adapters::caddy::UpstreamHosts;
use otturnaut_adapters::{Agent, AgentConfig, RuntimeKind};
use otturnaut_core::traits::Router;
use otturnaut_core::{AppId, DeploySpec, EventSink, HostPort, ImageRef, PortRange, RouteTarget, Source};
use otturnaut_steps::{BlueGreen, Strategy};

use super::app::{self, PORTS, Rig};
use super::load::{self, Mode};
use super::stats::{median, ms_opt};
use super::table::{Col, Table, cells};
use super::zero_downtime::{LONG_EVERY, LONG_MS, SHORT_MS};
use crate::cluster::{Cluster, docker_cli, read_swarm};

/// Tasks per release (or of Docker's service): one node stays free for start-first.
const REPLICAS: u32 = 2;
/// Docker's service's published port: outside the bench's port range.
const NATIVE_PORT: u16 = 31000;
/// The longest one `docker service update` may take.
const UPDATE_LIMIT: Duration = Duration::from_secs(180);
/// Docker's wait after each task's update before the next (its default is 5 s);
/// Otturnaut's health check is its counterpart.
const UPDATE_MONITOR: &str = "1s";

/// One way of redeploying, measured.
#[derive(Debug, Clone)]
pub struct Row {
    pub how: &'static str,
    pub redeploys: u32,
    /// Wall time of each redeploy that succeeded.
    pub walls: Vec<Duration>,
    pub failed_redeploys: u32,
    pub load: load::Report,
}

/// Both rows: Otturnaut's redeploys, then Docker's updates, `redeploys` each.
pub async fn run(rig: &Rig, redeploys: u32, concurrency: usize) -> Result<Vec<Row>> {
    let cluster = read_swarm().await.map_err(|e| anyhow!(e))?;
    let image = push_fixture(&cluster).await?;
    let work = tempfile::Builder::new().prefix("otturnaut-bench-swarm-").tempdir()?;
    let config = AgentConfig {
        caddy_admin: rig.caddy.admin_url.clone(),
        listen: vec![rig.caddy.listen.to_string()],
        auto_https: false,
        port_range: PortRange::new(PORTS.0, PORTS.1)?,
        work_dir: work.path().to_path_buf(),
        docker_host: Some(cluster.manager.clone()),
        runtime: RuntimeKind::Swarm(cluster.config(REPLICAS)),
        ..AgentConfig::default()
    };
    let agent = Agent::connect(&config).await.context("connecting the agent to the Swarm and the private Caddy")?;
    let ours = otturnaut(rig, &agent, &image, redeploys, concurrency).await?;
    let native = docker_update(rig, &cluster, &image, redeploys, concurrency).await?;
    Ok(vec![ours, native])
}

/// Copies the fixture image from the local daemon to the manager and pushes
/// it to the cluster's registry; returns the reference the nodes pull.
async fn push_fixture(cluster: &Cluster) -> Result<String> {
    let remote = format!("{}/{}", cluster.registry, app::IMAGE);
    let script = format!(
        "docker save {image} | docker --host {manager} load && docker --host {manager} tag {image} {remote} && \
         docker --host {manager} push {remote}",
        image = app::IMAGE,
        manager = cluster.manager,
    );
    let out = tokio::process::Command::new("sh").args(["-c", &script]).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .context("copying the fixture image to the cluster took over 120 s")??;
    if !out.status.success() {
        bail!("copying the fixture image to the cluster: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(remote)
}

/// A deploy of `image` answering `version`, on the cluster.
fn spec(app: &AppId, image: &str, version: &str) -> Result<DeploySpec> {
    let mut spec = app::image_spec(app, version);
    let reference: ImageRef = image.parse().map_err(|e| anyhow!("image {image}: {e}"))?;
    spec.source = Source::Image { reference };
    Ok(spec)
}

async fn otturnaut(rig: &Rig, agent: &Agent, image: &str, redeploys: u32, concurrency: usize) -> Result<Row> {
    let app = app::app_id("swarm-otturnaut");
    let bg = BlueGreen::new(agent.adapters.clone());
    let undeploy = || async {
        otturnaut_steps::undeploy_app(&agent.adapters, &app, Duration::ZERO, otturnaut_steps::RetryPolicy::default())
            .await
    };
    let _ = undeploy().await;
    bg.execute(spec(&app, image, "v0")?, &EventSink::discard()).await.context("the first deploy on the cluster")?;
    let config = load::Config::through_caddy(rig, &app, (Mode::Retry, concurrency), (SHORT_MS, LONG_EVERY), redeploys);
    let running = load::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut walls, mut failed_redeploys) = (Vec::new(), 0);
    for i in 1..=redeploys {
        let began = Instant::now();
        match bg.execute(spec(&app, image, &format!("v{i}"))?, &EventSink::discard()).await {
            Ok(_) => walls.push(began.elapsed()),
            Err(e) => {
                failed_redeploys += 1;
                eprintln!("bench: redeploy {i} of {app} on the cluster failed: {e}");
            }
        }
    }
    // Long requests started before the last switch finish before the load stops.
    tokio::time::sleep(Duration::from_millis(LONG_MS + 500)).await;
    let load = running.stop().await;
    let report = undeploy().await?;
    if !report.residue.is_empty() {
        bail!("undeploying {app} from the cluster left residue: {:?}", report.residue);
    }
    Ok(Row { how: "Otturnaut redeploy", redeploys, walls, failed_redeploys, load })
}

/// Every node, whatever runs there: a static front of a Swarm service.
#[derive(Debug)]
struct EveryNode(Vec<String>);

#[async_trait]
impl UpstreamHosts for EveryNode {
    async fn hosts(&self, _: HostPort) -> otturnaut_core::Result<Vec<String>> {
        Ok(self.0.clone())
    }
}

async fn docker_update(rig: &Rig, cluster: &Cluster, image: &str, redeploys: u32, concurrency: usize) -> Result<Row> {
    let app = app::app_id("swarm-native");
    // Not `otturnaut-…`: none of ours, so no reconcile or sweep touches it.
    let service = format!("{app}-service");
    let manager = cluster.manager.clone();
    let _ = docker_cli(&manager, &["service", "rm", &service]);
    let publish = format!("mode=host,published={NATIVE_PORT},target=8080");
    let replicas = REPLICAS.to_string();
    let create = [
        "service",
        "create",
        "--name",
        &service,
        "--replicas",
        &replicas,
        "--replicas-max-per-node",
        "1",
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        &publish,
        "--env",
        "APP_VERSION=v0",
        "--detach=false",
        "--quiet",
        image,
    ];
    docker(&manager, &create).await.context("creating Docker's service")?;
    let caddy = rig
        .agent
        .caddy
        .clone()
        .with_upstream_hosts(Arc::new(EveryNode(cluster.nodes.iter().map(|n| n.address.to_string()).collect())));
    let port = HostPort::try_from(NATIVE_PORT).map_err(|e| anyhow!("port {NATIVE_PORT}: {e}"))?;
    caddy.set_route(&app, &RouteTarget { domains: vec![app::domain(&app)], port }).await?;
    let config = load::Config::through_caddy(rig, &app, (Mode::Retry, concurrency), (SHORT_MS, LONG_EVERY), redeploys);
    let running = load::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut walls, mut failed_redeploys) = (Vec::new(), 0);
    for i in 1..=redeploys {
        let env = format!("APP_VERSION=v{i}");
        let update = [
            "service",
            "update",
            "--env-add",
            &env,
            "--update-order",
            "start-first",
            "--update-monitor",
            UPDATE_MONITOR,
            "--detach=false",
            "--quiet",
            &service,
        ];
        let began = Instant::now();
        match docker(&manager, &update).await {
            Ok(()) => walls.push(began.elapsed()),
            Err(e) => {
                failed_redeploys += 1;
                eprintln!("bench: docker service update {i} of {service} failed: {e:#}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(LONG_MS + 500)).await;
    let load = running.stop().await;
    caddy.remove_route(&app).await?;
    docker(&manager, &["service", "rm", &service]).await?;
    Ok(Row { how: "docker service update --update-order start-first", redeploys, walls, failed_redeploys, load })
}

/// `docker --host HOST ARGS`, bounded by [`UPDATE_LIMIT`] (a stuck
/// `--detach=false` waits forever).
async fn docker(host: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("docker").arg("--host").arg(host).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(UPDATE_LIMIT, out)
        .await
        .with_context(|| format!("docker {} took over {UPDATE_LIMIT:?}", args.join(" ")))??;
    if !out.status.success() {
        bail!("docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The report's table.
pub fn markdown(rows: &[Row], w: &mut String) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(w, "### Redeploys on a Swarm cluster\n");
    let _ = writeln!(
        w,
        "The 3-node cluster of `cargo xtask services up --swarm 3` (one machine, a `dockerd` per network \
         namespace), {REPLICAS} tasks of the fixture image from the cluster's registry, the port in host mode. \
         Each redeploy changes `APP_VERSION`: Otturnaut's is a new service, healthy on every task, one route \
         write and the old service retired; Docker's is `docker service update --update-order start-first \
         --update-monitor {UPDATE_MONITOR} --detach=false` (the CLI's wait), behind a route that dials the port \
         on every node. Load: keep-alive clients with retry through the private Caddy.\n"
    );
    let mut t = Table::new(&[
        Col::L("Redeploy"),
        Col::R("Redeploys (failed)"),
        Col::R("Wall median ms"),
        Col::R("Wall max ms"),
        Col::R("Requests"),
        Col::R("Failed requests"),
    ]);
    for r in rows {
        let max = r.walls.iter().max().copied();
        t.row(cells![
            r.how,
            format!("{} ({})", r.redeploys, r.failed_redeploys),
            ms_opt(median(&r.walls)),
            ms_opt(max),
            r.load.requests,
            format!("{} {:?}", r.load.failed(), r.load.failures)
        ]);
    }
    t.write(w);
}
