//! The agent daemon (`otturnaut serve`, release build): `GET /v1/apps` with
//! 100 apps deployed (prebuilt-image deploys of the bench app), from 50
//! concurrent clients for as long as a deploy through the API runs, and the
//! daemon's resident memory when idle, before and after that load.

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::EventSink;
use otturnaut_steps::Strategy as _;
use serde_json::json;

use super::app::{IMAGE, Rig, app_id, domain, image_spec};
use super::cli::Cli;
use super::stats::{median, ms_opt};

const TOKEN: &str = "bench-daemon-token-0123456789abcdef";

/// The targets of issue 12.
pub const P99_TARGET: Duration = Duration::from_millis(50);
/// The p99 target holds for this many apps; fewer (`--quick`) is not judged.
pub const TARGET_APPS: usize = 100;
pub const IDLE_RSS_TARGET_KIB: u64 = 20 * 1024;

#[derive(Debug, Clone)]
pub struct Figures {
    pub apps: usize,
    pub clients: usize,
    /// Latencies of the `GET /v1/apps` answered with 200 while the deploy ran.
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub deploy: Duration,
    pub deploy_result: String,
    /// `VmRSS` when idle: after start (one `GET /v1/apps` answered), and
    /// after the load.
    pub idle_rss_kib: u64,
    pub idle_rss_after_kib: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub async fn run(rig: &Rig, cli: &Cli, apps: usize, clients: usize) -> Result<Figures> {
    let names: Vec<_> = (0..apps).map(|i| app_id(&format!("api-{i}"))).collect();
    for batch in names.chunks(20) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|app| {
                let (strategy, spec) = (rig.strategy.clone(), image_spec(app, "a1"));
                tokio::spawn(async move { strategy.execute(spec, &EventSink::discard()).await })
            })
            .collect();
        for (app, task) in batch.iter().zip(tasks) {
            task.await?.with_context(|| format!("deploying {app} for the daemon measurement"))?;
        }
    }

    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN)?;
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let args: Vec<String> = ["serve", "--api-listen", &format!("127.0.0.1:{port}"), "--token-file"]
        .into_iter()
        .map(str::to_owned)
        .chain([
            token.display().to_string(),
            "--watch-apps".into(),
            names.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        ])
        .collect();
    let mut cmd = cli.command(&args);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut daemon = cmd.spawn().context("starting otturnaut serve")?;
    let pid = daemon.id().context("the daemon's pid")?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/v1/health")).send().await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("otturnaut serve did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: after its boot reconcile and one answered `GET /v1/apps` (its
    // snapshot of the 100 apps is kept), nothing to do.
    let listed = http.get(format!("{base}/v1/apps")).bearer_auth(TOKEN).send().await?;
    let listed: Vec<serde_json::Value> = listed.error_for_status()?.json().await?;
    if listed.iter().filter(|s| s["live"] == true && names.iter().any(|n| s["app"] == n.as_str())).count() != apps {
        bail!("GET /v1/apps does not show the {apps} apps live");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rss_kib = rss_kib(pid).context("reading the daemon's VmRSS")?;

    let deploying = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, deploying) = (http.clone(), format!("{base}/v1/apps"), deploying.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (Vec::new(), 0usize);
            while deploying.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let answered = match http.get(&url).bearer_auth(TOKEN).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if answered {
                    ok.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (ok, errors)
        }));
    }
    let app = &names[0];
    let body = json!({
        "image": IMAGE, "container_port": 8080, "domains": [domain(app).to_string()],
        "env": {"APP_VERSION": "a2"}, "health": "http:/healthz", "health_timeout": "60s",
    });
    let t0 = Instant::now();
    let answer = http
        .post(format!("{base}/v1/apps/{app}/deployments"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .context("POST a deploy")?
        .text()
        .await
        .context("reading the deploy stream")?;
    let deploy = t0.elapsed();
    deploying.store(false, Ordering::Relaxed);
    let last = answer.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let deploy_result = serde_json::from_str::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v["result"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("no result line: {last}"));
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (ok, e) = task.await?;
        latencies.extend(ok);
        errors += e;
    }
    latencies.sort();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rss_after_kib = rss_kib(pid).context("reading the daemon's VmRSS after the load")?;
    let _ = daemon.kill().await;
    for app in &names {
        rig.undeploy(app).await?;
    }
    Ok(Figures { apps, clients, latencies, errors, deploy, deploy_result, idle_rss_kib, idle_rss_after_kib })
}

impl Figures {
    pub fn p99(&self) -> Option<Duration> {
        percentile(&self.latencies, 0.99)
    }

    pub fn markdown(&self, w: &mut String) {
        let _ = writeln!(w, "### The agent daemon (`otturnaut serve`)\n");
        let _ = writeln!(
            w,
            "`GET /v1/apps` with {} apps deployed, from {} concurrent clients for as long as one deploy through \
             `POST /v1/apps/{{app}}/deployments` ran ({} ms, result `{}`); release build, token auth, plain HTTP \
             on loopback. Idle RSS: `VmRSS` 5 s after one `GET /v1/apps` answered (boot reconcile done), and 5 s \
             after the load; the target is judged on the larger. The p99 target is judged with {} apps.\n",
            self.apps,
            self.clients,
            self.deploy.as_millis(),
            self.deploy_result,
            TARGET_APPS
        );
        let _ = writeln!(
            w,
            "| Apps | Clients | Requests | Errors | p50 ms | p99 ms | max ms | p99 target | Idle RSS start / after | RSS target |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let p99 = self.p99();
        let ok = |b: bool| if b { "met" } else { "**missed**" };
        let p99_status = if self.apps < TARGET_APPS {
            format!("not judged ({} apps)", self.apps)
        } else {
            ok(p99.is_some_and(|p| p <= P99_TARGET) && self.errors == 0).to_owned()
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | ≤ {} ms: {} | {:.1} / {:.1} MiB | ≤ 20 MiB: {} |\n",
            self.apps,
            self.clients,
            self.latencies.len(),
            self.errors,
            ms_opt(median(&self.latencies)),
            ms_opt(p99),
            ms_opt(self.latencies.last().copied()),
            P99_TARGET.as_millis(),
            p99_status,
            self.idle_rss_kib as f64 / 1024.0,
            self.idle_rss_after_kib as f64 / 1024.0,
            ok(self.idle_rss_kib.max(self.idle_rss_after_kib) <= IDLE_RSS_TARGET_KIB)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&d, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
