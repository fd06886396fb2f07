//! `cargo xtask bench`: zero-downtime measurement and the benchmark suite,
//! on the real Docker Engine and a private Caddy.
//!
//! The suite needs the whole agent (bollard, gix, reqwest...), which the
//! other xtask commands must not wait for, so it lives behind the `bench`
//! feature: without it, this command re-runs xtask with the feature, in
//! release mode (timings of a debug build would say little).

use std::process::ExitCode;

use clap::Args as ClapArgs;

#[cfg(feature = "bench")]
mod app;
#[cfg(feature = "bench")]
mod caddy;
#[cfg(feature = "bench")]
mod cli;
#[cfg(feature = "bench")]
mod concurrency;
#[cfg(feature = "bench")]
mod deploy_timing;
#[cfg(feature = "bench")]
mod footprint;
#[cfg(feature = "bench")]
mod high_rate;
#[cfg(feature = "bench")]
mod load;
#[cfg(feature = "bench")]
mod machine;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod rollback;
#[cfg(feature = "bench")]
mod route_switch;
#[cfg(feature = "bench")]
mod stats;
#[cfg(feature = "bench")]
mod suite;
#[cfg(feature = "bench")]
mod timing;
#[cfg(feature = "bench")]
mod zero_downtime;

/// The sections of the suite, in the order they run.
pub const SECTIONS: [&str; 7] =
    ["zero-downtime", "high-rate", "timing", "rollback", "switch", "concurrency", "footprint"];

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Back-to-back redeploys under load, per zero-downtime run (default 20, 3 with --quick)
    #[arg(long)]
    pub redeploys: Option<u32>,
    /// A short pass to check that everything works: fewer redeploys and repetitions
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each timed deploy (medians are reported; default 5, 2 with --quick)
    #[arg(long)]
    pub runs: Option<u32>,
    /// Concurrent clients of the load generator
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// Run only these sections (comma-separated): zero-downtime, high-rate, timing, rollback, switch, concurrency,
    /// footprint. high-rate runs on Debian's Caddy and on the current one (installed if missing) and has its
    /// own block in the report, so `--only high-rate` leaves the other figures in BENCHMARKS.md as they are
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Which Caddy the private instance of every section but high-rate runs (high-rate runs both)
    #[arg(long, value_enum, default_value = "debian")]
    pub caddy: crate::services::CaddyFlavor,
    /// Where to write the report (default: BENCHMARKS.md in the workspace root; with --quick,
    /// target/bench/BENCHMARKS.quick.md)
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

impl Args {
    pub fn redeploys(&self) -> u32 {
        self.redeploys.unwrap_or(if self.quick { 3 } else { 20 })
    }

    pub fn runs(&self) -> u32 {
        self.runs.unwrap_or(if self.quick { 2 } else { 5 })
    }

    #[cfg(feature = "bench")]
    pub fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(bad) = self.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
            anyhow::bail!("unknown section {bad:?} in --only; the sections are {}", SECTIONS.join(", "));
        }
        if self.redeploys() == 0 || self.runs() == 0 || self.concurrency == 0 {
            anyhow::bail!("--redeploys, --runs and --concurrency must be at least 1");
        }
        if self.redeploys() > 500 || self.runs() > 100 || self.concurrency > 500 {
            anyhow::bail!("--redeploys is at most 500, --runs at most 100, --concurrency at most 500");
        }
        Ok(())
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    args.check()?;
    #[cfg(feature = "bench")]
    {
        suite::run(args)
    }
    #[cfg(not(feature = "bench"))]
    {
        reexec()
    }
}

/// Runs this same command again from a release build with the `bench` feature.
#[cfg(not(feature = "bench"))]
fn reexec() -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shown = format!("cargo xtask {}", args.join(" "));
    println!("xtask bench: building xtask with the `bench` feature in release mode (first time: a few minutes)");
    let status = std::process::Command::new(&cargo)
        .args(["run", "--quiet", "--release", "--package", "xtask", "--features", "bench", "--"])
        .args(&args)
        .env("OTTURNAUT_BENCH_COMMAND", &shown)
        .status()
        .with_context(|| format!("running {}", std::path::Path::new(&cargo).display()))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
