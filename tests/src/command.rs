//! The agent's CLI as the integration tests run it.

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
        .env("OTTURNAUT_CADDY_ADMIN", crate::services::caddy_admin())
        .env("OTTURNAUT_NO_AUTO_HTTPS", "1")
        .args(["--port-range", port_range, "--work-dir"])
        .arg(work)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}
