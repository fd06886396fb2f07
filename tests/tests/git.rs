//! The gix source fetcher against real repositories over file://, git:// (a
//! real `git daemon`) and ssh:// (a real `sshd`), all on loopback.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use otturnaut_adapters::git::GitFetcher;
use otturnaut_core::traits::{FetchRequest, FetchedSource, SourceFetcher};
use otturnaut_core::{DeploymentId, Error, RepoUrl, Secret};
use otturnaut_tests::fixtures::{BUSYBOX, Behaviour, write_context};
use otturnaut_tests::gitfix::{GatedProxy, GitDaemon, GitRepo, SshServer, free_port};
use otturnaut_tests::services::unique_app;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(60);

fn work_dir() -> TempDir {
    tempfile::Builder::new().prefix("otturnaut-git-work-").tempdir().expect("work dir")
}

/// A work dir whose path needs quoting on the ssh command line.
fn awkward_work_dir() -> TempDir {
    tempfile::Builder::new().prefix("otturnaut git work %d it's-").tempdir().expect("work dir")
}

fn request(url: &str, git_ref: &str, key: Option<&str>, timeout: Duration) -> FetchRequest {
    FetchRequest {
        app: unique_app("git"),
        deployment: DeploymentId::generate(),
        url: RepoUrl::parse_allowing_file(url).expect("fixture URL is valid"),
        git_ref: git_ref.parse().expect("fixture ref is valid"),
        ssh_key: key.map(Secret::new),
        timeout,
    }
}

/// A repository with history: `main` has three commits (c1 tagged `v1`,
/// c2 tagged `v2` annotated), `feature` branches off c3.
struct History {
    repo: GitRepo,
    c1: String,
    c2: String,
    c3: String,
    feature: String,
}

fn history() -> History {
    let repo = GitRepo::new();
    let c1 = repo.commit([("Dockerfile", &b"FROM scratch\nCOPY app.txt /\n"[..]), ("app.txt", b"one\n")], "one");
    repo.tag("v1");
    let c2 = repo.commit([("app.txt", b"two\n")], "two");
    repo.annotated_tag("v2", "release two");
    let c3 = repo.commit([("app.txt", "three\n"), ("dir/nested.txt", "n\n")], "three");
    repo.branch("feature");
    let feature = repo.commit([("app.txt", b"feature\n")], "feature work");
    repo.switch("main");
    History { repo, c1, c2, c3, feature }
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("running git");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Checks a fetched tree: the reported commit, the checked-out HEAD, the
/// content of app.txt, and that the clone holds exactly one commit.
fn assert_checkout(got: &FetchedSource, commit: &str, app_txt: &str) {
    assert_commit_and_content(got, commit, app_txt);
    assert_eq!(git_in(&got.dir, &["rev-list", "--count", "HEAD"]), "1", "a depth-1 clone has exactly one commit");
    assert!(got.dir.join(".git/shallow").exists(), "the clone is shallow");
}

fn assert_commit_and_content(got: &FetchedSource, commit: &str, app_txt: &str) {
    assert_eq!(got.commit.as_str(), commit, "resolved commit");
    assert_eq!(git_in(&got.dir, &["rev-parse", "HEAD"]), commit, "HEAD of the clone");
    assert_eq!(fs::read_to_string(got.dir.join("app.txt")).expect("app.txt in the checkout"), app_txt);
}

/// Entries of `dir` (empty if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {}: {e}", dir.display()),
    }
}

fn key_files(fetcher: &GitFetcher) -> Vec<PathBuf> {
    entries(&fetcher.ssh_dir()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "key")).collect()
}

/// Nothing of any fetch is left: no checkout, no key, no ssh log; only the
/// learnt host keys.
fn assert_nothing_left(fetcher: &GitFetcher) {
    assert_eq!(entries(&fetcher.src_dir()), Vec::<PathBuf>::new(), "checkouts left behind");
    let ssh_files: Vec<PathBuf> =
        entries(&fetcher.ssh_dir()).into_iter().filter(|p| !p.ends_with("known_hosts")).collect();
    assert_eq!(ssh_files, Vec::<PathBuf>::new(), "key or log files left behind");
}

