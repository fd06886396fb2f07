// Long file: the cluster's network, daemons, registry, swarm and teardown must stay in step with each other.
//! `services up --swarm N`: a Docker Swarm cluster of N nodes on this one machine, for the
//! Swarm runtime's tests.
//!
//! Each node is a network namespace with its own `dockerd` (and that daemon's own containerd);
//! a hub namespace holds the Linux bridge that joins them (a bridge on the host would send node
//! traffic through the host's FORWARD chain, which Docker's own rules drop). The host reaches
//! the nodes through one veth, and serves the registry the nodes pull from on that veth's
//! address. Addresses come from [`SUBNET`], used only inside these namespaces.
//!
//! The kernel here has no IPVS, so the routing mesh and VIP services do not work: services use
//! endpoint mode `dnsrr` and host-mode published ports. What the tests need to find the cluster
//! is written to `<state>/swarm/cluster.json`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::install::is_root;
use crate::proc::{Record, log_tail, spawn_detached, which};
use crate::services::Env;

/// The cluster's private /24: 10.213.7.1 is the host, 10.213.7.(10+i) node i.
pub const SUBNET: &str = "10.213.7.0/24";
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 1);
/// Where the registry listens: on the host's end of the cluster veth, so only the nodes (and
/// this host) reach it.
pub const REGISTRY: SocketAddr = SocketAddr::V4(SocketAddrV4::new(HOST_ADDR, 5000));
/// Names of the namespaces and links; short, since Linux caps interface names at 15 bytes.
const HUB: &str = "ott-swarm-hub";
const BRIDGE: &str = "ottbr0";
const HOST_LINK: &str = "ottswarm0";
const HOST_PEER: &str = "ottswarm0-hub";
/// Execution roots and sockets: under /run (a tmpfs), so a reboot never leaves stale ones.
const RUN_DIR: &str = "/run/otturnaut-swarm";
/// The most nodes one machine is asked to run (their addresses are 10.213.7.11 and up).
const MAX_NODES: u8 = 9;
/// Every wait has one: a daemon, the registry, a join, a service that never comes up.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const SMOKE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The smoke check's service and image, named so nothing else is ever touched.
const SMOKE: &str = "otturnaut-smoke";
const SMOKE_PORT: u16 = 18999;

/// One node of the cluster.
#[derive(Debug, Clone)]
struct Node {
    index: u8,
}

impl Node {
    fn name(&self) -> String {
        format!("ott-swarm-n{}", self.index)
    }
    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 7, 10 + self.index)
    }
    /// The node's end of its veth pair lives in the hub, attached to the bridge.
    fn hub_link(&self) -> String {
        format!("ottsw-n{}", self.index)
    }
    fn socket(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("n{}.sock", self.index))
    }
    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    fn exec_root(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("n{}", self.index))
    }
    fn data_root(&self, env: &Env) -> PathBuf {
        dir(env).join(format!("n{}", self.index))
    }
    fn record(&self, env: &Env) -> PathBuf {
        env.state.join("run").join(format!("swarm-n{}.pid", self.index))
    }
    fn log(&self, env: &Env) -> PathBuf {
        env.state.join("logs").join(format!("swarm-n{}.log", self.index))
    }
}

fn dir(env: &Env) -> PathBuf {
    env.state.join("swarm")
}

fn registry_record(env: &Env) -> PathBuf {
    env.state.join("run").join("swarm-registry.pid")
}

fn registry_log(env: &Env) -> PathBuf {
    env.state.join("logs").join("swarm-registry.log")
}

/// Where the tests read the cluster's description.
pub fn cluster_file(env: &Env) -> PathBuf {
    dir(env).join("cluster.json")
}

/// Builds the cluster from nothing (after [`down`]): network, daemons, registry, swarm, and a
/// smoke service answering on every node, which is then removed.
pub fn up(env: &Env, nodes: u8) -> Result<()> {
    if !(1..=MAX_NODES).contains(&nodes) {
        bail!("--swarm takes 1 to {MAX_NODES} nodes, not {nodes}");
    }
    if !is_root() {
        bail!("a swarm cluster needs network namespaces and daemons only root can make: run as root");
    }
    for bin in ["ip", "nsenter", "unshare", "dockerd", "docker", "docker-registry", "umount"] {
        which(bin).ok_or_else(|| anyhow!("{bin} is not installed (`cargo xtask services up` installs it)"))?;
    }
    env.prepare()?;
    down(env)?;
    let began = Instant::now();
    let nodes: Vec<Node> = (1..=nodes).map(|index| Node { index }).collect();
    network(&nodes)?;
    fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let mut started = Vec::new();
    for node in &nodes {
        started.push((node, start_daemon(env, node)?));
    }
    let registry = start_registry(env)?;
    for (node, rec) in &started {
        wait_daemon(env, node, rec)?;
    }
    wait_registry(env, &registry)?;
    let daemons = began.elapsed();
    form_swarm(&nodes)?;
    let formed = began.elapsed();
    write_cluster_file(env, &nodes)?;
    let smoke = smoke(&nodes)?;
    println!(
        "swarm       {} nodes up in {:.1}s (daemons and registry {:.1}s, swarm {:.1}s, a {}-replica service \
         answering on every node {:.1}s later); manager {}, registry {REGISTRY}, cluster {}",
        nodes.len(),
        began.elapsed().as_secs_f64(),
        daemons.as_secs_f64(),
        (formed - daemons).as_secs_f64(),
        nodes.len(),
        smoke.as_secs_f64(),
        nodes[0].host(),
        cluster_file(env).display()
    );
    println!("swarm       idle memory of the daemons (PSS): {} MiB", memory_mib(&started));
    Ok(())
}

