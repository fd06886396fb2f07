//! Deploy timing: per-step breakdown of redeploys (prebuilt image and git),
//! the time the agent spends awaiting the outside world, and a shell-script
//! baseline doing the same steps with the docker CLI and curl.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::{DeployEvent, DeploySpec, EventSink, Step};
use otturnaut_steps::Strategy as _;
use serde_json::json;

use super::app::{GitServer, HEALTH_INTERVAL, IMAGE, Rig, app_id, git_spec, image_spec};
use super::caddy::PrivateCaddy;
use super::machine::output;
use super::timing::Service;
use crate::caddy_proc::free_port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Git,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => "prebuilt image",
            Kind::Git => "git (clone + build)",
        }
    }
}

/// One timed agent deploy.
#[derive(Debug, Clone)]
pub struct AgentRun {
    pub wall: Duration,
    /// Wall time with at least one external call pending.
    pub awaited: Duration,
    pub per_service: BTreeMap<Service, (Duration, u32)>,
    pub steps: BTreeMap<Step, Duration>,
}

impl AgentRun {
    pub fn overhead(&self) -> Duration {
        self.wall.saturating_sub(self.awaited)
    }
}

/// One run of the shell baseline.
#[derive(Debug, Clone)]
pub struct ShellRun {
    pub wall: Duration,
    pub steps: Vec<(String, Duration)>,
}

#[derive(Debug, Clone)]
pub struct Timings {
    pub kind: Kind,
    pub agent: Vec<AgentRun>,
    pub shell: Vec<ShellRun>,
}

pub async fn run(rig: &Rig, kind: Kind, runs: u32, git: &GitServer) -> Result<Timings> {
    let app = app_id(match kind {
        Kind::Image => "timing-image",
        Kind::Git => "timing-git",
    });
    let _ = rig.undeploy(&app).await;
    let spec = |v: &str| -> Result<DeploySpec> {
        Ok(match kind {
            Kind::Image => image_spec(&app, v),
            Kind::Git => git_spec(&app, v, git.repo()?),
        })
    };
    // The first deploy makes the later ones redeploys, with a release to retire.
    rig.strategy.execute(spec("t0")?, &EventSink::discard()).await.with_context(|| format!("first deploy of {app}"))?;
    let mut shell = Shell::start(&rig.caddy, kind, git).await?;

    let mut timings = Timings { kind, agent: Vec::new(), shell: Vec::new() };
    // Interleaved, so drift in the machine's load hits both alike.
    for i in 1..=runs {
        let (events, mut rx) = EventSink::channel();
        rig.clock.reset();
        let t0 = Instant::now();
        let done = rig.strategy.execute(spec(&format!("t{i}"))?, &events).await;
        let wall = t0.elapsed();
        let awaited = rig.clock.snapshot();
        done.with_context(|| format!("timed deploy {i} of {app}"))?;
        let mut steps = BTreeMap::new();
        while let Ok(event) = rx.try_recv() {
            if let DeployEvent::StepFinished { step, elapsed_ms, .. } = event {
                steps.insert(step, Duration::from_millis(elapsed_ms));
            }
        }
        timings.agent.push(AgentRun { wall, awaited: awaited.union, per_service: awaited.per_service, steps });
        timings.shell.push(shell.deploy(i).await?);
    }
    shell.cleanup().await;
    rig.undeploy(&app).await?;
    Ok(timings)
}

/// The baseline: what a careful shell script does, step by step, timed with
/// bash's `$EPOCHREALTIME` (no fork per timestamp).
const SCRIPT: &str = r#"
set -eu
now() { echo "${EPOCHREALTIME/./}"; }
step() { echo "step $1 $(( $(now) - $2 ))"; }
t=$(now)
if [ -n "$GIT_URL" ]; then
  rm -rf "$CHECKOUT"
  git clone -q --depth 1 "$GIT_URL" "$CHECKOUT"
  step clone "$t"; t=$(now)
  docker build -q -t "$IMAGE" "$CHECKOUT" >/dev/null
  rm -rf "$CHECKOUT"
  step build "$t"; t=$(now)
fi
docker run -d --init --restart unless-stopped --name "$NEW" -p "127.0.0.1:$PORT:8080" \
  -e "APP_VERSION=$VERSION" "$IMAGE" >/dev/null
step run "$t"; t=$(now)
i=0
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz"; do
  i=$((i + 1)); [ "$i" -lt 400 ] || { echo "never healthy" >&2; exit 1; }
  sleep "$INTERVAL"
done
step health "$t"; t=$(now)
curl -fsS -o /dev/null -X PATCH -H 'Content-Type: application/json' -d "$ROUTE" "$ADMIN/id/$ROUTE_ID"
step switch "$t"; t=$(now)
docker stop -t 10 "$OLD" >/dev/null
step stop "$t"; t=$(now)
docker rm "$OLD" >/dev/null
if [ -n "$OLD_IMAGE" ]; then docker rmi "$OLD_IMAGE" >/dev/null; fi
step remove "$t"
"#;

const SHELL_ROUTE_ID: &str = "bench-shell-route";
const SHELL_HOST: &str = "bench-shell.bench.test";

