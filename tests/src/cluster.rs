//! The Docker Swarm cluster of `cargo xtask services up --swarm N`, as its
//! `cluster.json` describes it. A missing cluster fails the test loudly.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otturnaut_adapters::docker::Docker;
use otturnaut_adapters::swarm::{KEPT_LABEL, LIVE_LABEL, SwarmConfig};
use otturnaut_adapters::{Agent, AgentConfig, RuntimeKind};
use otturnaut_core::{AppId, DeploySpec, Domain, HostPort};
use otturnaut_steps::{BlueGreen, RetryPolicy, undeploy_app};

use crate::caddy_proc::{admin_get, get_via, shared_listen};
use crate::fixtures::{Behaviour, git_spec, write_context};
use crate::gitfix::{GitDaemon, GitRepo};
use crate::reloads::{UNANSWERED_CLOSE, ask_shared_caddy, reload_closes_new_connections};
use crate::services::{caddy_admin, require_caddy, unique_app};

const HOW: &str = "build it with `cargo xtask services up --swarm 3`";

/// A node: its name and the address its published ports answer on.
#[derive(Clone, Debug)]
pub struct Node {
    /// `ott-swarm-n1`.
    pub name: String,
    /// `10.213.7.11`.
    pub address: IpAddr,
    /// The node's own daemon, `unix:///run/otturnaut-swarm/n1.sock`.
    pub docker_host: String,
}

/// The cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The manager's daemon.
    pub manager: String,
    /// `HOST:PORT` of the registry the nodes pull from.
    pub registry: String,
    /// Every node, the manager first.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// The Swarm runtime's settings for this cluster, with `replicas` tasks per release.
    pub fn config(&self, replicas: u32) -> SwarmConfig {
        SwarmConfig {
            registry: self.registry.clone(),
            replicas: NonZeroU32::new(replicas).unwrap_or_else(|| panic!("replicas must be at least 1")),
        }
    }
}

fn cluster_file() -> PathBuf {
    let state = std::env::var_os("OTTURNAUT_DEV_STATE").map_or_else(|| "/var/lib/otturnaut-dev".into(), PathBuf::from);
    state.join("swarm").join("cluster.json")
}

/// Reads the cluster's description and checks that its manager answers as a
/// Swarm manager with every node ready; panics saying how to build it if not.
pub async fn require_swarm() -> Cluster {
    read_swarm().await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`require_swarm`], saying what is wrong instead of panicking (for the bench).
pub async fn read_swarm() -> Result<Cluster, String> {
    let path = cluster_file();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("no Swarm cluster ({} cannot be read: {e}): {HOW}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON ({e}): {HOW}", path.display()))?;
    let field = |v: &serde_json::Value, key: &str| -> Result<String, String> {
        v.get(key)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no {key}: {HOW}", path.display()))
    };
    let mut nodes = Vec::new();
    for n in json
        .get("nodes")
        .and_then(|n| n.as_array())
        .ok_or_else(|| format!("{} lists no nodes: {HOW}", path.display()))?
    {
        nodes.push(Node {
            name: field(n, "name")?,
            address: field(n, "address")?.parse().map_err(|e| format!("a node address in {}: {e}", path.display()))?,
            docker_host: field(n, "docker_host")?,
        });
    }
    let cluster = Cluster { manager: field(&json, "manager")?, registry: field(&json, "registry")?, nodes };
    Docker::connect_to(&cluster.manager)
        .await
        .map_err(|e| format!("the Swarm manager at {} does not answer ({e}): {HOW}", cluster.manager))?;
    let (ok, ready) = docker_cli(&cluster.manager, &["node", "ls", "--format", "{{.Status}}"]);
    let ready = ready.lines().filter(|l| l.trim() == "Ready").count();
    if !ok || ready != cluster.nodes.len() {
        return Err(format!("{ready} of {} Swarm nodes are ready: {HOW}", cluster.nodes.len()));
    }
    Ok(cluster)
}