/// Reuses a cluster of `nodes` nodes that is up (its description written, every node Ready),
/// which other test runs may be using; builds one with [`up`] otherwise.
pub fn ensure_up(env: &Env, nodes: u8) -> Result<()> {
    let manager = Node { index: 1 };
    let ready = cluster_file(env).exists()
        && docker(&manager, &["node", "ls", "--format", "{{.Status}}"])
            .is_ok_and(|out| out.lines().filter(|l| l.trim() == "Ready").count() == usize::from(nodes));
    if ready {
        println!("swarm       {nodes}-node cluster already up (manager {}): reused", manager.host());
        return Ok(());
    }
    up(env, nodes)
}

/// Removes the cluster: stops the daemons and the registry by their recorded pids, unmounts
/// what the daemons left mounted, deletes the namespaces and the nodes' data. Idempotent.
pub fn down(env: &Env) -> Result<()> {
    let began = Instant::now();
    let mut failures = Vec::new();
    let records = recorded_nodes(env);
    // Stop every daemon at once: each takes seconds to shut down its containers.
    for (_, rec) in &records {
        if rec.is_alive_as("dockerd") {
            let _ = Command::new("kill").args(["-s", "TERM", &rec.pid.to_string()]).status();
        }
    }
    for (path, rec) in records {
        match stop_if_alive(rec, "dockerd") {
            Ok(()) => {
                let _ = fs::remove_file(&path);
            }
            Err(e) => failures.push(format!("{}: {e:#}", path.display())),
        }
    }
    if let Some(rec) = Record::load(&registry_record(env)) {
        match stop_if_alive(rec, "docker-registry") {
            Ok(()) => {
                let _ = fs::remove_file(registry_record(env));
            }
            Err(e) => failures.push(format!("registry: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("could not stop the swarm daemons (left everything else in place):\n{}", failures.join("\n"));
    }
    unmount_under(&[Path::new(RUN_DIR), &dir(env)])?;
    for ns in namespaces()? {
        run(Command::new("ip").args(["netns", "delete", &ns]))?;
    }
    if link_exists(HOST_LINK) {
        run(Command::new("ip").args(["link", "delete", HOST_LINK]))?;
    }
    for path in [PathBuf::from(RUN_DIR), dir(env)] {
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    println!("swarm       down in {:.1}s", began.elapsed().as_secs_f64());
    Ok(())
}

/// One line for `services status`: up (every recorded daemon alive and answering) or down.
pub fn status(env: &Env) -> Option<String> {
    let records = recorded_nodes(env);
    if records.is_empty() {
        return None;
    }
    let alive = records.iter().filter(|(_, r)| r.is_alive_as("dockerd")).count();
    Some(format!(
        "{:<11} {:<5} {} of {} node daemons alive, registry {REGISTRY}, cluster {}",
        "swarm",
        if alive == records.len() { "up" } else { "down" },
        alive,
        records.len(),
        cluster_file(env).display()
    ))
}

fn recorded_nodes(env: &Env) -> Vec<(PathBuf, Record)> {
    let Ok(entries) = fs::read_dir(env.state.join("run")) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, Record)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("swarm-n")))
        .filter_map(|p| Record::load(&p).map(|r| (p, r)))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn stop_if_alive(rec: Record, program: &str) -> Result<()> {
    if rec.is_alive_as(program) { rec.stop(program, STOP_GRACE) } else { Ok(()) }
}

/// The hub with its bridge, the host's veth into it, and one namespace per node.
fn network(nodes: &[Node]) -> Result<()> {
    let ip = |args: &[&str]| run(Command::new("ip").args(args));
    let host = format!("{HOST_ADDR}/24");
    ip(&["netns", "add", HUB])?;
    ip(&["-n", HUB, "link", "set", "lo", "up"])?;
    ip(&["-n", HUB, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", HUB, "link", "set", BRIDGE, "up"])?;
    ip(&["link", "add", HOST_LINK, "type", "veth", "peer", "name", HOST_PEER, "netns", HUB])?;
    ip(&["-n", HUB, "link", "set", HOST_PEER, "master", BRIDGE, "up"])?;
    ip(&["addr", "add", &host, "dev", HOST_LINK])?;
    ip(&["link", "set", HOST_LINK, "up"])?;
    for node in nodes {
        let (ns, link) = (node.name(), node.hub_link());
        let addr = format!("{}/24", node.addr());
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &link, "netns", HUB, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["-n", HUB, "link", "set", &link, "master", BRIDGE, "up"])?;
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &HOST_ADDR.to_string()])?;
    }
    Ok(())
}

/// `dockerd` in the node's network namespace (`nsenter`, not `ip netns exec`, which remounts
/// /sys and hides the cgroup tree) and its own UTS namespace (so the node has its own
/// hostname, which Swarm shows), with every path and network of its own.
fn start_daemon(env: &Env, node: &Node) -> Result<Record> {
    let data = node.data_root(env);
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let args: Vec<String> = [
        "--uts".to_owned(),
        "--".into(),
        "nsenter".into(),
        format!("--net=/run/netns/{}", node.name()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        r#"hostname "$0" && exec dockerd "$@""#.into(),
        node.name(),
        format!("--data-root={}", data.display()),
        format!("--exec-root={}", node.exec_root().display()),
        format!("--pidfile={}/n{}.pid", RUN_DIR, node.index),
        format!("--host={}", node.host()),
        format!("--bip=172.30.{}.1/24", node.index),
        format!("--cgroup-parent=/{}", node.name()),
        format!("--insecure-registry={REGISTRY}"),
    ]
    .into();
    let unshare = which("unshare").ok_or_else(|| anyhow!("unshare is not installed"))?;
    let child = spawn_detached(&unshare, &args, &node.log(env), &env.state)?;
    // setsid, unshare, nsenter and sh each exec the next: the pid is dockerd's.
    let rec = Record::of(child.id())?;
    rec.save(&node.record(env))?;
    Ok(rec)
}

fn wait_daemon(env: &Env, node: &Node, rec: &Record) -> Result<()> {
    wait(DAEMON_TIMEOUT, &format!("dockerd of {} at {}", node.name(), node.host()), || {
        // Until the last exec, the process is still unshare, nsenter or sh.
        if !["dockerd", "unshare", "nsenter", "sh"].iter().any(|p| rec.is_alive_as(p)) {
            bail!("dockerd of {} (pid {}) exited\n  {}", node.name(), rec.pid, log_tail(&node.log(env), 20));
        }
        let r = crate::http::get_unix(&node.socket(), "/_ping", Duration::from_secs(2))?;
        if r.status != 200 {
            bail!("GET /_ping answered {}", r.status);
        }
        Ok(())
    })
    .with_context(|| log_tail(&node.log(env), 20))
}

/// Debian's `docker-registry` (the package does not start it), storing under the state dir.
fn start_registry(env: &Env) -> Result<Record> {
    let root = dir(env).join("registry");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let config = dir(env).join("registry.yml");
    let text = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY}\n",
        root.display()
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let bin = which("docker-registry").ok_or_else(|| anyhow!("docker-registry is not installed"))?;
    let child = spawn_detached(&bin, &["serve".into(), config.display().to_string()], &registry_log(env), &env.state)?;
    let rec = Record::of(child.id())?;
    rec.save(&registry_record(env))?;
    Ok(rec)
}

fn wait_registry(env: &Env, rec: &Record) -> Result<()> {
    wait(DAEMON_TIMEOUT, &format!("the registry at http://{REGISTRY}/v2/"), || {
        if !rec.is_alive_as("docker-registry") {
            bail!("the registry (pid {}) exited\n  {}", rec.pid, log_tail(&registry_log(env), 20));
        }
        let r = crate::http::get_tcp(REGISTRY, "/v2/", Duration::from_secs(2))?;
        if r.status != 200 {
            bail!("GET /v2/ answered {}", r.status);
        }
        Ok(())
    })
}

/// `swarm init` on the first node, `swarm join` on the others, with explicit addresses (each
/// daemon would otherwise guess one), then waits until every node is Ready.
fn form_swarm(nodes: &[Node]) -> Result<()> {
    let manager = &nodes[0];
    let listen = |n: &Node| format!("{}:2377", n.addr());
    docker(
        manager,
        &["swarm", "init", "--advertise-addr", &manager.addr().to_string(), "--listen-addr", &listen(manager)],
    )?;
    let token = docker(manager, &["swarm", "join-token", "-q", "worker"])?;
    for node in &nodes[1..] {
        docker(
            node,
            &[
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                &node.addr().to_string(),
                "--listen-addr",
                &listen(node),
                &listen(manager),
            ],
        )?;
    }
    wait(DAEMON_TIMEOUT, "every node Ready", || {
        let out = docker(manager, &["node", "ls", "--format", "{{.Status}}"])?;
        let ready = out.lines().filter(|l| l.trim() == "Ready").count();
        if ready != nodes.len() {
            bail!("{ready} of {} nodes Ready", nodes.len());
        }
        Ok(())
    })
}

/// Builds an image FROM scratch (busybox httpd) on the manager, pushes it to the registry and
/// runs it as a service the way the Swarm runtime does (dnsrr, host-mode port, one task per
/// node); succeeds once every node answers, then removes it. Returns how long that took.
fn smoke(nodes: &[Node]) -> Result<Duration> {
    let manager = &nodes[0];
    let ctx = tempdir()?;
    fs::copy("/bin/busybox", ctx.join("busybox")).context("copying /bin/busybox (busybox-static) into the image")?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )?;
    fs::write(ctx.join("index.html"), "smoke\n")?;
    let image = format!("{REGISTRY}/{SMOKE}:1");
    let began = Instant::now();
    let built = docker(manager, &["build", "-q", "-t", &image, &ctx.display().to_string()])
        .and_then(|_| docker(manager, &["push", "-q", &image]));
    let _ = fs::remove_dir_all(&ctx);
    built?;
    let replicas = nodes.len().to_string();
    let publish = format!("mode=host,target=8080,published={SMOKE_PORT}");
    let create = [
        "service",
        "create",
        "--detach",
        "--name",
        SMOKE,
        "--replicas",
        &replicas,
        "--replicas-max-per-node",
        "1",
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        &publish,
        &image,
    ];
    docker(manager, &create)?;
    let answered = wait(SMOKE_TIMEOUT, "the smoke service answering on every node", || {
        for node in nodes {
            let addr = SocketAddr::V4(SocketAddrV4::new(node.addr(), SMOKE_PORT));
            let r = crate::http::get_tcp(addr, "/", Duration::from_secs(1)).with_context(|| format!("GET {addr}"))?;
            if r.status != 200 {
                bail!("GET http://{addr}/ answered {}", r.status);
            }
        }
        Ok(())
    });
    let took = began.elapsed();
    let removed = docker(manager, &["service", "rm", SMOKE]);
    answered?;
    removed?;
    Ok(took)
}

