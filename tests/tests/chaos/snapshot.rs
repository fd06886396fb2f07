//! What of one app exists in the outside world, and what changed: the
//! harness's only source of truth, read the way an operator would (Docker by
//! our labels, our routes in Caddy, the files in the work dir and in the
//! CLI's temp dir).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::Context as _;
use otturnaut_adapters::caddy::Caddy as CaddyAdapter;
use otturnaut_adapters::swarm::Swarm;
use otturnaut_core::traits::{ContainerRuntime, ImageBuilder, Router as _};
use otturnaut_core::{AppId, HostPort};

/// How many releases besides the live one the harness's deploys keep (`--keep`).
pub const KEEP: usize = 2;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerFact {
    pub name: String,
    pub id: String,
    pub deployment: String,
    pub running: bool,
    pub state: String,
    pub port: Option<u16>,
    pub image: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageFact {
    pub id: String,
    pub tags: Vec<String>,
    pub deployment: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub containers: Vec<ContainerFact>,
    pub images: Vec<ImageFact>,
    /// `(port, domains)` of the app's route in our Caddy server.
    pub route: Option<(u16, Vec<String>)>,
    /// On a cluster: the addresses the route dials, sorted (one per task).
    pub upstreams: Vec<String>,
    /// On a cluster: `node:port` of every running task of the service the
    /// route's port belongs to, sorted; `None` on one host, and for a route
    /// to a port no service publishes (a residue route: the orphan checks
    /// judge it).
    pub route_tasks: Option<Vec<String>>,
    /// The app's entries in the work dir (`src/{app}-…`, `ssh/{app}-…`) and
    /// everything in the CLI's temp dir (`tmp/…`).
    pub files: BTreeSet<String>,
}

/// One thing that exists, as a diff line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    /// `container`, `image`, `route` or `file`.
    pub kind: &'static str,
    pub text: String,
    /// The deployment it belongs to, when it says.
    pub deployment: Option<String>,
    /// Docker's id (containers and images), which residue may name instead.
    pub id: Option<String>,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub added: bool,
    pub item: Item,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", if self.added { "+" } else { "-" }, self.item)
    }
}

impl Snapshot {
    pub fn items(&self) -> BTreeSet<Item> {
        let mut items = BTreeSet::new();
        for c in &self.containers {
            let port = c.port.map_or("no port".to_owned(), |p| format!(":{p}"));
            items.insert(Item {
                kind: "container",
                text: format!("{} {} {port}", c.name, c.state),
                deployment: Some(c.deployment.clone()),
                id: Some(c.id.clone()),
            });
        }
        for i in &self.images {
            let short = i.id.trim_start_matches("sha256:").get(..12).unwrap_or(&i.id).to_owned();
            let name = if i.tags.is_empty() { "(untagged)".to_owned() } else { i.tags.join(",") };
            items.insert(Item {
                kind: "image",
                text: format!("{name} {short}"),
                deployment: Some(i.deployment.clone()),
                id: Some(i.id.clone()),
            });
        }
        if let Some((port, domains)) = &self.route {
            let deployment = self.containers.iter().find(|c| c.port == Some(*port)).map(|c| c.deployment.clone());
            let mut text = format!("→ :{port} for {}", domains.join(","));
            if !self.upstreams.is_empty() {
                text.push_str(&format!(" via {}", self.upstreams.join(",")));
            }
            items.insert(Item { kind: "route", text, deployment, id: None });
        }
        for f in &self.files {
            items.insert(Item { kind: "file", text: f.clone(), deployment: deployment_in(f), id: None });
        }
        items
    }

    /// The live release: the running container Caddy routes the app to.
    pub fn live(&self) -> Option<&ContainerFact> {
        let (port, _) = self.route.as_ref()?;
        self.containers.iter().find(|c| c.running && c.port == Some(*port))
    }

    /// On a cluster, what is wrong with the route's upstreams: they must be
    /// exactly the running tasks of the service on the route's port, one per
    /// task. `None` when they are (or on one host, or with no route).
    pub fn upstream_problem(&self) -> Option<String> {
        let tasks = self.route_tasks.as_ref()?;
        let (port, _) = self.route.as_ref()?;
        (self.upstreams != *tasks).then(|| {
            format!("the route to :{port} dials {:?}, but the service's running tasks are {tasks:?}", self.upstreams)
        })
    }

