//! `cargo xtask bench`: the benchmark suite, which lives in the `tests` crate
//! (`cargo bench -p otturnaut-tests`, see `tests/src/bench.rs`). This starts
//! the services, installs both supported Caddies (the high-rate section runs
//! on each) and runs it with the flags given, in the bench profile (release:
//! timings of a debug build would say little).

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};

use crate::services::{self, CaddyFlavor, Env};

/// The flags, passed on to the suite as they are.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// The suite's flags (`cargo xtask bench --help` shows them, after building it): --only SECTIONS,
    /// --quick, --redeploys N, --runs N, --concurrency N, --caddy debian|current, --output FILE
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(env: &Env, args: &Args) -> Result<ExitCode> {
    services::up(env)?;
    let debian = CaddyFlavor::Debian.install(env)?;
    let current = CaddyFlavor::Current.install(env)?;
    let shown = format!("cargo xtask bench {}", args.args.join(" "));
    println!("xtask bench: cargo bench -p otturnaut-tests (first time: a release build of a few minutes)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["bench", "--locked", "-p", "otturnaut-tests", "--bench", "suite", "--"])
        .args(&args.args)
        .current_dir(crate::workspace_root())
        .env("OTTURNAUT_BENCH_COMMAND", shown.trim_end())
        .env("OTTURNAUT_BENCH_CADDY_DEBIAN", debian)
        .env("OTTURNAUT_BENCH_CADDY_CURRENT", current)
        .status()
        .with_context(|| format!("running {}", std::path::Path::new(&cargo).display()))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
