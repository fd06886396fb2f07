//! The high-rate load: 16 connections with no think time (`GET /slow?ms=0`,
//! ≥ 2,000 requests/s through Caddy on an idle 2-core machine), runs of a few
//! back-to-back redeploys, against an app that closes its connection after
//! every response (like busybox httpd) and one that keeps it alive, in each
//! client mode; and WebSocket clients that stay connected across redeploys.
//! Run once per supported Caddy version, each on its own private Caddy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use otturnaut_core::{DeployEvent, EventSink, Step};
use otturnaut_steps::Strategy as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::app::{Rig, app_id, domain, image_spec};
use super::load::Mode;
use super::zero_downtime::{self, Plan, Retire};

/// Connections of the high-rate load.
pub const CONNECTIONS: usize = 16;
/// WebSocket clients kept connected across the redeploys.
pub const WS_CLIENTS: usize = 4;

/// One row: the same upstream and client mode over several runs.
#[derive(Debug, Clone)]
pub struct RateRow {
    /// `caddy version`'s first word, e.g. `2.6.2` or `v2.11.7`.
    pub caddy: String,
    pub upstream_closes: bool,
    pub mode: Mode,
    /// Requests per second of the same load with no redeploy running.
    pub steady: f64,
    pub runs: Vec<zero_downtime::Row>,
}

impl RateRow {
    /// Requests per second over all its runs.
    pub fn rate(&self) -> f64 {
        let requests: u64 = self.runs.iter().map(|x| x.load.requests).sum();
        let secs: f64 = self.runs.iter().map(|x| x.load.elapsed.as_secs_f64()).sum();
        requests as f64 / secs.max(0.001)
    }

    pub fn upstream(&self) -> &'static str {
        if self.upstream_closes { "closes after each response" } else { "keeps connections alive" }
    }
}

/// WebSocket clients across redeploys.
#[derive(Debug, Clone, Default)]
pub struct WsRow {
    pub caddy: String,
    pub redeploys: u32,
    /// The adapter set `stream_close_delay` (Caddy 2.7+), and to what.
    pub stream_close_delay: Option<Duration>,
    /// Handshakes answered 101.
    pub sessions: u64,
    /// Messages echoed back.
    pub echoes: u64,
    /// Closed with a WebSocket close frame (Caddy sends 1001 when it unloads
    /// the config the stream was opened under).
    pub clean_closes: u64,
    /// Closed or reset without a close frame, or an echo that never came.
    pub abnormal_closes: u64,
    /// Connections or handshakes that failed.
    pub failed_handshakes: u64,
    pub samples: Vec<(Duration, String)>,
    pub deploys: Vec<Duration>,
}

