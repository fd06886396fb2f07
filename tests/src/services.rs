//! Checks that the real services are up, failing loudly when they are not.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The shared Caddy admin API (started by `cargo xtask services up`).
pub const CADDY_ADMIN: &str = "http://127.0.0.1:2019";

/// Names the Caddy binary private instances run (default: `caddy` on PATH).
/// `cargo xtask test` sets it to run the Caddy-facing tests a second time on
/// the other supported Caddy version.
pub const CADDY_BIN_VAR: &str = "OTTURNAUT_TEST_CADDY";
/// Overrides [`CADDY_ADMIN`]: the shared Caddy of the second pass.
pub const CADDY_ADMIN_VAR: &str = "OTTURNAUT_TEST_CADDY_ADMIN";
/// The version (`2.6.2`, `2.11.7`) the tests must find; unset means any.
pub const CADDY_VERSION_VAR: &str = "OTTURNAUT_TEST_CADDY_VERSION";

/// The shared Caddy's admin URL: [`CADDY_ADMIN`] unless [`CADDY_ADMIN_VAR`] says otherwise.
pub fn caddy_admin() -> String {
    std::env::var(CADDY_ADMIN_VAR).unwrap_or_else(|_| CADDY_ADMIN.to_owned())
}

/// The Caddy binary private instances run. Panics if [`CADDY_BIN_VAR`] names
/// a file that is not there: a test must never quietly fall back to another
/// Caddy than the one it was asked to test.
pub fn caddy_bin() -> std::path::PathBuf {
    match std::env::var_os(CADDY_BIN_VAR) {
        Some(bin) => {
            let bin = std::path::PathBuf::from(bin);
            assert!(bin.is_file(), "{CADDY_BIN_VAR}={} does not exist: {HOW_CURRENT}", bin.display());
            bin
        }
        None => "caddy".into(),
    }
}

const HOW_CURRENT: &str = "`cargo xtask services up --caddy current` installs Caddy 2.11.7";

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
    let admin = caddy_admin();
    let ok = reqwest::Client::new()
        .get(format!("{admin}/config/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(ok, "Caddy's admin API is not reachable at {admin}: {HOW}");
}

/// An app id no other test (or test process) uses at the same time.
pub fn unique_app(prefix: &str) -> otturnaut_core::AppId {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let id = format!("t-{prefix}-{}-{n}", std::process::id());
    id.parse().unwrap_or_else(|e| panic!("test app id {id:?} is invalid: {e}"))
}

/// The CLI `bin` run as a test means it: on the shared Caddy without
/// automatic HTTPS, in the test's own port range and work dir, with
/// `args` after those, and no agent setting inherited from the environment
/// that runs the tests.
pub fn otturnaut_command(
    bin: &str,
    work: &std::path::Path,
    port_range: &str,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    for var in [
        "OTTURNAUT_CADDY_ADMIN",
        "OTTURNAUT_LISTEN",
        "OTTURNAUT_NO_AUTO_HTTPS",
        "OTTURNAUT_PORT_RANGE",
        "OTTURNAUT_WORK_DIR",
        "OTTURNAUT_CONFIG",
        "OTTURNAUT_API_LISTEN",
        "OTTURNAUT_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1")
        .env("OTTURNAUT_LISTEN", crate::caddy_proc::shared_listen())
        .env("OTTURNAUT_CADDY_ADMIN", caddy_admin())
        .env("OTTURNAUT_NO_AUTO_HTTPS", "1")
        .args(["--port-range", port_range, "--work-dir"])
        .arg(work)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}
