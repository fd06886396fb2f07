//! Restarting the Docker daemon for the `--docker-restart` cases: only the
//! dockerd whose pid record `cargo xtask services up` wrote, started again
//! with its own command line and working directory, detached, logging where it
//! did, and recorded the same way (`PID STARTTIME`) so `services down` still
//! finds it. The harness needs nothing from xtask for this.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::check::Verdict;

/// The running dockerd that `services up` recorded, and how to start it again.
#[derive(Debug)]
pub struct Dockerd {
    pid: u32,
    argv: Vec<OsString>,
    cwd: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    /// The recorded dockerd; fails if there is no record or it is not running.
    pub fn recorded() -> anyhow::Result<Dockerd> {
        let state =
            PathBuf::from(std::env::var("OTTURNAUT_DEV_STATE").unwrap_or_else(|_| "/var/lib/otturnaut-dev".into()));
        let pid_file = state.join("run/docker.pid");
        let record = std::fs::read_to_string(&pid_file).with_context(|| {
            format!(
                "{} is missing: dockerd was not started by `cargo xtask services up`, so it is not restarted",
                pid_file.display()
            )
        })?;
        // The record is `PID STARTTIME` (so a recycled pid is never taken for ours).
        let mut fields = record.split_whitespace();
        let pid: u32 = fields.next().and_then(|p| p.parse().ok()).context("the dockerd pid record has no pid")?;
        if fields.next().and_then(|t| t.parse().ok()) != start_time(pid) {
            bail!("dockerd (pid {pid} in {}) is not running", pid_file.display());
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).context("reading dockerd's command line")?;
        let argv: Vec<OsString> =
            cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| OsString::from_vec(a.to_vec())).collect();
        if argv.is_empty() {
            bail!("dockerd (pid {pid}) has an empty command line");
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).context("reading dockerd's working directory")?;
        Ok(Dockerd { pid, argv, cwd, pid_file, log: state.join("logs/docker.log") })
    }

    /// SIGTERM, then waits up to a minute for it to exit.
    pub async fn stop(&self, v: &mut Verdict) {
        let pid = self.pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while PathBuf::from(format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            v.problem(format!("dockerd (pid {pid}) did not stop: the daemon was not restarted"));
        }
    }

    /// Starts it again as it was started, records it, and waits until Docker answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).context("opening dockerd's log")?;
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {:?}", self.argv[0]))?;
        self.pid = child.id();
        let started = start_time(self.pid).context("dockerd exited right after it was started")?;
        std::fs::write(&self.pid_file, format!("{} {started}\n", self.pid))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("docker").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status()?.success() {
            if Instant::now() > deadline {
                bail!(
                    "the restarted dockerd (pid {}) did not answer within 60 s; see {}",
                    self.pid,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

/// Field 22 of `/proc/PID/stat`, the process's start time (after the command
/// name, which is in parentheses and may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}
