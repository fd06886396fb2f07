//! Installs the development services' packages on a fresh Debian machine.

use std::fs;
use std::path::Path;
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