/// Clones every kind of ref of `h` through `url` and checks each checkout.
async fn clone_all_refs(transport: &str, url: &str, h: &History, key: Option<&str>) {
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let cases = [
        ("main", h.c3.as_str(), "three\n"),
        ("feature", h.feature.as_str(), "feature\n"),
        ("v1", h.c1.as_str(), "one\n"),
        ("v2", h.c2.as_str(), "two\n"),
        (h.c2.as_str(), h.c2.as_str(), "two\n"),
    ];
    for (git_ref, commit, content) in cases {
        let req = request(url, git_ref, key, TIMEOUT);
        let start = Instant::now();
        let got = fetcher.fetch(&req).await.unwrap_or_else(|e| panic!("{transport} clone of {git_ref}: {e}"));
        eprintln!("timing: {transport} clone of {git_ref:<8.8} took {:>4} ms", start.elapsed().as_millis());
        assert_checkout(&got, commit, content);
        assert_eq!(got.dir, fetcher.checkout_dir(&req.app, &req.deployment));
        assert!(got.dir.starts_with(fetcher.src_dir()), "checkout {} is under the work dir", got.dir.display());
        let name = got.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            name.contains(req.app.as_str()) && name.contains(req.deployment.as_str()),
            "checkout dir {name} names app and deployment"
        );
        assert!(key_files(&fetcher).is_empty(), "no key file after a clone");
        fetcher.remove(&req.app, &req.deployment).await.expect("remove");
        assert!(!got.dir.exists());
    }
    assert_nothing_left(&fetcher);
}

#[tokio::test]
async fn file_clones_branch_tags_and_sha() {
    let h = history();
    clone_all_refs("file://", &h.repo.file_url(), &h, None).await;
}

#[tokio::test]
async fn git_daemon_clones_branch_tags_and_sha() {
    let h = history();
    let daemon = GitDaemon::for_repo(&h.repo);
    clone_all_refs("git://", &daemon.url(&h.repo), &h, None).await;
}

#[tokio::test]
async fn ssh_clones_branch_tags_and_sha() {
    let h = history();
    let sshd = SshServer::start();
    clone_all_refs("ssh://", &sshd.url(&h.repo), &h, Some(sshd.client_key())).await;
}

#[tokio::test]
async fn annotated_tag_resolves_to_its_commit() {
    let h = history();
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let got =
        fetcher.fetch(&request(&h.repo.file_url(), "v2", None, TIMEOUT)).await.expect("clone of an annotated tag");
    assert_eq!(got.commit.as_str(), h.repo.rev_parse("v2^{commit}"));
    assert_ne!(got.commit.as_str(), h.repo.rev_parse("v2"), "not the tag object");
}

#[tokio::test]
async fn unknown_ref_is_a_clear_error_and_leaves_nothing() {
    let h = history();
    let daemon = GitDaemon::for_repo(&h.repo);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    for url in [h.repo.file_url(), daemon.url(&h.repo)] {
        let req = request(&url, "no-such-branch", None, TIMEOUT);
        let err = fetcher.fetch(&req).await.expect_err("unknown ref must fail");
        let msg = err.to_string();
        assert!(msg.contains(&format!("ref 'no-such-branch' not found in {url}")), "unclear error: {msg}");
        assert!(!err.is_unavailable(), "the server was reachable: {msg}");
        assert_nothing_left(&fetcher);
        // Undo after a failed fetch is harmless.
        fetcher.remove(&req.app, &req.deployment).await.expect("remove after failure");
    }
}

#[tokio::test]
async fn unknown_sha_is_a_clear_error() {
    let h = history();
    let daemon = GitDaemon::for_repo(&h.repo);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let url = daemon.url(&h.repo);
    let err = fetcher.fetch(&request(&url, sha, None, TIMEOUT)).await.expect_err("unknown commit must fail");
    let msg = err.to_string();
    assert!(msg.contains(&format!("commit {sha} not found in {url}")), "unclear error: {msg}");
    assert_nothing_left(&fetcher);
}

