//! What the bench deploys and with what: the fixture app (built from
//! `tests/fixtures/benchapp.rs`), its image, a git repository and daemon
//! serving it, and [`Rig`], the agent wired to a private Caddy with every
//! adapter call timed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_adapters::{Agent, AgentConfig};
use otturnaut_core::{
    Adapters, AppId, DeploySpec, Domain, EnvName, GitRef, HealthCheck, HealthKind, ImageRef, PortRange, RepoUrl,
    Secret, Source,
};
use otturnaut_steps::{BlueGreen, RetryPolicy, undeploy_app};
use tokio::process::{Child, Command};

use super::caddy::PrivateCaddy;
use super::machine::stdout;
use super::timing::{Clock, timed};
use crate::caddy_proc::free_port;

/// The fixture image every prebuilt-image deploy runs.
pub const IMAGE: &str = "otturnaut-bench-app:latest";
/// Every app the bench creates has an id starting with this.
pub const APP_PREFIX: &str = "bench-";
/// Host ports of the bench's containers: apart from the default range the
/// tests use, and below the kernel's ephemeral range.
pub const PORTS: (u16, u16) = (30000, 30999);
/// How often the health check (the agent's and the shell baseline's) polls.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(50);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where the bench keeps what it builds.
pub fn bench_dir() -> PathBuf {
    workspace_root().join("target").join("bench")
}

/// Compiles the fixture app into a static binary; returns its path.
pub async fn build_app_binary() -> Result<PathBuf> {
    let root = workspace_root();
    let src = root.join("tests/fixtures/benchapp.rs");
    let out_dir = bench_dir();
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("benchapp");
    let host = stdout(&["rustc", "-vV"])
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host target")?;
    let (src_s, out_s) = (src.display().to_string(), out.display().to_string());
    // crt-static: glibc linked in, so the binary runs in a FROM scratch image
    // (needs libc6-dev's libc.a).
    stdout(&[
        "rustc",
        "--edition",
        "2021",
        "-C",
        "opt-level=2",
        "-C",
        "strip=symbols",
        "-C",
        "target-feature=+crt-static",
        "--target",
        &host,
        "-o",
        &out_s,
        &src_s,
    ])
    .await
    .context("compiling the bench's fixture app (static glibc needs libc6-dev)")?;
    Ok(out)
}

pub const DOCKERFILE: &str = "FROM scratch\nCOPY benchapp /benchapp\nEXPOSE 8080\nCMD [\"/benchapp\"]\n";

/// Builds [`IMAGE`] from the fixture binary.
pub async fn build_image(binary: &Path) -> Result<()> {
    let ctx = bench_dir().join("image");
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(binary, ctx.join("benchapp"))?;
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE)?;
    stdout(&["docker", "build", "-q", "-t", IMAGE, &ctx.display().to_string()]).await?;
    Ok(())
}

pub fn image_ref() -> ImageRef {
    IMAGE.parse().unwrap_or_else(|e| panic!("the bench image reference {IMAGE} is invalid: {e}"))
}

