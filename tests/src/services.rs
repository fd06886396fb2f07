//! Checks that the real services are up, failing loudly when they are not.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The shared Caddy admin API (started by `cargo xtask services up`).
pub const CADDY_ADMIN: &str = "http://127.0.0.1:2019";

const HOW: &str = "start the services with `cargo xtask services up`";

/// Panics with a clear message unless the Docker Engine answers on its socket.
pub async fn require_docker() {
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    let ok = tokio::time::timeout(Duration::from_secs(5), tokio::net::UnixStream::connect(&sock))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(ok, "Docker Engine is not reachable at {sock}: {HOW}");
}

/// Panics with a clear message unless Caddy's admin API answers.
pub async fn require_caddy() {
    let ok = reqwest::Client::new()
        .get(format!("{CADDY_ADMIN}/config/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(ok, "Caddy's admin API is not reachable at {CADDY_ADMIN}: {HOW}");
}

/// An app id no other test (or test process) uses at the same time.
pub fn unique_app(prefix: &str) -> otturnaut_core::AppId {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let id = format!("t-{prefix}-{}-{n}", std::process::id());
    id.parse().unwrap_or_else(|e| panic!("test app id {id:?} is invalid: {e}"))
}