/// `docker --host HOST …`, for what the adapter does not expose; panics if it cannot run.
pub fn docker_cli(host: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn agent(cluster: &Cluster, work_dir: &Path, replicas: u32) -> Agent {
    require_caddy().await;
    let config = AgentConfig {
        caddy_admin: caddy_admin(),
        listen: vec![shared_listen()],
        auto_https: false,
        work_dir: work_dir.to_path_buf(),
        docker_host: Some(cluster.manager.clone()),
        runtime: RuntimeKind::Swarm(cluster.config(replicas)),
        ..AgentConfig::default()
    };
    let agent = Agent::connect(&config).await.unwrap_or_else(|e| panic!("connecting the agent to the Swarm: {e}"));
    agent.prepare().await.unwrap_or_else(|e| panic!("setting up our Caddy server: {e}"));
    agent
}

/// An app deployed to the cluster by the Swarm runtime: its agent, its
/// repository (`main` serves v1) and git daemon, and what to look at.
#[derive(Debug)]
pub struct SwarmApp {
    _work: tempfile::TempDir,
    /// The cluster it runs on.
    pub cluster: Cluster,
    /// The agent, on the Swarm runtime.
    pub agent: Agent,
    /// The app.
    pub app: AppId,
    /// Its one domain, `APP.test`.
    pub domain: Domain,
    /// Its repository.
    pub repo: GitRepo,
    _daemon: GitDaemon,
    /// The repository's `git://` URL.
    pub url: String,
    /// The pipeline over the agent's adapters.
    pub bg: BlueGreen,
}

/// Requests through Caddy to an app every `pause`, each of which must get
/// `v1`, until [`V1Load::finish`].
#[derive(Debug)]
pub struct V1Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl V1Load {
    /// Stops the requests: how many got `v1`, and what every other one got.
    pub async fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

impl SwarmApp {
    /// A fresh app whose releases run `replicas` tasks; the cluster must have 3 nodes.
    pub async fn new(prefix: &str, replicas: u32) -> SwarmApp {
        let cluster = require_swarm().await;
        assert_eq!(cluster.nodes.len(), 3, "these tests want a 3-node cluster");
        let work = tempfile::tempdir().expect("work dir");
        let agent = agent(&cluster, work.path(), replicas).await;
        let app = unique_app(prefix);
        let domain: Domain = format!("{app}.test").parse().expect("domain");
        let repo = GitRepo::new();
        repo.commit_with("v1", |d| write_context(d, &Behaviour::serve("v1")));
        let daemon = GitDaemon::for_repo(&repo);
        let url = daemon.url(&repo);
        let bg = BlueGreen::new(agent.adapters.clone());
        SwarmApp { _work: work, cluster, agent, app, domain, repo, _daemon: daemon, url, bg }
    }

    /// Starts requesting the app through Caddy every `pause`, expecting `v1`.
    pub fn load_v1(&self, pause: Duration) -> V1Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (domain, flag) = (self.domain.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match get_via(&shared_listen(), domain.as_str()).await {
                    Ok((200, body)) if body == "v1\n" => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
                tokio::time::sleep(pause).await;
            }
            (ok, bad)
        });
        V1Load { stop, task }
    }

    /// A deploy of `main` with an HTTP health check of up to `health_deadline`.
    pub fn spec(&self, health_deadline: Duration) -> DeploySpec {
        git_spec(&self.app, &self.url, "main", self.domain.clone(), health_deadline)
    }

    /// `GET /` through the shared Caddy (see [`ask_shared_caddy`]).
    pub async fn via_caddy(&self) -> (u16, String) {
        ask_shared_caddy(self.domain.as_str()).await
    }

    /// What each node answers on `port`, in node order.
    pub async fn answers_of_every_node(&self, port: HostPort) -> Vec<String> {
        let mut bodies = Vec::new();
        for node in &self.cluster.nodes {
            let addr = format!("{}:{port}", node.address);
            let answer = match get_via(&addr, "x").await {
                Ok((200, body)) => body,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => format!("no answer: {e}"),
            };
            bodies.push(answer);
        }
        bodies
    }

    /// The app's route as Caddy's config holds it.
    pub async fn raw_route(&self) -> serde_json::Value {
        admin_get(&caddy_admin(), &format!("/id/otturnaut-app-{}", self.app)).await
    }

    /// The addresses the app's Caddy route dials, sorted: an upstream file's
    /// placeholder (`{file.PATH}`, Caddy 2.8+) stands for the address in it.
    pub async fn dials(&self) -> Vec<String> {
        let route = self.raw_route().await;
        let mut dials: Vec<String> = route["handle"][0]["upstreams"]
            .as_array()
            .unwrap_or_else(|| panic!("the route has no upstream list: {route}"))
            .iter()
            .filter_map(|u| u["dial"].as_str().map(str::to_owned))
            .map(|dial| match dial.strip_prefix("{file.").and_then(|d| d.strip_suffix('}')) {
                Some(path) => std::fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("the route dials {dial}, which cannot be read: {e}"))
                    .trim_end()
                    .to_owned(),
                None => dial,
            })
            .collect();
        dials.sort();
        dials
    }

    /// Whether the route dials upstream files (Caddy 2.8+), so a switch
    /// changes no config.
    pub async fn dials_files(&self) -> bool {
        self.agent.caddy.switches_through_files().await.expect("whether Caddy reads upstream files")
    }

    /// `NODE:port` of every node, sorted.
    pub fn every_node_on(&self, port: HostPort) -> Vec<String> {
        let mut all: Vec<String> = self.cluster.nodes.iter().map(|n| format!("{}:{port}", n.address)).collect();
        all.sort();
        all
    }

    /// The names and running states of the app's services.
    pub async fn services(&self) -> Vec<(String, bool)> {
        let mut list: Vec<(String, bool)> = self
            .agent
            .adapters
            .runtime
            .list(Some(&self.app))
            .await
            .expect("listing services")
            .into_iter()
            .map(|c| (c.name, c.running))
            .collect();
        list.sort();
        list
    }

    /// The marks on a release's service: (live, kept), read from the Swarm.
    pub fn marks(&self, deployment: &otturnaut_core::DeploymentId) -> (bool, bool) {
        let name = format!("otturnaut-{}-{deployment}", self.app);
        let (ok, labels) =
            docker_cli(&self.cluster.manager, &["service", "inspect", "--format", "{{json .Spec.Labels}}", &name]);
        assert!(ok, "inspecting service {name}");
        let labels: serde_json::Value = serde_json::from_str(&labels).expect("labels are JSON");
        (labels.get(LIVE_LABEL).is_some(), labels.get(KEPT_LABEL).is_some())
    }

    /// Undeploys the app, asserting nothing is left.
    pub async fn undeploy(&self) {
        let report = undeploy_app(&self.agent.adapters, &self.app, Duration::from_secs(5), RetryPolicy::default())
            .await
            .expect("undeploy");
        assert!(report.residue.is_empty(), "{report:?}");
    }
}

