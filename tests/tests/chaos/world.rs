//! The world a chaos run deploys into: the real Docker Engine (or the Swarm
//! cluster of `cargo xtask services up --swarm 3`), a private Caddy, a git
//! daemon serving a fixture repository, a private work dir and temp dir, and
//! the `otturnaut` binary pointed at all of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use otturnaut_adapters::docker::Docker;
use otturnaut_adapters::swarm::{Swarm, SwarmImages};
use otturnaut_core::AppId;
use otturnaut_tests::caddy_proc::test_caddy;
use otturnaut_tests::cluster::{Cluster, require_swarm};
use otturnaut_tests::fixtures::{Behaviour, write_context};
use otturnaut_tests::gitfix::{GitDaemon, GitRepo};
use otturnaut_tests::services::require_docker;

use super::caddy::Caddy;
use super::cli::{Cli, Outcome};
use super::snapshot::{Observer, SwarmSight};

/// Host ports handed to the chaos apps' containers.
pub const PORT_RANGE: &str = "30000-39999";

/// Host ports of the chaos apps' services on a cluster: below the nodes'
/// ephemeral range (32768–60999), whose ports a node's own outgoing
/// connections hold where the allocator, on this host, cannot see them (a
/// task then fails to bind its port on that node); above the 10000–20000 of
/// the other Swarm tests.
pub const SWARM_PORT_RANGE: &str = "20000-29999";

/// Tasks per release on a cluster: fewer than its 3 nodes, so the route must
/// dial exactly the nodes that run one, not every node.
pub const SWARM_REPLICAS: u32 = 2;

/// Where the releases run.
#[derive(Clone, Debug)]
pub enum Runtime {
    /// This host's Docker Engine.
    Docker,
    /// The Swarm cluster (`--runtime swarm`, `DOCKER_HOST` its manager).
    Swarm(Cluster),
}

/// A CLI run that should not take longer than this is stuck.
pub const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Every git ref the fixture repository has, and what its image does.
pub fn fixture_refs() -> Vec<(&'static str, Behaviour)> {
    vec![
        ("v1", Behaviour::serve("v1")),
        ("v2", Behaviour::serve("v2")),
        ("crash", Behaviour::Exit { code: 3 }),
        ("neverlisten", Behaviour::NeverListen),
        ("slowbuild", Behaviour::SlowBuild { secs: 120 }),
        ("failbuild", Behaviour::FailBuild),
    ]
}

