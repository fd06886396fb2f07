//! The API conformance step of `cargo xtask test`: schemathesis (PyPI, in a
//! venv under the services' state dir) against a running `otturnaut serve`,
//! with the daemon's own OpenAPI document. Read-only calls with valid data,
//! and deploy requests with schema-breaking bodies (all refused before
//! anything is touched): no 5xx, every answer as documented, nothing left.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::services::Env;

/// The schemathesis release the gate runs.
pub const SCHEMATHESIS: &str = "4.32.5";

const TOKEN: &str = "xtask-schemathesis-token-0123456789";

/// Where schemathesis is installed: a venv named after its version.
fn venv(state: &Path) -> PathBuf {
    state.join(format!("schemathesis-{SCHEMATHESIS}"))
}

/// Installs schemathesis into its venv unless that version is there, and
/// returns its `st` command.
pub fn install(state: &Path) -> Result<PathBuf> {
    let dir = venv(state);
    let st = dir.join("bin").join("st");
    let installed = Command::new(&st).arg("--version").output().ok().filter(|o| o.status.success());
    if installed.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS)) {
        return Ok(st);
    }
    println!("installing schemathesis {SCHEMATHESIS} (PyPI) into {}", dir.display());
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&dir))?;
    run(Command::new(dir.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        &format!("schemathesis=={SCHEMATHESIS}"),
    ]))?;
    Ok(st)
}

fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    println!("+ {line}");
    let status = cmd.stdin(Stdio::null()).status().with_context(|| format!("running {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// `otturnaut serve` on a free port, killed (and its files removed) on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    fn start(root: &Path, otturnaut: &Path) -> Result<Daemon> {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join("target").join(format!("xtask-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let token = dir.join("token");
        std::fs::write(&token, TOKEN)?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(otturnaut)
            .args(["serve", "--api-listen", &format!("127.0.0.1:{port}"), "--token-file"])
            .arg(&token)
            // Its background reconcile looks at no real app of the shared Docker daemon.
            .args(["--watch-apps", "schemathesis-none", "--work-dir"])
            .arg(dir.join("work"))
            .args(["--caddy-admin", "http://127.0.0.1:2019", "--listen", "127.0.0.1:2080", "--no-auto-https"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {} serve", otturnaut.display()))?;
        let mut daemon = Daemon { child, dir, base: format!("http://127.0.0.1:{port}") };
        let addr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if crate::http::get_tcp(addr, "/v1/health", Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let log = std::fs::read_to_string(daemon.dir.join("serve.log")).unwrap_or_default();
                bail!("otturnaut serve exited with {status}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("otturnaut serve did not answer on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the two schemathesis passes; an error says which failed.
pub fn run_checks(env: &Env, cargo: &std::ffi::OsStr, root: &Path) -> Result<()> {
    let st = install(&env.state)?;
    run(Command::new(cargo).args(["build", "--locked", "-p", "otturnaut-cli"]).current_dir(root))?;
    let otturnaut = root.join("target").join("debug").join("otturnaut");
    let daemon = Daemon::start(root, &otturnaut)?;
    let schema = format!("{}/v1/openapi.json", daemon.base);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let common = |cmd: &mut Command| {
        cmd.arg("run")
            .arg(&schema)
            .args(["--header", &auth, "--url", &daemon.base])
            .args(["--checks", "not_a_server_error,status_code_conformance,response_schema_conformance"])
            // No stateful phase: it would chain calls through links into real deploys.
            .args(["--max-examples", "30", "--no-color", "--phases", "examples,coverage,fuzzing"])
            .current_dir(&daemon.dir);
    };
    // Read-only: every GET with valid data (log follows end at once: no app exists).
    let mut reads = Command::new(&st);
    common(&mut reads);
    reads.args(["--include-method", "GET", "--mode", "positive"]);
    run(&mut reads).context("schemathesis, read-only endpoints")?;
    // Bad input: deploy and rollback requests that break the schema, all refused.
    let mut bad = Command::new(&st);
    common(&mut bad);
    // One filter only: schemathesis joins different filters with "or".
    bad.args(["--include-operation-id-regex", "^(deploy|rollback)$", "--mode", "negative"]);
    run(&mut bad).context("schemathesis, bad deploy and rollback requests")?;
    Ok(())
}
