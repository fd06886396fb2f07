//! The `otturnaut` binary end to end: real Docker, the shared Caddy (our
//! server on 127.0.0.1:2080, no automatic HTTPS, as every test agrees) and
//! real git repositories over file:// and git://.
//!
//! Each test has its own app id, work dir and host-port range, so they run in
//! parallel with each other and with the other test files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use otturnaut_adapters::caddy::Caddy;
use otturnaut_core::traits::{ContainerRuntime, ImageBuilder, Router};
use otturnaut_core::{AppId, RouteTarget};
use otturnaut_tests::caddy_proc::{free_port, get_path_via, shared_caddy, shared_listen};
use otturnaut_tests::command::otturnaut_command;
use otturnaut_tests::fixtures::{Behaviour, DockerCleanup, docker, write_context};
use otturnaut_tests::gitfix::{GitDaemon, GitRepo};
use otturnaut_tests::reloads::ask_shared_caddy;
use otturnaut_tests::services::{require_caddy, require_docker, unique_app};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The CLI, built by cargo from `tests/src/bin` (the same code as the
/// `otturnaut` binary).
const BIN: &str = env!("CARGO_BIN_EXE_otturnaut-cli-under-test");

/// No test run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\n{self:?}")))
            .collect()
    }

    /// The last JSON line: the result object.
    fn result(&self) -> Value {
        self.json_lines().pop().unwrap_or_else(|| panic!("no JSON on stdout: {self:?}"))
    }

    #[track_caller]
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Everything the outside world holds of one app.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    containers: BTreeSet<String>,
    images: BTreeSet<String>,
    route: Option<RouteTarget>,
    sources: BTreeSet<String>,
}

impl Snapshot {
    fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.images.is_empty() && self.route.is_none() && self.sources.is_empty()
    }
}

/// Removes whatever a test leaves of its app, even when it fails.
struct Cleanup {
    _docker: DockerCleanup,
    caddy: Caddy,
    app: AppId,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (caddy, app) = (self.caddy.clone(), self.app.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            rt.block_on(caddy.remove_route(&app))
        })
        .join();
    }
}

/// One test's app, work dir and port range.
struct Harness {
    app: AppId,
    work: TempDir,
    port_range: String,
    caddy: Caddy,
    _cleanup: Cleanup,
}

/// The port of [`shared_listen`], as the CLI prints it in URLs.
fn shared_port() -> String {
    shared_listen().rsplit_once(':').map(|(_, p)| p.to_owned()).expect("the shared listen address has a port")
}

impl Harness {
    /// `range_start`: the first of 20 host ports no other test uses.
    async fn new(prefix: &str, range_start: u16) -> Harness {
        require_docker().await;
        require_caddy().await;
        let app = unique_app(prefix);
        let caddy = shared_caddy();
        let work = tempfile::Builder::new().prefix("otturnaut-cli-work-").tempdir().expect("work dir");
        Harness {
            _cleanup: Cleanup { _docker: DockerCleanup::new(&app), caddy: caddy.clone(), app: app.clone() },
            app,
            work,
            port_range: format!("{range_start}-{}", range_start + 19),
            caddy,
        }
    }

    fn domain(&self) -> String {
        format!("{}.localhost", self.app)
    }

    /// The CLI with this test's settings, some as flags and some from the
    /// environment (both paths are exercised), and nothing inherited.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        otturnaut_command(BIN, self.work.path(), &self.port_range, args)
    }

    async fn run(&self, args: &[&str]) -> Run {
        run(self.command(args)).await
    }

    /// `deploy APP --repo URL` of the fixture server on port 8080 with this
    /// test's domain.
    async fn deploy(&self, url: &str, extra: &[&str]) -> Run {
        let domain = self.domain();
        let mut args =
            vec!["deploy", self.app.as_str(), "--repo", url, "--container-port", "8080", "--domain", &domain];
        args.extend_from_slice(extra);
        self.run(&args).await
    }

    /// `GET /` through Caddy with this app's domain.
    async fn get(&self) -> (u16, String) {
        ask_shared_caddy(&self.domain()).await
    }

    async fn snapshot(&self) -> Snapshot {
        let docker = docker().await;
        let containers = docker.list(Some(&self.app)).await.expect("listing containers");
        let images = docker.list_images(Some(&self.app)).await.expect("listing images");
        let route = self.caddy.route(&self.app).await.expect("reading the route");
        Snapshot {
            containers: containers.into_iter().map(|c| c.id.0).collect(),
            images: images.into_iter().map(|i| i.id).collect(),
            route,
            sources: dir_names(&self.work.path().join("src")),
        }
    }
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

