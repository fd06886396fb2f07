//! `deploy`'s runtime options end to end on real Docker: volumes, limits,
//! networks, command, logging, and bad values refused before anything exists.
//!
//! Each test has its own app ids, volume and network names, work dir and
//! host-port range (25400-25499), and removes what it made.

use std::time::Duration;

use otturnaut_core::AppId;
use otturnaut_tests::command::otturnaut_command;
use otturnaut_tests::fixtures::{Behaviour, DockerCleanup, docker_cli, write_context};
use otturnaut_tests::gitfix::GitRepo;
use otturnaut_tests::services::{require_caddy, require_docker, unique_app};
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_otturnaut-cli-under-test");
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The last JSON line of a `--json` run.
    fn result(&self) -> Value {
        let last = self.stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_else(|| panic!("no output: {self:?}"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
    }
}

fn exists(kind: &str, name: &str) -> bool {
    docker_cli(&[kind, "inspect", name]).0
}

/// Removes the volumes and networks a test names, even when it fails
/// (after the containers, which [`DockerCleanup`]s drop first).
struct Leftovers {
    volumes: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for v in &self.volumes {
            let _ = docker_cli(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = docker_cli(&["network", "rm", n]);
        }
    }
}

struct Harness {
    work: TempDir,
    port_range: String,
}

impl Harness {
    async fn new(range_start: u16) -> Harness {
        require_docker().await;
        require_caddy().await;
        let work = tempfile::Builder::new().prefix("otturnaut-runtime-").tempdir().expect("work dir");
        Harness { work, port_range: format!("{range_start}-{}", range_start + 19) }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = otturnaut_command(BIN, self.work.path(), &self.port_range, args);
        let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} did not finish within {RUN_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `deploy APP --repo URL --container-port 8080 --json EXTRA…`.
    async fn deploy(&self, app: &AppId, url: &str, extra: &[&str]) -> Run {
        let mut args = vec!["deploy", app.as_str(), "--repo", url, "--container-port", "8080", "--json"];
        args.extend_from_slice(extra);
        self.run(&args).await
    }
}

fn serving_repo(version: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.commit_with(version, |dir| write_context(dir, &Behaviour::serve(version)));
    repo
}

/// `GET path` from the release's host port.
async fn get(port: u64, path: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    response.text().await.expect("body")
}

fn container_of(result: &Value) -> String {
    let app = result["app"].as_str().expect("app");
    let deployment = result["deployment"].as_str().expect("deployment");
    format!("otturnaut-{app}-{deployment}")
}

#[tokio::test]
async fn volume_data_survives_a_redeploy_and_a_rollback_and_undeploy_volumes_removes_it() {
    let h = Harness::new(25400).await;
    let app = unique_app("rt-vol");
    let _docker = DockerCleanup::new(&app);
    let volume = format!("{app}-data");
    let _left = Leftovers { volumes: vec![volume.clone()], networks: vec![] };
    let repo = serving_repo("v1");
    // Each release appends a line to the volume and serves the whole file.
    let command = "/bin/busybox sh -c 'echo release >> /data/log && cp /data/log /www/log && \
                   exec /bin/busybox httpd -f -p 8080 -h /www'";
    let mount = format!("{volume}:/data");
    let args = ["--volume", mount.as_str(), "--command", command];

    let first = h.deploy(&app, &repo.file_url(), &args).await;
    first.expect_code(0);
    assert_eq!(get(first.result()["port"].as_u64().expect("port"), "/log").await, "release\n");
    let (_, labels) = docker_cli(&["volume", "inspect", "--format", "{{json .Labels}}", &volume]);
    let labels: Value = serde_json::from_str(&labels).expect("labels");
    assert_eq!(labels["otturnaut.app"], app.as_str(), "the volume is labelled with its app: {labels}");

    let second = h.deploy(&app, &repo.file_url(), &args).await;
    second.expect_code(0);
    assert_eq!(
        get(second.result()["port"].as_u64().expect("port"), "/log").await,
        "release\nrelease\n",
        "the second release sees the first one's data"
    );

    // Rolling back to the first release re-creates its container with the
    // same volume and command: it sees (and adds to) everything written since.
    let first_deployment = first.result()["deployment"].as_str().expect("deployment").to_owned();
    let back = h.run(&["rollback", app.as_str(), "--json"]).await;
    back.expect_code(0);
    let r = back.result();
    assert_eq!(r["rollback_of"], first_deployment.as_str(), "{r}");
    assert_eq!(get(r["port"].as_u64().expect("port"), "/log").await, "release\nrelease\nrelease\n");

    // A plain undeploy keeps the data; --volumes removes it.
    h.run(&["undeploy", app.as_str()]).await.expect_code(0);
    assert!(exists("volume", &volume), "undeploy without --volumes keeps the volume");
    let gone = h.run(&["undeploy", app.as_str(), "--volumes", "--json"]).await;
    gone.expect_code(0);
    let done = gone.result()["done"].to_string();
    assert!(done.contains(&format!("removed volume {volume}")), "{done}");
    assert!(!exists("volume", &volume));
}

#[tokio::test]
async fn limits_logging_and_hardening_show_in_docker_inspect_and_status_and_come_back_on_rollback() {
    let h = Harness::new(25420).await;
    let app = unique_app("rt-lim");
    let _docker = DockerCleanup::new(&app);
    let repo = serving_repo("limited");
    let run = h
        .deploy(
            &app,
            &repo.file_url(),
            &[
                "--memory",
                "64m",
                "--cpus",
                "0.5",
                "--pids-limit",
                "100",
                "--log-opt",
                "max-size=1m",
                "--stop-timeout",
                "3s",
                "--drain-timeout",
                "4s",
            ],
        )
        .await;
    run.expect_code(0);
    let limited = run.result()["deployment"].as_str().expect("deployment").to_owned();
    // A release without limits, then a rollback to the limited one: the
    // rollback brings its options back (read from what it recorded).
    let plain = h.deploy(&app, &repo.file_url(), &[]).await;
    plain.expect_code(0);
    let (_, inspect) = docker_cli(&["inspect", "--format", "{{json .HostConfig}}", &container_of(&plain.result())]);
    let host: Value = serde_json::from_str(&inspect).expect("host config");
    assert_eq!(host["Memory"], 0, "the second release has no limit");
    assert_eq!(host["LogConfig"]["Config"], serde_json::json!({"max-size": "10m", "max-file": "3"}), "the defaults");
    let back = h.run(&["rollback", app.as_str(), "--json"]).await;
    back.expect_code(0);
    assert_eq!(back.result()["rollback_of"], limited.as_str());

    let container = container_of(&back.result());
    let (ok, inspect) = docker_cli(&["inspect", "--format", "{{json .HostConfig}}", &container]);
    assert!(ok, "{inspect}");
    let host: Value = serde_json::from_str(&inspect).expect("host config");
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["PidsLimit"], 100);
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(host["LogConfig"]["Config"], serde_json::json!({"max-size": "1m", "max-file": "3"}));
    assert_eq!(host["SecurityOpt"], serde_json::json!(["no-new-privileges"]));
    assert_eq!(host["Init"], true);
    // Its stop and drain timeouts come back too: Docker's own StopTimeout,
    // and both in the release record the next rollback reads.
    let (_, config) = docker_cli(&["inspect", "--format", "{{json .Config}}", &container]);
    let config: Value = serde_json::from_str(&config).expect("container config");
    assert_eq!(config["StopTimeout"], 3, "{config}");
    let record: Value =
        serde_json::from_str(config["Labels"]["otturnaut.release"].as_str().expect("release label")).expect("record");
    assert_eq!(
        (record["stop_timeout"].as_str(), record["drain_timeout"].as_str()),
        (Some("3s"), Some("4s")),
        "{record}"
    );

    let status = h.run(&["status", app.as_str(), "--json"]).await;
    status.expect_code(0);
    let doc: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(
        doc[0]["runtime"],
        serde_json::json!({"memory": "64m", "cpus": "0.5", "pids_limit": "100", "log_opts": ["max-size=1m"]}),
        "{doc}"
    );
    assert_eq!((doc[0]["stop_timeout"].as_str(), doc[0]["drain_timeout"].as_str()), (Some("3s"), Some("4s")), "{doc}");
    h.run(&["undeploy", app.as_str()]).await.expect_code(0);
}

#[tokio::test]
async fn two_apps_on_one_network_reach_each_other_by_name() {
    let h = Harness::new(25440).await;
    let (api, web) = (unique_app("rt-api"), unique_app("rt-web"));
    let (_d1, _d2) = (DockerCleanup::new(&api), DockerCleanup::new(&web));
    let network = format!("{api}-net");
    let _left = Leftovers { volumes: vec![], networks: vec![network.clone()] };
    assert!(!exists("network", &network));

    h.deploy(&api, &serving_repo("from api").file_url(), &["--network", &network]).await.expect_code(0);
    assert!(exists("network", &network), "the network is created");
    let run = h.deploy(&web, &serving_repo("from web").file_url(), &["--network", &network]).await;
    run.expect_code(0);

    let url = format!("http://{api}:8080/version");
    let (ok, body) = docker_cli(&["exec", &container_of(&run.result()), "/bin/busybox", "wget", "-qO-", &url]);
    assert!(ok && body == "from api", "web reaches api by its app name: {ok} {body:?}");

    h.run(&["undeploy", web.as_str()]).await.expect_code(0);
    h.run(&["undeploy", api.as_str()]).await.expect_code(0);
    assert!(exists("network", &network), "networks are shared: undeploy leaves them");
}

#[tokio::test]
async fn bad_runtime_values_exit_2_naming_the_flag_and_create_nothing() {
    let h = Harness::new(25460).await;
    let app = unique_app("rt-bad");
    let _docker = DockerCleanup::new(&app);
    let volume = format!("{app}-v");
    let network = format!("{app}-n");
    let _left = Leftovers { volumes: vec![volume.clone()], networks: vec![network.clone()] };
    let repo = serving_repo("never");
    let good_volume = format!("{volume}:/data");
    let missing_bind = format!("{}/nope:/data", h.work.path().display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--volume", "relative:data"], "--volume"),
        (vec!["--volume", "x:/data"], "--volume"),
        (vec!["--volume", &missing_bind], "--volume"),
        (vec!["--volume", &good_volume, "--volume", "other-v:/data"], "--volume"),
        (vec!["--volume", "data:/a:rx"], "--volume"),
        (vec!["--memory", "lots"], "--memory"),
        (vec!["--memory", "1m"], "--memory"),
        (vec!["--cpus", "0"], "--cpus"),
        (vec!["--cpus", "1e9"], "--cpus"),
        (vec!["--pids-limit=-1"], "--pids-limit"),
        (vec!["--network", "host"], "--network"),
        (vec!["--network", &network, "--network", &network], "--network"),
        (vec!["--command", "sh -c 'unclosed"], "--command"),
        (vec!["--entrypoint", ""], "--entrypoint"),
        (vec!["--log-opt", "max-file=0"], "--log-opt"),
        (vec!["--log-opt", "mode=non-blocking"], "--log-opt"),
        (vec!["--stop-timeout", "forever"], "--stop-timeout"),
        (vec!["--drain-timeout", "0s"], "--drain-timeout"),
    ];
    for (extra, flag) in cases {
        // A valid volume and network ride along: they must not be created either.
        let mut args = vec!["--volume", good_volume.as_str(), "--network", network.as_str()];
        if extra.contains(&"--volume") {
            args.clear();
        }
        if extra.contains(&"--network") {
            args.clear();
        }
        args.extend_from_slice(&extra);
        let run = h.deploy(&app, &repo.file_url(), &args).await;
        run.expect_code(2);
        assert!(run.stderr.contains(flag), "{extra:?}: the message names {flag}: {}", run.stderr);
    }
    assert!(!exists("volume", &volume), "no volume was created");
    assert!(!exists("network", &network), "no network was created");
    let (_, containers) = docker_cli(&["ps", "-aq", "--filter", &format!("label=otturnaut.app={app}")]);
    assert!(containers.is_empty(), "no container was created: {containers}");
    assert!(
        !h.work.path().join("src").exists()
            || std::fs::read_dir(h.work.path().join("src")).expect("src").next().is_none()
    );
}

#[tokio::test]
async fn a_spec_file_deploy_equals_the_same_flags() {
    let h = Harness::new(25480).await;
    let (by_flags, by_file) = (unique_app("rt-flags"), unique_app("rt-file"));
    let (_d1, _d2) = (DockerCleanup::new(&by_flags), DockerCleanup::new(&by_file));
    let volumes = vec![format!("{by_flags}-data"), format!("{by_file}-data")];
    let _left = Leftovers { volumes: volumes.clone(), networks: vec![] };
    let repo = serving_repo("same");
    let mount = |volume: &str| format!("{volume}:/data");

    let flags = [
        "--env",
        "GREETING=hi",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "--log-opt",
        "max-size=2m",
        "--stop-timeout",
        "5s",
        "--drain-timeout",
        "6s",
        "--volume",
        &mount(&volumes[0]),
    ];
    let from_flags = h.deploy(&by_flags, &repo.file_url(), &flags).await;
    from_flags.expect_code(0);

    let spec = h.work.path().join("app.toml");
    let text = format!(
        "repo = \"{}\"\ncontainer_port = 8080\nmemory = \"64m\"\npids_limit = 50\nlog_opts = [\"max-size=2m\"]\n\
         stop_timeout = \"5s\"\ndrain_timeout = \"6s\"\nvolumes = [\"{}\"]\n[env]\nGREETING = \"hi\"\n",
        repo.file_url(),
        mount(&volumes[1])
    );
    std::fs::write(&spec, text).expect("spec file");
    let spec = spec.to_str().expect("utf-8 path");
    let from_file = h.run(&["deploy", by_file.as_str(), "--spec", spec, "--json"]).await;
    from_file.expect_code(0);

    // What Docker runs, with the names that must differ taken out.
    let inspect = |run: &Run| {
        let (ok, out) = docker_cli(&["inspect", &container_of(&run.result())]);
        assert!(ok, "{out}");
        let doc: Value = serde_json::from_str(&out).expect("inspect JSON");
        let (host, config) = (&doc[0]["HostConfig"], &doc[0]["Config"]);
        let env: Vec<&str> = config["Env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(Value::as_str)
            .filter(|e| e.starts_with("GREETING="))
            .collect();
        let mounts: Vec<&str> =
            doc[0]["Mounts"].as_array().expect("mounts").iter().filter_map(|m| m["Destination"].as_str()).collect();
        serde_json::json!({
            "memory": host["Memory"], "pids": host["PidsLimit"], "log": host["LogConfig"],
            "security": host["SecurityOpt"], "stop": config["StopTimeout"], "env": env, "mounts": mounts,
        })
    };
    let (a, b) = (inspect(&from_flags), inspect(&from_file));
    assert_eq!(a, b, "the same settings by flags and by file");
    assert_eq!(a["memory"], 64 * 1024 * 1024, "{a}");
    assert_eq!(a["env"], serde_json::json!(["GREETING=hi"]), "{a}");

    // And `status --json` records the same runtime options for both.
    async fn runtime(h: &Harness, app: &AppId) -> Value {
        let status = h.run(&["status", app.as_str(), "--json"]).await;
        status.expect_code(0);
        let doc: Value = serde_json::from_str(&status.stdout).expect("status JSON");
        let mut runtime = doc[0]["runtime"].clone();
        runtime["volumes"] = Value::Null;
        runtime
    }
    assert_eq!(runtime(&h, &by_flags).await, runtime(&h, &by_file).await);
    for app in [&by_flags, &by_file] {
        h.run(&["undeploy", app.as_str(), "--volumes"]).await.expect_code(0);
    }
}