/// A commit no ref points to (dropped by a reset). Protocol v2 servers send
/// it when asked by SHA; a v0 server only with `uploadpack.allowAnySHA1InWant`,
/// and its refusal must say what to configure.
#[tokio::test]
async fn unadvertised_commit_by_sha() {
    let repo = GitRepo::with_files([("app.txt", "base\n")]);
    let base = repo.rev_parse("HEAD");
    let orphan = repo.commit([("app.txt", "orphan\n")], "dropped later");
    repo.git(["reset", "-q", "--hard", &base]);
    let v2 = SshServer::start();
    let v0 = SshServer::start_protocol_v0();
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let fetch = |sshd: &SshServer| {
        let req = request(&sshd.url(&repo), &orphan, Some(sshd.client_key()), TIMEOUT);
        let fetcher = fetcher.clone();
        async move { fetcher.fetch(&req).await }
    };

    let got = fetch(&v0).await.expect("allowAnySHA1InWant lets an unadvertised commit through");
    // Not depth 1: over protocol v0 gix 0.90 asks for `deepen-relative`,
    // which makes the server send the full history (see git/clone.rs).
    assert_commit_and_content(&got, &orphan, "orphan\n");

    repo.set_config("uploadpack.allowAnySHA1InWant", "false");
    let got = fetch(&v2).await.expect("protocol v2 serves any commit by SHA");
    assert_checkout(&got, &orphan, "orphan\n");

    let err = fetch(&v0).await.expect_err("a v0 server refuses an unadvertised commit");
    let msg = err.to_string();
    assert!(
        msg.contains("allowAnySHA1InWant") && msg.contains(&format!("commit {orphan}")),
        "the refusal should say what the server needs: {msg}"
    );
    assert!(key_files(&fetcher).is_empty());
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    for url in [
        format!("git://127.0.0.1:{}/repo", free_port()),
        format!("ssh://git@127.0.0.1:{}/repo.git", free_port()),
        format!("https://127.0.0.1:{}/repo.git", free_port()),
    ] {
        let err = fetcher
            .fetch(&request(&url, "main", Some("not even a key"), TIMEOUT))
            .await
            .expect_err("nothing listens there");
        assert!(err.is_unavailable(), "expected Unavailable, got: {err}");
        assert!(err.to_string().contains(&url), "error names the URL: {err}");
        assert_nothing_left(&fetcher);
    }
}

/// What the test saw of the deploy key while ssh was connecting.
struct KeySeen {
    path: PathBuf,
    mode: u32,
    content_matches: bool,
}

/// Runs `req` through a gated proxy in front of `sshd`: once ssh has
/// connected (so the key file must be in place) the key file is inspected,
/// then the gate opens and the fetch completes.
async fn fetch_observing_key(
    fetcher: &GitFetcher,
    sshd: &SshServer,
    repo: &GitRepo,
    key: &str,
) -> (Result<FetchedSource, Error>, KeySeen) {
    let proxy = GatedProxy::start(sshd.port()).await;
    let req = request(&sshd.url_via(proxy.port(), repo), "main", Some(key), TIMEOUT);
    let task = tokio::spawn({
        let fetcher = fetcher.clone();
        async move { fetcher.fetch(&req).await }
    });
    proxy.wait_for_connections(1, Duration::from_secs(20)).await;
    let keys = key_files(fetcher);
    assert_eq!(keys.len(), 1, "exactly one key file while ssh connects: {keys:?}");
    let path = keys[0].clone();
    let meta = fs::metadata(&path).expect("key file metadata");
    let seen = KeySeen {
        mode: meta.permissions().mode() & 0o777,
        content_matches: fs::read_to_string(&path).expect("key file").trim() == key.trim(),
        path,
    };
    proxy.open();
    let result = task.await.expect("fetch task");
    (result, seen)
}

#[tokio::test]
async fn ssh_key_file_is_private_during_the_clone_and_gone_after() {
    let repo = GitRepo::with_files([("app.txt", "over ssh\n")]);
    let sshd = SshServer::start();
    let work = awkward_work_dir();
    let fetcher = GitFetcher::new(work.path());

    let (result, seen) = fetch_observing_key(&fetcher, &sshd, &repo, sshd.client_key()).await;
    let got = result.unwrap_or_else(|e| panic!("ssh clone: {e}\nsshd log:\n{}", sshd.log()));
    assert_eq!(seen.mode, 0o600, "key file mode");
    assert!(seen.content_matches, "the key file holds the deploy key");
    assert!(seen.path.starts_with(work.path()), "key file lives in the work dir");
    assert!(!seen.path.exists(), "key file deleted after success");
    assert_checkout(&got, &repo.rev_parse("HEAD"), "over ssh\n");
    assert!(fetcher.ssh_dir().join("known_hosts").exists(), "host key recorded in our own known_hosts");
}

