//! The load generator: a fixed number of clients sending `GET /slow?ms=…`
//! through Caddy, each classifying every outcome exactly. A hand-written
//! HTTP/1.1 client, because the question is precisely what happened on the
//! wire: did a reused connection close before any byte of the answer (safe
//! to retry), or was an answer cut off, or refused, or late.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How a client uses connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Keep-alive; an idempotent request whose reused connection closed
    /// before any byte of the response is retried once on a new connection,
    /// as browsers and HTTP client libraries do.
    Retry,
    /// Keep-alive, never retrying.
    Raw,
    /// A new connection per request (`Connection: close`).
    Close,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Retry, Mode::Raw, Mode::Close];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Retry => "keep-alive + retry",
            Mode::Raw => "keep-alive raw",
            Mode::Close => "new connection per request",
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Caddy (or the app) answered 5xx.
    Status5xx,
    /// The TCP connection to Caddy could not be made.
    Connect,
    /// The connection was closed or reset before a complete response.
    Reset,
    /// No complete response within the request timeout.
    Timeout,
    /// A response that is neither 2xx nor 5xx, or not HTTP.
    Other,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Caddy's listener.
    pub addr: SocketAddr,
    /// The app's domain, sent as `Host`.
    pub host: String,
    pub concurrency: usize,
    pub mode: Mode,
    /// Limit for one request, retry included.
    pub timeout: Duration,
    /// Every `long_every`th request of a client asks for `long_ms`, the
    /// others for `short_ms`: most requests are short, and a few are in
    /// flight for long enough that a route switch always finds some.
    pub short_ms: u64,
    pub long_ms: u64,
    pub long_every: u64,
    /// The generator stops by itself after this long, whatever happens.
    pub max_duration: Duration,
}

impl Config {
    /// The zero-downtime load on `app` through the rig's Caddy: short
    /// requests with a long one every `long_every`, for at most as long as
    /// `switches` deploys or rollbacks could take.
    pub fn through_caddy(
        rig: &super::app::Rig,
        app: &otturnaut_core::AppId,
        (mode, concurrency): (Mode, usize),
        (short_ms, long_every): (u64, u64),
        switches: u32,
    ) -> Self {
        Config {
            addr: rig.caddy.listen,
            host: super::app::domain(app).to_string(),
            concurrency,
            mode,
            timeout: Duration::from_secs(10),
            short_ms,
            long_ms: super::zero_downtime::LONG_MS,
            long_every,
            // Far more than the switches should take: a bound, not a schedule.
            max_duration: Duration::from_secs(120) + Duration::from_secs(60) * switches,
        }
    }
}

/// What a load run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub requests: u64,
    pub ok: u64,
    pub failures: BTreeMap<Failure, u64>,
    /// Requests retried on a new connection (mode `Retry` only).
    pub retries: u64,
    pub connections: u64,
    /// Latency each successful request added to the delay it asked for, sorted.
    pub added: Vec<Duration>,
    /// Answers per app version (the response body).
    pub versions: BTreeMap<String, u64>,
    /// The first few failures: when (since the start) and what.
    pub samples: Vec<(Duration, String)>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn count(&self, f: Failure) -> u64 {
        self.failures.get(&f).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: Report) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.retries += other.retries;
        self.connections += other.connections;
        self.added.extend(other.added);
        for (k, v) in other.versions {
            *self.versions.entry(k).or_default() += v;
        }
        self.samples.extend(other.samples);
    }
}

const MAX_SAMPLES: usize = 20;

/// Event-loop threads of the load, as `wrk -t2`: each runs its share of the
/// clients on a single-threaded runtime of its own. The clients then cost
/// about what wrk's do (no work stealing, no wake-ups across threads), and
/// the agent under test keeps the bench's main runtime to itself.
const THREADS: usize = 2;

/// A running load; [`Running::stop`] ends it and collects the report.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Report>>,
    started: Instant,
}

