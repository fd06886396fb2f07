//! The benchmark suite: zero-downtime measurement and deploy figures on the
//! real Docker Engine and a private Caddy, written to BENCHMARKS.md.
//!
//! `cargo bench -p otturnaut-tests` runs it (`benches/suite.rs` calls
//! [`main`]); `cargo xtask bench` installs both supported Caddies first and
//! passes its flags on. It lives in this crate's library, beside the fixtures
//! it shares with the tests, so its unit tests run with theirs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

mod app;
mod caddy;
mod cli;
mod concurrency;
mod daemon;
mod deploy_timing;
mod footprint;
mod high_rate;
mod load;
mod machine;
mod releases;
mod report;
mod rollback;
mod route_switch;
mod stats;
mod suite;
mod swarm;
mod table;
mod timing;
mod zero_downtime;

/// The sections of the suite, in the order they run.
pub const SECTIONS: [&str; 10] = [
    "zero-downtime",
    "high-rate",
    "timing",
    "rollback",
    "release-rollback",
    "switch",
    "concurrency",
    "footprint",
    "daemon",
    "swarm",
];

#[derive(Debug, Clone, Parser)]
#[command(
    name = "cargo xtask bench",
    about = "Benchmarks on real Docker and a private Caddy: zero downtime under load, deploy timing, rollback, \
             route switch, concurrency, footprint; writes BENCHMARKS.md"
)]
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
    /// Run only these sections (comma-separated): zero-downtime, high-rate, timing, rollback, release-rollback, switch, concurrency,
    /// footprint, daemon, swarm (needs `cargo xtask services up --swarm 3`). high-rate runs on Debian's Caddy and on the current one (installed if missing) and has its
    /// own block in the report, so `--only high-rate` leaves the other figures in BENCHMARKS.md as they are
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Which Caddy the private instance of every section but high-rate runs (high-rate runs both)
    #[arg(long, value_enum, default_value = "debian")]
    pub caddy: CaddyFlavor,
    /// Where to write the report (default: BENCHMARKS.md in the workspace root; with --quick,
    /// target/bench/BENCHMARKS.quick.md)
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The two supported Caddy versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaddyFlavor {
    /// Debian's package, 2.6.2: `caddy` on PATH, or [`CADDY_DEBIAN_VAR`]
    Debian,
    /// The current release, 2.11.7: [`CADDY_CURRENT_VAR`], or where
    /// `cargo xtask services up --caddy current` installs it
    Current,
}

/// The Debian Caddy's binary, when not `caddy` on PATH.
pub const CADDY_DEBIAN_VAR: &str = "OTTURNAUT_BENCH_CADDY_DEBIAN";
/// The current Caddy's binary (`cargo xtask bench` sets it).
pub const CADDY_CURRENT_VAR: &str = "OTTURNAUT_BENCH_CADDY_CURRENT";

impl CaddyFlavor {
    /// The binary this flavor runs; fails, saying how to install it, if it is missing.
    pub fn bin(self) -> anyhow::Result<PathBuf> {
        let (var, default) = match self {
            CaddyFlavor::Debian => (CADDY_DEBIAN_VAR, PathBuf::from("caddy")),
            CaddyFlavor::Current => {
                let state = std::env::var_os("OTTURNAUT_DEV_STATE").unwrap_or_else(|| "/var/lib/otturnaut-dev".into());
                (CADDY_CURRENT_VAR, PathBuf::from(state).join("caddy-2.11.7/bin/caddy"))
            }
        };
        let bin = std::env::var_os(var).map_or(default, PathBuf::from);
        if bin.components().count() > 1 && !bin.is_file() {
            anyhow::bail!(
                "{self:?} Caddy: {} does not exist (`cargo xtask bench` installs it; or set {var})",
                bin.display()
            );
        }
        Ok(bin)
    }
}

impl Args {
    pub fn redeploys(&self) -> u32 {
        self.redeploys.unwrap_or(if self.quick { 3 } else { 20 })
    }

    pub fn runs(&self) -> u32 {
        self.runs.unwrap_or(if self.quick { 2 } else { 5 })
    }

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

/// The bench binary's `main`: parses the flags, runs the suite.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match suite::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn flags_are_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn cargo_bench_flag_and_sections_parse() {
        let args = Args::try_parse_from(["suite", "--only", "footprint,switch", "--bench"]).expect("parses");
        assert_eq!(args.only, ["footprint", "switch"]);
        assert!(args.check().is_ok());
        let bad = Args::try_parse_from(["suite", "--only", "nope"]).expect("parses");
        assert!(bad.check().is_err());
    }
}