/// Asserts that no request of a load through Caddy failed (`failed`, each
/// the `Debug` of the request's result) while `answered` were answered as
/// expected; on a Caddy that closes connections at a reload, only such
/// unanswered closes may fail, at most `max_closes` of them.
pub fn assert_no_failed_request(failed: &[String], answered: u32, max_closes: usize, during: &str) {
    assert!(answered > 0, "no request was answered {during}");
    let total = answered as usize + failed.len();
    if !reload_closes_new_connections() {
        assert!(failed.is_empty(), "{} of {total} requests failed {during}: {:?}", failed.len(), first(failed));
        return;
    }
    let other: Vec<&String> = failed.iter().filter(|f| !f.contains(UNANSWERED_CLOSE)).collect();
    assert!(
        other.is_empty(),
        "{} of {total} requests failed {during}, not by a reload's close: {other:?}",
        other.len()
    );
    assert!(
        failed.len() <= max_closes,
        "{} of {total} requests were closed unanswered {during}, more than the {max_closes} reloads explain",
        failed.len()
    );
    if !failed.is_empty() {
        eprintln!("{} of {total} requests closed unanswered by Caddy's reloads {during}", failed.len());
    }
}

fn first(failed: &[String]) -> &[String] {
    &failed[..failed.len().min(10)]
}

