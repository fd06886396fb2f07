//! Library-level end to end: `BlueGreen::execute` on the real Docker Engine,
//! Caddy and a git daemon, checked from outside through Caddy.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use otturnaut_adapters::{Agent, AgentConfig};
use otturnaut_core::{AppId, DeploySpec, Domain, Error, EventSink, Step};
use otturnaut_steps::{BlueGreen, RetryPolicy, Strategy, undeploy_app};
use otturnaut_tests::caddy_proc::shared_listen;
use otturnaut_tests::fixtures::{Behaviour, git_spec, write_context};
use otturnaut_tests::gitfix::{GitDaemon, GitRepo};
use otturnaut_tests::reloads::ask_shared_caddy;
use otturnaut_tests::services::{caddy_admin, require_caddy, require_docker, unique_app};

async fn agent(work_dir: &Path) -> Agent {
    require_docker().await;
    require_caddy().await;
    let config = AgentConfig {
        caddy_admin: caddy_admin(),
        listen: vec![shared_listen()],
        auto_https: false,
        work_dir: work_dir.to_path_buf(),
        ..AgentConfig::default()
    };
    let agent = Agent::connect(&config).await.unwrap_or_else(|e| panic!("connecting the agent: {e}"));
    agent.prepare().await.unwrap_or_else(|e| panic!("setting up our Caddy server: {e}"));
    agent
}

fn spec(app: &AppId, url: &str, domain: &Domain) -> DeploySpec {
    git_spec(app, url, "main", domain.clone(), Duration::from_secs(20))
}

/// Everything of `app` that exists outside the agent, for before/after diffs.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    containers: BTreeSet<(String, bool, Option<u16>)>,
    images: BTreeSet<String>,
    route: Option<(Vec<Domain>, u16)>,
    work_dir: BTreeSet<String>,
}

async fn snapshot(agent: &Agent, app: &AppId, work_dir: &Path) -> Snapshot {
    let a = &agent.adapters;
    let containers = a.runtime.list(Some(app)).await.expect("listing containers");
    let images = a.builder.list_images(Some(app)).await.expect("listing images");
    let route = a.router.route(app).await.expect("reading route");
    let mut files = BTreeSet::new();
    for sub in ["src", "ssh"] {
        if let Ok(entries) = std::fs::read_dir(work_dir.join(sub)) {
            files.extend(entries.flatten().map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())));
        }
    }
    files.remove("ssh/known_hosts");
    Snapshot {
        containers: containers.into_iter().map(|c| (c.name, c.running, c.host_port.map(u16::from))).collect(),
        images: images.into_iter().map(|i| i.id).collect(),
        route: route.map(|r| (r.domains, r.port.get())),
        work_dir: files,
    }
}

async fn body_via_caddy(domain: &Domain) -> (u16, String) {
    ask_shared_caddy(domain.as_str()).await
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// One app's world: a work dir, the connected agent, a repository whose
/// `main` serves v1, served by its own git daemon.
struct Fixture {
    work: tempfile::TempDir,
    agent: Agent,
    app: AppId,
    domain: Domain,
    repo: GitRepo,
    _daemon: GitDaemon,
    url: String,
    bg: BlueGreen,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let work = tempfile::tempdir().expect("work dir");
        let agent = agent(work.path()).await;
        let app = unique_app(prefix);
        let domain: Domain = format!("{app}.test").parse().expect("domain");
        let repo = GitRepo::new();
        repo.commit_with("v1", |d| write_context(d, &Behaviour::serve("v1")));
        let daemon = GitDaemon::for_repo(&repo);
        let url = daemon.url(&repo);
        let bg = BlueGreen::new(agent.adapters.clone());
        Fixture { work, agent, app, domain, repo, _daemon: daemon, url, bg }
    }
}

#[tokio::test]
async fn blue_green_over_git_daemon_then_redeploy() {
    let Fixture { work, agent, app, domain, repo, _daemon, url, bg } = Fixture::new("e2e").await;

    let t = Instant::now();
    let first = bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect("first deploy");
    let first_took = t.elapsed();
    assert_eq!(body_via_caddy(&domain).await, (200, "v1\n".into()));
    assert_eq!(first.release.commit.as_ref().map(|c| c.to_string()), Some(repo.rev_parse("HEAD")));
    assert!(first.previous.is_none());

    repo.commit_with("v2", |d| write_context(d, &Behaviour::serve("v2")));
    let t = Instant::now();
    let (events, mut rx) = EventSink::channel();
    let second = bg.execute(spec(&app, &url, &domain), &events).await.expect("redeploy");
    let second_took = t.elapsed();
    drop(events);
    assert_eq!(body_via_caddy(&domain).await, (200, "v2\n".into()));
    assert_eq!(second.previous.as_ref().map(|p| &p.deployment), Some(&first.release.deployment));
    assert!(second.residue.is_empty(), "{:?}", second.residue);

    // v1 is kept for a rollback: stopped, its image under its kept mark.
    let containers = agent.adapters.runtime.list(Some(&app)).await.expect("list");
    assert_eq!(containers.len(), 2, "the new container and the kept one: {containers:?}");
    let running: Vec<_> = containers.iter().filter(|c| c.running).map(|c| &c.deployment).collect();
    assert_eq!(running, [&second.release.deployment], "only the new one runs: {containers:?}");
    let images = agent.adapters.builder.list_images(Some(&app)).await.expect("images");
    let old = images.iter().find(|i| i.deployment == first.release.deployment).expect("v1's image is kept");
    assert!(old.kept && !old.live, "v1 has its kept mark and no live mark: {old:?}");
    assert!(port_is_free(first.release.host_port.get()), "v1's port is free again");
    assert!(std::fs::read_dir(work.path().join("src")).map(|d| d.count()).unwrap_or(0) == 0, "no checkout left");

    let mut steps = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let otturnaut_core::DeployEvent::StepFinished { step, elapsed_ms, .. } = e {
            steps.push(format!("{step}={elapsed_ms}ms"));
        }
    }
    for step in [Step::Fetch, Step::Build, Step::SwitchRoute, Step::RecordState, Step::Drain, Step::RemoveOld] {
        assert!(steps.iter().any(|s| s.starts_with(step.name())), "{step} finished: {steps:?}");
    }
    eprintln!("first deploy {first_took:?}, redeploy {second_took:?}: {}", steps.join(" "));

    let report =
        undeploy_app(&agent.adapters, &app, Duration::from_secs(5), RetryPolicy::default()).await.expect("undeploy");
    assert!(report.residue.is_empty(), "{report:?}");
    assert_eq!(agent.adapters.router.route(&app).await.expect("route"), None);
    // Caddy answers a request no route matches with an empty 200.
    assert_eq!(body_via_caddy(&domain).await.1, "", "undeployed app is no longer served");
    assert!(agent.adapters.runtime.list(Some(&app)).await.expect("list").is_empty());
}

