//! The `otturnaut` command line: parses, wires the adapters and prints. All
//! deploy logic lives in `otturnaut-steps` and `otturnaut-adapters`.
//!
//! A library so that the integration tests can build the same binary under
//! another name (see `tests/src/bin`); `main.rs` only calls [`main`].
//!
//! Architecture invariant: no deploy logic here; everything the CLI does to
//! Docker, Caddy or git is a library call, so a daemon can offer the same.
#![warn(missing_docs)]

mod args;
mod cleanup;
mod deploy;
mod exit;
mod faults;
mod files;
#[cfg(test)]
mod fuzz;
mod host;
mod input;
mod logs;
mod output;
mod releases;
mod serve;
mod settings;
mod specfile;
#[cfg(test)]
mod specfile_tests;
mod status;
mod workdir;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use otturnaut_adapters::lock::{self, AppLock};
use otturnaut_adapters::{Agent, AgentConfig, LOCK_TIMEOUT};
use otturnaut_core::AppId;

pub use crate::exit::Exit;

use crate::args::{Cli, Command, GlobalArgs};
use crate::exit::Fatal;
use crate::output::Out;
use crate::settings::Settings;

/// How long, at exit, background work (a clone on the blocking pool) may
/// take to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the command line and returns the process exit code. Usage errors
/// exit 2 and `--help` exits 0, both from clap.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    diagnostics();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed.code());
        }
    };
    let exit = runtime.block_on(run(cli));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    ExitCode::from(exit.code())
}

/// The library's `tracing` diagnostics on stderr: errors only unless
/// `RUST_LOG` asks for more (`RUST_LOG=otturnaut_adapters=debug`). Progress and
/// results are the CLI's own output, not these.
fn diagnostics() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn run(cli: Cli) -> Exit {
    let global = cli.global;
    match cli.command {
        Command::Deploy(args) => deploy::run(&global, *args).await,
        Command::Status { app, json } => status::run(&global, app.as_deref(), json).await,
        Command::Releases { app, json } => releases::releases(&global, &app, json).await,
        Command::Rollback { app, to, json } => deploy::rollback(&global, &app, to.as_deref(), json).await,
        Command::Prune { app, json } => releases::prune(&global, app.as_deref(), json).await,
        Command::Undeploy { app, volumes, json } => cleanup::undeploy(&global, &app, volumes, json).await,
        Command::Reconcile { apps, json } => cleanup::reconcile(&global, &apps, json).await,
        Command::Serve(args) => serve::run(&global, args).await,
        Command::Logs { app, follow, tail } => logs::run(&global, &app, follow, tail).await,
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn settings(global: &GlobalArgs) -> Result<Settings, Fatal> {
    Ok(settings::resolve(global, &env_var)?)
}

async fn connect(config: &AgentConfig) -> Result<Agent, Fatal> {
    let mut agent = Agent::connect(config).await.map_err(|e| Fatal::service("connecting to Docker and Caddy", &e))?;
    agent.adapters = faults::with_faults(agent.adapters)?;
    Ok(agent)
}

/// Takes `app`'s lock for `command`, saying so on stderr if it has to wait.
async fn take_lock(out: &Out, settings: &Settings, app: &AppId, command: &str) -> Result<AppLock, Fatal> {
    workdir::prepare(&settings.agent.work_dir)?;
    let dir = settings.locks_dir();
    let say = |holder: &lock::Holder| {
        out.say(format!("{}; waiting… (up to {})", holder.describe(app), humantime::format_duration(LOCK_TIMEOUT)));
    };
    lock::lock(&dir, app, command, LOCK_TIMEOUT, say).await.map_err(|e| match e {
        // Our own refusals (a planted symlink or hard link) are about the
        // host's files, not a failure of the deploy: nothing was done.
        lock::LockError::Io(path, e) => Fatal::new(
            if e.kind() == std::io::ErrorKind::Other { Exit::Usage } else { Exit::Failed },
            format!(
                "cannot take {app}'s lock {}: {e}\nnothing was changed; is --work-dir ({}) writable?",
                path.display(),
                settings.agent.work_dir.display()
            ),
        ),
        lock::LockError::TimedOut { holder, after } => Fatal::new(
            Exit::Failed,
            format!(
                "{} and did not finish within {}; gave up, nothing was changed.\n\
                 If that process is stuck, stop it (its deploy is then rolled back) and try again.",
                holder.describe(app),
                humantime::format_duration(after)
            ),
        ),
    })
}

/// Prints a fatal error for a person (and nothing on stdout).
fn print_fatal(out: &Out, fatal: &Fatal) {
    let p = out.paint;
    let mut lines = fatal.message.lines();
    out.say(format!("{} {}", p.red(&p.bold("error:")), lines.next().unwrap_or_default()));
    for line in lines {
        out.say(format!("  {line}"));
    }
}
