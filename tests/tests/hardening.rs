//! Hostile input against the real binary, Docker, Caddy and git (issue 15):
//! a repository that links `.dockerignore` to `/dev/zero`, a build that
//! prints without newlines, credentials in repository URLs, a symlink
//! planted where the agent writes its lock, absurd durations and a registry
//! that never answers. Each test fails on the code before the fix.
//!
//! Each test has its own app id, work dir and host-port range (24000-24199),
//! so they run in parallel with everything else.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use otturnaut_core::traits::{ContainerRuntime, ImageBuilder};
use otturnaut_core::{AppId, DeploymentId, EventSink};
use otturnaut_tests::caddy_proc::{SHARED_LISTEN, shared_caddy};
use otturnaut_tests::fixtures::{self, Behaviour, DockerCleanup, RawDocker, build_request, write_context};
use otturnaut_tests::gitfix::GitRepo;
use otturnaut_tests::services::{require_caddy, require_docker, unique_app};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_otturnaut-cli-under-test");

/// No run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The address space a memory-bounded run gets (`prlimit --as`): far above
/// what a healthy run reserves, far below the host's memory, so the code
/// before the fix dies of it instead of taking the host down.
const ADDRESS_SPACE: u64 = 6 * 1024 * 1024 * 1024;

/// The peak RSS a deploy may reach, whatever the repository does.
const MAX_RSS_KIB: u64 = 150 * 1024;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// Peak resident set size in KiB, for runs that measured it.
    peak_rss_kib: Option<u64>,
    elapsed: Duration,
}

impl Run {
    #[track_caller]
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", tail(&self.stdout), tail(&self.stderr));
        self
    }

    fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// The end of a long output, for assertion messages.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

struct Harness {
    app: AppId,
    work: TempDir,
    port_range: String,
    _cleanup: DockerCleanup,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let (caddy, app) = (shared_caddy(), self.app.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            rt.block_on(otturnaut_core::traits::Router::remove_route(&caddy, &app))
        })
        .join();
    }
}

impl Harness {
    async fn new(prefix: &str, range_start: u16) -> Harness {
        require_docker().await;
        require_caddy().await;
        let app = unique_app(prefix);
        let work = tempfile::Builder::new().prefix("otturnaut-hardening-").tempdir().expect("work dir");
        Harness {
            _cleanup: DockerCleanup::new(&app),
            app,
            work,
            port_range: format!("{range_start}-{}", range_start + 19),
        }
    }

    fn domain(&self) -> String {
        format!("{}.localhost", self.app)
    }

    fn command(&self, args: &[&str], limit_memory: bool) -> tokio::process::Command {
        self.command_in(self.work.path(), args, limit_memory)
    }

