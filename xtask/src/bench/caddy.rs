//! A private `caddy run` for the bench (the shared one on :2019 belongs to
//! the tests), and raw admin API calls to compare the adapter against.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).context("finding a free port")?.port())
}

/// `caddy run` with its admin API on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct PrivateCaddy {
    child: Child,
    pub admin_url: String,
    /// Where our server listens (the adapter creates it there).
    pub listen: SocketAddr,
    dir: tempfile::TempDir,
}

impl PrivateCaddy {
    /// Runs the Caddy binary `bin`.
    pub async fn start(bin: &std::path::Path) -> Result<PrivateCaddy> {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("otturnaut-bench-caddy-").tempdir()?;
            let admin = free_port()?;
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let config = json!({ "admin": { "listen": format!("127.0.0.1:{admin}"), "config": { "persist": false } } });
            let path = dir.path().join("caddy.json");
            std::fs::write(&path, config.to_string())?;
            let log = std::fs::File::create(dir.path().join("caddy.log"))?;
            let child = Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!("starting `{} run` (is Caddy installed? `cargo xtask services up`)", bin.display())
                })?;
            let mut caddy = PrivateCaddy { child, admin_url: format!("http://127.0.0.1:{admin}"), listen, dir };
            if caddy.wait_ready().await {
                return Ok(caddy);
            }
            last = caddy.log();
        }
        bail!("the bench's private Caddy did not come up; its log:\n{last}")
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok(r) = client().get(format!("{}/config/", self.admin_url)).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    /// One admin API call, as a plain HTTP client would make it: a fresh
    /// connection, no retries. Fails unless Caddy answers 2xx.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<String> {
        let mut req = client().request(method.clone(), format!("{}{path}", self.admin_url));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path} on the private Caddy"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(text)
    }
}

/// Like the adapter's client: no proxy from the environment, no pooling
/// (Caddy restarts its admin server on every config change).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
