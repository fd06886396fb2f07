//! Driving the `otturnaut` binary: spawn it with `--json`, watch its event
//! stream as it comes, signal or SIGKILL it at a chosen moment, collect how
//! it ended.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use otturnaut_steps::ResidueKind;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The binary and the global flags that point it at the harness's world.
#[derive(Clone, Debug)]
pub struct Cli {
    pub bin: PathBuf,
    pub global: Vec<String>,
    /// `TMPDIR` of every run: whatever the CLI leaves in temp shows up here.
    pub tmp_dir: PathBuf,
    /// More environment for every run (`DOCKER_HOST` of a cluster's manager).
    pub env: Vec<(String, String)>,
}

impl Cli {
    fn command(&self, args: &[String], faults: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.global).args(args);
        cmd.env("TMPDIR", &self.tmp_dir).env("NO_COLOR", "1").env_remove("OTTURNAUT_FAULTS");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(plan) = faults {
            cmd.env("OTTURNAUT_FAULTS", plan);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    pub fn spawn(&self, args: &[String], faults: Option<&str>) -> anyhow::Result<Running> {
        let started = Instant::now();
        let mut child = self
            .command(args, faults)
            .spawn()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))?;
        let pid = child.id().context("the CLI exited before it could be watched")?;
        let stdout = child.stdout.take().context("CLI stdout")?;
        let mut stderr = child.stderr.take().context("CLI stderr")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw_lines = raw.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                lock(&raw_lines).push(line.clone());
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        let stderr_task = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(Running {
            args: args.join(" "),
            child,
            pid,
            rx,
            seen: Vec::new(),
            raw,
            reader,
            stderr_task,
            started,
            killed: false,
        })
    }

    /// Runs a command to its end (SIGKILL after `limit`).
    pub async fn run(&self, args: &[String], faults: Option<&str>, limit: Duration) -> anyhow::Result<Outcome> {
        Ok(self.spawn(args, faults)?.finish(limit).await)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CLI process in flight.
#[derive(Debug)]
pub struct Running {
    args: String,
    child: Child,
    pub pid: u32,
    rx: mpsc::UnboundedReceiver<Value>,
    /// Every JSON line received so far through [`Running::wait_for`].
    pub seen: Vec<Value>,
    raw: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
    stderr_task: JoinHandle<String>,
    started: Instant,
    killed: bool,
}

impl Running {
    /// Waits for the first line matching `pred` (lines before it are kept in
    /// `seen`). `None` if the process ended or `limit` passed first.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends `signal` (`INT`, `TERM`, …) with `kill(1)`: the workspace
    /// forbids `unsafe`, so no `libc::kill`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .context("running kill(1)")?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed: {status}", self.pid);
        Ok(())
    }

    /// SIGKILL, at once: the crash trials' power cut.
    pub fn kill(&mut self) {
        self.killed = true;
        let _ = self.child.start_kill();
    }

    pub async fn finish(mut self, limit: Duration) -> Outcome {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child.wait().await.ok();
                None
            }
        };
        let timed_out = status.is_none();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
        let stderr = tokio::time::timeout(Duration::from_secs(5), self.stderr_task).await.ok().and_then(Result::ok);
        let raw = lock(&self.raw).clone();
        Outcome::new(
            self.args,
            status,
            timed_out,
            self.killed,
            self.seen,
            raw,
            stderr.unwrap_or_default(),
            self.started.elapsed(),
        )
    }
}

/// A residue entry as the CLI reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residue {
    /// `None` for a kind this harness does not know (it then covers nothing).
    pub kind: Option<ResidueKind>,
    pub what: String,
    pub in_doubt: bool,
}

/// How a CLI run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub args: String,
    /// The exit code; `None` if killed by a signal or timed out.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub killed: bool,
    pub events: Vec<Value>,
    /// The final `{"result": …}` object, if it printed one.
    pub result: Option<Value>,
    /// Stdout lines that are not JSON (there should be none).
    pub stray_stdout: Vec<String>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    #[allow(clippy::too_many_arguments)]
    fn new(
        args: String,
        status: Option<ExitStatus>,
        timed_out: bool,
        killed: bool,
        lines: Vec<Value>,
        raw: Vec<String>,
        stderr: String,
        elapsed: Duration,
    ) -> Outcome {
        let result = lines.iter().rev().find(|v| v.get("result").is_some()).cloned();
        let events = lines.into_iter().filter(|v| v.get("result").is_none()).collect();
        let stray_stdout = raw.into_iter().filter(|l| serde_json::from_str::<Value>(l).is_err()).collect();
        Outcome {
            args,
            code: status.and_then(|s| s.code()),
            timed_out,
            killed,
            events,
            result,
            stray_stdout,
            stderr,
            elapsed,
        }
    }

    pub fn field(&self, key: &str) -> Option<&Value> {
        self.result.as_ref().and_then(|r| r.get(key)).filter(|v| !v.is_null())
    }

    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.field(key).and_then(Value::as_str)
    }

    pub fn error(&self) -> String {
        self.str_field("error").unwrap_or_default().to_owned()
    }

    /// The deployment this run created (from its `started` event or result).
    pub fn deployment(&self) -> Option<String> {
        self.events
            .iter()
            .find(|e| e.get("event").and_then(Value::as_str) == Some("started"))
            .and_then(|e| e.get("deployment"))
            .and_then(Value::as_str)
            .or_else(|| self.str_field("deployment"))
            .map(str::to_owned)
    }

    pub fn residue(&self) -> Vec<Residue> {
        self.field("residue")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|r| Residue {
                        kind: r.get("kind").and_then(|k| serde_json::from_value(k.clone()).ok()),
                        what: r.get("what").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        in_doubt: r.get("in_doubt").and_then(Value::as_bool).unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.get("event").and_then(Value::as_str) == Some("warning"))
            .filter_map(|e| e.get("message").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    /// Everything it printed, for searching (e.g. for "injected fault").
    pub fn text(&self) -> String {
        let mut all: Vec<String> = self.events.iter().map(Value::to_string).collect();
        all.extend(self.result.iter().map(Value::to_string));
        all.push(self.stderr.clone());
        all.join("\n")
    }

    /// One line for a report: how it ended and why.
    pub fn summary(&self) -> String {
        let how = match (self.code, self.timed_out, self.killed) {
            (_, true, _) => "timed out (killed by the harness)".to_owned(),
            (Some(c), _, _) => format!("exit {c}"),
            (None, _, true) => "SIGKILLed".to_owned(),
            (None, _, false) => "killed by a signal".to_owned(),
        };
        let error = self.error();
        let tail: Vec<&str> = self.stderr.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
        format!(
            "`otturnaut {}`: {how} after {:.1}s; error: {error:?}; stderr tail: {}",
            self.args,
            self.elapsed.as_secs_f64(),
            tail.join(" | ")
        )
    }
}

/// True for `{"event": kind, "step": step}`.
pub fn is_step_event(v: &Value, kind: &str, step: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(kind) && v.get("step").and_then(Value::as_str) == Some(step)
}
