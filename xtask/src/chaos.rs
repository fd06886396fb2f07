//! `cargo xtask chaos`: fault injection and crash recovery on the real
//! services. The harness itself is the ignored test `chaos_full` in
//! `tests/tests/chaos.rs`, or `swarm_fault_points_and_crash_trials` with
//! `--swarm` (it shares its fixtures with the integration tests and its code
//! with the sample the normal suite runs); this starts the services and runs
//! it with the options as environment variables.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

use crate::services::{self, Env};

/// The cluster `--swarm` runs on.
const SWARM_NODES: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seed of the crash trials' choices (printed; the same seed replays a run)
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many SIGKILL crash trials (default 40, 10 with --quick)
    #[arg(long)]
    pub trials: Option<usize>,
    /// A smaller matrix: forward fault points and a few of each other kind
    #[arg(long)]
    pub quick: bool,
    /// Also restart the Docker daemon during a health check, and simulate a reboot (Docker and
    /// Caddy stopped and started, Caddy empty, then the boot reconcile). Stops every container
    /// on the daemon for a moment, so only on a machine nobody else is using, and only for a
    /// dockerd that `cargo xtask services up` started
    #[arg(long)]
    pub docker_restart: bool,
    /// Where to write the Markdown report [default: target/chaos/report-SEED.md]
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// On the Swarm runtime instead: the same cases against a 3-node cluster (reused if up,
    /// else built as by `services up --swarm 3`); the cases that restart this host's Docker or
    /// inspect its containers do not apply
    #[arg(long, conflicts_with = "docker_restart")]
    pub swarm: bool,
}

pub const HELP: &str = "\
Fault injection and crash recovery against the real Docker Engine, a private Caddy and a git
daemon, through the `otturnaut` binary built with `--features faults` (OTTURNAUT_FAULTS):

  1. every fault point (each adapter call, before and after its side effect), undo faults that
     leave residue, hangs ended by SIGINT/SIGTERM or a deadline, panics — on a fresh app and on
     an app with a live release, with a prober requesting the live release through Caddy every
     50 ms and before/after snapshots of containers, images, routes and files;
  2. SIGKILL crash trials at seeded points of the deploy's event stream, recovered by
     `otturnaut reconcile APP`, by the next deploy, or by an empty Caddy restart and reconcile
     (the last committed release must be served);
  3. Caddy killed before the route switch, Caddy restarted without its config with three apps
     live (reconcile must serve all three in one config write), a Dockerfile whose LABELs
     impersonate another app's release, a crash-looping release, a failing build, a full work
     dir, signals during a real build and health check (and with --docker-restart, the Docker
     daemon restarted during a health check, and a simulated reboot with the boot reconcile).

Prints a table per part and writes it as Markdown (see RELIABILITY.md). Exits non-zero if any
case failed. Takes about 8 minutes (--quick: about 3).

With --swarm, the same on the Swarm runtime (`--runtime swarm`, each release a 2-task service on
a 3-node cluster): the snapshots are the app's services, the manager's images (release tags and
their registry copies) and the route with its upstreams, which must be one per running task.
About 12 minutes (--quick: about 6). Not part of `cargo xtask test`.

Examples:
  cargo xtask chaos
  cargo xtask chaos --seed 4242 --trials 40
  cargo xtask chaos --quick
  cargo xtask chaos --swarm --quick --trials 10";

pub fn run(env: &Env, args: &Args) -> Result<ExitCode> {
    services::up(env)?;
    if args.swarm {
        crate::swarm::ensure_up(env, SWARM_NODES)?;
    }
    let root = crate::workspace_root();
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        (nanos as u64 ^ u64::from(std::process::id())) % 1_000_000
    });
    let name = if args.swarm { format!("report-swarm-{seed}.md") } else { format!("report-{seed}.md") };
    let report = args.report.clone().unwrap_or_else(|| root.join("target/chaos").join(name));
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    let test = if args.swarm { "swarm_fault_points_and_crash_trials" } else { "chaos_full" };
    cmd.args(["test", "-p", "otturnaut-tests", "--test", "chaos", "--", "--ignored", "--exact", test])
        .args(["--nocapture", "--test-threads", "1"])
        .current_dir(&root)
        .env("CHAOS_SEED", seed.to_string())
        .env("CHAOS_REPORT", &report)
        .env_remove("OTTURNAUT_BIN");
    if let Some(trials) = args.trials {
        cmd.env("CHAOS_TRIALS", trials.to_string());
    }
    if args.quick {
        cmd.env("CHAOS_QUICK", "1");
    }
    if args.docker_restart {
        cmd.env("CHAOS_DOCKER_RESTART", "1");
    }
    println!("xtask chaos: seed {seed}, report {}", report.display());
    let began = Instant::now();
    let status = cmd.status().context("running cargo test")?;
    println!(
        "xtask chaos: {} in {:.1} min (seed {seed})",
        if status.success() { "passed" } else { "FAILED" },
        began.elapsed().as_secs_f64() / 60.0
    );
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
