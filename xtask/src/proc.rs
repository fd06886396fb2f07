//! Detached daemons and the pid records that let `services down` stop only what `up` started.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The first directory on PATH (plus the sbin dirs, which a non-root PATH often lacks)
/// holding an executable `name`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts `program` in its own session with stdio going to `log`, so it outlives this process,
/// survives the terminal closing and ignores the Ctrl-C aimed at xtask.
pub fn spawn_detached(program: &Path, args: &[String], log: &Path, cwd: &Path) -> Result<Child> {
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    writeln!(
        log_file,
        "\n=== `cargo xtask services up` started {} {} (unix time {now}) ===",
        program.display(),
        args.join(" ")
    )
    .with_context(|| format!("writing log file {}", log.display()))?;

    // setsid(1) execs in place when its caller is not a group leader (true for a fresh child),
    // so the pid we record is the daemon's own. Without it, a new process group still keeps
    // terminal signals away.
    let mut cmd = match which("setsid") {
        Some(setsid) => {
            let mut c = Command::new(setsid);
            c.arg(program);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.process_group(0);
            c
        }
    };
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating log file handle")?)
        .stderr(log_file);
    cmd.spawn().with_context(|| format!("starting {}", program.display()))
}

/// Which process `up` started: the pid plus its kernel start time, so a recycled pid
/// belonging to some unrelated process is never mistaken for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    start_time: u64,
}

impl Record {
    pub fn of(pid: u32) -> Result<Self> {
        let start_time = proc_stat(pid)
            .map(|s| s.start_time)
            .with_context(|| format!("process {pid} vanished right after it was started"))?;
        Ok(Self { pid, start_time })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        fs::write(path, format!("{} {}\n", self.pid, self.start_time))
            .with_context(|| format!("writing pid record {}", path.display()))
    }

    /// `None` when there is no record, or it is unreadable (treated as no record).
    pub fn load(path: &Path) -> Option<Self> {
        let text = fs::read_to_string(path).ok()?;
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// Whether this recorded process still runs `program` (compared by file name).
    pub fn is_alive_as(&self, program: &str) -> bool {
        let Some(stat) = proc_stat(self.pid) else {
            return false;
        };
        if stat.zombie || stat.start_time != self.start_time {
            return false;
        }
        // Right after spawn the process may still be setsid(1), about to exec the daemon.
        let argv0 = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
        let name = Path::new(std::str::from_utf8(argv0).unwrap_or_default())
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        name == program || name == "setsid"
    }

    /// SIGTERM, then SIGKILL to the whole process group if it has not exited after `grace`.
    pub fn stop(&self, program: &str, grace: Duration) -> Result<()> {
        signal(self.pid, "TERM", false)?;
        if self.wait_gone(program, grace) {
            return Ok(());
        }
        signal(self.pid, "KILL", true)?;
        if self.wait_gone(program, Duration::from_secs(5)) {
            return Ok(());
        }
        bail!("{program} (pid {}) is still running after SIGTERM and SIGKILL", self.pid)
    }

    fn wait_gone(&self, program: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.is_alive_as(program) {
                return true;
            }
            sleep(Duration::from_millis(100));
        }
        !self.is_alive_as(program)
    }
}

/// Uses the shell's `kill` builtin: std has no signal API and this crate forbids `unsafe`.
fn signal(pid: u32, sig: &str, whole_group: bool) -> Result<()> {
    let target = if whole_group { format!("-{pid}") } else { pid.to_string() };
    let out = Command::new("sh")
        .args(["-c", "kill -s \"$1\" -- \"$2\"", "sh", sig, &target])
        .stderr(Stdio::piped())
        .output()
        .context("running sh to send a signal")?;
    // A process that exited between our check and the signal is what we wanted anyway.
    if !out.status.success() && proc_stat(pid).is_some_and(|s| !s.zombie) {
        bail!("kill -s {sig} {target} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

struct ProcStat {
    zombie: bool,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    Some(ProcStat { zombie: matches!(*fields.first()?, "Z" | "X"), start_time: fields.get(19)?.parse().ok()? })
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    match fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n    ");
            format!("last lines of {}:\n    {tail}", log.display())
        }
        Err(e) => format!("(no log at {}: {e})", log.display()),
    }
}

/// Serialises concurrent `services up`/`down` runs so two of them never race to start the
/// same daemon. Released when the returned file is dropped.
pub fn lock(state_dir: &Path) -> Result<File> {
    let path = state_dir.join("xtask.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = Record::of(std::process::id()).expect("own stat is readable");
        let exe = std::env::current_exe().expect("current exe");
        let argv0 = std::env::args().next().expect("argv0");
        let name = Path::new(&argv0).file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        assert!(me.is_alive_as(name), "{} should be alive", exe.display());
        let recycled = Record { start_time: me.start_time + 1, ..me };
        assert!(!recycled.is_alive_as(name));
        assert!(!me.is_alive_as("dockerd"));
    }

    #[test]
    fn record_round_trips() {
        let dir = std::env::temp_dir().join(format!("xtask-rec-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("x.pid");
        let r = Record::of(std::process::id()).expect("own stat");
        r.save(&path).expect("save");
        assert_eq!(Record::load(&path), Some(r));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
