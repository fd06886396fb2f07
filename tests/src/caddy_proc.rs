//! Caddy for tests: private `caddy run` instances with a config of the test's
//! choosing, the agreed settings for the shared instance, and a tiny HTTP
//! upstream to route to.
//!
//! A test that needs a pristine or unusual config starts a [`CaddyProc`]; one
//! that only touches its own apps uses [`shared_caddy`] and unique app ids.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use otturnaut_adapters::caddy::{Caddy, CaddyConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::services::{caddy_admin, caddy_bin};

/// Where our server listens on the shared Caddy (admin on 2019). Every test
/// using the shared instance must agree on it, or `ensure_server` would move
/// the listener back and forth. Outside the default host-port range
/// (10000-20000), so no container competes for it.
pub const SHARED_LISTEN: &str = "127.0.0.1:2080";
/// Overrides [`SHARED_LISTEN`], for a second shared Caddy (another version)
/// beside the first: two Caddies on one address would share it through
/// SO_REUSEPORT and split its connections between them.
pub const SHARED_LISTEN_VAR: &str = "OTTURNAUT_TEST_LISTEN";

/// Where our server listens on the shared Caddy: [`SHARED_LISTEN`] unless
/// [`SHARED_LISTEN_VAR`] says otherwise.
pub fn shared_listen() -> String {
    std::env::var(SHARED_LISTEN_VAR).unwrap_or_else(|_| SHARED_LISTEN.to_owned())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// The adapter as tests configure it: our server on `listen`, no automatic
/// HTTPS (it would try to reach an ACME CA), short timeouts.
pub fn test_caddy(admin_url: &str, listen: &str) -> Caddy {
    Caddy::new(CaddyConfig {
        admin_url: admin_url.to_owned(),
        listen: vec![listen.to_owned()],
        automatic_https: false,
        request_timeout: Duration::from_secs(10),
        // The agent's own directory of upstream files (the default), so that
        // a test's adapter reads the routes the CLI under test writes.
        ..CaddyConfig::default()
    })
    .expect("valid Caddy adapter config")
}

/// The adapter for the shared Caddy: admin on 2019, our server on [`shared_listen`].
pub fn shared_caddy() -> Caddy {
    test_caddy(&caddy_admin(), &shared_listen())
}

/// A `caddy run` of our own, killed when dropped.
#[derive(Debug)]
pub struct CaddyProc {
    child: Child,
    admin_port: u16,
    dir: tempfile::TempDir,
}

impl CaddyProc {
    /// Starts Caddy with `config` (an object; `null` means `{}`) after setting
    /// its `admin` section to a free loopback port, with autosave off. Panics
    /// with Caddy's log if it does not come up, and says so if `caddy` is not
    /// installed.
    pub async fn start(config: Value) -> CaddyProc {
        CaddyProc::start_bin(&caddy_bin(), config).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`CaddyProc::start`] with the Caddy binary `bin`, failing instead
    /// of panicking (the bench reports a failed section and goes on).
    pub async fn start_bin(bin: &Path, config: Value) -> anyhow::Result<CaddyProc> {
        let mut last_log = String::new();
        // A free port can be taken between our probe and Caddy's bind: retry.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("otturnaut-caddy-").tempdir()?;
            let admin_port = free_port();
            let config = with_admin(config.clone(), admin_port);
            let config_path = dir.path().join("caddy.json");
            std::fs::write(&config_path, config.to_string())?;
            let log = std::fs::File::create(dir.path().join("caddy.log"))?;
            let child = Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .current_dir(dir.path())
                // Keeps autosave and certificates out of the real home.
                .env("HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot run `{}`: Caddy 2.6+ must be installed and on PATH \
                         (`cargo xtask services up` installs it)",
                        bin.display()
                    )
                })?;
            let mut proc = CaddyProc { child, admin_port, dir };
            if proc.wait_ready().await {
                return Ok(proc);
            }
            last_log = proc.log();
        }
        anyhow::bail!("private Caddy ({}) did not come up; its last log:\n{last_log}", bin.display())
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok(r) = client().get(format!("{}/config/", self.admin_url())).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Caddy's output so far, for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("caddy.log")) {
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    /// The exact bytes Caddy serves for a config path (e.g. `/config/`).
    pub async fn raw(&self, path: &str) -> String {
        admin_raw(&self.admin_url(), path).await
    }

    /// The config at `path` (e.g. `/config/`) as JSON.
    pub async fn config(&self, path: &str) -> Value {
        admin_get(&self.admin_url(), path).await
    }

    /// `POST path` with a JSON body, as someone other than Otturnaut would.
    pub async fn post(&self, path: &str, body: &Value) {
        let (status, text) = admin_call(&self.admin_url(), reqwest::Method::POST, path, Some(body)).await;
        assert!(status.is_success(), "POST {path} answered {status}: {text}");
    }

    /// Replaces the whole config (keeping this instance's admin section).
    pub async fn load(&self, config: Value) {
        let config = with_admin(config, self.admin_port);
        self.post("/load", &config).await;
    }
}

