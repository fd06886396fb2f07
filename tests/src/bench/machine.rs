//! What the numbers were measured on, bounded external commands, and the
//! `net.ipv4.tcp_migrate_req` switch.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

/// The machine and software versions a report was made on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub memory: String,
    pub kernel: String,
    pub docker: String,
    pub caddy: String,
    pub rustc: String,
    pub load_before: String,
}

impl Machine {
    pub async fn probe() -> Machine {
        let text = |r: Result<String>| r.unwrap_or_else(|e| format!("unknown ({e:#})"));
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: text(meminfo()),
            kernel: text(read_trimmed("/proc/sys/kernel/osrelease")),
            docker: text(
                stdout(&["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"]).await,
            ),
            caddy: text(stdout(&["caddy", "version"]).await),
            rustc: text(stdout(&["rustc", "--version"]).await),
            load_before: load_average(),
        }
    }
}

pub fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// How the local dockerd publishes ports: `"off"` when it runs with
/// `--userland-proxy=false` (or `"userland-proxy": false` in daemon.json):
/// the kernel's NAT carries them; `"on"` (Docker's default): a
/// `docker-proxy` process per published port relays every connection.
pub fn userland_proxy() -> &'static str {
    let off_in_args = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|p| {
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        comm.trim() == "dockerd"
            && std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--userland-proxy=false"))
    });
    let off_in_file = std::fs::read_to_string("/etc/docker/daemon.json")
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v.get("userland-proxy") == Some(&serde_json::Value::Bool(false)));
    if off_in_args || off_in_file { "off" } else { "on" }
}

fn meminfo() -> Result<String> {
    let info = read_trimmed("/proc/meminfo")?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
}

fn read_trimmed(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?.trim().to_owned())
}

/// Runs `argv` with a time limit; its output, whatever the exit status.
pub async fn output(argv: &[&str], limit: Duration) -> Result<Output> {
    let (program, args) = argv.split_first().context("empty command")?;
    let child = Command::new(program).args(args).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    match tokio::time::timeout(limit, child).await {
        Ok(r) => r.with_context(|| format!("running {}", argv.join(" "))),
        Err(_) => bail!("{} did not finish within {limit:?}", argv.join(" ")),
    }
}

/// `argv`'s trimmed stdout; fails (with its stderr) unless it succeeds.
pub async fn stdout(argv: &[&str]) -> Result<String> {
    let out = output(argv, Duration::from_secs(60)).await?;
    if !out.status.success() {
        bail!("{} failed ({}): {}", argv.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req` for the duration of a measurement and
/// puts the previous value back when dropped.
///
/// Caddy 2.6 opens a new listening socket (SO_REUSEPORT) on every config
/// change and closes the old one; connections already queued on the old
/// socket are reset unless the kernel migrates them to the new one, which
/// is what this setting does.
#[derive(Debug)]
pub struct MigrateReq {
    previous: String,
}

impl MigrateReq {
    pub fn current() -> Option<bool> {
        read_trimmed(MIGRATE_REQ).ok().map(|v| v == "1")
    }

    pub fn set(on: bool) -> Result<MigrateReq> {
        let previous = read_trimmed(MIGRATE_REQ)?;
        write(MIGRATE_REQ, if on { "1" } else { "0" })?;
        println!("bench: net.ipv4.tcp_migrate_req = {} (was {previous}; restored afterwards)", u8::from(on));
        Ok(MigrateReq { previous })
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        match write(MIGRATE_REQ, &self.previous) {
            Ok(()) => println!("bench: net.ipv4.tcp_migrate_req restored to {}", self.previous),
            Err(e) => eprintln!("bench: could not restore net.ipv4.tcp_migrate_req to {}: {e:#}", self.previous),
        }
    }
}

fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new(path), value).with_context(|| format!("writing {value} to {path} (needs root)"))
}