/// The baseline's app: containers named `otturnaut-benchsh-N`, its own
/// route (not one of ours) in the same Caddy server.
struct Shell<'a> {
    caddy: &'a PrivateCaddy,
    kind: Kind,
    git_url: String,
    /// The container (and, for git, image) now live.
    live: (String, String),
    dir: tempfile::TempDir,
}

impl<'a> Shell<'a> {
    async fn start(caddy: &'a PrivateCaddy, kind: Kind, git: &GitServer) -> Result<Shell<'a>> {
        let dir = tempfile::Builder::new().prefix("otturnaut-bench-shell-").tempdir()?;
        remove_shell_leftovers().await;
        let port = free_port();
        let name = "otturnaut-benchsh-0".to_owned();
        // The first release runs the fixture image even for git: only
        // the timed deploys need to clone and build.
        let image = IMAGE.to_owned();
        let started = output(
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--name",
                &name,
                "-p",
                &format!("127.0.0.1:{port}:8080"),
                "-e",
                "APP_VERSION=s0",
                &image,
            ],
            Duration::from_secs(60),
        )
        .await?;
        if !started.status.success() {
            bail!("starting the baseline's first container: {}", String::from_utf8_lossy(&started.stderr));
        }
        let routes = "/config/apps/http/servers/otturnaut/routes";
        caddy.call(reqwest::Method::POST, routes, Some(&shell_route(port))).await?;
        Ok(Shell { caddy, kind, git_url: git.url.clone(), live: (name, String::new()), dir })
    }

    async fn deploy(&mut self, i: u32) -> Result<ShellRun> {
        let port = free_port();
        let new = format!("otturnaut-benchsh-{i}");
        let image = match self.kind {
            Kind::Image => IMAGE.to_owned(),
            Kind::Git => format!("otturnaut-benchsh:{i}"),
        };
        let version = format!("s{i}");
        let checkout = self.dir.path().join("checkout");
        let route = shell_route(port).to_string();
        let interval = format!("{:.3}", HEALTH_INTERVAL.as_secs_f64());
        let port = port.to_string();
        let env: [(&str, &str); 12] = [
            ("GIT_URL", if self.kind == Kind::Git { &self.git_url } else { "" }),
            ("CHECKOUT", path_str(&checkout)),
            ("IMAGE", &image),
            ("NEW", &new),
            ("PORT", &port),
            ("VERSION", &version),
            ("INTERVAL", &interval),
            ("ROUTE", &route),
            ("ADMIN", &self.caddy.admin_url),
            ("ROUTE_ID", SHELL_ROUTE_ID),
            ("OLD", &self.live.0),
            ("OLD_IMAGE", &self.live.1),
        ];
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c").arg(SCRIPT).kill_on_drop(true).stdin(std::process::Stdio::null());
        cmd.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .context("the baseline script did not finish within 120 s")??;
        let wall = t0.elapsed();
        if !out.status.success() {
            bail!("the baseline script failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let steps = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("step ")?.split_whitespace();
                let name = parts.next()?.to_owned();
                let micros: u64 = parts.next()?.parse().ok()?;
                Some((name, Duration::from_micros(micros)))
            })
            .collect();
        self.live = (new, if self.kind == Kind::Git { image } else { String::new() });
        // The switch took: the new version answers through Caddy.
        let answer = crate::caddy_proc::client()
            .get(format!("http://{}/version", self.caddy.listen))
            .header("Host", SHELL_HOST)
            .send()
            .await?
            .text()
            .await?;
        if answer.trim() != version {
            bail!("after the baseline's deploy {i}, Caddy answered {answer:?}, not {version}");
        }
        Ok(ShellRun { wall, steps })
    }

    async fn cleanup(self) {
        let _ = self.caddy.call(reqwest::Method::DELETE, &format!("/id/{SHELL_ROUTE_ID}"), None).await;
        remove_shell_leftovers().await;
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn shell_route(port: u16) -> serde_json::Value {
    json!({
        "@id": SHELL_ROUTE_ID,
        "match": [{ "host": [SHELL_HOST] }],
        "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": format!("127.0.0.1:{port}") }] }],
        "terminal": true,
    })
}

/// Containers and images of the baseline, from this run or an interrupted one.
async fn remove_shell_leftovers() {
    let limit = Duration::from_secs(60);
    if let Ok(out) = output(&["docker", "ps", "-aq", "--filter", "name=otturnaut-benchsh-"], limit).await {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let mut argv = vec!["docker", "rm", "-f"];
            argv.extend(ids.iter().map(String::as_str));
            let _ = output(&argv, limit).await;
        }
    }
    // By tag, never by id: a build of the same context has the fixture
    // image's id, and removing by id would take that image with it.
    let tags = ["docker", "images", "otturnaut-benchsh", "--format", "{{.Repository}}:{{.Tag}}"];
    if let Ok(out) = output(&tags, limit).await {
        let tags: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
        if !tags.is_empty() {
            let mut argv = vec!["docker", "rmi"];
            argv.extend(tags.iter().map(String::as_str));
            let _ = output(&argv, limit).await;
        }
    }
}