    fn command_in(&self, work: &Path, args: &[&str], limit_memory: bool) -> tokio::process::Command {
        let mut cmd = if limit_memory {
            let mut cmd = tokio::process::Command::new("prlimit");
            cmd.arg(format!("--as={ADDRESS_SPACE}")).arg("--").arg(BIN);
            cmd
        } else {
            tokio::process::Command::new(BIN)
        };
        for var in ["OTTURNAUT_CADDY_ADMIN", "OTTURNAUT_PORT_RANGE", "OTTURNAUT_WORK_DIR", "OTTURNAUT_CONFIG"] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1")
            .env("OTTURNAUT_LISTEN", SHARED_LISTEN)
            .env("OTTURNAUT_NO_AUTO_HTTPS", "1")
            .args(["--port-range", &self.port_range, "--work-dir"])
            .arg(work)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI; with `measure`, under an address-space limit and with
    /// its peak RSS recorded, stdout and stderr going through files.
    async fn run_with(&self, args: &[&str], measure: bool) -> Run {
        let out_dir = tempfile::tempdir().expect("output dir");
        let rss_file = out_dir.path().join("rss");
        let (out_file, err_file) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
        let mut cmd = self.command(args, measure);
        if measure {
            cmd.env("OTTURNAUT_TEST_PEAK_RSS", &rss_file);
        }
        cmd.stdout(std::fs::File::create(&out_file).expect("stdout file"));
        cmd.stderr(std::fs::File::create(&err_file).expect("stderr file"));
        let started = Instant::now();
        let status = tokio::time::timeout(RUN_LIMIT, cmd.status())
            .await
            .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {RUN_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: read(&out_file),
            stderr: read(&err_file),
            peak_rss_kib: std::fs::read_to_string(&rss_file).ok().and_then(|s| s.trim().parse().ok()),
            elapsed: started.elapsed(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, false).await
    }

    async fn containers(&self) -> usize {
        fixtures::docker().await.list(Some(&self.app)).await.expect("listing containers").len()
    }
}

/// A repository serving `v1`, with `extra` applied to the tree.
fn repo_with(extra: impl FnOnce(&Path) -> std::io::Result<()>) -> GitRepo {
    let repo = GitRepo::new();
    repo.commit_with("hostile", |dir| {
        write_context(dir, &Behaviour::serve("v1"))?;
        extra(dir)
    });
    repo
}

#[tokio::test]
async fn a_dockerignore_linked_to_dev_zero_fails_the_build_with_bounded_memory() {
    let h = Harness::new("hard-zero", 24000).await;
    let repo = repo_with(|dir| std::os::unix::fs::symlink("/dev/zero", dir.join(".dockerignore")));
    let domain = h.domain();
    let run = h
        .run_with(
            &["deploy", h.app.as_str(), "--repo", &repo.file_url(), "--container-port", "8080", "--domain", &domain],
            true,
        )
        .await;
    let rss = run.peak_rss_kib.unwrap_or_else(|| panic!("no peak RSS reported (killed?): {run:?}"));
    eprintln!("measured: /dev/zero .dockerignore: peak RSS {rss} KiB, {:?}", run.elapsed);
    run.expect_code(1);
    assert!(run.stderr.contains(".dockerignore") && run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(rss < MAX_RSS_KIB, "peak RSS {rss} KiB");
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    assert_eq!(h.containers().await, 0, "rolled back");
}

#[tokio::test]
async fn build_output_without_newlines_keeps_lines_and_memory_bounded() {
    let h = Harness::new("hard-nonl", 24020).await;
    const BYTES: usize = 64 * 1024 * 1024;
    let repo = repo_with(|dir| {
        let dockerfile = Behaviour::serve("v1").dockerfile().replacen(
            "COPY busybox /bin/busybox\n",
            &format!(
                "COPY busybox /bin/busybox\n\
                 RUN [\"/bin/busybox\",\"sh\",\"-c\",\"/bin/busybox head -c {BYTES} /dev/zero | /bin/busybox tr '\\\\0' a\"]\n"
            ),
            1,
        );
        std::fs::write(dir.join("Dockerfile"), dockerfile)
    });
    let domain = h.domain();
    let run = h
        .run_with(
            &[
                "deploy",
                h.app.as_str(),
                "--repo",
                &repo.file_url(),
                "--container-port",
                "8080",
                "--domain",
                &domain,
                "--json",
            ],
            true,
        )
        .await;
    let rss = run.peak_rss_kib.unwrap_or_else(|| panic!("no peak RSS reported (killed?): {}", tail(&run.stderr)));
    eprintln!("measured: {BYTES} bytes without a newline: peak RSS {rss} KiB, deploy took {:?}", run.elapsed);
    run.expect_code(0);
    let mut log_bytes = 0usize;
    let mut longest = 0usize;
    for line in run.stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        if let Some(text) = event["line"].as_str() {
            longest = longest.max(text.len());
            log_bytes += text.chars().filter(|c| *c == 'a').count();
        }
    }
    eprintln!("measured: longest build log line {longest} bytes, {log_bytes} bytes of output shown");
    assert!(longest <= otturnaut_core::MAX_LOG_LINE, "{longest}");
    assert!(log_bytes > 0, "the output is shown, split into lines");
    assert!(rss < MAX_RSS_KIB, "peak RSS {rss} KiB");
}

#[tokio::test]
async fn a_token_in_a_repository_url_appears_in_no_output_and_no_label() {
    let h = Harness::new("hard-token", 24040).await;
    let domain = h.domain();
    // Nothing listens on port 1: the fetch fails after the URL went
    // through parsing, the source line, the fetcher and its error.
    for (url, secret) in [
        ("https://TOKENAAA111@127.0.0.1:1/o/r.git", "TOKENAAA111"),
        ("https://bot:PASSBBB222@127.0.0.1:1/o/r.git", "PASSBBB222"),
        ("https://bot:PASSCCC333@h", "PASSCCC333"),
    ] {
        for json in [false, true] {
            let mut args =
                vec!["deploy", h.app.as_str(), "--repo", url, "--container-port", "8080", "--domain", &domain];
            if json {
                args.push("--json");
            }
            let run = h.run(&args).await;
            assert_ne!(run.code, 0, "{run:?}");
            assert!(!run.all_output().contains(secret), "{url} (json: {json}) leaked:\n{}", run.all_output());
            assert!(run.all_output().contains("***"), "the URL is shown redacted: {}", run.all_output());
        }
    }
    let invalid =
        h.run(&["deploy", h.app.as_str(), "--repo", "https://bot:PASSCCC333@h", "--container-port", "80"]).await;
    invalid.expect_code(2);

    let creds = h.work.path().join("creds");
    std::fs::write(&creds, "bot:PASSDDD444\n").expect("write credentials");
    let run = h
        .run(&[
            "deploy",
            h.app.as_str(),
            "--repo",
            "https://127.0.0.1:1/o/r.git",
            "--repo-credentials-file",
            creds.to_str().expect("utf-8"),
            "--container-port",
            "8080",
            "--json",
        ])
        .await;
    assert_ne!(run.code, 0);
    assert!(!run.all_output().contains("PASSDDD444"), "{}", run.all_output());
    assert!(run.all_output().contains("https://bot:***@127.0.0.1:1/o/r.git"), "{}", run.all_output());

    // The image built from a token URL: labels and history.
    let docker = fixtures::docker().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_context(dir.path(), &Behaviour::serve("v1")).expect("context");
    let mut req = build_request(&h.app, &DeploymentId::generate(), dir.path());
    req.repo = "https://TOKENEEE555@example.com/o/r.git".parse().expect("url");
    let tag = docker.build(&req, &EventSink::discard()).await.expect("build");
    let inspect = docker.client().inspect_image(tag.as_str()).await.expect("inspect");
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get(otturnaut_core::labels::REPO).map(String::as_str), Some("https://***@example.com/o/r.git"));
    let everything = format!("{labels:?} {:?}", docker.client().image_history(tag.as_str()).await.expect("history"));
    assert!(!everything.contains("TOKENEEE555"), "{everything}");
}

#[tokio::test]
async fn a_symlink_planted_at_the_lock_leaves_its_target_intact() {
    let h = Harness::new("hard-lock", 24060).await;
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let target = elsewhere.path().join("precious");
    std::fs::write(&target, "precious data\n").expect("write target");
    let locks = h.work.path().join("locks");
    std::fs::create_dir(&locks).expect("locks dir");
    let lock = locks.join(format!("{}.lock", h.app));
    std::os::unix::fs::symlink(&target, &lock).expect("plant symlink");

    let run = h.run(&["deploy", h.app.as_str(), "--image", "busybox:none", "--container-port", "80"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains(&lock.display().to_string()) && run.stderr.contains("symbolic link"), "{}", run.stderr);
    let undeploy = h.run(&["undeploy", h.app.as_str()]).await;
    undeploy.expect_code(2);
    assert_eq!(std::fs::read_to_string(&target).expect("target"), "precious data\n", "the target is intact");
    assert_eq!(h.containers().await, 0);
}

#[tokio::test]
async fn a_work_dir_others_may_write_to_is_refused_before_anything_happens() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new("hard-perm", 24080).await;
    let src: PathBuf = h.work.path().join("src");
    std::fs::create_dir(&src).expect("src");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let run = h.run(&["deploy", h.app.as_str(), "--image", "busybox:none", "--container-port", "80"]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains(&src.display().to_string()) && run.stderr.contains("others may write"),
        "{}",
        run.stderr
    );
    assert!(!h.work.path().join("locks").exists(), "nothing was created");

    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let fresh = tempfile::tempdir().expect("tempdir");
    let work = fresh.path().join("new-work");
    let status = h.command_in(&work, &["reconcile", h.app.as_str()], false).status();
    assert!(status.await.expect("run").success());
    for dir in ["", "locks", "src", "ssh"] {
        let mode = std::fs::metadata(work.join(dir)).expect("created").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir}");
    }
}