/// One admin API request, retried while the connection fails: Caddy 2.6
/// replaces its admin server on every config change, and a connection made
/// at that moment can be dropped unanswered.
pub async fn admin_call(
    admin_url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (reqwest::StatusCode, String) {
    let mut last_error = String::new();
    for attempt in 1..=5u64 {
        let mut req = client().request(method.clone(), format!("{admin_url}{path}"));
        if let Some(body) = body {
            req = req.json(body);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status();
                match r.text().await {
                    Ok(text) => return (status, text),
                    Err(e) => last_error = e.to_string(),
                }
            }
            Err(e) => last_error = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
    }
    panic!("{method} {admin_url}{path} failed: {last_error}");
}

/// The exact bytes an admin API `GET` answers; panics unless it succeeds.
pub async fn admin_raw(admin_url: &str, path: &str) -> String {
    let (status, text) = admin_call(admin_url, reqwest::Method::GET, path, None).await;
    assert!(status.is_success(), "GET {path} answered {status}: {text}");
    text
}

/// An admin API `GET`, as JSON.
pub async fn admin_get(admin_url: &str, path: &str) -> Value {
    let raw = admin_raw(admin_url, path).await;
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {raw}"))
}

impl Drop for CaddyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client like the adapter's: no proxy from the environment, no
/// pooling (Caddy 2.6 replaces its admin server on every config change).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building an HTTP client")
}

fn with_admin(config: Value, admin_port: u16) -> Value {
    let mut config = match config {
        Value::Null => json!({}),
        Value::Object(_) => config,
        other => panic!("a Caddy config must be an object, not {other}"),
    };
    config["admin"] = json!({
        "listen": format!("127.0.0.1:{admin_port}"),
        "config": { "persist": false },
    });
    config
}

/// A minimal HTTP/1.1 upstream on 127.0.0.1: answers every request with
/// `body` after `delay`, then closes the connection. Stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    pub port: u16,
    hits: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Answers each request after `delay` and closes the connection.
    pub async fn start(body: &str, delay: Duration) -> Upstream {
        Upstream::spawn(body, delay, false).await
    }

    /// Answers each request after `delay` and keeps connections open for
    /// more, like most app servers; [`Upstream::open_connections`] counts them.
    pub async fn keep_alive(body: &str, delay: Duration) -> Upstream {
        Upstream::spawn(body, delay, true).await
    }

    /// Like [`Upstream::start`], on `addr` (`127.0.0.X:PORT`: a loopback
    /// address stands for another host).
    pub async fn start_at(addr: SocketAddr, body: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("binding an upstream on {addr}: {e}"));
        Upstream::serve(listener, body, Duration::ZERO, false)
    }

    async fn spawn(body: &str, delay: Duration, keep_alive: bool) -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding an upstream on 127.0.0.1");
        Upstream::serve(listener, body, delay, keep_alive)
    }

    fn serve(listener: TcpListener, body: &str, delay: Duration, keep_alive: bool) -> Upstream {
        let port = listener.local_addr().expect("upstream address").port();
        let (hits, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let body = body.to_owned();
        let (counter, opened) = (Arc::clone(&hits), Arc::clone(&open));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.clone();
                let (counter, opened) = (Arc::clone(&counter), Arc::clone(&opened));
                opened.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = if keep_alive {
                        serve_keep_alive(&mut stream, &body, delay, &counter).await
                    } else {
                        answer(stream, &body, delay, &counter).await
                    };
                    opened.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { port, hits, open, task }
    }

    /// Answers every request with `101 Switching Protocols` and then echoes
    /// whatever the client sends, like a WebSocket server after its
    /// handshake: Caddy proxies it as an upgraded stream.
    pub async fn upgrade_echo() -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding an upstream on 127.0.0.1");
        let port = listener.local_addr().expect("upstream address").port();
        let (hits, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counter, opened) = (Arc::clone(&hits), Arc::clone(&open));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, opened) = (Arc::clone(&counter), Arc::clone(&opened));
                opened.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_ok_and(|h| !h.is_empty()) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let head =
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
                        if stream.write_all(head.as_bytes()).await.is_ok() {
                            let (mut rx, mut tx) = stream.split();
                            let _ = tokio::io::copy(&mut rx, &mut tx).await;
                        }
                    }
                    opened.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { port, hits, open, task }
    }

    /// Requests that reached this upstream.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections to this upstream that the client has not closed yet.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Answers requests on one connection until the client closes it.
async fn serve_keep_alive(
    stream: &mut TcpStream,
    body: &str,
    delay: Duration,
    hits: &AtomicUsize,
) -> std::io::Result<()> {
    let response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    while !read_head(stream).await?.is_empty() {
        hits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        stream.write_all(response.as_bytes()).await?;
    }
    Ok(())
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, body: &str, delay: Duration, hits: &AtomicUsize) -> std::io::Result<()> {
    read_head(&mut stream).await?;
    hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; test requests carry no body.
pub(crate) async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// `GET /` through a Caddy listener with the given `Host`, on a fresh
/// connection. Returns the status code and body.
pub async fn get_via(listen: &str, host: &str) -> std::io::Result<(u16, String)> {
    get_path_via(listen, host, "/").await
}

/// `GET path` through a Caddy listener with the given `Host` (see [`get_via`]).
pub async fn get_path_via(listen: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr =
        listen.parse().map_err(|e| std::io::Error::other(format!("listen address {listen}: {e}")))?;
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    // Caddy may answer chunked when the upstream closes instead of sizing.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