async fn run(mut cmd: tokio::process::Command) -> Run {
    let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A repository whose `main` serves `version` (busybox httpd on 8080).
fn serving_repo(version: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.commit_with(version, |dir| write_context(dir, &Behaviour::serve(version)));
    repo
}

fn commit_behaviour(repo: &GitRepo, behaviour: &Behaviour) -> String {
    repo.commit_with(&format!("{behaviour:?}"), |dir| {
        // Behaviours without a www/ must not inherit the previous one's.
        let _ = std::fs::remove_dir_all(dir.join("www"));
        write_context(dir, behaviour)
    })
}

#[tokio::test]
async fn deploys_from_a_file_repo_then_redeploys_blue_green() {
    let h = Harness::new("cli-file", 21000).await;
    let repo = serving_repo("v1");
    let sha1 = repo.rev_parse("HEAD");

    let first = h.deploy(&repo.file_url(), &["--json"]).await;
    first.expect_code(0);
    let r1 = first.result();
    assert_eq!(r1["result"], "deployed", "{r1}");
    assert_eq!(r1["app"], h.app.as_str());
    assert_eq!(r1["commit"], sha1.as_str());
    assert_eq!(r1["rolled_back"], false);
    assert_eq!(r1["residue"], Value::Array(vec![]));
    assert_eq!(r1["domains"][0], h.domain().as_str());
    assert_eq!(r1["urls"][0], format!("http://{}:{}/", h.domain(), shared_port()));
    let events: Vec<String> =
        first.json_lines().iter().filter_map(|e| e["event"].as_str().map(str::to_owned)).collect();
    assert_eq!(events.first().map(String::as_str), Some("started"), "{events:?}");
    assert!(events.iter().any(|e| e == "build_log"), "build output is streamed: {events:?}");
    let d1 = r1["deployment"].as_str().expect("deployment id").to_owned();
    let port1 = r1["port"].as_u64().expect("port");
    assert!((21000..21020).contains(&port1), "port {port1} is from the test's range");
    assert_eq!(h.get().await, (200, "v1\n".to_owned()));

    let sha2 = repo.commit_with("v2", |dir| write_context(dir, &Behaviour::serve("v2")));
    let second = h.deploy(&repo.file_url(), &[]).await;
    second.expect_code(0);
    assert!(second.stderr.contains(&format!("replaced    {d1}")), "{}", second.stderr);
    assert!(second.stderr.contains(&format!("http://{}:{}/", h.domain(), shared_port())), "{}", second.stderr);
    assert!(second.stdout.is_empty(), "human mode writes to stderr only: {}", second.stdout);
    assert_eq!(h.get().await, (200, "v2\n".to_owned()));

    let after = h.snapshot().await;
    assert_eq!(after.containers.len(), 2, "the old container is kept for a rollback: {after:?}");
    assert_eq!(after.images.len(), 2, "the old image is kept for a rollback: {after:?}");
    assert!(after.sources.is_empty(), "fetched sources are removed after the deploy: {after:?}");

    let status = h.run(&["status", h.app.as_str(), "--json"]).await;
    status.expect_code(0);
    let doc: Value = serde_json::from_str(&status.stdout).expect("status --json is one JSON document");
    let apps = doc.as_array().expect("an array of apps");
    assert_eq!(apps.len(), 1, "{doc}");
    let s = &apps[0];
    assert_eq!(s["app"], h.app.as_str());
    assert_eq!(s["live"], true);
    assert_ne!(s["deployment"], d1.as_str());
    assert_eq!(s["commit"], sha2.as_str());
    assert_eq!(s["image"], format!("otturnaut-{}:{}", h.app, s["deployment"].as_str().expect("deployment")));
    assert_eq!(s["port"], after.route.as_ref().expect("a route").port.get());
    assert_eq!(s["container_port"], 8080);
    assert_eq!(s["domains"], serde_json::json!([h.domain()]));
    assert_eq!(s["container"]["state"], "running");
    assert!(after.containers.contains(s["container"]["id"].as_str().expect("container id")));
    assert!(s["started"].as_str().is_some_and(|t| t.starts_with("20")), "started is an RFC 3339 time: {s}");
    assert_eq!(s["containers"], 2);
    assert_eq!(s["retained"], 1, "the replaced release is kept: {s}");

    // Without an app, status lists every app: ours among them.
    let all = h.run(&["status", "--json"]).await;
    all.expect_code(0);
    let doc: Value = serde_json::from_str(&all.stdout).expect("status --json");
    assert!(doc.as_array().expect("array").iter().any(|a| a["app"] == h.app.as_str()), "{doc}");

    h.run(&["undeploy", h.app.as_str()]).await.expect_code(0);
    assert!(h.snapshot().await.is_empty());
}

#[tokio::test]
async fn deploys_from_a_git_daemon_and_undeploys_twice() {
    let h = Harness::new("cli-git", 21020).await;
    let repo = serving_repo("over git://");
    let daemon = GitDaemon::for_repo(&repo);

    h.deploy(&daemon.url(&repo), &[]).await.expect_code(0);
    assert_eq!(h.get().await, (200, "over git://\n".to_owned()));
    let live = h.snapshot().await;
    assert_eq!(live.containers.len(), 1);
    assert!(live.route.is_some());

    let first = h.run(&["undeploy", h.app.as_str(), "--json"]).await;
    first.expect_code(0);
    let r = first.result();
    assert_eq!(r["result"], "undeployed", "{r}");
    let done: Vec<&str> = r["done"].as_array().expect("done").iter().filter_map(Value::as_str).collect();
    assert!(done.iter().any(|d| d.contains("route")), "{done:?}");
    assert!(done.iter().any(|d| d.contains("remove container")), "{done:?}");
    assert!(done.iter().any(|d| d.contains("remove image")), "{done:?}");
    assert!(h.snapshot().await.is_empty(), "nothing is left after undeploy");
    // Caddy answers a host no route matches with an empty 200.
    let (_, body) = h.get().await;
    assert!(body.is_empty(), "the domain is no longer served by the app: {body:?}");

    let second = h.run(&["undeploy", h.app.as_str(), "--json"]).await;
    second.expect_code(0);
    let r = second.result();
    assert_eq!(r["done"], Value::Array(vec![]), "a second undeploy does nothing: {r}");
    assert_eq!(r["residue"], Value::Array(vec![]));
    let human = h.run(&["undeploy", h.app.as_str()]).await;
    human.expect_code(0);
    assert!(human.stderr.contains("is not deployed"), "{}", human.stderr);
    assert!(h.snapshot().await.is_empty());
}

#[tokio::test]
async fn a_failing_commit_exits_1_and_the_old_release_keeps_serving() {
    let h = Harness::new("cli-fail", 21040).await;
    let repo = serving_repo("good");
    h.deploy(&repo.file_url(), &[]).await.expect_code(0);
    assert_eq!(h.get().await, (200, "good\n".to_owned()));
    let before = h.snapshot().await;

    commit_behaviour(&repo, &Behaviour::Exit { code: 3 });
    let failed = h.deploy(&repo.file_url(), &[]).await;
    failed.expect_code(1);
    let err = &failed.stderr;
    assert!(err.contains(&format!("deploy of {} failed at step health_check", h.app)), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("boom"), "the app's last output is shown: {err}");
    assert!(err.contains("nothing of this deploy is left"), "{err}");
    let port = before.route.as_ref().expect("route").port;
    assert!(err.contains(&format!("is still live on port {port}")), "{err}");

    assert_eq!(h.get().await, (200, "good\n".to_owned()), "the old release still answers");
    assert_eq!(h.snapshot().await, before, "containers, images, route and sources are as before");

    // The same through --json: the result says what failed and that it was rolled back.
    let json = h.deploy(&repo.file_url(), &["--json"]).await;
    json.expect_code(1);
    let r = json.result();
    assert_eq!(r["result"], "failed", "{r}");
    assert_eq!(r["step"], "health_check");
    assert_eq!(r["rolled_back"], true);
    assert_eq!(r["residue"], Value::Array(vec![]));
    assert_eq!(r["live"]["port"], port.get());
    assert_eq!(r["exit_code"], 1);
    assert_eq!(h.snapshot().await, before);
}

/// Arguments, extra environment, and what stderr must say.
type BadCase<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn bad_input_exits_2_and_creates_nothing() {
    let h = Harness::new("cli-bad", 21140).await;
    let repo = serving_repo("never deployed");
    let url = repo.file_url();
    let app = h.app.to_string();
    let missing_env = h.work.path().join("missing.env").display().to_string();
    let bad_env_file = tempfile::NamedTempFile::new().expect("env file");
    std::fs::write(bad_env_file.path(), "GOOD=1\nthis line holds s3cr3t-value\n").expect("write env file");
    let bad_env_path = bad_env_file.path().display().to_string();
    let missing_config = h.work.path().join("missing.toml").display().to_string();

    let deploy = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["deploy".into(), app.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let repo_args = |extra: &[&str]| -> Vec<String> {
        let mut v = deploy(&["--repo", &url, "--container-port", "8080"]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let image_args = |extra: &[&str]| -> Vec<String> {
        let mut v = deploy(&["--image", "busybox:none", "--container-port", "8080"]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<BadCase> = vec![
        (
            vec![
                "deploy".into(),
                "Bad_App".into(),
                "--image".into(),
                "x".into(),
                "--container-port".into(),
                "80".into(),
            ],
            vec![],
            "APP: invalid app id \"Bad_App\"",
        ),
        (
            deploy(&["--repo", "ext::sh", "--container-port", "80"]),
            vec![],
            "remote helpers such as ext:: are not allowed",
        ),
        (
            deploy(&["--repo", "ext::sh -c touch% /tmp/pwned", "--container-port", "80"]),
            vec![],
            "--repo: invalid repository URL \"ext::sh",
        ),
        (
            deploy(&["--repo", "http://example.com/r.git", "--container-port", "80"]),
            vec![],
            "--repo: invalid repository URL",
        ),
        (repo_args(&["--ref=-x"]), vec![], "--ref: invalid git ref \"-x\""),
        (repo_args(&["--ref", "-x"]), vec![], "unexpected argument '-x'"),
        (repo_args(&["--ref", "a..b"]), vec![], "--ref: invalid git ref \"a..b\""),
        (repo_args(&["--dockerfile", "../x"]), vec![], "--dockerfile: invalid Dockerfile path \"../x\""),
        (deploy(&["--image", "x", "--container-port", "0"]), vec![], "--container-port: invalid container port \"0\""),
        (deploy(&["--image", "x", "--container-port", "http"]), vec![], "--container-port"),
        (deploy(&["--image", "Nginx", "--container-port", "80"]), vec![], "--image: invalid image reference \"Nginx\""),
        (image_args(&["--domain", "bad_domain.com"]), vec![], "--domain: invalid domain \"bad_domain.com\""),
        (image_args(&["--env", "1BAD=s3cr3t-value"]), vec![], "--env: invalid environment variable name \"1BAD\""),
        (image_args(&["--env", "s3cr3t-value"]), vec![], "--env: expected KEY=VALUE"),
        (repo_args(&["--build-arg", "s3cr3t-value"]), vec![], "--build-arg: expected KEY=VALUE"),
        (image_args(&["--env-file", &missing_env]), vec![], "--env-file: cannot read"),
        (image_args(&["--env-file", &bad_env_path]), vec![], "line 2: expected KEY=VALUE"),
        (deploy(&["--repo", &url, "--image", "x", "--container-port", "80"]), vec![], "cannot be used with"),
        (deploy(&["--container-port", "80"]), vec![], "required"),
        (deploy(&["--image", "x"]), vec![], "--container-port"),
        (image_args(&["--health", "http:healthz"]), vec![], "--health: invalid health check path \"healthz\""),
        (image_args(&["--health", "ping"]), vec![], "--health: \"ping\" is not a health check"),
        (image_args(&["--health-timeout", "5x"]), vec![], "--health-timeout: \"5x\" is not a duration"),
        (image_args(&["--health-timeout", "0s"]), vec![], "--health-timeout: \"0s\" must be longer than zero"),
        (image_args(&["--port-range", "80-90"]), vec![], "--port-range: invalid port range \"80-90\""),
        (image_args(&[]), vec![("OTTURNAUT_PORT_RANGE", "lots")], "OTTURNAUT_PORT_RANGE"),
        (image_args(&["--listen", "nowhere"]), vec![], "--listen: \"nowhere\""),
        (image_args(&["--caddy-admin", "127.0.0.1:2019"]), vec![], "--caddy-admin"),
        (image_args(&["--config", &missing_config]), vec![], "--config: cannot read"),
        (image_args(&[]), vec![("OTTURNAUT_NO_AUTO_HTTPS", "perhaps")], "OTTURNAUT_NO_AUTO_HTTPS"),
        (vec!["undeploy".into(), "-bad".into()], vec![], ""),
        (vec!["status".into(), "UPPER".into()], vec![], "APP: invalid app id \"UPPER\""),
        (vec!["logs".into(), app.clone(), "--tail".into(), "many".into()], vec![], "--tail"),
    ];

    let mut table = Vec::new();
    for (args, env, says) in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = h.command(&argv);
        cmd.envs(env.iter().copied());
        // The environment default for these tests is overridden per case.
        if env.iter().any(|(k, _)| *k == "OTTURNAUT_PORT_RANGE") {
            // `command` passes --port-range, which would win over the variable.
            cmd = tokio::process::Command::new(BIN);
            cmd.env("NO_COLOR", "1").envs(env.iter().copied()).arg("--work-dir").arg(h.work.path()).args(&argv);
        }
        let out = run(cmd).await;
        let first_line = out.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().to_owned();
        table.push(format!("{:?} {env:?} -> {} -> {first_line}", argv, out.code));
        assert_eq!(out.code, 2, "{argv:?} {env:?}: exit code\n{}", out.stderr);
        assert!(out.stderr.contains(says), "{argv:?}: stderr should say {says:?}:\n{}", out.stderr);
        assert!(!out.stderr.contains("s3cr3t"), "{argv:?}: a secret value was printed:\n{}", out.stderr);
        assert!(out.stdout.is_empty() || argv.contains(&"--json"), "{argv:?}: stdout: {}", out.stdout);
        assert!(
            dir_names(h.work.path()).iter().all(|n| n == "missing.env" || n == "missing.toml"),
            "{argv:?}: the work dir was touched: {:?}",
            dir_names(h.work.path())
        );
    }
    eprintln!("bad-input table:\n{}", table.join("\n"));
    assert!(h.snapshot().await.is_empty(), "no container, image, route or source of {} exists", h.app);

    // --json also answers with a result object naming the problem.
    let out = h
        .run(&image_args(&["--domain", "bad_domain.com", "--json"]).iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    out.expect_code(2);
    let r = out.result();
    assert_eq!(r["result"], "failed");
    assert_eq!(r["exit_code"], 2);
    assert!(r["error"].as_str().is_some_and(|e| e.contains("--domain")), "{r}");

    // Help is not an error.
    for args in [&["--help"][..], &["deploy", "--help"], &["help", "reconcile"]] {
        let out = h.run(args).await;
        out.expect_code(0);
        assert!(out.stdout.contains("Example"), "{args:?} teaches by example:\n{}", out.stdout);
    }
}

#[tokio::test]
async fn unreachable_caddy_exits_4_and_creates_nothing() {
    let h = Harness::new("cli-nocaddy", 21100).await;
    let repo = serving_repo("unreachable");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = h.deploy(&repo.file_url(), &["--caddy-admin", &closed]).await;
    out.expect_code(4);
    assert!(out.stderr.contains("Caddy is unreachable at"), "{}", out.stderr);
    assert!(out.stderr.contains("--caddy-admin"), "the advice names the setting: {}", out.stderr);

    let json = h.deploy(&repo.file_url(), &["--caddy-admin", &closed, "--json"]).await;
    json.expect_code(4);
    assert_eq!(json.result()["exit_code"], 4);

    for args in [vec!["status"], vec!["undeploy", h.app.as_str()], vec!["reconcile"]] {
        let mut argv = args.clone();
        argv.extend(["--caddy-admin", closed.as_str()]);
        h.run(&argv).await.expect_code(4);
    }
    assert!(dir_names(h.work.path()).is_empty(), "nothing was written to the work dir");
    assert!(h.snapshot().await.is_empty());
}

#[tokio::test]
async fn concurrent_deploys_of_one_app_run_one_after_the_other() {
    let h = Harness::new("cli-lock", 21060).await;
    // A slow build keeps the first deploy busy while the second starts. The
    // app id in www/ makes the slow layer new to Docker's build cache (the
    // second deploy then reuses it and is quick).
    let repo = GitRepo::new();
    let nonce = h.app.to_string();
    repo.commit_with("slow", |dir| {
        write_context(dir, &Behaviour::serve("slow"))?;
        std::fs::write(dir.join("www").join("nonce"), &nonce)?;
        let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
        std::fs::write(
            dir.join("Dockerfile"),
            dockerfile.replace("COPY www /www", "COPY www /www\nRUN [\"/bin/busybox\",\"sleep\",\"3\"]"),
        )
    });
    let url = repo.file_url();
    let domain = h.domain();
    let args = ["deploy", h.app.as_str(), "--repo", &url, "--container-port", "8080", "--domain", &domain, "--json"];

    let mut first = h.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("first deploy");
    let mut first_out = BufReader::new(first.stdout.take().expect("stdout")).lines();
    let mut first_lines = Vec::new();
    let deadline = Instant::now() + RUN_LIMIT;
    // The first holds the app's lock once its deploy has started.
    loop {
        let line = tokio::time::timeout_at(deadline.into(), first_out.next_line())
            .await
            .expect("first deploy starts in time")
            .expect("reading the first deploy's output")
            .expect("the first deploy ended before it started");
        let started = line.contains("\"event\":\"started\"");
        first_lines.push(line);
        if started {
            break;
        }
    }
    let second = run(h.command(&args));
    let rest = async {
        while let Some(line) = first_out.next_line().await.expect("reading the first deploy") {
            first_lines.push(line);
        }
        let mut stderr = String::new();
        let _ = first.stderr.take().expect("stderr").read_to_string(&mut stderr).await;
        (first.wait().await.expect("first deploy exits"), stderr)
    };
    let (second, (first_status, first_stderr)) = tokio::join!(second, rest);
    assert_eq!(first_status.code(), Some(0), "first deploy: {first_lines:?}\n{first_stderr}");
    second.expect_code(0);

    assert!(second.stderr.contains("is running (pid") && second.stderr.contains("waiting"), "{}", second.stderr);
    let first_result: Value = serde_json::from_str(first_lines.last().expect("a result")).expect("JSON");
    let second_result = second.result();
    let first_dep = first_result["deployment"].as_str().expect("first deployment");
    assert_eq!(
        second_result["previous"], first_dep,
        "the second deploy started only after the first was live, and replaced it"
    );
    let after = h.snapshot().await;
    assert_eq!(after.containers.len(), 2, "the live release and the one it replaced, kept: {after:?}");
    assert_eq!(h.get().await, (200, "slow\n".to_owned()));
}

#[tokio::test]
async fn sigint_during_a_deploy_rolls_back_and_exits_1() {
    let h = Harness::new("cli-sigint", 21080).await;
    let repo = serving_repo("stays");
    h.deploy(&repo.file_url(), &[]).await.expect_code(0);
    let before = h.snapshot().await;

    commit_behaviour(&repo, &Behaviour::NeverListen);
    let url = repo.file_url();
    let domain = h.domain();
    let args = [
        "deploy",
        h.app.as_str(),
        "--repo",
        &url,
        "--container-port",
        "8080",
        "--domain",
        &domain,
        "--health-timeout",
        "10m",
        "--json",
    ];
    let mut child = h.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("deploy");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("the deploy reaches its health check in time")
            .expect("reading the deploy's output")
            .unwrap_or_else(|| panic!("the deploy ended before its health check: {seen:?}"));
        let waiting = line.contains("\"step\":\"health_check\"") && line.contains("step_started");
        seen.push(line);
        if waiting {
            break;
        }
    }
    // The new container is running beside the old one now.
    assert_eq!(h.snapshot().await.containers.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());

    while let Some(line) = tokio::time::timeout_at(deadline.into(), lines.next_line())
        .await
        .expect("the deploy ends after SIGINT")
        .expect("reading the deploy's output")
    {
        seen.push(line);
    }
    let status = child.wait().await.expect("exit status");
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr).await;
    assert_eq!(status.code(), Some(1), "{seen:?}\n{stderr}");
    assert!(stderr.contains("SIGINT during health_check"), "{stderr}");
    let result: Value = serde_json::from_str(seen.last().expect("result")).expect("JSON result");
    assert_eq!(result["result"], "failed", "{result}");
    assert_eq!(result["interrupted"], "SIGINT");
    assert_eq!(result["rolled_back"], true);
    let undone: Vec<&str> =
        result["undo"].as_array().expect("undo list").iter().filter_map(|u| u["action"].as_str()).collect();
    assert!(undone.iter().any(|u| u.starts_with("remove container")), "{undone:?}");
    assert!(undone.iter().any(|u| u.starts_with("remove image")), "{undone:?}");

    assert_eq!(h.snapshot().await, before, "nothing of the interrupted deploy is left");
    assert_eq!(h.get().await, (200, "stays\n".to_owned()));
}

/// The demo's `examples/hello` builds with the CLI too (kept cheap: a
/// first deploy and a request, on its own app id).
#[tokio::test]
async fn the_bundled_example_deploys() {
    let h = Harness::new("cli-hello", 21120).await;
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let repo = GitRepo::new();
    repo.commit_with("hello", |dir| {
        std::fs::copy(example.join("Dockerfile"), dir.join("Dockerfile"))?;
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::copy(example.join("www/index.html"), dir.join("www/index.html"))?;
        std::fs::copy(otturnaut_tests::fixtures::BUSYBOX, dir.join("busybox")).map(|_| ())
    });
    h.deploy(&repo.file_url(), &["--health", "http:/"]).await.expect_code(0);
    let (status, body) = h.get().await;
    assert_eq!(status, 200);
    assert!(body.contains("Hello from Otturnaut"), "{body}");
    h.run(&["undeploy", h.app.as_str()]).await.expect_code(0);
}

/// `deploy` of `h.app` from `url` for exactly `domains`.
async fn deploy_for(h: &Harness, url: &str, domains: &[&str]) -> Run {
    let mut args = vec!["deploy", h.app.as_str(), "--repo", url, "--container-port", "8080"];
    for d in domains {
        args.extend(["--domain", d]);
    }
    h.run(&args).await
}

/// Each domain has one owner (case-insensitively, identical wildcards too):
/// a deploy claiming another app's domain exits 2 before anything is
/// created. An exact host always beats a wildcard, whichever was deployed
/// first, and falls back to the wildcard once its own app is gone.
#[tokio::test]
async fn a_domain_has_one_owner_and_an_exact_host_beats_a_wildcard() {
    let wild = Harness::new("dom-wild", 21160).await;
    let exact = Harness::new("dom-exact", 21180).await;
    let rival = Harness::new("dom-rival", 21200).await;
    let zone = format!("{}.localhost", wild.app);
    let (star, x, y) = (format!("*.{zone}"), format!("x.{zone}"), format!("y.{zone}"));
    let (wild_repo, exact_repo) = (serving_repo("wild"), serving_repo("exact"));

    // The wildcard first, then the exact host.
    deploy_for(&wild, &wild_repo.file_url(), &[&star]).await.expect_code(0);
    deploy_for(&exact, &exact_repo.file_url(), &[&x]).await.expect_code(0);
    assert_eq!(ask_shared_caddy(&x).await, (200, "exact\n".to_owned()));
    assert_eq!(ask_shared_caddy(&y).await, (200, "wild\n".to_owned()));

    // Claiming a taken domain: exit 2, naming the owner, nothing created.
    for (claim, owner) in [(x.to_uppercase(), &exact.app), (star.clone(), &wild.app)] {
        let run = deploy_for(&rival, &exact_repo.file_url(), &[&claim]).await;
        run.expect_code(2);
        assert!(run.stderr.contains(owner.as_str()), "the error names {owner}: {}", run.stderr);
        assert!(rival.snapshot().await.is_empty(), "a refused deploy created something: {:?}", rival.snapshot().await);
    }

    // The wildcard redeployed after the exact host (its route is new): the
    // exact host still wins.
    wild.run(&["undeploy", wild.app.as_str()]).await.expect_code(0);
    assert_eq!(ask_shared_caddy(&x).await, (200, "exact\n".to_owned()));
    deploy_for(&wild, &wild_repo.file_url(), &[&star]).await.expect_code(0);
    assert_eq!(ask_shared_caddy(&x).await, (200, "exact\n".to_owned()));
    assert_eq!(ask_shared_caddy(&y).await, (200, "wild\n".to_owned()));

    // Without its exact app, the host falls to the wildcard.
    exact.run(&["undeploy", exact.app.as_str()]).await.expect_code(0);
    assert_eq!(ask_shared_caddy(&x).await, (200, "wild\n".to_owned()));
    wild.run(&["undeploy", wild.app.as_str()]).await.expect_code(0);
}

/// The boot unit README.md documents runs `otturnaut reconcile` after Docker
/// and Caddy, and tries again while they are still starting.
#[test]
fn the_boot_unit_reconciles_after_docker_and_caddy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/otturnaut-reconcile.service");
    let unit = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value = |key: &str| -> Vec<String> {
        unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned).collect()
    };
    assert_eq!(value("ExecStart"), ["/usr/local/bin/otturnaut reconcile"]);
    let after = value("After").join(" ");
    assert!(after.contains("docker.service") && after.contains("caddy.service"), "{after}");
    assert_eq!(value("Type"), ["oneshot"]);
    assert_eq!(value("Restart"), ["on-failure"]);
    assert_eq!(value("WantedBy"), ["multi-user.target"]);
}

/// What the app serves now: `/` (its version) and `/greeting` (its env).
async fn served(h: &Harness) -> (String, String) {
    let get = |path: &'static str| async move {
        let (status, body) = get_path_via(&shared_listen(), &h.domain(), path).await.expect("request through Caddy");
        assert_eq!(status, 200, "GET {path}: {body}");
        body.trim().to_owned()
    };
    (get("/").await, get("/greeting").await)
}

/// `releases APP --json`: (deployment, state) newest first, and the array.
async fn releases(h: &Harness) -> (Vec<(String, String)>, Value) {
    let run = h.run(&["releases", h.app.as_str(), "--json"]).await;
    run.expect_code(0);
    let doc: Value = serde_json::from_str(&run.stdout).expect("releases --json is one JSON array");
    let rows = doc
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| (r["deployment"].as_str().expect("deployment").to_owned(), r["state"].as_str().expect("state").into()))
        .collect();
    (rows, doc)
}