fn write_cluster_file(env: &Env, nodes: &[Node]) -> Result<()> {
    let description = serde_json::json!({
        "manager": nodes[0].host(),
        "registry": REGISTRY.to_string(),
        "subnet": SUBNET,
        "nodes": nodes.iter().map(|n| serde_json::json!({
            "name": n.name(),
            "address": n.addr().to_string(),
            "docker_host": n.host(),
        })).collect::<Vec<_>>(),
    });
    let path = cluster_file(env);
    fs::write(&path, format!("{description:#}\n")).with_context(|| format!("writing {}", path.display()))
}

/// Proportional set size of each daemon and its containerd, summed: what the cluster costs
/// this machine (shared libraries counted once).
fn memory_mib(started: &[(&Node, Record)]) -> u64 {
    let pss = |pid: u32| -> u64 {
        fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            })
            .unwrap_or(0)
    };
    let children = |pid: u32| -> Vec<u32> {
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let kib: u64 = started.iter().map(|(_, r)| pss(r.pid) + children(r.pid).into_iter().map(pss).sum::<u64>()).sum();
    kib / 1024
}

/// Our namespaces that exist (from an earlier `up`, complete or not).
fn namespaces() -> Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("ott-swarm-"))
        .map(str::to_owned)
        .collect())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Unmounts, deepest first, whatever the daemons left mounted under `roots` (container
/// network namespaces, overlay layers of containers a killed daemon did not stop).
fn unmount_under(roots: &[&Path]) -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| roots.iter().any(|r| Path::new(m).starts_with(r)))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        if run(Command::new("umount").arg(m)).is_err() {
            run(Command::new("umount").args(["--lazy", m]))?;
        }
    }
    Ok(())
}

fn docker(node: &Node, args: &[&str]) -> Result<String> {
    run(Command::new("docker").arg("--host").arg(node.host()).args(args))
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`] (a stuck `docker` call would
/// otherwise wait forever), returning its stdout; fails with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    // Read both pipes while waiting, so a chatty command cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {}s (killed)", COMMAND_TIMEOUT.as_secs());
        }
        sleep(Duration::from_millis(20));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("{shown} failed ({status}): {}", err.trim());
    }
    Ok(out)
}

/// Polls `probe` until it succeeds or `timeout` passes, failing with its last error.
fn wait(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!("waiting {}s for {what}", timeout.as_secs())));
        }
        sleep(Duration::from_millis(100));
    }
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("otturnaut-swarm-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