#[tokio::test]
async fn ssh_wrong_key_fails_and_deletes_the_key() {
    let repo = GitRepo::with_files([("app.txt", "x\n")]);
    let sshd = SshServer::start();
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());

    let (result, seen) = fetch_observing_key(&fetcher, &sshd, &repo, sshd.unauthorized_key()).await;
    let err = result.expect_err("an unauthorized key must be refused");
    assert_eq!(seen.mode, 0o600);
    assert!(!seen.path.exists(), "key file deleted after failure");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("Permission denied"), "error says why: {msg}");
    assert!(msg.contains("127.0.0.1"), "error names the URL: {msg}");
    for line in sshd.unauthorized_key().lines().filter(|l| !l.starts_with("-----")) {
        assert!(!msg.contains(line), "the key leaked into the error");
    }
    assert_nothing_left(&fetcher);
}

#[tokio::test]
async fn git_timeout_interrupts_and_leaves_nothing() {
    let repo = GitRepo::with_files([("app.txt", "x\n")]);
    let daemon = GitDaemon::for_repo(&repo);
    // Accepts the connection, never answers: a hung server.
    let proxy = GatedProxy::start(daemon.port()).await;
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let timeout = Duration::from_millis(800);

    let start = Instant::now();
    let err = fetcher
        .fetch(&request(&daemon.url_via(proxy.port(), &repo), "main", None, timeout))
        .await
        .expect_err("a hung server must time out");
    let took = start.elapsed();
    eprintln!("timing: git:// timeout after {} ms", took.as_millis());
    assert!(matches!(err, Error::Timeout { after, .. } if after == timeout), "got {err}");
    assert!(took < timeout + Duration::from_secs(5), "returned after {took:?}");
    assert!(proxy.connections() >= 1, "the clone did reach the server");
    assert_nothing_left(&fetcher);
}

#[tokio::test]
async fn ssh_timeout_deletes_key_and_checkout() {
    let repo = GitRepo::with_files([("app.txt", "x\n")]);
    let sshd = SshServer::start();
    let proxy = GatedProxy::start(sshd.port()).await;
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let timeout = Duration::from_millis(1500);

    let req = request(&sshd.url_via(proxy.port(), &repo), "main", Some(sshd.client_key()), timeout);
    let err = fetcher.fetch(&req).await.expect_err("a hung server must time out");
    assert!(matches!(err, Error::Timeout { .. }), "got {err}");
    assert!(proxy.connections() >= 1, "ssh did connect");
    assert_nothing_left(&fetcher);
}

#[tokio::test]
async fn dropping_the_fetch_future_deletes_key_and_checkout() {
    let repo = GitRepo::with_files([("app.txt", "x\n")]);
    let sshd = SshServer::start();
    let proxy = GatedProxy::start(sshd.port()).await;
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());

    let req = request(&sshd.url_via(proxy.port(), &repo), "main", Some(sshd.client_key()), TIMEOUT);
    let task = tokio::spawn({
        let fetcher = fetcher.clone();
        let req = req.clone();
        async move { fetcher.fetch(&req).await }
    });
    proxy.wait_for_connections(1, Duration::from_secs(20)).await;
    assert_eq!(key_files(&fetcher).len(), 1, "key file present mid-fetch");
    assert_eq!(entries(&fetcher.src_dir()).len(), 1, "partial checkout present mid-fetch");
    assert!(!fetcher.checkout_dir(&req.app, &req.deployment).exists(), "no checkout before it is complete");

    task.abort();
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_cancelled()), "the fetch was cancelled");
    assert_nothing_left(&fetcher);
}