/// What a deploy deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src<'a> {
    /// A ref of the fixture repository, built by Otturnaut.
    Git(&'a str),
    /// A prebuilt local image of this version (not built or owned by Otturnaut).
    Image(&'a str),
    /// `otturnaut rollback` to the newest kept release.
    Rollback,
}

#[derive(Debug)]
pub struct World {
    pub root: tempfile::TempDir,
    pub work_dir: PathBuf,
    pub caddy: Caddy,
    pub cli: Cli,
    pub observer: Observer,
    repo: GitRepo,
    daemon: GitDaemon,
    /// `otturnaut-chaos-{pid}:{version}` images for `--image` deploys.
    image_base: String,
    images: Vec<String>,
    pub runtime: Runtime,
}

/// Numbers app ids across every world of this process: two worlds (tests
/// running in parallel) share the Docker daemon, and one world's reconcile
/// would take the other's app of the same name for its own leftovers.
static NEXT_APP: AtomicU32 = AtomicU32::new(0);

impl World {
    pub async fn new(bin: PathBuf) -> anyhow::Result<World> {
        require_docker().await;
        World::with_runtime(bin, Runtime::Docker).await
    }

    /// A world on the Swarm cluster; fails loudly if it is not up.
    pub async fn on_swarm(bin: PathBuf) -> anyhow::Result<World> {
        World::with_runtime(bin, Runtime::Swarm(require_swarm().await)).await
    }

    async fn with_runtime(bin: PathBuf, runtime: Runtime) -> anyhow::Result<World> {
        let root = tempfile::Builder::new().prefix("otturnaut-chaos-").tempdir()?;
        let work_dir = root.path().join("work");
        let tmp_dir = root.path().join("tmp");
        std::fs::create_dir_all(&work_dir)?;
        std::fs::create_dir_all(&tmp_dir)?;
        let caddy = Caddy::start().await?;

        let repo = GitRepo::new();
        for (name, behaviour) in fixture_refs() {
            repo.commit_with(name, |dir| write_context(dir, &behaviour));
            repo.tag(name);
        }
        let daemon = GitDaemon::for_repo(&repo);

        let ports = if matches!(runtime, Runtime::Swarm(_)) { SWARM_PORT_RANGE } else { PORT_RANGE };
        let mut global = vec![
            "--caddy-admin".to_owned(),
            caddy.admin_url(),
            "--listen".to_owned(),
            caddy.listen.clone(),
            "--no-auto-https".to_owned(),
            "--port-range".to_owned(),
            ports.to_owned(),
            "--work-dir".to_owned(),
            work_dir.display().to_string(),
        ];
        let mut env = Vec::new();
        let caddy_adapter = test_caddy(&caddy.admin_url(), &caddy.listen);
        let observer = match &runtime {
            Runtime::Docker => {
                let docker = Arc::new(Docker::connect().await.context("connecting to Docker")?);
                Observer {
                    runtime: docker.clone(),
                    images: docker,
                    caddy: caddy_adapter,
                    work_dir: work_dir.clone(),
                    tmp_dir: tmp_dir.clone(),
                    swarm: None,
                }
            }
            Runtime::Swarm(cluster) => {
                global.extend(
                    ["--runtime", "swarm", "--registry", &cluster.registry, "--replicas", &SWARM_REPLICAS.to_string()]
                        .map(str::to_owned),
                );
                env.push(("DOCKER_HOST".to_owned(), cluster.manager.clone()));
                let docker = Docker::connect_to(&cluster.manager).await.context("connecting to the Swarm manager")?;
                let swarm = Swarm::connect(docker, cluster.config(SWARM_REPLICAS)).await?;
                // The caddy adapter reads a route's upstreams from the
                // runtime on a cluster, as the CLI's does.
                let caddy_adapter = caddy_adapter.with_upstream_hosts(Arc::new(swarm.clone()));
                Observer {
                    runtime: Arc::new(swarm.clone()),
                    images: Arc::new(SwarmImages::new(swarm.clone())),
                    caddy: caddy_adapter,
                    work_dir: work_dir.clone(),
                    tmp_dir: tmp_dir.clone(),
                    swarm: Some(SwarmSight {
                        swarm,
                        manager: cluster.manager.clone(),
                        registry: cluster.registry.clone(),
                        caddy_admin: caddy.admin_url(),
                    }),
                }
            }
        };
        let cli = Cli { bin, global, tmp_dir, env };
        let mut world = World {
            root,
            work_dir,
            caddy,
            cli,
            observer,
            repo,
            daemon,
            image_base: format!("otturnaut-chaos-{}", std::process::id()),
            images: Vec::new(),
            runtime,
        };
        for version in ["v1", "v2"] {
            world.build_plain_image(version)?;
        }
        Ok(world)
    }

    /// `docker`, talking to this world's daemon (a cluster's manager).
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Runtime::Swarm(cluster) = &self.runtime {
            cmd.args(["--host", &cluster.manager]);
        }
        cmd
    }

    /// A prebuilt image, as a registry would have provided it: no labels of ours.
    fn build_plain_image(&mut self, version: &str) -> anyhow::Result<()> {
        let dir = self.root.path().join(format!("image-{version}"));
        write_context(&dir, &Behaviour::serve(version))?;
        let name = self.image(version);
        let out =
            self.docker().args(["build", "-q", "-t", &name]).arg(&dir).output().context("running docker build")?;
        ensure!(out.status.success(), "docker build -t {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        self.images.push(name);
        Ok(())
    }

    pub fn image(&self, version: &str) -> String {
        format!("{}:{version}", self.image_base)
    }

    pub fn image_exists(&self, version: &str) -> bool {
        self.docker()
            .args(["image", "inspect", "--format", "{{.Id}}", &self.image(version)])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn repo_url(&self) -> String {
        self.daemon.url(&self.repo)
    }

    /// A fresh app id, unique across processes: `cx{pid}-{n}-{tag}`.
    pub fn app(&self, tag: &str) -> AppId {
        let n = NEXT_APP.fetch_add(1, Ordering::Relaxed);
        let id = format!("cx{}-{n}-{tag}", std::process::id());
        id.parse().unwrap_or_else(|e| panic!("app id {id:?}: {e}"))
    }

    pub fn domain(app: &AppId) -> String {
        format!("{app}.chaos.test")
    }

    pub fn listen(&self) -> &str {
        &self.caddy.listen
    }

    pub fn deploy_args(&self, app: &AppId, src: Src<'_>, extra: &[&str]) -> Vec<String> {
        let keep = ["--keep".to_owned(), super::snapshot::KEEP.to_string()];
        if let Src::Rollback = src {
            // The rest is the kept release's own.
            let mut args: Vec<String> = vec!["rollback".into(), app.to_string(), "--json".into()];
            args.extend(keep);
            args.extend(extra.iter().map(|s| s.to_string()));
            return args;
        }
        let mut args: Vec<String> = vec!["deploy".into(), app.to_string()];
        args.extend(keep);
        match src {
            Src::Git(r) => args.extend(["--repo".into(), self.repo_url(), "--ref".into(), r.into()]),
            Src::Image(v) => args.extend(["--image".into(), self.image(v)]),
            Src::Rollback => {}
        }
        let domain = World::domain(app);
        args.extend(
            ["--container-port", "8080", "--domain", &domain, "--health", "http:/healthz", "--json"].map(str::to_owned),
        );
        if !extra.contains(&"--health-timeout") {
            args.extend(["--health-timeout".to_owned(), "20s".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub async fn deploy(&self, app: &AppId, src: Src<'_>, faults: Option<&str>) -> anyhow::Result<Outcome> {
        self.cli.run(&self.deploy_args(app, src, &[]), faults, RUN_LIMIT).await
    }

    /// A deploy that must succeed (setting up a live release).
    pub async fn deploy_ok(&self, app: &AppId, src: Src<'_>) -> anyhow::Result<Outcome> {
        let out = self.deploy(app, src, None).await?;
        if out.code != Some(0) {
            bail!("setting up {app}: {}", out.summary());
        }
        Ok(out)
    }

    /// `otturnaut reconcile APP`: only this app, never the other apps on this
    /// Docker daemon (other test processes' apps route through other Caddies).
    pub async fn reconcile(&self, app: &AppId) -> anyhow::Result<Outcome> {
        let keep = super::snapshot::KEEP.to_string();
        self.cli
            .run(&["reconcile".into(), app.to_string(), "--json".into(), "--keep".into(), keep], None, RUN_LIMIT)
            .await
    }

    /// `otturnaut reconcile APP...`: these apps together (one Caddy write
    /// restores all their routes), never other worlds' apps on this daemon.
    pub async fn reconcile_apps(&self, apps: &[&AppId]) -> anyhow::Result<Outcome> {
        let mut args = vec!["reconcile".to_owned(), "--json".to_owned()];
        args.extend(apps.iter().map(|a| a.to_string()));
        self.cli.run(&args, None, RUN_LIMIT).await
    }

    /// `otturnaut status APP --json`: the app's one status object.
    pub async fn status(&self, app: &AppId) -> anyhow::Result<serde_json::Value> {
        let out = self.cli.run(&["status".into(), app.to_string(), "--json".into()], None, RUN_LIMIT).await?;
        // The one JSON line is an array, so the harness files it with the events.
        let all = out.events.last().with_context(|| format!("status --json printed nothing: {}", out.summary()))?;
        all.get(0).cloned().with_context(|| format!("status --json printed no app: {all}"))
    }

    /// Commits `behaviour` as the fixture repository's ref `name`.
    pub fn add_ref(&self, name: &str, behaviour: &Behaviour) {
        self.repo.commit_with(name, |dir| write_context(dir, behaviour));
        self.repo.tag(name);
    }

    pub async fn undeploy(&self, app: &AppId) -> anyhow::Result<Outcome> {
        self.cli.run(&["undeploy".into(), app.to_string(), "--json".into()], None, RUN_LIMIT).await
    }

    /// Removes everything of `app`: `otturnaut undeploy`, then checks nothing
    /// is left. Returns what was left, if anything.
    pub async fn clean_up(&self, app: &AppId) -> anyhow::Result<Vec<String>> {
        let out = self.undeploy(app).await?;
        let snap = self.observer.snapshot(app).await?;
        let left: Vec<String> = snap.items().into_iter().map(|i| i.to_string()).collect();
        if out.code != Some(0) || !left.is_empty() {
            bail!("undeploy of {app} left {left:?}: {}", out.summary());
        }
        Ok(left)
    }

    /// Whether `app`'s lock file is free (`flock -n`, the same kind of lock
    /// the CLI takes).
    pub fn lock_is_free(&self, app: &AppId) -> anyhow::Result<bool> {
        let path = self.work_dir.join("locks").join(format!("{app}.lock"));
        if !path.exists() {
            return Ok(true);
        }
        let status = Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(&path)
            .arg("true")
            .status()
            .context("running flock(1)")?;
        Ok(status.success())
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for image in &self.images {
            let _ = self.docker().args(["rmi", "-f", image]).output();
        }
    }
}

impl World {
    /// GET `/version` straight from a release's published port (not through
    /// Caddy). On one host, `127.0.0.1:port`. On a cluster, every node: the
    /// nodes that answer must be as many as a release has tasks and agree;
    /// if not, what each node answered, which is no version.
    pub async fn version_at(&self, port: u16) -> Option<String> {
        let Runtime::Swarm(cluster) = &self.runtime else {
            return version_of(&format!("127.0.0.1:{port}")).await;
        };
        let mut answers = Vec::new();
        for node in &cluster.nodes {
            answers.push((node.address, version_of(&format!("{}:{port}", node.address)).await));
        }
        let versions: std::collections::BTreeSet<&String> = answers.iter().filter_map(|(_, v)| v.as_ref()).collect();
        let answering = answers.iter().filter(|(_, v)| v.is_some()).count();
        match versions.into_iter().collect::<Vec<_>>()[..] {
            [one] if answering == SWARM_REPLICAS as usize => Some(one.clone()),
            _ => Some(format!("{answers:?} (want {SWARM_REPLICAS} tasks of one version)")),
        }
    }
}

async fn version_of(addr: &str) -> Option<String> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().ok()?;
    let r = client.get(format!("http://{addr}/version")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok().map(|t| t.trim().to_owned())
}

/// GET `/` through our Caddy server for `app`'s domain: `(status, body)`.
pub async fn via_caddy(world: &World, app: &AppId) -> Option<(u16, String)> {
    otturnaut_tests::caddy_proc::get_via(world.listen(), &World::domain(app))
        .await
        .ok()
        .map(|(s, b)| (s, b.trim().to_owned()))
}