pub fn start(config: Config) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let config = Arc::new(config);
    let threads = (0..THREADS)
        .map(|t| {
            let (config, stop) = (Arc::clone(&config), Arc::clone(&stop));
            std::thread::spawn(move || clients(t, &config, &stop, started))
        })
        .collect();
    Running { stop, threads, started }
}

/// The clients `t`, `t + THREADS`, … of `config`, on this thread.
fn clients(t: usize, config: &Arc<Config>, stop: &Arc<AtomicBool>, started: Instant) -> Report {
    let mut report = Report::default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report.samples.push((started.elapsed(), format!("no runtime for load thread {t}: {e}")));
            return report;
        }
    };
    rt.block_on(async {
        let workers: Vec<JoinHandle<Report>> = (t..config.concurrency)
            .step_by(THREADS)
            .map(|i| {
                let (config, stop) = (Arc::clone(config), Arc::clone(stop));
                tokio::spawn(async move { worker(i as u64, &config, &stop, started).await })
            })
            .collect();
        for w in workers {
            match w.await {
                Ok(r) => report.merge(r),
                Err(e) => report.samples.push((started.elapsed(), format!("a client task failed: {e}"))),
            }
        }
    });
    report
}

impl Running {
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = Report::default();
        for th in self.threads {
            match tokio::task::spawn_blocking(move || th.join()).await {
                Ok(Ok(r)) => report.merge(r),
                _ => report.samples.push((self.started.elapsed(), "a load thread panicked".to_owned())),
            }
        }
        report.elapsed = self.started.elapsed();
        report.added.sort();
        report.samples.sort_by_key(|(t, _)| *t);
        report.samples.truncate(MAX_SAMPLES);
        report
    }
}

async fn worker(index: u64, config: &Config, stop: &AtomicBool, started: Instant) -> Report {
    let mut report = Report::default();
    let mut conn: Option<TcpStream> = None;
    // Clients start out of step, so the long requests are spread over time.
    let mut n = index * 7;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < config.max_duration {
        n += 1;
        let delay = if n.is_multiple_of(config.long_every) { config.long_ms } else { config.short_ms };
        let t0 = Instant::now();
        report.requests += 1;
        let result = tokio::time::timeout(config.timeout, request(&mut conn, config, delay, &mut report)).await;
        let failure = match result {
            Ok(Ok(answer)) if (200..300).contains(&answer.status) => {
                report.ok += 1;
                report.added.push(t0.elapsed().saturating_sub(Duration::from_millis(delay)));
                *report.versions.entry(answer.body.trim().to_owned()).or_default() += 1;
                None
            }
            Ok(Ok(answer)) if answer.status >= 500 => {
                Some((Failure::Status5xx, format!("{} {}", answer.status, answer.body.trim())))
            }
            Ok(Ok(answer)) => Some((Failure::Other, format!("status {}", answer.status))),
            Ok(Err((kind, detail))) => Some((kind, detail)),
            Err(_) => {
                conn = None;
                Some((Failure::Timeout, format!("no complete answer within {:?}", config.timeout)))
            }
        };
        if let Some((kind, detail)) = failure {
            *report.failures.entry(kind).or_default() += 1;
            if report.samples.len() < MAX_SAMPLES {
                report.samples.push((started.elapsed(), format!("{kind:?}: {detail} (GET /slow?ms={delay})")));
            }
        }
    }
    report
}

struct Answer {
    status: u16,
    body: String,
}

/// How far a failed exchange got.
enum Broken {
    /// Nothing of a response arrived: the request may not have been processed.
    BeforeResponse(String),
    /// Part of a response arrived.
    MidResponse(String),
}

