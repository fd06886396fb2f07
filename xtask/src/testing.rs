//! `cargo xtask test`: the whole gate CI runs, in one command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::services::{self, CaddyFlavor, Env};

#[derive(Debug)]
pub struct Options {
    pub skip_lints: bool,
    /// Skip the second pass of the Caddy-facing tests on the other Caddy version.
    pub one_caddy: bool,
    pub cargo_test_args: Vec<String>,
}

/// The cluster `tests/tests/swarm.rs` and `swarm_nodes.rs` deploy to: one task on each of 3 nodes.
const SWARM_NODES: u8 = 3;

/// The test binaries that talk to Caddy, run again on the other supported version. `swarm`
/// routes through the shared Caddy too (one upstream per task, passive health); `swarm_nodes`
/// (node loss, the same routes) runs once, to keep CI under 30 minutes.
const CADDY_TESTS: &[&str] = &["caddy", "e2e", "cli", "chaos", "swarm"];

/// Where the second pass's Caddy puts our server: not the shared one's 2080, since two Caddies
/// on one address would share it through SO_REUSEPORT. Outside the host-port range.
const SECOND_LISTEN: &str = "127.0.0.1:2180";

struct Step {
    name: &'static str,
    ok: bool,
    took: Duration,
    note: String,
}

pub fn run(env: &Env, opts: &Options) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let root = crate::workspace_root();
    println!(
        "xtask test: workspace {}, CI={}",
        root.display(),
        std::env::var("CI").unwrap_or_else(|_| "(unset)".into())
    );
    let mut steps = Vec::new();

    let began = Instant::now();
    let services = services::up(env);
    let services_ok = services.is_ok();
    steps.push(Step {
        name: "services up",
        ok: services_ok,
        took: began.elapsed(),
        note: services.err().map(|e| format!("{e:#}")).unwrap_or_default(),
    });
    // Its own step: without the cluster only tests/tests/swarm.rs fails (loudly), not the rest.
    if services_ok {
        let began = Instant::now();
        let swarm = crate::swarm::up(env, SWARM_NODES);
        steps.push(Step {
            name: "swarm up",
            ok: swarm.is_ok(),
            took: began.elapsed(),
            note: swarm.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        });
    }

    // Without the services every integration test would fail with the same message, which
    // buries the real cause printed above.
    if services_ok {
        if !opts.skip_lints {
            ensure_component(&cargo, "fmt", "rustfmt");
            ensure_component(&cargo, "clippy", "clippy");
            steps.push(cargo_step(&cargo, &root, "fmt", &["fmt", "--all", "--", "--check"], &[]));
        }
        // All features: the bench's unit tests and lints build only with xtask's `bench`
        // (the other features are already on through the tests crate).
        // Private Caddies in the tests run the shared one's version; the second pass runs the
        // Caddy-facing tests again with the other version, shared instance included.
        let shared = services::running_caddy(env).unwrap_or(CaddyFlavor::Debian);
        let mut test_args = vec!["test", "--workspace", "--all-features", "--locked", "--no-fail-fast"];
        test_args.extend(opts.cargo_test_args.iter().map(String::as_str));
        let first = caddy_env(env, shared, None).map(|vars| cargo_step(&cargo, &root, "test", &test_args, &vars));
        steps.push(first.unwrap_or_else(|e| failed_step("test", &e)));
        if !opts.one_caddy {
            steps.push(second_pass(env, &cargo, &root, shared.other()));
        }
        let began = Instant::now();
        let api = crate::api_check::run_checks(env, &cargo, &root);
        steps.push(Step {
            name: "api schema",
            ok: api.is_ok(),
            took: began.elapsed(),
            note: api.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        });
        if !opts.skip_lints {
            steps.push(cargo_step(
                &cargo,
                &root,
                "clippy",
                &["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"],
                &[],
            ));
        }
    }

    remove_test_upstream_files();

    println!("\n==> summary");
    for s in &steps {
        let verdict = if s.ok { "ok" } else { "FAILED" };
        println!("  {:<12} {verdict:<7} {:>7.1}s", s.name, s.took.as_secs_f64());
        if !s.note.is_empty() {
            for line in s.note.lines() {
                println!("      {line}");
            }
        }
    }
    if !services_ok {
        println!("  (fmt, test and clippy were not run: the services they need are not up)");
    }
    let all_ok = steps.iter().all(|s| s.ok);
    println!("{}", if all_ok { "ALL PASSED" } else { "FAILED" });
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The variables that make the tests run `flavor`'s Caddy, and check they do. `admin` and
/// listen address of a second shared Caddy, if the tests must not use the one on 2019.
fn caddy_env(env: &Env, flavor: CaddyFlavor, second: Option<&SecondCaddy>) -> Result<Vec<(String, String)>> {
    let bin = flavor.install(env)?;
    let version = flavor.version().ok_or_else(|| anyhow::anyhow!("cannot tell the version of {}", bin.display()))?;
    let mut vars = vec![
        ("OTTURNAUT_TEST_CADDY".to_owned(), bin.display().to_string()),
        ("OTTURNAUT_TEST_CADDY_VERSION".to_owned(), version),
    ];
    if let Some(second) = second {
        vars.push(("OTTURNAUT_TEST_CADDY_ADMIN".to_owned(), second.admin_url()));
        vars.push(("OTTURNAUT_TEST_LISTEN".to_owned(), SECOND_LISTEN.to_owned()));
    }
    Ok(vars)
}

