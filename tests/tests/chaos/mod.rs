//! The chaos harness, shared by the sample in the normal test suite and by
//! `cargo xtask chaos` (which runs the ignored `chaos_full` test).

pub mod bin;
pub mod caddy;
pub mod cases;
pub mod check;
pub mod cli;
pub mod crash;
pub mod dockerd;
pub mod infra;
pub mod prober;
pub mod report;
pub mod rng;
pub mod snapshot;
pub mod world;

use std::time::Instant;

use self::cases::LiveApp;
use self::report::Report;
use self::world::World;

/// What to run, from the environment `cargo xtask chaos` sets.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub trials: usize,
    pub quick: bool,
    /// `--docker-restart`: also the cases that restart dockerd.
    pub docker_restart: bool,
    /// Where to write the Markdown report.
    pub report: Option<String>,
    /// On the Swarm cluster (`--runtime swarm`) instead of this host's Docker.
    pub swarm: bool,
}

impl Options {
    pub fn from_env() -> Options {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let quick = var("CHAOS_QUICK").is_some_and(|v| v != "0");
        Options {
            seed: var("CHAOS_SEED").and_then(|s| s.parse().ok()).unwrap_or_else(rng::seed_from_clock),
            trials: var("CHAOS_TRIALS").and_then(|s| s.parse().ok()).unwrap_or(if quick { 10 } else { 40 }),
            quick,
            docker_restart: var("CHAOS_DOCKER_RESTART").is_some_and(|v| v != "0"),
            report: var("CHAOS_REPORT"),
            swarm: false,
        }
    }

    pub fn command(&self) -> String {
        let mut c = format!("cargo xtask chaos --seed {} --trials {}", self.seed, self.trials);
        if self.quick {
            c.push_str(" --quick");
        }
        if self.docker_restart {
            c.push_str(" --docker-restart");
        }
        if self.swarm {
            c.push_str(" --swarm");
        }
        c
    }
}

/// Removes the apps a run kept live across cases.
async fn retire(world: &World, slot: &mut Option<LiveApp>) {
    if let Some(la) = slot.take()
        && let Err(e) = world.clean_up(&la.app).await
    {
        eprintln!("chaos: cleaning up {}: {e:#}", la.app);
    }
}

/// The full run: the fault matrix, the crash trials, the infrastructure faults.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report { seed: opts.seed, command: opts.command(), ..Report::default() };
    println!("chaos: seed {} — reproduce with `{}`", opts.seed, report.command);
    let mut world =
        if opts.swarm { World::on_swarm(bin::otturnaut()).await? } else { World::new(bin::otturnaut()).await? };

    let matrix = cases::matrix(opts.quick);
    let mut live = None;
    for (i, case) in matrix.iter().enumerate() {
        match cases::run(&world, case, &mut live).await {
            Ok(row) => {
                println!(
                    "[{:>3}/{}] {:<9} {:<6} {:<60} {} exit={} prober={} orphans={} ({:.1}s) {}",
                    i + 1,
                    matrix.len(),
                    case.group,
                    case.scenario.name(),
                    case.label(),
                    if row.verdict.passed() { "pass" } else { "FAIL" },
                    row.exit,
                    row.probes,
                    row.verdict.orphans_text(),
                    row.took.as_secs_f64(),
                    row.verdict.problems.join("; ")
                );
                report.rows.push(row);
            }
            Err(e) => {
                println!(
                    "[{:>3}/{}] {} {}: harness error: {e:#}",
                    i + 1,
                    matrix.len(),
                    case.label(),
                    case.scenario.name()
                );
                report.errors.push(format!("{} ({}): {e:#}", case.label(), case.scenario.name()));
                // Start the next live case from a fresh app.
                live = None;
            }
        }
    }
    retire(&world, &mut live).await;

    let mut crash_live = None;
    for trial in crash::plan(opts.seed, opts.trials) {
        match crash::run(&mut world, trial, &mut crash_live).await {
            Ok(row) => {
                println!(
                    "{} {}",
                    row.summary(),
                    if row.problems.is_empty() {
                        "pass".to_owned()
                    } else {
                        format!("FAIL {}", row.problems.join("; "))
                    }
                );
                report.trials.push(row);
            }
            Err(e) => {
                println!("[crash {:>2}] harness error: {e:#}", trial.n);
                report.errors.push(format!("crash trial {}: {e:#}", trial.n));
                crash_live = None;
            }
        }
    }
    retire(&world, &mut crash_live).await;

    let mut slot = None;
    let mut infra_rows = Vec::new();
    infra_rows.push(infra::caddy_dies_before_the_switch(&mut world, &mut slot).await);
    infra_rows.push(infra::crash_looping_release(&world, &mut slot).await);
    infra_rows.push(infra::failing_build(&world, &mut slot).await);
    infra_rows.push(infra::disk_full(&world, &mut slot).await);
    infra_rows.push(infra::sigint_during_build(&world, &mut slot).await);
    infra_rows.push(infra::sigterm_during_health_check(&world, &mut slot).await);
    // On a cluster the builds run on the manager and nodes are lost in
    // `swarm_nodes.rs`, not by restarting this host's Docker.
    if !opts.swarm {
        infra_rows.push(infra::label_spoofing(&world, &mut slot).await);
    }
    if opts.docker_restart && !opts.swarm {
        infra_rows.push(infra::docker_restarts_during_the_health_check(&world, &mut slot).await);
        infra_rows.push(infra::reboot(&mut world, &mut slot).await);
    }
    // Last: it replaces Caddy's config.
    infra_rows.push(infra::caddy_loses_its_config(&mut world, &mut slot).await);
    for r in infra_rows {
        match r {
            Ok(row) => {
                println!(
                    "[infra] {:<62} {} exit={} prober={} {}",
                    row.name,
                    if row.verdict.passed() { "pass" } else { "FAIL" },
                    row.exit,
                    row.probes,
                    row.verdict.problems.join("; ")
                );
                report.infra.push(row);
            }
            Err(e) => {
                println!("[infra] harness error: {e:#}");
                report.errors.push(format!("infrastructure case: {e:#}"));
            }
        }
    }
    retire(&world, &mut slot).await;
    report.took = started.elapsed();
    Ok(report)
}