async fn request(
    conn: &mut Option<TcpStream>,
    config: &Config,
    delay: u64,
    report: &mut Report,
) -> Result<Answer, (Failure, String)> {
    let close = config.mode == Mode::Close;
    let head = format!(
        "GET /slow?ms={delay} HTTP/1.1\r\nHost: {}\r\nUser-Agent: otturnaut-bench\r\n{}\r\n",
        config.host,
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut retried = false;
    loop {
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(config.addr)
                    .await
                    .map_err(|e| (Failure::Connect, format!("connecting to {}: {e}", config.addr)))?;
                let _ = s.set_nodelay(true);
                report.connections += 1;
                s
            }
        };
        match exchange(&mut stream, head.as_bytes()).await {
            Ok((answer, keep)) => {
                if keep && !close {
                    *conn = Some(stream);
                }
                return Ok(answer);
            }
            Err(Broken::BeforeResponse(_)) if reused && !retried && config.mode == Mode::Retry => {
                report.retries += 1;
                retried = true;
            }
            Err(Broken::BeforeResponse(why)) => {
                let on = if reused { "a reused connection" } else { "a new connection" };
                return Err((Failure::Reset, format!("{on} closed before any response byte: {why}")));
            }
            Err(Broken::MidResponse(why)) => return Err((Failure::Reset, format!("response cut off: {why}"))),
        }
    }
}

/// Sends one request and reads its response. `Ok((answer, keep_alive))`.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(Answer, bool), Broken> {
    stream.write_all(request).await.map_err(|e| Broken::BeforeResponse(format!("write: {e}")))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(parsed) = parse(&buf).map_err(Broken::MidResponse)? {
            return Ok(parsed);
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(Broken::BeforeResponse(format!("read: {e}"))),
            Err(e) => return Err(Broken::MidResponse(format!("read: {e}"))),
        };
        if n == 0 {
            if buf.is_empty() {
                return Err(Broken::BeforeResponse("end of stream".into()));
            }
            // A response delimited by the end of the connection is complete now.
            if let Some(answer) = parse_close_delimited(&buf) {
                return Ok((answer, false));
            }
            return Err(Broken::MidResponse(format!("end of stream after {} bytes", buf.len())));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(Broken::MidResponse("response larger than 1 MiB".into()));
        }
    }
}

struct Head {
    status: u16,
    body_start: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    let mut head =
        Head { status, body_start: end + 4, content_length: None, chunked: false, close: version == "HTTP/1.0" };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.contains("chunked"),
            "connection" => head.close = value.contains("close"),
            _ => {}
        }
    }
    Ok(Some(head))
}

/// A complete response in `buf`, if there is one yet.
fn parse(buf: &[u8]) -> Result<Option<(Answer, bool)>, String> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[head.body_start..];
    let body = if head.chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if let Some(len) = head.content_length {
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        Vec::new()
    } else {
        // Delimited by the end of the connection.
        return Ok(None);
    };
    let answer = Answer { status: head.status, body: String::from_utf8_lossy(&body).into_owned() };
    Ok(Some((answer, !head.close)))
}

fn parse_close_delimited(buf: &[u8]) -> Option<Answer> {
    let head = parse_head(buf).ok()??;
    if head.chunked || head.content_length.is_some() {
        return None;
    }
    Some(Answer { status: head.status, body: String::from_utf8_lossy(&buf[head.body_start..]).into_owned() })
}

/// The body of a complete chunked encoding, `None` if more is needed.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            return Ok(rest.windows(2).any(|w| w == b"\r\n").then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_responses_are_complete_only_with_their_whole_body() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nr1\n";
        assert!(parse(&full[..full.len() - 1]).expect("valid").is_none());
        let (answer, keep) = parse(full).expect("valid").expect("complete");
        assert_eq!((answer.status, answer.body.as_str(), keep), (200, "r1\n", true));
    }

    #[test]
    fn chunked_and_closing_responses_are_understood() {
        let chunked =
            b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (answer, keep) = parse(chunked).expect("valid").expect("complete");
        assert_eq!((answer.status, answer.body.as_str(), keep), (502, "abc", false));
        assert!(parse(&chunked[..chunked.len() - 2]).expect("valid").is_none());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