#[tokio::test]
async fn absurd_durations_and_tails_exit_2_before_anything_is_created() {
    let h = Harness::new("hard-dur", 24100).await;
    for (flag, value) in [
        ("--health-timeout", "18446744073709551615s"),
        ("--health-timeout", "25h"),
        ("--health-timeout", "0s"),
        ("--pull-timeout", "100years"),
    ] {
        let run =
            h.run(&["deploy", h.app.as_str(), "--image", "busybox:none", "--container-port", "80", flag, value]).await;
        run.expect_code(2);
        assert!(run.stderr.contains(flag), "{}", run.stderr);
    }
    for tail in ["1000000", "99999999999999999999"] {
        h.run(&["logs", h.app.as_str(), "--tail", tail]).await.expect_code(2);
    }
    assert!(std::fs::read_dir(h.work.path()).expect("work dir").next().is_none(), "nothing was created");
    assert_eq!(h.containers().await, 0);
}

#[tokio::test]
async fn a_registry_that_never_answers_is_given_up_on_after_the_pull_timeout() {
    let h = Harness::new("hard-pull", 24120).await;
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let image = format!("127.0.0.1:{port}/silent/app:1");
    let run =
        h.run(&["deploy", h.app.as_str(), "--image", &image, "--container-port", "80", "--pull-timeout", "3s"]).await;
    eprintln!("measured: pull from a silent registry given up after {:?}", run.elapsed);
    run.expect_code(1);
    assert!(run.stderr.contains("pulling image") && run.stderr.contains("timed out after 3s"), "{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert_eq!(h.containers().await, 0);
}

#[tokio::test]
async fn ssh_host_keys_are_learnt_into_a_private_file_or_pinned() {
    use otturnaut_adapters::git::GitFetcher;
    use otturnaut_core::traits::{FetchRequest, SourceFetcher};
    use otturnaut_tests::gitfix::SshServer;
    use std::os::unix::fs::PermissionsExt;

    let repo = GitRepo::with_files([("app.txt", "over ssh\n")]);
    let sshd = SshServer::start();
    let request = || FetchRequest {
        app: unique_app("hard-ssh"),
        deployment: DeploymentId::generate(),
        url: otturnaut_core::RepoUrl::parse_allowing_file(&sshd.url(&repo)).expect("url"),
        git_ref: "main".parse().expect("ref"),
        ssh_key: Some(otturnaut_core::Secret::new(sshd.client_key())),
        timeout: Duration::from_secs(60),
    };
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;

    // Trust on first use: the key is learnt into our own known_hosts, 0600.
    let work = tempfile::tempdir().expect("work");
    let tofu = GitFetcher::new(work.path().join("w"));
    let got = tofu.fetch(&request()).await.unwrap_or_else(|e| panic!("ssh clone: {e}\n{}", sshd.log()));
    let known_hosts = tofu.ssh_dir().join("known_hosts");
    assert_eq!(mode(&known_hosts), 0o600);
    assert!(std::fs::read_to_string(&known_hosts).expect("read").contains("ssh-"), "the host key was learnt");
    assert_eq!(mode(&tofu.src_dir()), 0o700);
    assert_eq!(mode(&tofu.ssh_dir()), 0o700);
    assert_eq!(mode(&got.dir), 0o700, "the checkout is private");

    // Pinned to a file that does not list the host: refused.
    let empty = work.path().join("pinned-empty");
    std::fs::write(&empty, "").expect("write");
    let pinned = GitFetcher::new(work.path().join("p")).with_known_hosts(Some(empty.clone()));
    let err = pinned.fetch(&request()).await.expect_err("an unknown host is refused");
    assert!(format!("{err}").contains("Host key verification failed"), "{err}");
    assert_eq!(std::fs::read_to_string(&empty).expect("read"), "", "a pinned file is never written");

    // Pinned to the learnt key: accepted.
    let trusted = GitFetcher::new(work.path().join("t")).with_known_hosts(Some(known_hosts));
    trusted.fetch(&request()).await.unwrap_or_else(|e| panic!("pinned clone: {e}"));
}
