//! The health probe against real containers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use otturnaut_adapters::docker::Docker;
use otturnaut_adapters::health::Probe;
use otturnaut_core::traits::{ContainerRuntime, HealthProbe};
use otturnaut_core::{ContainerId, Error, HealthCheck, HealthKind, HostPort};
use otturnaut_tests::fixtures::{self, Behaviour, DockerCleanup, build_image, free_port, run_request};
use otturnaut_tests::services::unique_app;

/// A running container of `behaviour` for a fresh app, and its guard.
async fn running(prefix: &str, behaviour: Behaviour) -> (Docker, ContainerId, HostPort, DockerCleanup) {
    let docker = fixtures::docker().await;
    let app = unique_app(prefix);
    let cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &behaviour).await.expect("image");
    let port = free_port();
    let id = docker.start(&run_request(&app, &image.deployment, &image.tag, port, 8080)).await.expect("start");
    (docker, id, port, cleanup)
}

fn probe(docker: &Docker) -> Probe {
    Probe::new(Arc::new(docker.clone())).expect("probe")
}

fn check(kind: HealthKind, deadline: Duration) -> HealthCheck {
    HealthCheck { kind, interval: Duration::from_millis(200), attempt_timeout: Duration::from_secs(1), deadline }
}

fn http(path: &str, expected_status: u16) -> HealthKind {
    HealthKind::Http { path: path.parse().expect("path"), expected_status }
}

#[tokio::test]
async fn an_http_server_passes_the_http_check() {
    let (docker, id, port, _guard) = running("h-http", Behaviour::serve("v1")).await;
    let started = Instant::now();
    probe(&docker).check(&id, port, &check(http("/healthz", 200), Duration::from_secs(20))).await.expect("healthy");
    eprintln!("timing: HTTP health check passed after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_wrong_status_is_unhealthy_with_the_status_named() {
    let (docker, id, port, _guard) = running("h-status", Behaviour::serve("v1")).await;
    let err = probe(&docker)
        .check(&id, port, &check(http("/missing", 200), Duration::from_secs(2)))
        .await
        .expect_err("404 is not 200");
    let Error::Unhealthy { last_error, .. } = &err else {
        panic!("expected Unhealthy, got {err:?}");
    };
    assert!(last_error.contains("404"), "{last_error}");
    // And the status it does answer is accepted when asked for.
    probe(&docker)
        .check(&id, port, &check(http("/missing", 404), Duration::from_secs(10)))
        .await
        .expect("404 expected and given");
}

#[tokio::test]
async fn a_listening_server_passes_the_tcp_check() {
    let (docker, id, port, _guard) = running("h-tcp", Behaviour::serve("v1")).await;
    probe(&docker).check(&id, port, &check(HealthKind::Tcp, Duration::from_secs(20))).await.expect("healthy");
}

#[tokio::test]
async fn a_container_that_stays_up_passes_the_running_check() {
    let (docker, id, port, _guard) = running("h-run", Behaviour::NeverListen).await;
    let started = Instant::now();
    probe(&docker).check(&id, port, &check(HealthKind::Running, Duration::from_secs(20))).await.expect("running");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the running check waits one interval: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_exiting_container_fails_fast_with_its_exit_code_and_logs() {
    let (docker, id, port, _guard) = running("h-exit", Behaviour::Exit { code: 3 }).await;
    for kind in [HealthKind::Tcp, http("/healthz", 200), HealthKind::Running] {
        let deadline = Duration::from_secs(30);
        let started = Instant::now();
        let err = probe(&docker).check(&id, port, &check(kind.clone(), deadline)).await.expect_err("it exited");
        let elapsed = started.elapsed();
        eprintln!("timing: exit detected by {kind:?} check after {elapsed:?}");
        let Error::ContainerExited { container, exit_code, logs } = &err else {
            panic!("expected ContainerExited, got {err:?}");
        };
        assert_eq!(container, &id);
        assert_eq!(*exit_code, 3);
        assert!(logs.iter().any(|l| l == "boom"), "{logs:?}");
        assert!(logs.iter().any(|l| l == "boom on stderr"), "{logs:?}");
        assert!(logs.len() <= 20);
        assert!(elapsed < deadline / 3, "{kind:?}: waited {elapsed:?} of a {deadline:?} deadline");
    }
}

#[tokio::test]
async fn a_container_that_never_listens_hits_the_deadline() {
    let (docker, id, port, _guard) = running("h-silent", Behaviour::NeverListen).await;
    for kind in [HealthKind::Tcp, http("/healthz", 200)] {
        let deadline = Duration::from_secs(2);
        let started = Instant::now();
        let err = probe(&docker).check(&id, port, &check(kind.clone(), deadline)).await.expect_err("nothing listens");
        let elapsed = started.elapsed();
        let Error::Unhealthy { deadline: reported, last_error } = &err else {
            panic!("expected Unhealthy, got {err:?}");
        };
        assert_eq!(*reported, deadline);
        assert!(last_error.contains(&port.to_string()), "{kind:?}: {last_error}");
        assert!(elapsed >= deadline, "{kind:?}: gave up early, after {elapsed:?}");
        assert!(elapsed < deadline + Duration::from_secs(3), "{kind:?}: overran: {elapsed:?}");
        assert!(docker.status(&id).await.expect("status").running, "the probe does not touch the container");
    }
}

#[tokio::test]
async fn a_gone_container_is_an_error_not_a_wait() {
    let docker = fixtures::docker().await;
    let started = Instant::now();
    let err = probe(&docker)
        .check(
            &ContainerId("otturnaut-no-such-container".into()),
            free_port(),
            &check(HealthKind::Tcp, Duration::from_secs(20)),
        )
        .await
        .expect_err("no such container");
    assert!(err.to_string().contains("otturnaut-no-such-container"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
