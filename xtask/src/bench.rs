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

/// The cluster the suite's `swarm` section redeploys on.
const SWARM_NODES: u8 = 3;

pub fn run(env: &Env, args: &Args) -> Result<ExitCode> {
    services::up(env)?;
    if wants_swarm(&args.args) {
        crate::swarm::up(env, SWARM_NODES).context("building the Swarm cluster of the bench's swarm section")?;
    }
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

/// Whether the suite will run its `swarm` section: no `--only`, or one naming it.
fn wants_swarm(args: &[String]) -> bool {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return false;
    }
    let mut only = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--only" {
            only = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix("--only=") {
            only = Some(v.to_owned());
        }
    }
    only.is_none_or(|sections| sections.split(',').any(|s| s == "swarm"))
}

#[cfg(test)]
mod tests {
    use super::wants_swarm;

    #[test]
    fn the_cluster_is_built_only_for_the_swarm_section() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants_swarm(&args(&[])));
        assert!(wants_swarm(&args(&["--quick"])));
        assert!(wants_swarm(&args(&["--only", "timing,swarm"])));
        assert!(wants_swarm(&args(&["--only=swarm"])));
        assert!(!wants_swarm(&args(&["--only", "timing"])));
        assert!(!wants_swarm(&args(&["--help"])));
    }
}
