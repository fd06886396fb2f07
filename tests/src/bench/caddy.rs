//! The bench's private Caddy (the shared one on :2019 belongs to the tests):
//! a [`CaddyProc`] plus the address our server listens on, and raw admin API
//! calls to compare the adapter against.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::caddy_proc::{CaddyProc, client, free_port};

/// `caddy run` with its admin API on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct PrivateCaddy {
    _proc: CaddyProc,
    pub admin_url: String,
    /// Where our server listens (the adapter creates it there).
    pub listen: SocketAddr,
}

impl PrivateCaddy {
    /// Runs the Caddy binary `bin`.
    pub async fn start(bin: &Path) -> Result<PrivateCaddy> {
        let proc = CaddyProc::start_bin(bin, json!({})).await?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        Ok(PrivateCaddy { admin_url: proc.admin_url(), _proc: proc, listen })
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