/// A git repository with the fixture app's Dockerfile and binary, served
/// read-only by a `git daemon` on a free loopback port. Killed on drop.
#[derive(Debug)]
pub struct GitServer {
    _daemon: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl GitServer {
    pub async fn start(binary: &Path) -> Result<GitServer> {
        let dir = tempfile::Builder::new().prefix("otturnaut-bench-git-").tempdir()?;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        std::fs::copy(binary, work.join("benchapp"))?;
        std::fs::write(work.join("Dockerfile"), DOCKERFILE)?;
        let work_s = work.display().to_string();
        let bare = dir.path().join("app.git").display().to_string();
        for argv in [
            vec!["init", "-q", "-b", "main", &work_s],
            vec!["-C", &work_s, "add", "-A"],
            vec![
                "-C",
                &work_s,
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@otturnaut.invalid",
                "commit",
                "-qm",
                "app",
            ],
            vec!["clone", "-q", "--bare", &work_s, &bare],
        ] {
            git(&argv).await?;
        }
        let port = free_port();
        // `git daemon` would exec a child that outlives a kill of the `git`
        // we hold: run `git-daemon` itself, so kill_on_drop reaches it.
        let exec_path = git(&["--exec-path"]).await?;
        let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting `git daemon`")?;
        let server = GitServer { _daemon: daemon, _dir: dir, url: format!("git://127.0.0.1:{port}/app.git") };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("git daemon on {addr} did not start listening within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    pub fn repo(&self) -> Result<RepoUrl> {
        self.url.parse().with_context(|| format!("git URL {}", self.url))
    }
}

pub async fn git(argv: &[&str]) -> Result<String> {
    let mut full = vec!["git"];
    full.extend_from_slice(argv);
    let out = super::machine::output(&full, Duration::from_secs(60)).await?;
    if !out.status.success() {
        bail!("{} failed: {}", full.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The agent, wired to a private Caddy, with every adapter call timed.
pub struct Rig {
    pub caddy: PrivateCaddy,
    pub config: AgentConfig,
    pub agent: Agent,
    pub clock: Clock,
    /// The timed adapters; `strategy` runs on them.
    pub adapters: Adapters,
    pub strategy: BlueGreen,
    _work: tempfile::TempDir,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig").field("caddy", &self.caddy).finish_non_exhaustive()
    }
}

impl Rig {
    /// A rig whose private Caddy runs the binary `caddy`.
    pub async fn start_with(caddy: &Path) -> Result<Rig> {
        let caddy = PrivateCaddy::start(caddy).await?;
        let work = tempfile::Builder::new().prefix("otturnaut-bench-work-").tempdir()?;
        let config = AgentConfig {
            caddy_admin: caddy.admin_url.clone(),
            listen: vec![caddy.listen.to_string()],
            auto_https: false,
            port_range: PortRange::new(PORTS.0, PORTS.1)?,
            work_dir: work.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let agent = Agent::connect(&config).await.context("connecting the agent to Docker and the private Caddy")?;
        agent.prepare().await.context("setting up Otturnaut's server in the private Caddy")?;
        let clock = Clock::default();
        let adapters = timed(&agent.adapters, &clock);
        let strategy = BlueGreen::new(adapters.clone());
        Ok(Rig { caddy, config, agent, clock, adapters, strategy, _work: work })
    }

    /// Removes everything of `app` (route, containers, images, sources).
    pub async fn undeploy(&self, app: &AppId) -> Result<()> {
        undeploy(&self.agent.adapters, app).await
    }

    /// [`Rig::undeploy`] for many apps, 20 at a time.
    pub async fn undeploy_all(&self, apps: &[AppId]) -> Result<()> {
        for batch in apps.chunks(20) {
            let tasks: Vec<_> = batch
                .iter()
                .map(|app| {
                    let (adapters, app) = (self.agent.adapters.clone(), app.clone());
                    tokio::spawn(async move { undeploy(&adapters, &app).await })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
        }
        Ok(())
    }
}

async fn undeploy(adapters: &Adapters, app: &AppId) -> Result<()> {
    let report = undeploy_app(adapters, app, Duration::ZERO, RetryPolicy::default()).await?;
    if !report.residue.is_empty() {
        bail!("undeploying {app} left residue: {:?}", report.residue);
    }
    Ok(())
}

pub fn app_id(name: &str) -> AppId {
    format!("{APP_PREFIX}{name}").parse().unwrap_or_else(|e| panic!("bench app id {APP_PREFIX}{name}: {e}"))
}

pub fn domain(app: &AppId) -> Domain {
    format!("{app}.bench.test").parse().unwrap_or_else(|e| panic!("bench domain for {app}: {e}"))
}

/// A prebuilt-image deploy of the fixture app answering `version`.
pub fn image_spec(app: &AppId, version: &str) -> DeploySpec {
    let mut spec = DeploySpec::new(
        app.clone(),
        Source::Image { reference: image_ref() },
        8080u16.try_into().unwrap_or_else(|e| panic!("port 8080: {e}")),
    );
    spec.domains = vec![domain(app)];
    let mut health = HealthCheck::new(HealthKind::Http {
        path: "/healthz".parse().unwrap_or_else(|e| panic!("/healthz: {e}")),
        expected_status: 200,
    });
    health.interval = HEALTH_INTERVAL;
    health.attempt_timeout = Duration::from_secs(2);
    health.deadline = Duration::from_secs(20);
    spec.health = health;
    set_env(&mut spec, "APP_VERSION", version);
    spec
}

/// Like [`image_spec`], built from the git repository at `url` instead.
pub fn git_spec(app: &AppId, version: &str, url: RepoUrl) -> DeploySpec {
    let mut spec = image_spec(app, version);
    spec.source = Source::Git {
        url,
        git_ref: GitRef::default(),
        dockerfile: Default::default(),
        build_args: Default::default(),
        ssh_key: None,
    };
    spec
}

pub fn set_env(spec: &mut DeploySpec, name: &str, value: &str) {
    let name: EnvName = name.parse().unwrap_or_else(|e| panic!("env name {name}: {e}"));
    spec.env.insert(name, Secret::new(value));
}

/// Removes every container and image of an app whose id starts with
/// [`APP_PREFIX`]: what an interrupted earlier run may have left.
pub async fn sweep(adapters: &Adapters) -> Result<usize> {
    let mut removed = 0;
    for c in adapters.runtime.list(None).await? {
        if c.app.as_str().starts_with(APP_PREFIX) {
            adapters.runtime.remove(&c.id).await?;
            removed += 1;
        }
    }
    for i in adapters.builder.list_images(None).await? {
        if i.app.as_str().starts_with(APP_PREFIX) {
            // By tag: a prebuilt release's id is the shared fixture image.
            for tag in &i.tags {
                adapters.builder.remove_image(tag).await?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}