#[tokio::test]
async fn failed_redeploy_keeps_the_old_release_and_leaves_nothing() {
    let Fixture { work, agent, app, domain, repo, _daemon, url, bg } = Fixture::new("e2efail").await;
    bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect("first deploy");
    let before = snapshot(&agent, &app, work.path()).await;

    // A release that exits at once: the health check must fail fast, not wait out its deadline.
    repo.commit_with("broken", |d| write_context(d, &Behaviour::Exit { code: 3 }));
    let t = Instant::now();
    let err = bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect_err("broken release");
    let took = t.elapsed();
    assert_eq!(err.step(), Step::HealthCheck, "{err}");
    assert!(matches!(err.cause(), Error::ContainerExited { exit_code: 3, .. }), "{err}");
    assert!(err.undo().is_clean(), "{err}");
    assert!(took < Duration::from_secs(20), "failed fast ({took:?}), not at the 20 s deadline");
    assert_eq!(body_via_caddy(&domain).await, (200, "v1\n".into()), "old release still served");
    assert_eq!(snapshot(&agent, &app, work.path()).await, before, "nothing left behind");

    // And a build failure, which fails before anything is started.
    repo.commit_with("unbuildable", |d| write_context(d, &Behaviour::FailBuild));
    let err = bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect_err("broken build");
    assert_eq!(err.step(), Step::Build, "{err}");
    assert!(err.to_string().contains("about to fail"), "the build log tail is in the error: {err}");
    assert_eq!(body_via_caddy(&domain).await, (200, "v1\n".into()));
    assert_eq!(snapshot(&agent, &app, work.path()).await, before, "nothing left behind");
    eprintln!("failed redeploy rolled back in {took:?}");

    undeploy_app(&agent.adapters, &app, Duration::from_secs(5), RetryPolicy::default()).await.expect("undeploy");
}

/// A rollback's spec is read before the app's lock and run as read: a
/// retained release removed in between (by retention, `prune`, another
/// agent) fails the rollback at the build step, where its image tag is
/// copied, and nothing is touched.
#[tokio::test]
async fn a_rollback_whose_release_went_away_after_it_was_read_fails_and_touches_nothing() {
    let Fixture { work, agent, app, domain, repo, _daemon, url, bg } = Fixture::new("e2egone").await;
    let first = bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect("first deploy");
    repo.commit_with("v2", |d| write_context(d, &Behaviour::serve("v2")));
    bg.execute(spec(&app, &url, &domain), &EventSink::discard()).await.expect("redeploy");

    let rollback = agent.rollback_spec(&app, None).await.expect("v1 is retained");
    assert_eq!(rollback.rollback_of(), Some(&first.release.deployment));
    // v1 goes away between the read and the rollback.
    let a = &agent.adapters;
    let name = otturnaut_core::traits::container_name(&app, &first.release.deployment);
    a.runtime.remove(&otturnaut_core::ContainerId(name)).await.expect("removing v1");
    for image in a.builder.list_images(Some(&app)).await.expect("images") {
        if image.deployment == first.release.deployment {
            for tag in &image.tags {
                a.builder.remove_image(tag).await.expect("removing v1's tags");
            }
        }
    }
    let before = snapshot(&agent, &app, work.path()).await;

    let outcome = agent.deploy(rollback).await.expect("the rollback starts").outcome().await;
    match &outcome.ending {
        otturnaut_adapters::Ending::Failed { step, residue, .. } => {
            assert_eq!(*step, Step::Build, "{outcome:?}");
            assert!(residue.is_empty(), "{outcome:?}");
        }
        other => panic!("the rollback to a removed release must fail: {other:?}"),
    }
    assert_eq!(outcome.rollback_of.as_ref(), Some(&first.release.deployment));
    assert_eq!(body_via_caddy(&domain).await, (200, "v2\n".into()), "v2 still served");
    assert_eq!(snapshot(&agent, &app, work.path()).await, before, "nothing left behind");

    undeploy_app(&agent.adapters, &app, Duration::from_secs(5), RetryPolicy::default()).await.expect("undeploy");
}
