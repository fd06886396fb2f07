//! `cargo xtask test`: the whole gate CI runs, in one command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::services::{self, Env};

#[derive(Debug)]
pub struct Options {
    pub skip_lints: bool,
    pub cargo_test_args: Vec<String>,
}

struct Step {
    name: &'static str,
    ok: bool,
    took: Duration,
    note: String,
}

pub fn run(env: &Env, opts: &Options) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let root = workspace_root();
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

    // Without the services every integration test would fail with the same message, which
    // buries the real cause printed above.
    if services_ok {
        if !opts.skip_lints {
            ensure_component(&cargo, "fmt", "rustfmt");
            ensure_component(&cargo, "clippy", "clippy");
            steps.push(cargo_step(&cargo, &root, "fmt", &["fmt", "--all", "--", "--check"]));
        }
        // All features: the bench's unit tests and lints build only with xtask's `bench`
        // (the other features are already on through the tests crate).
        let mut test_args = vec!["test", "--workspace", "--all-features", "--locked", "--no-fail-fast"];
        test_args.extend(opts.cargo_test_args.iter().map(String::as_str));
        steps.push(cargo_step(&cargo, &root, "test", &test_args));
        if !opts.skip_lints {
            steps.push(cargo_step(
                &cargo,
                &root,
                "clippy",
                &["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"],
            ));
        }
    }

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

fn cargo_step(cargo: &OsString, root: &Path, name: &'static str, args: &[&str]) -> Step {
    println!("\n==> cargo {}", args.join(" "));
    let began = Instant::now();
    let result = Command::new(cargo).args(args).current_dir(root).status();
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

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
