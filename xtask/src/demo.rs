//! `cargo xtask demo`: the bundled example app deployed with the real CLI,
//! then changed and deployed again to show a blue-green switch.
//!
//! Everything it makes lives under `target/demo/` (a git repository built from
//! `examples/hello` with the host's busybox copied in, and the agent's work
//! dir), so the repository itself never holds a busybox binary. Re-running it
//! deploys version 1 and then version 2 again on top of what is live.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::services::{self, Env};

const APP: &str = "hello";
const DOMAIN: &str = "hello.localhost";
/// Where our Caddy server listens for the demo: plain HTTP on loopback.
const LISTEN: &str = "127.0.0.1:8080";
const BUSYBOX: &str = "/bin/busybox";

pub fn run(env: &Env) -> Result<ExitCode> {
    let root = crate::workspace_root();
    let target = target_dir(&root);
    let demo = target.join("demo");
    let repo = demo.join("hello");
    let work = demo.join("work");

    heading("services");
    services::up(env)?;

    heading("building the CLI: cargo build -p otturnaut-cli");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let status = Command::new(&cargo)
        .args(["build", "-p", "otturnaut-cli"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build -p otturnaut-cli` failed ({status})");
    }
    let bin = target.join("debug").join("otturnaut");
    let cli = Cli { bin, work };

    let example = root.join("examples").join("hello");
    let began = Instant::now();
    for version in [1, 2] {
        heading(&format!("version {version}: commit it to {}", repo.display()));
        let commit = commit_version(&example, &repo, version)?;
        println!("committed {commit}");

        heading(&format!("deploying version {version}"));
        cli.deploy(&repo)?;

        heading("asking Caddy for it");
        show_curl()?;
    }

    heading("done");
    println!(
        "Version 2 replaced version 1 without downtime: it started next to it, passed its health check, \
         got the traffic, then the old container was drained and removed ({:.0}s in all).\n",
        began.elapsed().as_secs_f64()
    );
    println!("The app:    http://{DOMAIN}:8080/ (Caddy on {LISTEN}, plain HTTP)");
    println!("Try it:     {}", curl_line());
    println!("Its state:  {}", cli.line(&["status"]));
    println!("Its output: {}", cli.line(&["logs", APP]));
    println!("Remove it:  {}", cli.line(&["undeploy", APP]));
    println!(
        "\nNote: `cargo xtask test` moves Otturnaut's server in the shared Caddy to 127.0.0.1:2080 \
         (what the tests use); run the demo again to bring it back to {LISTEN}."
    );
    Ok(ExitCode::SUCCESS)
}

/// The CLI with the demo's settings.
struct Cli {
    bin: PathBuf,
    work: PathBuf,
}

impl Cli {
    fn global_args(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            LISTEN.into(),
            "--no-auto-https".into(),
            "--work-dir".into(),
            self.work.display().to_string(),
        ]
    }

    /// The command line a person would type.
    fn line(&self, args: &[&str]) -> String {
        let mut words = vec![self.bin.display().to_string()];
        words.extend(self.global_args());
        words.extend(args.iter().map(|a| a.to_string()));
        words.join(" ")
    }

    fn deploy(&self, repo: &Path) -> Result<()> {
        let url = format!("file://{}", repo.display());
        let args =
            ["deploy", APP, "--repo", &url, "--container-port", "8080", "--domain", DOMAIN, "--health", "http:/"];
        println!("$ {}", self.line(&args));
        let status = Command::new(&self.bin)
            .args(self.global_args())
            .args(args)
            .status()
            .with_context(|| format!("running {}", self.bin.display()))?;
        match status.code() {
            Some(0) => Ok(()),
            Some(4) => bail!(
                "the deploy could not reach Docker or Caddy (exit 4); `cargo xtask services status` shows what is down"
            ),
            _ => bail!("the deploy failed ({status}); its output above says why"),
        }
    }
}

fn curl_line() -> String {
    format!("curl -H 'Host: {DOMAIN}' http://{LISTEN}/")
}

/// Runs the curl line and shows its output; retries briefly, as a person
/// would, should Caddy still be applying the new route.
fn show_curl() -> Result<()> {
    println!("$ {}", curl_line());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-H", &format!("Host: {DOMAIN}"), &format!("http://{LISTEN}/")])
            .output()
            .context("running curl (installed by `cargo xtask services up`)")?;
        let body = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && body.contains("Hello") {
            print!("{body}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("curl did not get the page: {}{}", body.trim(), String::from_utf8_lossy(&out.stderr).trim());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Makes `repo` hold `examples/hello` at `version` (plus busybox) and
/// commits it; returns the commit id.
fn commit_version(example: &Path, repo: &Path, version: u32) -> Result<String> {
    fs::create_dir_all(repo).with_context(|| format!("creating {}", repo.display()))?;
    if !repo.join(".git").exists() {
        git(repo, &["init", "-q", "-b", "main"])?;
    }
    copy_tree(example, repo)?;
    fs::copy(BUSYBOX, repo.join("busybox")).with_context(|| {
        format!("copying {BUSYBOX} into the demo repository (Debian's busybox-static; `cargo xtask services up` installs it)")
    })?;
    let index = repo.join("www").join("index.html");
    let page = fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
    if !page.contains("version: 1") {
        bail!("{} no longer has a `version: 1` line to change", index.display());
    }
    fs::write(&index, page.replace("version: 1", &format!("version: {version}")))
        .with_context(|| format!("writing {}", index.display()))?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "--allow-empty", "-m", &format!("hello, version {version}")])?;
    git(repo, &["rev-parse", "HEAD"])
}

/// Copies the files of `from` into `to`, except a busybox someone copied
/// into the example by hand (it comes from the host instead) and the
/// example's `.gitignore`, which keeps busybox out of *our* repository but
/// must not keep it out of the demo's: the deploy builds what is committed.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "busybox" || name == ".gitignore" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// `git` in `repo`, untouched by the user's and the system's git config (a
/// signing or hook setting there must not break the demo).
fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Otturnaut Demo", "-c", "user.email=demo@otturnaut.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {} in {} failed: {}", args.join(" "), repo.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