#[tokio::test]
async fn remove_cleans_the_work_dir_and_is_idempotent() {
    let repo = GitRepo::with_files([("app.txt", "x\n"), ("sub/deep/file", "y\n")]);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let req = request(&repo.file_url(), "main", None, TIMEOUT);
    let got = fetcher.fetch(&req).await.expect("clone");
    assert!(got.dir.join("sub/deep/file").exists());
    let found = fetcher.fetched_dirs().expect("list");
    assert_eq!(found.len(), 1);
    assert_eq!((&found[0].app, &found[0].deployment, found[0].partial), (&req.app, &req.deployment, false));

    fetcher.remove(&req.app, &req.deployment).await.expect("remove");
    fetcher.remove(&req.app, &req.deployment).await.expect("second remove");
    fetcher.remove(&req.app, &DeploymentId::generate()).await.expect("remove of a deployment never fetched");
    assert_nothing_left(&fetcher);
    assert!(fetcher.fetched_dirs().expect("list").is_empty());
}

/// What a process killed mid-clone leaves is found and removed by
/// deployment, without touching other deployments' checkouts.
#[tokio::test]
async fn remove_also_deletes_partial_clones_of_a_dead_process() {
    let repo = GitRepo::with_files([("app.txt", "x\n")]);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let req = request(&repo.file_url(), "main", None, TIMEOUT);
    let other = request(&repo.file_url(), "main", None, TIMEOUT);
    let kept = fetcher.fetch(&other).await.expect("clone of another deployment");

    let stale = fetcher.src_dir().join(format!("{}-{}.partial-4242-0", req.app, req.deployment));
    fs::create_dir_all(stale.join(".git")).expect("fake partial clone");
    let found = fetcher.fetched_dirs().expect("list");
    assert!(found.iter().any(|f| f.dir == stale && f.partial && f.deployment == req.deployment), "{found:?}");

    fetcher.remove(&req.app, &req.deployment).await.expect("remove");
    assert!(!stale.exists(), "partial clone removed");
    assert!(kept.dir.join("app.txt").exists(), "another deployment's checkout untouched");
}

/// Fetching a deployment again replaces its checkout instead of mixing in
/// whatever the earlier one held.
#[tokio::test]
async fn refetch_replaces_the_checkout() {
    let repo = GitRepo::with_files([("app.txt", "one\n")]);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let req = request(&repo.file_url(), "main", None, TIMEOUT);
    let first = fetcher.fetch(&req).await.expect("first clone");
    fs::write(first.dir.join("stray"), "left by someone").expect("stray file");
    let c2 = repo.commit([("app.txt", "two\n")], "two");

    let second = fetcher.fetch(&req).await.expect("second clone");
    assert_eq!(second.dir, first.dir);
    assert_checkout(&second, &c2, "two\n");
    assert!(!second.dir.join("stray").exists(), "the old checkout is gone");
    assert_eq!(entries(&fetcher.src_dir()).len(), 1);
}

#[tokio::test]
async fn committed_executables_keep_their_mode() {
    let repo = GitRepo::with_files([("bin/tool", &b"#!/bin/sh\necho hi\n"[..]), ("data.txt", b"plain\n")]);
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let got = fetcher.fetch(&request(&repo.file_url(), "main", None, TIMEOUT)).await.expect("clone");
    let mode = |p: &str| fs::metadata(got.dir.join(p)).expect("file in checkout").permissions().mode() & 0o111;
    assert_ne!(mode("bin/tool"), 0, "executable bit kept");
    assert_eq!(mode("data.txt"), 0);
}

/// A Docker build context from the shared fixtures, committed and fetched,
/// comes back byte for byte with busybox still executable.
#[tokio::test]
async fn docker_context_round_trips_through_git() {
    let behaviour = Behaviour::serve("v1");
    let repo = GitRepo::new();
    let commit = repo.commit_with("context", |dir| write_context(dir, &behaviour));
    let work = work_dir();
    let fetcher = GitFetcher::new(work.path());
    let got = fetcher.fetch(&request(&repo.file_url(), "main", None, TIMEOUT)).await.expect("clone");
    assert_eq!(got.commit.as_str(), commit);
    assert_eq!(fs::read_to_string(got.dir.join("Dockerfile")).expect("Dockerfile"), behaviour.dockerfile());
    let busybox = got.dir.join("busybox");
    assert_eq!(fs::read(&busybox).expect("busybox"), fs::read(BUSYBOX).expect("host busybox"));
    assert_ne!(fs::metadata(&busybox).expect("busybox").permissions().mode() & 0o111, 0, "busybox executable");
    assert_eq!(fs::read_to_string(got.dir.join("www/version")).expect("www/version"), "v1\n");
}
