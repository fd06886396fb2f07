//! Tests of `--spec FILE` through `input::deploy_spec` (a module of its own:
//! `input` uses `specfile`, so its tests cannot live inside it without a cycle).

use clap::Parser;

use crate::args::DeployArgs;
use crate::args::{Cli, Command};
use crate::input::deploy_spec;

fn args(extra: &[&str]) -> DeployArgs {
    let mut argv = vec!["otturnaut", "deploy"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("parses").command {
        Command::Deploy(d) => *d,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn the_example_file_deploys_like_the_same_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = dir.path().join("shop.env");
    std::fs::write(&env, "FROM_FILE=1\n").expect("write");
    let spec_path = dir.path().join("shop.toml");
    let example =
        include_str!("../../examples/shop.toml").replace("/etc/otturnaut/shop.env", &env.display().to_string());
    std::fs::write(&spec_path, example).expect("write");
    let spec_file = spec_path.display().to_string();
    let from_file = deploy_spec(&args(&["shop", "--spec", &spec_file])).expect("valid");
    let env_path = env.display().to_string();
    let flags = deploy_spec(&args(&[
        "shop",
        "--repo",
        "https://github.com/acme/shop.git",
        "--ref",
        "v1.4.0",
        "--container-port",
        "8080",
        "--domain",
        "shop.example.com",
        "--domain",
        "www.shop.example.com",
        "--env-file",
        &env_path,
        "--env",
        "LOG_LEVEL=info",
        "--health",
        "http:/healthz",
        "--health-timeout",
        "1m",
        "--volume",
        "shop-data:/var/lib/shop",
        "--memory",
        "512m",
        "--cpus",
        "1.5",
        "--pids-limit",
        "200",
        "--network",
        "shop-net",
        "--command",
        "bin/server --port 8080",
        "--log-opt",
        "max-size=50m",
        "--stop-timeout",
        "20s",
        "--drain-timeout",
        "1m",
    ]))
    .expect("valid");
    // DeploySpec holds secrets (not comparable as such): compare what
    // serializes plus the env values.
    let json = |s: &otturnaut_core::DeploySpec| serde_json::to_value(s).expect("ser");
    assert_eq!(json(&from_file), json(&flags));
    let env = |s: &otturnaut_core::DeploySpec| -> Vec<(String, String)> {
        s.env.iter().map(|(k, v)| (k.to_string(), v.expose().to_owned())).collect()
    };
    assert_eq!(env(&from_file), env(&flags));
    assert_eq!(env(&from_file), [("FROM_FILE".into(), "1".into()), ("LOG_LEVEL".into(), "info".into())]);
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.toml");
    std::fs::write(
        &path,
        "image = \"x\"\ncontainer_port = 80\nmemory = \"1g\"\nnetworks = [\"a-net\"]\n[env]\nA = \"file\"\nB = \"file\"\n",
    )
    .expect("write");
    let p = path.display().to_string();
    let spec = deploy_spec(&args(&["a", "--spec", &p, "--memory", "256m", "--env", "A=flag", "--network", "b-net"]))
        .expect("valid");
    assert_eq!(spec.runtime.memory.map(|m| m.to_string()).as_deref(), Some("256m"));
    assert_eq!(spec.runtime.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["b-net"]);
    assert_eq!(spec.env.get(&"A".parse().expect("name")).map(|v| v.expose()), Some("flag"));
    assert_eq!(spec.env.get(&"B".parse().expect("name")).map(|v| v.expose()), Some("file"));
    assert_eq!(spec.container_port.get(), 80);
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let p = path.display().to_string();
    let err = |text: &str, extra: &[&str]| {
        std::fs::write(&path, text).expect("write");
        let mut argv = vec!["a", "--spec", p.as_str()];
        argv.extend_from_slice(extra);
        deploy_spec(&args(&argv)).expect_err("invalid").to_string()
    };
    let e = err("image = \"x\"\ncontainer_port = 80\nmemroy = \"1g\"\n", &[]);
    assert!(e.starts_with("--spec") && e.contains("line 3") && e.contains("memroy"), "{e}");
    let e = err("image = \"x\"\ncontainer_port = 80\n\nmemory = \"lots\"\n", &[]);
    assert!(e.starts_with("--spec") && e.contains("line 4, memory") && e.contains("lots"), "{e}");
    let e = err("image = \"x\"\ncontainer_port = 80\nmemory = \"lots\"\n", &["--memory", "1q"]);
    assert!(e.starts_with("--memory") && e.contains("1q"), "a flag's own value names the flag: {e}");
    let e = err("image = \"x\"\ncontainer_port = \"eighty\"\n", &[]);
    assert!(e.contains("line 2, container_port"), "{e}");
    let e = err(
        "image = \"x\"\ncontainer_port = 80\n[env]\nDB = \"postgres://u:hunter2@h\"\nBAD-NAME = \"hunter2\"\n",
        &[],
    );
    assert!(e.contains("line 3, env") && !e.contains("hunter2"), "{e}");
    let e = err("image = \"x\"\ncontainer_port = 80\nenv = { DB = hunter2 }\n", &[]);
    assert!(e.starts_with("--spec") && e.contains("line 3") && !e.contains("hunter2"), "{e}");
    let e = err("container_port = 80\n", &[]);
    assert!(e.contains("--repo") || e.contains("repo"), "{e}");
    let e = deploy_spec(&args(&["a", "--spec", "/nonexistent/a.toml"])).expect_err("missing").to_string();
    assert!(e.starts_with("--spec") && e.contains("/nonexistent/a.toml"), "{e}");
}
