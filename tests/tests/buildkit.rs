//! Builds with BuildKit on the real Docker Engine: cache mounts, build
//! secrets that end up nowhere, the build cache across releases, and the
//! legacy fallback saying so.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use otturnaut_adapters::docker::Builder;
use otturnaut_core::traits::ImageBuilder;
use otturnaut_core::{DeployEvent, DeploymentId, Error, EventSink, Secret};
use otturnaut_tests::fixtures::{self, Behaviour, DockerCleanup, build_request, write_context};
use otturnaut_tests::services::unique_app;

const SECRET: &str = "s3cr3t-build-token-5f2a9";

/// Every build log line of a build, with the build's outcome.
async fn build_logged(
    docker: &otturnaut_adapters::docker::Docker,
    req: &otturnaut_core::traits::BuildRequest,
) -> (Result<otturnaut_core::ImageRef, Error>, Vec<String>) {
    let (events, mut rx) = EventSink::channel();
    let result = docker.build(req, &events).await;
    let mut lines = Vec::new();
    while let Ok(event) = rx.try_recv() {
        let text = format!("{event:?}");
        assert!(!text.contains(SECRET), "the secret is in an event: {text}");
        if let DeployEvent::BuildLog { line } = event {
            lines.push(line);
        }
    }
    (result, lines)
}

/// A fixture server's context whose Dockerfile runs `extra` right after
/// copying busybox in (before the app's files).
fn context(dir: &Path, extra: &str) {
    write_context(dir, &Behaviour::serve("bk")).expect("context");
    let copy = "COPY busybox /bin/busybox";
    let dockerfile = Behaviour::serve("bk").dockerfile().replacen(copy, &format!("{copy}\n{extra}"), 1);
    fs::write(dir.join("Dockerfile"), dockerfile).expect("Dockerfile");
}

fn docker_cli(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn this_daemon_builds_with_buildkit_and_says_so() {
    let docker = fixtures::docker().await;
    assert_eq!(docker.builder().await, Builder::BuildKit, "Docker 20.10 on Linux offers BuildKit");
    let app = unique_app("bk-plain");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    context(dir.path(), "");
    let (built, lines) = build_logged(&docker, &build_request(&app, &DeploymentId::generate(), dir.path())).await;
    built.expect("build");
    assert_eq!(lines.first().map(String::as_str), Some("building with BuildKit"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("COPY busybox /bin/busybox")), "steps are streamed: {lines:#?}");
}

#[tokio::test]
async fn a_cache_mount_and_a_build_secret_build_and_the_secret_is_nowhere_in_the_image() {
    let docker = fixtures::docker().await;
    let app = unique_app("bk-secret");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    // The secret must be there (grep fails the step otherwise); only a
    // fact about it, its length, is written into the image.
    context(
        dir.path(),
        r#"RUN --mount=type=cache,target=/cache ["/bin/busybox","sh","-c","date >> /cache/runs; /bin/busybox wc -l < /cache/runs > /runs"]
RUN --mount=type=secret,id=token ["/bin/busybox","sh","-c","/bin/busybox grep -q s3cr3t-build /run/secrets/token && /bin/busybox wc -c < /run/secrets/token > /token-length"]"#,
    );
    let mut req = build_request(&app, &DeploymentId::generate(), dir.path());
    req.build_secrets = BTreeMap::from([("token".to_owned(), Secret::new(SECRET))]);
    let (built, lines) = build_logged(&docker, &req).await;
    let tag = built.unwrap_or_else(|e| panic!("build with a secret: {e}\n{lines:#?}"));
    assert!(lines.iter().any(|l| l.contains("serving build secrets")), "{lines:#?}");

    let history = docker_cli(&["history", "--no-trunc", tag.as_str()]);
    assert!(!contains(&history, SECRET), "the secret is in the history");
    assert!(contains(&history, "mount=type=secret") || contains(&history, "/run/secrets/token"), "the step is there");
    let inspect = docker_cli(&["image", "inspect", tag.as_str()]);
    assert!(!contains(&inspect, SECRET), "the secret is in the image config");
    let saved = tempfile::NamedTempFile::new().expect("temp file");
    docker_cli(&["save", "-o", &saved.path().display().to_string(), tag.as_str()]);
    let layers = fs::read(saved.path()).expect("read saved image");
    assert!(!contains(&layers, SECRET), "the secret is in a layer");
    assert!(contains(&layers, &format!("{}\n", SECRET.len())), "the step saw the secret: its length is in the image");

    // Without the secret the step fails. (A secret is not part of the cache
    // key: the step is changed so that the cache cannot answer.)
    let dockerfile = fs::read_to_string(dir.path().join("Dockerfile")).expect("Dockerfile");
    fs::write(dir.path().join("Dockerfile"), dockerfile.replace("grep -q", "grep -qs")).expect("Dockerfile");
    let mut without = build_request(&app, &DeploymentId::generate(), dir.path());
    without.build_secrets = BTreeMap::from([("other".to_owned(), Secret::new("x"))]);
    let (failed, _) = build_logged(&docker, &without).await;
    let err = failed.expect_err("the secret is missing");
    assert!(matches!(err, Error::BuildFailed { .. }), "{err:?}");
    assert!(!err.to_string().contains(SECRET), "{err}");
}

#[tokio::test]
async fn the_build_cache_survives_a_redeploy() {
    let docker = fixtures::docker().await;
    let app = unique_app("bk-cache");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow "dependency install" whose cache key is this test's own (the
    // app name is in the step), so the first build is cold.
    context(dir.path(), &format!(r#"RUN ["/bin/busybox","sh","-c","sleep 3; echo {app} > /deps"]"#));
    let cold_started = Instant::now();
    let (cold, _) = build_logged(&docker, &build_request(&app, &DeploymentId::generate(), dir.path())).await;
    let cold_took = cold_started.elapsed();
    cold.expect("cold build");
    // The next release: an app file changes after the dependency step.
    fs::write(dir.path().join("www/index.html"), "v2\n").expect("change");
    let warm_started = Instant::now();
    let (warm, lines) = build_logged(&docker, &build_request(&app, &DeploymentId::generate(), dir.path())).await;
    let warm_took = warm_started.elapsed();
    warm.expect("warm build");
    println!("build cache: cold {cold_took:?}, redeploy {warm_took:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("CACHED") && l.contains("sleep 3")),
        "the dependency step came from the cache: {lines:#?}"
    );
    assert!(cold_took >= Duration::from_secs(3), "the cold build ran the step: {cold_took:?}");
}

#[tokio::test]
async fn the_legacy_fallback_says_so_and_refuses_build_secrets() {
    let docker = fixtures::docker().await.with_legacy_builder("forced by the test");
    let app = unique_app("bk-legacy");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    context(dir.path(), "");
    let (built, lines) = build_logged(&docker, &build_request(&app, &DeploymentId::generate(), dir.path())).await;
    built.expect("legacy build");
    assert_eq!(
        lines.first().map(String::as_str),
        Some("building with the legacy builder: forced by the test"),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("Step 1/")), "the legacy builder's own output: {lines:#?}");

    let mut req = build_request(&app, &DeploymentId::generate(), dir.path());
    req.build_secrets = BTreeMap::from([("token".to_owned(), Secret::new(SECRET))]);
    let (refused, _) = build_logged(&docker, &req).await;
    let err = refused.expect_err("secrets need BuildKit").to_string();
    assert!(err.contains("build secrets need BuildKit") && err.contains("forced by the test"), "{err}");
}