/// The Caddy-facing test binaries on `flavor`, with a Caddy of that flavor standing in for
/// the shared one (started here on a free admin port, stopped afterwards).
fn second_pass(env: &Env, cargo: &OsString, root: &Path, flavor: CaddyFlavor) -> Step {
    let name = match flavor {
        CaddyFlavor::Debian => "test Debian's Caddy",
        CaddyFlavor::Current => "test current Caddy",
    };
    let began = Instant::now();
    let run = || -> Result<Step> {
        let bin = flavor.install(env)?;
        let second = SecondCaddy::start(&bin, root)?;
        let vars = caddy_env(env, flavor, Some(&second))?;
        let mut args = vec!["test", "-p", "otturnaut-tests", "--all-features", "--locked", "--no-fail-fast"];
        for t in CADDY_TESTS {
            args.extend(["--test", t]);
        }
        Ok(cargo_step(cargo, root, name, &args, &vars))
    };
    run().unwrap_or_else(|e| Step { took: began.elapsed(), ..failed_step(name, &e) })
}

fn failed_step(name: &'static str, e: &anyhow::Error) -> Step {
    Step { name, ok: false, took: Duration::ZERO, note: format!("{e:#}") }
}

/// A `caddy run` of the second pass's version, killed when dropped.
struct SecondCaddy {
    child: std::process::Child,
    admin: std::net::SocketAddr,
    dir: PathBuf,
}

impl SecondCaddy {
    fn start(bin: &Path, root: &Path) -> Result<Self> {
        let dir = root.join("target").join(format!("xtask-caddy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.join("caddy.json");
        std::fs::write(&config, format!(r#"{{"admin":{{"listen":"{admin}","config":{{"persist":false}}}}}}"#))?;
        let log = std::fs::File::create(dir.join("caddy.log"))?;
        println!("\n==> {} run on admin {admin}, our server on {SECOND_LISTEN}", bin.display());
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .env("HOME", &dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        let mut caddy = SecondCaddy { child, admin, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if crate::http::get_tcp(admin, "/config/", Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
                return Ok(caddy);
            }
            if let Ok(Some(status)) = caddy.child.try_wait() {
                anyhow::bail!("{} exited with {status} before answering on {admin}", bin.display());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not answer on {admin} within 20 s", bin.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

impl Drop for SecondCaddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cargo_step(cargo: &OsString, root: &Path, name: &'static str, args: &[&str], vars: &[(String, String)]) -> Step {
    println!("\n==> cargo {}", args.join(" "));
    for (k, v) in vars {
        println!("    {k}={v}");
    }
    let began = Instant::now();
    let result = Command::new(cargo).args(args).envs(vars.iter().map(|(k, v)| (k, v))).current_dir(root).status();
    let (ok, note) = match result {
        Ok(status) if status.success() => (true, String::new()),
        Ok(status) => (false, format!("`cargo {}` exited with {status}", args.join(" "))),
        Err(e) => (false, format!("could not run cargo: {e}")),
    };
    Step { name, ok, took: began.elapsed(), note }
}

/// A minimal rustup profile lacks rustfmt and clippy; add them rather than fail the gate on
/// a tooling gap. If this fails too, the step itself reports the problem.
fn ensure_component(cargo: &OsString, subcommand: &str, component: &str) {
    let present = Command::new(cargo).args([subcommand, "--version"]).output().is_ok_and(|o| o.status.success());
    if !present && crate::proc::which("rustup").is_some() {
        println!("+ rustup component add {component}");
        let _ = Command::new("rustup").args(["component", "add", component]).status();
    }
}

/// The upstream files of the tests' apps (named `t-…` by `unique_app`): a test whose private
/// Caddy dies with its routes cannot remove them, and /run keeps them until a reboot.
fn remove_test_upstream_files() {
    let dir = Path::new("/run/otturnaut/upstreams");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with("t-")) && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        println!("removed {removed} test apps' upstream files from {}", dir.display());
    }
}
