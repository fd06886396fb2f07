//! Runs the sections in order on one rig, collects the results, prints the
//! report and writes it. A failing section is reported and the others still
//! run; every container and route the bench made is removed at the end.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::app::{self, GitServer, Rig};
use super::cli::{self, Cli};
use super::load::Mode;
use super::machine::{Machine, MigrateReq, load_average, stdout, userland_proxy};
use super::report::{self, Results};
use super::rollback::{self, Case};
use super::stats::{median, ms, ms_opt};
use super::zero_downtime::{self, Plan, Retire, UpstreamIdle};

/// Redeploys per retire mode in the raw keep-alive reset comparison.
const RESET_REDEPLOYS: u32 = 30;
use super::{
    Args, CaddyFlavor, concurrency, daemon, deploy_timing, footprint, high_rate, releases, route_switch, swarm,
};

const MINUTE: Duration = Duration::from_secs(60);

pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> Result<ExitCode> {
    let began = Instant::now();
    let mut results = Results {
        command: std::env::var("OTTURNAUT_BENCH_COMMAND").unwrap_or_else(|_| {
            let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
            format!("cargo bench -p otturnaut-tests -- {}", args.join(" "))
        }),
        date: stdout(&["date", "-u", "+%Y-%m-%d %H:%M"]).await.unwrap_or_default(),
        settings: format!(
            "{} redeploys per zero-downtime row, {} runs per timing/rollback measurement, {} load clients{}",
            args.redeploys(),
            args.runs(),
            args.concurrency,
            if args.quick { ", --quick" } else { "" }
        ),
        clients: args.concurrency,
        ..Results::default()
    };
    let machine = Machine::probe().await;
    println!(
        "bench: {} CPUs, {}, Linux {}, Docker {}, {}, load {}",
        machine.cpus, machine.memory, machine.kernel, machine.docker, machine.caddy, machine.load_before
    );
    results.machine = Some(machine);

    println!("bench: building the fixture app and its image");
    let binary = app::build_app_binary().await?;
    app::build_image(&binary).await?;
    let caddy_bin = args.caddy.bin()?;
    let rig = Rig::start_with(&caddy_bin).await?;
    if let Some(v) = caddy_version(&caddy_bin).await {
        results.notes.push(format!("Caddy of the sections other than high rate: {v} ({})", caddy_bin.display()));
    }
    match rig.caddy.call(reqwest::Method::GET, "/config/apps/http/grace_period", None).await {
        Ok(g) => results.notes.push(format!("Caddy `apps.http.grace_period` as the adapter set it: {}", g.trim())),
        Err(e) => results.errors.push(format!("reading Caddy's grace_period: {e:#}")),
    }
    let swept = app::sweep(&rig.agent.adapters).await?;
    if swept > 0 {
        println!("bench: removed {swept} leftovers of an earlier run");
    }

    if args.wants("zero-downtime") {
        let r = zero_downtime_section(&rig, args, &mut results).await;
        record(&mut results, "zero downtime", r);
    }
    if args.wants("high-rate") {
        let r = high_rate_section(args, &mut results).await;
        record(&mut results, "high rate", r);
    }
    if args.wants("timing") {
        let r = timing_section(&rig, args, &binary, &mut results).await;
        record(&mut results, "deploy timing", r);
    }
    if args.wants("rollback") {
        for case in Case::ALL {
            println!("bench: rollback, {}", case.name());
            let limit = Duration::from_secs(120) * args.runs();
            let r = bounded(limit, "rollback", rollback::run(&rig, case, args.runs())).await.map(|runs| {
                let totals: Vec<Duration> = runs.iter().map(|r| r.total).collect();
                println!("  total median {} ms", ms_opt(median(&totals)));
                results.rollback.push((case, runs));
            });
            record(&mut results, "rollback", r);
        }
    }
    if args.wants("release-rollback") {
        let r = release_rollback_section(&rig, args, &mut results).await;
        record(&mut results, "rollback to a kept release", r);
    }
    if args.wants("switch") {
        // A switch at 1000 routes is one ~70 ms reload whose cost varies by
        // several ms from one to the next: enough samples for a stable median.
        let iterations = if args.quick { 10 } else { 40 };
        for others in [1, 100, 1000] {
            println!("bench: route switch with {others} other routes");
            let r = bounded(MINUTE * 5, "route switch", route_switch::run(others, iterations)).await.map(|row| {
                println!(
                    "  adapter {} ms, raw PATCH {} ms",
                    ms_opt(median(&row.adapter)),
                    ms_opt(median(&row.raw_patch))
                );
                results.switch.push(row);
            });
            record(&mut results, "route switch", r);
        }
    }
    let wants_cli = args.wants("concurrency") || args.wants("footprint") || args.wants("daemon");
    let cli = if wants_cli {
        println!("bench: building the otturnaut CLI (release)");
        match cli::build().await {
            Ok(bin) => Some(Cli::new(bin, &rig)),
            Err(e) => {
                results.errors.push(format!("building the CLI: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    if args.wants("concurrency") {
        println!("bench: 20 apps at once from one process");
        let r = bounded(MINUTE * 10, "concurrency", concurrency::in_process(&rig, 20))
            .await
            .map(|row| results.concurrency.push(row));
        record(&mut results, "concurrency (one process)", r);
        if let Some(cli) = &cli {
            println!("bench: 20 apps at once from 20 otturnaut processes");
            let r = bounded(MINUTE * 10, "concurrency", concurrency::processes(&rig, cli, 20))
                .await
                .map(|row| results.concurrency.push(row));
            record(&mut results, "concurrency (processes)", r);
        }
    }
    if args.wants("footprint")
        && let Some(cli) = &cli
    {
        let apps = if args.quick { 10 } else { 100 };
        println!("bench: footprint (status with {apps} apps)");
        let r = bounded(MINUTE * 20, "footprint", footprint::run(&rig, cli, apps))
            .await
            .map(|f| results.footprint = Some(f));
        record(&mut results, "footprint", r);
    }

    if args.wants("daemon")
        && let Some(cli) = &cli
    {
        let apps = if args.quick { 10 } else { 100 };
        println!("bench: the agent daemon (GET /v1/apps with {apps} apps, 50 clients, during a deploy)");
        let r = bounded(MINUTE * 20, "daemon", daemon::run(&rig, cli, apps, 50)).await.map(|f| {
            println!(
                "  p99 {} ms over {} requests, idle RSS {} KiB (after the load {} KiB)",
                ms_opt(f.p99()),
                f.latencies.len(),
                f.idle_rss_kib,
                f.idle_rss_after_kib
            );
            results.daemon = Some(f);
        });
        record(&mut results, "daemon", r);
    }

    if args.wants("swarm") {
        println!(
            "bench: {} redeploys on the Swarm cluster, Otturnaut's and Docker's start-first update",
            args.redeploys()
        );
        let limit = MINUTE * 5 + MINUTE * 2 * args.redeploys();
        let r = bounded(limit, "swarm", swarm::run(&rig, args.redeploys(), args.concurrency)).await.map(|rows| {
            for row in &rows {
                println!(
                    "  {}: wall median {} ms, {} failed redeploys, {} requests, {} failed {:?}",
                    row.how,
                    ms_opt(median(&row.walls)),
                    row.failed_redeploys,
                    row.load.requests,
                    row.load.failed(),
                    row.load.failures
                );
            }
            results.swarm = rows;
        });
        record(&mut results, "swarm", r);
    }

    match app::sweep(&rig.agent.adapters).await {
        Ok(0) => {}
        Ok(n) => results.notes.push(format!("the final sweep removed {n} leftover containers/images")),
        Err(e) => results.errors.push(format!("final sweep: {e:#}")),
    }
    results.load_after = load_average();
    results.took = began.elapsed();

    let path = args.output.clone().unwrap_or_else(|| {
        if args.quick {
            app::bench_dir().join("BENCHMARKS.quick.md")
        } else {
            app::workspace_root().join("BENCHMARKS.md")
        }
    });
    // The high-rate section has its own block: a run of it alone keeps the rest.
    if args.only.is_empty() || args.only.iter().any(|s| s != "high-rate") {
        let markdown = results.markdown();
        println!("\n{markdown}");
        report::write(&path, &markdown)?;
    }
    if args.wants("high-rate") {
        let markdown = results.high_rate_markdown();
        println!("\n{markdown}");
        report::write_block(&path, report::HIGH_RATE_BEGIN, report::HIGH_RATE_END, &markdown)?;
    }
    println!("bench: report written to {}", path.display());
    Ok(if results.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Rollbacks to a kept release: wall time against a prebuilt-image deploy,
/// then 10 rollbacks back to back under the zero-downtime load per client mode.
async fn release_rollback_section(rig: &Rig, args: &Args, results: &mut Results) -> Result<()> {
    println!("bench: rollback to a kept release vs a prebuilt-image deploy, {} runs each", args.runs());
    let limit = MINUTE * 2 * args.runs();
    let mut t = bounded(limit, "rollback timing", releases::timing(rig, args.runs())).await?;
    println!("  rollback median {} ms, deploy median {} ms", ms_opt(median(&t.rollbacks)), ms_opt(median(&t.deploys)));
    println!("bench: building the otturnaut CLI (release) for the commands' wall time");
    let cli = Cli::new(cli::build().await?, rig);
    bounded(limit, "rollback timing (CLI)", releases::cli_timing(rig, &cli, args.runs(), &mut t)).await?;
    println!(
        "  otturnaut rollback median {} ms, otturnaut deploy --image median {} ms",
        ms_opt(median(&t.cli_rollbacks)),
        ms_opt(median(&t.cli_deploys))
    );
    results.release_rollback = Some(t);
    let rollbacks = if args.quick { 3 } else { 10 };
    for mode in Mode::ALL {
        println!("bench: {rollbacks} rollbacks under load, {}", mode.name());
        let limit = MINUTE * 3 + MINUTE * rollbacks;
        let row = bounded(limit, "rollbacks under load", releases::under_load(rig, mode, rollbacks, args.concurrency))
            .await?;
        println!("  {} requests, {} failed {:?}", row.load.requests, row.load.failed(), row.load.failures);
        results.release_rollback_load.push(row);
    }
    Ok(())
}

fn record(results: &mut Results, section: &str, r: Result<()>) {
    if let Err(e) = r {
        eprintln!("bench: {section} failed: {e:#}");
        results.errors.push(format!("{section}: {e:#}"));
    }
}

async fn zero_downtime_section(rig: &Rig, args: &Args, results: &mut Results) -> Result<()> {
    let variants: Vec<Option<bool>> = match MigrateReq::current() {
        Some(_) => vec![Some(true), Some(false)],
        None => {
            results.notes.push("net.ipv4.tcp_migrate_req is not available here: measured as is".into());
            vec![None]
        }
    };
    let mut index = 0;
    for migrate in variants {
        let _guard = match migrate {
            Some(on) => match MigrateReq::set(on) {
                Ok(g) => Some(g),
                Err(e) => {
                    results.notes.push(format!("could not set net.ipv4.tcp_migrate_req ({e:#}); skipped that variant"));
                    continue;
                }
            },
            None => None,
        };
        for retire in [Retire::Drain, Retire::Naive] {
            for mode in Mode::ALL {
                index += 1;
                println!(
                    "bench: zero downtime: {} redeploys, {}, {}, tcp_migrate_req={}",
                    args.redeploys(),
                    retire.name(),
                    mode.name(),
                    migrate.map_or("unchanged".into(), |m| u8::from(m).to_string())
                );
                let limit = MINUTE * 3 + MINUTE * args.redeploys();
                let plan = Plan {
                    migrate_req: migrate,
                    retire,
                    mode,
                    short_ms: zero_downtime::SHORT_MS,
                    long_every: zero_downtime::LONG_EVERY,
                    redeploys: args.redeploys(),
                    upstream_closes: false,
                };
                let row =
                    bounded(limit, "a zero-downtime run", zero_downtime::run_one(rig, index, plan, args.concurrency))
                        .await?;
                let l = &row.load;
                println!(
                    "  {} requests, {} failed {:?}, {} retried, added latency p99 {} ms, drain median {} ms",
                    l.requests,
                    l.failed(),
                    l.failures,
                    l.retries,
                    ms_opt(super::stats::quantile(&l.added, 0.99)),
                    ms_opt(median(&row.drains))
                );
                for (t, s) in l.samples.iter().take(3) {
                    println!("    {:.2} s: {s}", t.as_secs_f64());
                }
                results.zero_downtime.push(row);
            }
        }
        // Raw keep-alive resets are rare (a few per 20 redeploys) and come
        // from Caddy's reloads, one per deploy with or without the drain: a
        // busier load makes them frequent enough to compare the two.
        let redeploys = if args.quick { 5 } else { RESET_REDEPLOYS };
        for retire in [Retire::Drain, Retire::Naive] {
            index += 1;
            println!(
                "bench: raw keep-alive resets: {redeploys} redeploys, {}, GET /slow?ms=0, tcp_migrate_req={}",
                retire.name(),
                migrate.map_or("unchanged".into(), |m| u8::from(m).to_string())
            );
            let long_every = zero_downtime::RESET_LONG_EVERY;
            let plan = Plan {
                migrate_req: migrate,
                retire,
                mode: Mode::Raw,
                short_ms: 0,
                long_every,
                redeploys,
                upstream_closes: false,
            };
            let limit = MINUTE * 3 + MINUTE * redeploys;
            let row =
                bounded(limit, "a reset comparison run", zero_downtime::run_one(rig, index, plan, args.concurrency))
                    .await?;
            println!("  {} requests, {} failed {:?}", row.load.requests, row.load.failed(), row.load.failures);
            results.resets.push(row);
        }
        // Few reloads per client mode: what one reload costs. Then (with the
        // kernel setting on) many reloads, with the route as the adapter
        // writes it and with Caddy's default upstream keep-alive, to show
        // the connection pile-up the adapter's 2 s idle timeout prevents.
        let (few, many) = if args.quick { (30, 100) } else { (60, 200) };
        let mut runs: Vec<(Mode, u32, UpstreamIdle)> =
            Mode::ALL.iter().map(|m| (*m, few, UpstreamIdle::Adapter)).collect();
        if migrate != Some(false) {
            runs.push((Mode::Retry, many, UpstreamIdle::CaddyDefault));
            runs.push((Mode::Retry, many, UpstreamIdle::Adapter));
        }
        for (mode, reloads, idle) in runs {
            println!("bench: {reloads} Caddy reloads alone, {}, upstream keep-alive {}", mode.name(), idle.name());
            let limit = MINUTE * 2 + Duration::from_secs(1) * reloads;
            let row = bounded(
                limit,
                "a reload stress run",
                zero_downtime::reload_stress(rig, migrate, mode, reloads, args.concurrency, idle),
            )
            .await?;
            println!(
                "  {} requests, {} failed {:?}, peak {:?} connections to the app, app restarted {} times {:?}",
                row.load.requests,
                row.load.failed(),
                row.load.failures,
                row.peak_open,
                row.app_restarts,
                row.app_log
            );
            results.reloads.push(row);
        }
    }
    Ok(())
}

async fn high_rate_section(args: &Args, results: &mut Results) -> Result<()> {
    let _migrate = MigrateReq::set(true).context("setting net.ipv4.tcp_migrate_req=1")?;
    let redeploys = if args.quick { 3 } else { 5 };
    let runs = args.runs();
    let mut index = 1000;
    results.high_rate_settings = format!(
        "{} connections, no think time (`GET /slow?ms=0`), {runs} runs of {redeploys} back-to-back redeploys per row, \
         exact drain, tcp_migrate_req=1, Docker's userland proxy {}; {} WebSocket clients over {redeploys} redeploys",
        high_rate::CONNECTIONS,
        userland_proxy(),
        high_rate::WS_CLIENTS
    );
    results.high_rate_date = stdout(&["date", "-u", "+%Y-%m-%d %H:%M"]).await.unwrap_or_default();
    results.high_rate_load_before = load_average();
    let began = Instant::now();
    for flavor in [CaddyFlavor::Debian, CaddyFlavor::Current] {
        let bin = flavor.bin()?;
        let version = caddy_version(&bin)
            .await
            .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        println!("bench: high rate on Caddy {version} ({})", bin.display());
        let rig = app::Rig::start_with(&bin).await?;
        let features = rig.agent.caddy.features().await?;
        let delay = features.stream_close_delay.then_some(rig.agent.caddy.config().stream_close_delay);
        let limit = MINUTE * 2 * runs * 6;
        let rows =
            bounded(limit, "high-rate rows", high_rate::rate_rows(&rig, &version, runs, redeploys, &mut index)).await?;
        results.high_rate.extend(rows);
        println!("bench: WebSocket clients across {redeploys} redeploys on Caddy {version}");
        let ws = bounded(MINUTE * 5, "websockets", high_rate::websockets(&rig, &version, redeploys, delay)).await?;
        println!(
            "  {} sessions, {} echoes, {} clean closes, {} abnormal, {} failed handshakes {:?}",
            ws.sessions, ws.echoes, ws.clean_closes, ws.abnormal_closes, ws.failed_handshakes, ws.samples
        );
        results.websockets.push(ws);
        app::sweep(&rig.agent.adapters).await?;
    }
    results.high_rate_took = began.elapsed();
    results.high_rate_load_after = load_average();
    Ok(())
}

async fn timing_section(rig: &Rig, args: &Args, binary: &std::path::Path, results: &mut Results) -> Result<()> {
    let git = GitServer::start(binary).await.context("starting the bench's git server")?;
    for kind in [deploy_timing::Kind::Image, deploy_timing::Kind::Git] {
        println!("bench: deploy timing, {}, {} runs", kind.name(), args.runs());
        let limit = MINUTE * 2 * args.runs() + MINUTE * 5;
        let t = bounded(limit, "deploy timing", deploy_timing::run(rig, kind, args.runs(), &git)).await?;
        let wall = median(&t.agent.iter().map(|r| r.wall).collect::<Vec<_>>()).unwrap_or_default();
        let overhead = median(&t.agent.iter().map(|r| r.overhead()).collect::<Vec<_>>()).unwrap_or_default();
        let shell = median(&t.shell.iter().map(|r| r.wall).collect::<Vec<_>>()).unwrap_or_default();
        println!("  agent {} ms (overhead {} ms), shell {} ms", ms(wall), ms(overhead), ms(shell));
        results.timing.push(t);
    }
    Ok(())
}

/// The first line of `caddy version`, if the binary runs.
async fn caddy_version(bin: &std::path::Path) -> Option<String> {
    let out = stdout(&[&bin.display().to_string(), "version"]).await.ok()?;
    out.lines().next().map(str::to_owned)
}

/// Runs `f`, failing if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f).await.with_context(|| format!("{what} took longer than {limit:?}"))?
}