    /// The deployments kept for a rollback: the newest [`KEEP`] releases
    /// that were committed once (a kept mark, or a live mark older than the
    /// live release's) whose container still exists.
    pub fn retained(&self) -> BTreeSet<&str> {
        let live = self.live().map(|c| c.deployment.as_str());
        let mut kept: Vec<&str> = self
            .images
            .iter()
            .filter(|i| Some(i.deployment.as_str()) != live)
            .filter(|i| i.tags.iter().any(|t| t.contains(":kept-") || t.contains(":live-")))
            .filter(|i| self.containers.iter().any(|c| c.deployment == i.deployment))
            .map(|i| i.deployment.as_str())
            .collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        kept.into_iter().take(KEEP).collect()
    }

    /// Everything that is neither the live release (nor the image it runs)
    /// nor a release kept for a rollback (see [`Snapshot::retained`]): what
    /// reconcile must leave nothing of. A kept release still running, or
    /// still carrying its old live mark, is a retirement left unfinished.
    pub fn orphans(&self) -> Vec<Item> {
        let live = self.live();
        let live_dep = live.map(|c| c.deployment.as_str());
        let retained = self.retained();
        let mut out = Vec::new();
        for item in self.items() {
            let keep = match item.kind {
                "container" | "image" => {
                    let dep = item.deployment.as_deref();
                    // A kept release still running, or whose image still
                    // carries its live mark: its retirement was cut short.
                    let stale = match item.kind {
                        "image" => item.text.contains(":live-"),
                        _ => !item.text.contains(" exited "),
                    };
                    (live_dep.is_some() && dep == live_dep) || (dep.is_some_and(|d| retained.contains(d)) && !stale)
                }
                // A route is fine iff something live answers it.
                "route" => live.is_some(),
                _ => false,
            };
            if !keep {
                out.push(item);
            }
        }
        out
    }
}

pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Change> {
    let (b, a) = (before.items(), after.items());
    let mut out: Vec<Change> = b.difference(&a).map(|i| Change { added: false, item: i.clone() }).collect();
    out.extend(a.difference(&b).map(|i| Change { added: true, item: i.clone() }));
    out
}

/// Reads snapshots of apps in one world, through the runtime's own ports:
/// containers on one host, services on a cluster.
#[derive(Clone)]
pub struct Observer {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub images: Arc<dyn ImageBuilder>,
    pub caddy: CaddyAdapter,
    pub work_dir: PathBuf,
    pub tmp_dir: PathBuf,
    /// On a cluster: what only a cluster has (registry copies, upstreams per task).
    pub swarm: Option<SwarmSight>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer").field("work_dir", &self.work_dir).field("swarm", &self.swarm).finish()
    }
}

/// What an observer of a cluster reads besides the ports: the manager's
/// copies of release images under the registry's name, the upstreams of a
/// route, the tasks of a service.
#[derive(Clone, Debug)]
pub struct SwarmSight {
    pub swarm: Swarm,
    /// `docker --host` of the manager.
    pub manager: String,
    /// `HOST:PORT` of the cluster's registry.
    pub registry: String,
    /// Our private Caddy's admin API.
    pub caddy_admin: String,
}