#[tokio::test]
async fn rollback_brings_each_release_back_exactly_and_keep_bounds_the_history() {
    let h = Harness::new("cli-roll", 21220).await;
    let repo = serving_repo("v1");
    let sha1 = repo.rev_parse("HEAD");
    let first = h.deploy(&repo.file_url(), &["--env", "GREETING=one", "--json"]).await;
    first.expect_code(0);
    let d1 = first.result()["deployment"].as_str().expect("d1").to_owned();
    assert_eq!(served(&h).await, ("v1".into(), "one".into()));

    // Nothing to go back to yet: exit 2, nothing touched.
    let before = h.snapshot().await;
    let none = h.run(&["rollback", h.app.as_str()]).await;
    none.expect_code(2);
    assert!(none.stderr.contains("no retained release"), "{}", none.stderr);
    assert_eq!(h.snapshot().await, before);

    // v2's value comes from an env file: it must come back too.
    let env_file = h.work.path().join("v2.env");
    std::fs::write(&env_file, "GREETING=two\n").expect("env file");
    let sha2 = repo.commit_with("v2", |dir| write_context(dir, &Behaviour::serve("v2")));
    let env_file = env_file.to_str().expect("utf-8 path");
    let second = h.deploy(&repo.file_url(), &["--env-file", env_file, "--json"]).await;
    second.expect_code(0);
    let d2 = second.result()["deployment"].as_str().expect("d2").to_owned();
    repo.commit_with("v3", |dir| write_context(dir, &Behaviour::serve("v3")));
    let third = h.deploy(&repo.file_url(), &["--env", "GREETING=three", "--json"]).await;
    third.expect_code(0);
    let d3 = third.result()["deployment"].as_str().expect("d3").to_owned();
    assert_eq!(served(&h).await, ("v3".into(), "three".into()));

    let (rows, doc) = releases(&h).await;
    let expected = [(d3.clone(), "live".to_owned()), (d2.clone(), "retained".into()), (d1.clone(), "retained".into())];
    assert_eq!(rows, expected, "{doc}");
    let v1 = &doc[2];
    assert_eq!(v1["commit"], sha1.as_str());
    assert_eq!(v1["image"], format!("otturnaut-{}:{d1}", h.app));
    assert_eq!(v1["container_port"], 8080);
    assert_eq!(v1["domains"], serde_json::json!([h.domain()]));
    assert!(v1["created"].as_str().is_some_and(|t| t.starts_with("20") && t.ends_with('Z')), "RFC 3339: {v1}");

    // Back to the previous release, exactly as it was deployed.
    let back = h.run(&["rollback", h.app.as_str(), "--json"]).await;
    back.expect_code(0);
    let r = back.result();
    assert_eq!(r["result"], "deployed", "{r}");
    assert_eq!(r["rollback_of"], d2.as_str());
    assert_eq!(r["commit"], sha2.as_str());
    assert_eq!(r["image"], format!("otturnaut-{}:{d2}", h.app));
    assert_eq!(r["previous"], d3.as_str());
    let lines = back.json_lines();
    let events: Vec<&str> = lines.iter().filter_map(|e| e["step"].as_str()).collect();
    assert!(!events.contains(&"fetch"), "no fetch: {events:?}");
    assert!(!back.stdout.contains("build_log"), "no build: {}", back.stdout);
    assert_eq!(served(&h).await, ("v2".into(), "two".into()));

    // Any kept release by name.
    let to_v1 = h.run(&["rollback", h.app.as_str(), "--to", &d1, "--json"]).await;
    to_v1.expect_code(0);
    assert_eq!(to_v1.result()["rollback_of"], d1.as_str());
    assert_eq!(to_v1.result()["commit"], sha1.as_str());
    assert_eq!(served(&h).await, ("v1".into(), "one".into()));

    // A --to that names no kept release: exit 2, nothing touched.
    let before = h.snapshot().await;
    let live = releases(&h).await.0[0].0.clone();
    for bad in [live.as_str(), "01jd9x3k2m4n5p6q7r8s9t0v1w", "not-an-id"] {
        let run = h.run(&["rollback", h.app.as_str(), "--to", bad, "--json"]).await;
        run.expect_code(2);
        assert_eq!(run.result()["result"], "failed", "{bad}");
        assert!(run.stderr.contains("--to") || run.stderr.contains("roll back"), "{bad}: {}", run.stderr);
    }
    assert_eq!(h.snapshot().await, before);
    assert_eq!(served(&h).await, ("v1".into(), "one".into()));

    // Retention: with --keep 2, after two more deploys (seven in all) only
    // the live release and two kept ones are left, and no other image.
    for v in ["v4", "v5"] {
        repo.commit_with(v, |dir| write_context(dir, &Behaviour::serve(v)));
        h.deploy(&repo.file_url(), &["--keep", "2"]).await.expect_code(0);
    }
    let (rows, doc) = releases(&h).await;
    assert_eq!(rows.len(), 3, "live + 2: {doc}");
    assert_eq!(rows.iter().filter(|(_, s)| s == "live").count(), 1, "{doc}");
    let kept: BTreeSet<String> = rows.iter().map(|(d, _)| d.clone()).collect();
    let docker = docker().await;
    let images = docker.list_images(Some(&h.app)).await.expect("images");
    let tagged: BTreeSet<String> = images.iter().map(|i| i.deployment.to_string()).collect();
    assert_eq!(tagged, kept, "no image of a removed release is left: {images:?}");
    let containers: BTreeSet<String> =
        docker.list(Some(&h.app)).await.expect("containers").into_iter().map(|c| c.deployment.to_string()).collect();
    assert_eq!(containers, kept, "no container of a removed release is left");
    assert_eq!(served(&h).await, ("v5".into(), "".into()));

    // status shows the live release only; undeploy removes the kept ones too.
    let status = h.run(&["status", h.app.as_str(), "--json"]).await;
    let s: Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert_eq!(s[0]["deployment"], rows[0].0.as_str());
    assert_eq!(s[0]["retained"], 2);
    let pruned = h.run(&["prune", h.app.as_str(), "--keep", "1", "--json"]).await;
    pruned.expect_code(0);
    let p = pruned.result();
    assert_eq!(p["result"], "pruned", "{p}");
    assert!(p["freed_bytes"].as_u64().is_some(), "{p}");
    assert_eq!(releases(&h).await.0.len(), 2, "live + 1 after prune --keep 1");
    h.run(&["undeploy", h.app.as_str()]).await.expect_code(0);
    assert!(h.snapshot().await.is_empty());
}
