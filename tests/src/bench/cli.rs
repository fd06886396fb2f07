//! The `otturnaut` binary, built in release mode and pointed at the bench's
//! private Caddy, for what only separate processes can show.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use otturnaut_core::AppId;
use tokio::process::Command;

use super::app::{PORTS, Rig, domain, workspace_root};

#[derive(Debug, Clone)]
pub struct Cli {
    pub bin: PathBuf,
    globals: Vec<String>,
}

/// Builds `otturnaut` in release mode; its path.
pub async fn build() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "--release", "--package", "otturnaut-cli", "--bin", "otturnaut"])
        .current_dir(&root)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(1800), status)
        .await
        .context("building the otturnaut CLI took more than 30 minutes")??;
    if !status.success() {
        bail!("cargo build --release -p otturnaut-cli failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release").join("otturnaut");
    if !bin.is_file() {
        bail!("cargo built the CLI but {} does not exist", bin.display());
    }
    Ok(bin)
}

impl Cli {
    pub fn new(bin: PathBuf, rig: &Rig) -> Cli {
        let globals = vec![
            "--caddy-admin".into(),
            rig.config.caddy_admin.clone(),
            "--listen".into(),
            rig.config.listen.join(","),
            "--no-auto-https".into(),
            "--port-range".into(),
            format!("{}-{}", PORTS.0, PORTS.1),
            "--work-dir".into(),
            rig.config.work_dir.display().to_string(),
        ];
        Cli { bin, globals }
    }

    /// `otturnaut <globals> <args>`, output captured, killed if dropped.
    pub fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        self.prepare(&mut cmd, args);
        cmd
    }

    /// Adds the global flags and `args` to `cmd` (which may wrap the binary,
    /// e.g. `/usr/bin/time -v otturnaut`).
    pub fn prepare(&self, cmd: &mut Command, args: &[String]) {
        cmd.args(args)
            .args(&self.globals)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
    }

    /// The arguments of a prebuilt-image deploy of the fixture app.
    pub fn deploy_args(app: &AppId, version: &str) -> Vec<String> {
        [
            "deploy",
            app.as_str(),
            "--image",
            super::app::IMAGE,
            "--container-port",
            "8080",
            "--domain",
            domain(app).as_str(),
            "--env",
            &format!("APP_VERSION={version}"),
            "--health",
            "http:/healthz",
            "--health-timeout",
            "60s",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}