impl SwarmSight {
    /// `REGISTRY/otturnaut-APP:DEPLOYMENT` tags on the manager, as images.
    async fn registry_copies(&self, app: &AppId) -> anyhow::Result<Vec<ImageFact>> {
        let reference = format!("{}/otturnaut-{app}", self.registry);
        let out = tokio::process::Command::new("docker")
            .args(["--host", &self.manager, "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
            .arg(&reference)
            .output()
            .await
            .context("running docker images on the manager")?;
        anyhow::ensure!(
            out.status.success(),
            "docker images {reference} on the manager: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut copies = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((tag, id)) = line.split_once(' ') else { continue };
            let deployment = tag.rsplit_once(':').map(|(_, t)| t.to_owned()).unwrap_or_default();
            copies.push(ImageFact { id: id.to_owned(), tags: vec![tag.to_owned()], deployment });
        }
        Ok(copies)
    }

    /// The addresses the app's route proxies to, sorted (none without a route).
    async fn upstreams(&self, app: &AppId) -> anyhow::Result<Vec<String>> {
        let client = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(5)).build()?;
        let r = client.get(format!("{}/id/otturnaut-app-{app}", self.caddy_admin)).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let route: serde_json::Value = r.error_for_status()?.json().await?;
        // The first handler proxies; a second one only keeps the previous
        // release's upstreams referenced while they drain, and never runs.
        let mut dials = Vec::new();
        for dial in route["handle"][0]["upstreams"].as_array().into_iter().flatten().filter_map(|u| u["dial"].as_str())
        {
            // An upstream file's placeholder (`{file.PATH}`, Caddy 2.8+) stands for the address in it.
            match dial.strip_prefix("{file.").and_then(|d| d.strip_suffix('}')) {
                Some(path) => dials.push(
                    tokio::fs::read_to_string(path)
                        .await
                        .with_context(|| format!("the route dials {dial}, which cannot be read"))?
                        .trim_end()
                        .to_owned(),
                ),
                None => dials.push(dial.to_owned()),
            }
        }
        dials.sort();
        Ok(dials)
    }

    /// `node:port` of the running tasks of the service named `service`, sorted.
    async fn tasks(&self, service: &str, port: u16) -> anyhow::Result<Vec<String>> {
        let hosts = self.swarm.task_hosts(service).await?;
        let mut tasks: Vec<String> = hosts.into_iter().map(|h| format!("{h}:{port}")).collect();
        tasks.sort();
        Ok(tasks)
    }
}

impl Observer {
    pub async fn snapshot(&self, app: &AppId) -> anyhow::Result<Snapshot> {
        let (containers, images, route) =
            tokio::try_join!(self.runtime.list(Some(app)), self.images.list_images(Some(app)), self.caddy.route(app))
                .with_context(|| format!("reading what exists of {app}"))?;
        let mut upstreams = Vec::new();
        let mut route_tasks = None;
        let mut copies = Vec::new();
        if let Some(sight) = &self.swarm {
            copies = sight.registry_copies(app).await?;
            upstreams = sight.upstreams(app).await?;
            let on_route = route.as_ref().and_then(|r| {
                let port: HostPort = r.port;
                containers.iter().find(|c| c.host_port == Some(port)).map(|c| (c.name.clone(), port.get()))
            });
            if let Some((service, port)) = on_route {
                route_tasks = Some(sight.tasks(&service, port).await?);
            }
        }
        let mut containers: Vec<ContainerFact> = containers
            .into_iter()
            .map(|c| ContainerFact {
                name: c.name,
                id: c.id.0,
                deployment: c.deployment.to_string(),
                running: c.running,
                state: c.state,
                port: c.host_port.map(|p| p.get()),
                image: c.image,
            })
            .collect();
        containers.sort();
        let mut images: Vec<ImageFact> = images
            .into_iter()
            .map(|i| {
                let mut tags: Vec<String> = i.tags.iter().map(ToString::to_string).collect();
                tags.sort();
                ImageFact { id: i.id, tags, deployment: i.deployment.to_string() }
            })
            .collect();
        images.extend(copies);
        images.sort();
        let mut files = BTreeSet::new();
        let prefix = format!("{app}-");
        for sub in ["src", "ssh"] {
            for name in entries(&self.work_dir.join(sub)) {
                if name.starts_with(&prefix) {
                    files.insert(format!("{sub}/{name}"));
                }
            }
        }
        files.extend(entries(&self.tmp_dir).into_iter().map(|n| format!("tmp/{n}")));
        Ok(Snapshot {
            containers,
            images,
            route: route.map(|r| (r.port.get(), r.domains.iter().map(ToString::to_string).collect())),
            upstreams,
            route_tasks,
            files,
        })
    }
}

/// The deployment id (a 26-character ULID) in a work-dir entry's name.
fn deployment_in(name: &str) -> Option<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric()).find(|w| w.len() == 26).map(str::to_owned)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}