/// Every row on `rig` (whose Caddy is `caddy`): both upstreams, every client
/// mode, `runs` runs of `redeploys` redeploys each. `index` numbers the apps.
pub async fn rate_rows(rig: &Rig, caddy: &str, runs: u32, redeploys: u32, index: &mut usize) -> Result<Vec<RateRow>> {
    let mut rows = Vec::new();
    for upstream_closes in [true, false] {
        for mode in Mode::ALL {
            *index += 1;
            let steady = steady_rate(rig, *index, upstream_closes, mode).await?;
            let mut row = RateRow { caddy: caddy.to_owned(), upstream_closes, mode, steady, runs: Vec::new() };
            println!("  Caddy {caddy}, upstream {}, {}, no redeploy: {steady:.0}/s", row.upstream(), mode.name());
            for run in 1..=runs {
                *index += 1;
                let plan = Plan {
                    migrate_req: Some(true),
                    retire: Retire::Drain,
                    mode,
                    short_ms: 0,
                    long_every: u64::MAX,
                    redeploys,
                    upstream_closes,
                };
                let r = zero_downtime::run_one(rig, *index, plan, CONNECTIONS).await?;
                let l = &r.load;
                println!(
                    "  Caddy {caddy}, upstream {}, {}, run {run}: {} requests ({:.0}/s), {} failed {:?}",
                    row.upstream(),
                    mode.name(),
                    l.requests,
                    l.requests as f64 / l.elapsed.as_secs_f64().max(0.001),
                    l.failed(),
                    l.failures
                );
                row.runs.push(r);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// How long the load runs alone, for its rate without redeploys, after
/// [`WARM_UP`].
const STEADY: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(1);

/// The load's rate with nothing else running: what the machine carries
/// through Caddy to that app. Back-to-back redeploys (container starts and
/// stops, the health checks, the drain's counting) share the same 2 cores.
async fn steady_rate(rig: &Rig, index: usize, upstream_closes: bool, mode: Mode) -> Result<f64> {
    let app = app_id(&format!("steady-{index}"));
    let mut spec = image_spec(&app, "s0");
    if upstream_closes {
        super::app::set_env(&mut spec, "BENCH_CLOSE", "1");
    }
    let _ = rig.undeploy(&app).await;
    rig.strategy.execute(spec, &EventSink::discard()).await.with_context(|| format!("deploying {app}"))?;
    let config = super::load::Config::through_caddy(rig, &app, (mode, CONNECTIONS), (0, u64::MAX), 0);
    // A first second unmeasured: Docker may still be tearing down the
    // previous row's containers.
    let warm_up = super::load::start(config.clone());
    tokio::time::sleep(WARM_UP).await;
    let warm = warm_up.stop().await;
    let running = super::load::start(config);
    tokio::time::sleep(STEADY).await;
    let mut load = running.stop().await;
    for (kind, n) in warm.failures {
        *load.failures.entry(kind).or_default() += n;
    }
    load.samples.extend(warm.samples);
    rig.undeploy(&app).await?;
    if load.failed() > 0 {
        bail!(
            "{} of {} requests to {app} failed with no redeploy running: {:?}",
            load.failed(),
            load.requests,
            load.samples
        );
    }
    Ok(load.requests as f64 / load.elapsed.as_secs_f64().max(0.001))
}

/// [`WS_CLIENTS`] WebSocket clients through Caddy while the app is redeployed
/// `redeploys` times with the agent's drain. Each client sends a message
/// every 50 ms and waits for its echo; when the connection closes it counts
/// how, and connects again.
pub async fn websockets(rig: &Rig, caddy: &str, redeploys: u32, stream_close_delay: Option<Duration>) -> Result<WsRow> {
    let app = app_id("ws");
    let _ = rig.undeploy(&app).await;
    rig.strategy.execute(image_spec(&app, "w0"), &EventSink::discard()).await.context("first deploy of the ws app")?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..WS_CLIENTS)
        .map(|_| {
            let (stop, addr, host) = (Arc::clone(&stop), rig.caddy.listen, domain(&app).to_string());
            tokio::spawn(async move { ws_client(addr, &host, &stop, started).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut row = WsRow { caddy: caddy.to_owned(), redeploys, stream_close_delay, ..WsRow::default() };
    for i in 1..=redeploys {
        let (events, mut rx) = EventSink::channel();
        match rig.strategy.execute(image_spec(&app, &format!("w{i}")), &events).await {
            Ok(done) => row.deploys.push(done.elapsed),
            Err(e) => eprintln!("bench: ws redeploy {i} failed: {e}"),
        }
        while let Ok(event) = rx.try_recv() {
            if let DeployEvent::StepFailed { step: Step::Drain, error, .. } = event {
                eprintln!("bench: the drain of ws redeploy {i} failed: {error}");
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let s = c.await.context("a WebSocket client panicked")?;
        row.sessions += s.sessions;
        row.echoes += s.echoes;
        row.clean_closes += s.clean_closes;
        row.abnormal_closes += s.abnormal_closes;
        row.failed_handshakes += s.failed_handshakes;
        row.samples.extend(s.samples);
    }
    row.samples.sort_by_key(|(t, _)| *t);
    rig.undeploy(&app).await?;
    if row.sessions == 0 {
        bail!("no WebSocket session was ever opened through Caddy");
    }
    Ok(row)
}

async fn ws_client(addr: SocketAddr, host: &str, stop: &AtomicBool, started: Instant) -> WsRow {
    let mut s = WsRow::default();
    let note = |s: &mut WsRow, what: String| {
        if s.samples.len() < 5 {
            s.samples.push((started.elapsed(), what));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match handshake(addr, host).await {
            Ok(c) => c,
            Err(e) => {
                s.failed_handshakes += 1;
                note(&mut s, format!("handshake: {e:#}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        s.sessions += 1;
        let mut n = 0u32;
        loop {
            if stop.load(Ordering::SeqCst) {
                return s;
            }
            n += 1;
            let msg = format!("m{n:07}");
            let mut got = vec![0u8; msg.len()];
            let answer = async {
                conn.write_all(msg.as_bytes()).await?;
                // The first byte tells an echo from a close frame (0x88).
                conn.read_exact(&mut got[..1]).await?;
                if got[0] == 0x88 {
                    return Ok(false);
                }
                conn.read_exact(&mut got[1..]).await?;
                Ok::<_, std::io::Error>(true)
            };
            match tokio::time::timeout(Duration::from_secs(5), answer).await {
                Ok(Ok(true)) if got == msg.as_bytes() => s.echoes += 1,
                Ok(Ok(true)) => {
                    s.abnormal_closes += 1;
                    note(&mut s, format!("wrong echo {:?}", String::from_utf8_lossy(&got)));
                    break;
                }
                Ok(Ok(false)) => {
                    s.clean_closes += 1;
                    break;
                }
                Ok(Err(e)) => {
                    s.abnormal_closes += 1;
                    note(&mut s, format!("closed without a close frame: {e}"));
                    break;
                }
                Err(_) => {
                    s.abnormal_closes += 1;
                    note(&mut s, "no echo within 5 s".into());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s
}

/// Connects and sends a WebSocket handshake; `Ok` once Caddy answered 101.
async fn handshake(addr: SocketAddr, host: &str) -> Result<TcpStream> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            conn.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await??;
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("answered {:?}", String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned());
    }
    Ok(conn)
}
