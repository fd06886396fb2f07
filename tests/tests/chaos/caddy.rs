//! A private Caddy that the harness can kill and bring back.
//!
//! Unlike `otturnaut_tests::caddy_proc::CaddyProc`, this one autosaves its
//! config (`admin.config.persist`), as a production Caddy does, so that a
//! restart with `--resume` comes back with the routes Otturnaut wrote, and a
//! restart without it comes back empty: the two ways a real host can restart it.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use otturnaut_tests::caddy_proc::free_port;
use serde_json::json;

#[derive(Debug)]
pub struct Caddy {
    dir: tempfile::TempDir,
    admin_port: u16,
    /// Where our server listens (the CLI's `--listen`).
    pub listen: String,
    child: Option<Child>,
}

impl Caddy {
    pub async fn start() -> anyhow::Result<Caddy> {
        let mut last = None;
        // A free port can be taken between our probe and Caddy's bind: retry.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("otturnaut-chaos-caddy-").tempdir()?;
            let admin_port = free_port();
            let config = json!({
                "admin": { "listen": format!("127.0.0.1:{admin_port}"), "config": { "persist": true } }
            });
            fs::write(dir.path().join("caddy.json"), config.to_string())?;
            let listen = format!("127.0.0.1:{}", free_port());
            let mut caddy = Caddy { dir, admin_port, listen, child: None };
            match caddy.spawn(false).await {
                Ok(()) => return Ok(caddy),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("private Caddy did not start")))
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    fn autosave(&self) -> PathBuf {
        self.dir.path().join("config/caddy/autosave.json")
    }

    async fn spawn(&mut self, resume: bool) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(self.dir.path().join("caddy.log"))?;
        let mut cmd = Command::new(otturnaut_tests::services::caddy_bin());
        cmd.arg("run").arg("--config").arg(self.dir.path().join("caddy.json"));
        if resume {
            cmd.arg("--resume");
        }
        let child = cmd
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running `caddy` (Caddy 2.6+ must be on PATH; `cargo xtask services up` installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("private Caddy exited with {status}; its log:\n{}", self.log());
            }
            if let Ok(r) = client.get(format!("{}/config/", self.admin_url())).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        bail!("private Caddy did not answer within 15 s; its log:\n{}", self.log())
    }

    /// SIGKILL: no graceful shutdown, as when the host loses it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Caddy again. With `resume`, from its autosaved config (what a
    /// service manager running `caddy run --resume` does); without, from the
    /// original, empty file.
    pub async fn restart(&mut self, resume: bool) -> anyhow::Result<()> {
        self.kill();
        if resume && !self.autosave().exists() {
            bail!("Caddy has no autosaved config at {} to resume from", self.autosave().display());
        }
        self.spawn(resume).await
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("caddy.log")) {
            let _ = std::io::Read::read_to_string(&mut f, &mut out);
        }
        out
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        self.kill();
    }
}