/// A node whose `dockerd` was killed (SIGKILL, as a crash would): its
/// containers keep running under their shims, Swarm sees the node go down.
/// [`KilledDaemon::restart`] (or dropping it) starts the daemon again exactly
/// as `cargo xtask services up --swarm` did, and records its pid there, so
/// `services down` still stops it.
#[derive(Debug)]
pub struct KilledDaemon {
    node: Node,
    manager: String,
    args: Vec<String>,
    restarted: bool,
}

fn state_dir() -> PathBuf {
    std::env::var_os("OTTURNAUT_DEV_STATE").map_or_else(|| "/var/lib/otturnaut-dev".into(), PathBuf::from)
}

impl Node {
    fn index(&self) -> String {
        self.name.rsplit_once("-n").map(|(_, i)| i.to_owned()).unwrap_or_default()
    }

    fn record(&self) -> PathBuf {
        state_dir().join("run").join(format!("swarm-n{}.pid", self.index()))
    }

    /// SIGKILLs the node's `dockerd` (by the pid `services up` recorded).
    pub fn kill_daemon(&self, cluster: &Cluster) -> KilledDaemon {
        let record = std::fs::read_to_string(self.record())
            .unwrap_or_else(|e| panic!("no pid record of {}'s dockerd ({e})", self.name));
        let pid = record.split_whitespace().next().unwrap_or_default().to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_else(|e| panic!("{}'s dockerd (pid {pid}) does not run: {e}", self.name));
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ok = std::process::Command::new("kill").args(["-s", "KILL", &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -KILL {pid} ({}'s dockerd)", self.name);
        KilledDaemon { node: self.clone(), manager: cluster.manager.clone(), args, restarted: false }
    }
}

impl KilledDaemon {
    /// Starts the node's daemon again and waits (up to 60 s) until Swarm
    /// reports the node Ready.
    // The daemon outlives the test process (init reaps it), as xtask's does.
    #[allow(clippy::zombie_processes)]
    pub fn restart(&mut self) {
        if self.restarted {
            return;
        }
        self.restarted = true;
        let name = &self.node.name;
        let log_path = state_dir().join("logs").join(format!("swarm-n{}.log", self.node.index()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let err = log.try_clone().unwrap_or_else(|e| panic!("duplicating a log handle: {e}"));
        // The killed daemon's pid file names a pid that may be someone else's by now.
        if let Some(pidfile) = self.args.iter().find_map(|a| a.strip_prefix("--pidfile=")) {
            let _ = std::fs::remove_file(pidfile);
        }
        let net = format!("--net=/run/netns/{name}");
        // As xtask starts it: setsid, unshare, nsenter and sh each exec the next, so the pid is dockerd's.
        let child = std::process::Command::new("setsid")
            .args([
                "unshare",
                "--uts",
                "--",
                "nsenter",
                &net,
                "--",
                "sh",
                "-c",
                r#"hostname "$0" && exec dockerd "$@""#,
                name,
            ])
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {name}'s dockerd: {e}"));
        let pid = child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let start_time = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)).unwrap_or("0");
        std::fs::write(self.node.record(), format!("{pid} {start_time}\n"))
            .unwrap_or_else(|e| panic!("recording {name}'s new dockerd: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, nodes) = docker_cli(&self.manager, &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
            if nodes.lines().any(|l| l == format!("{name} Ready")) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} is not Ready 60 s after its dockerd restarted: {nodes}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for KilledDaemon {
    fn drop(&mut self) {
        if !self.restarted && !std::thread::panicking() {
            self.restart();
        } else if !self.restarted {
            // Panicking already: restart without asserting, so the cluster outlives the failed test.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.restart()));
        }
    }
}
