//! The Swarm runtime on a real cluster (`cargo xtask services up --swarm 3`),
//! through the shared Caddy: deploy, redeploy, a failed health check,
//! rollback, undeploy, redeploys under load. Every release runs one task per
//! node, and each node answers on the release's port.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use otturnaut_core::{DeploymentId, Error, EventSink, Step, Timeouts};
use otturnaut_steps::{RetryPolicy, Strategy, reconcile_app, rollback_spec};
use otturnaut_tests::caddy_proc::{get_path_via, shared_listen};
use otturnaut_tests::cluster::{SwarmApp, assert_no_failed_request, docker_cli};
use otturnaut_tests::command::otturnaut_command;
use otturnaut_tests::fixtures::{Behaviour, write_context};

const BIN: &str = env!("CARGO_BIN_EXE_otturnaut-cli-under-test");

/// One task on every node of the 3-node cluster.
const REPLICAS: u32 = 3;

#[tokio::test]
async fn deploy_redeploy_rollback_and_undeploy_on_the_cluster() {
    let f = SwarmApp::new("swarm", REPLICAS).await;

    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("first deploy");
    assert_eq!(f.via_caddy().await, (200, "v1\n".into()));
    let port = first.release.host_port;
    assert_eq!(f.dials().await, f.every_node_on(port), "one upstream per task, one task per node");
    assert_eq!(f.answers_of_every_node(port).await, vec!["v1\n"; REPLICAS as usize], "every node answers");
    assert_eq!(f.marks(&first.release.deployment), (true, false), "the live record is a label of the service");
    let (_, tags) =
        docker_cli(&f.cluster.manager, &["images", "--format", "{{.Tag}}", &format!("otturnaut-{}", f.app)]);
    assert!(!tags.contains("live-"), "no live tag on the manager's images: {tags}");
    the_logs_are_every_tasks_output(&f).await;

    f.repo.commit_with("v2", |d| write_context(d, &Behaviour::serve("v2")));
    let route_before = f.raw_route().await;
    let second = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("redeploy");
    assert_eq!(f.via_caddy().await, (200, "v2\n".into()));
    if f.dials_files().await {
        // Caddy 2.8+: one upstream file per task, renamed; no reload at all.
        assert_eq!(f.raw_route().await, route_before, "the redeploy left Caddy's config as it was");
    }
    let new_port = second.release.host_port;
    assert_eq!(f.dials().await, f.every_node_on(new_port));
    assert_eq!(f.answers_of_every_node(new_port).await, vec!["v2\n"; REPLICAS as usize]);
    assert_eq!(second.previous.as_ref().map(|p| &p.deployment), Some(&first.release.deployment));
    assert_eq!(f.marks(&second.release.deployment), (true, false));
    assert_eq!(f.marks(&first.release.deployment), (false, true), "v1's service is marked kept");
    // v1 is kept for a rollback: its service scaled to zero, its port free on every node.
    let name = |d: &otturnaut_core::DeploymentId| format!("otturnaut-{}-{d}", f.app);
    assert_eq!(
        f.services().await,
        {
            let mut want = vec![(name(&first.release.deployment), false), (name(&second.release.deployment), true)];
            want.sort();
            want
        },
        "the new service runs, the old one is kept stopped"
    );
    for answer in f.answers_of_every_node(port).await {
        assert!(answer.starts_with("no answer"), "v1's port is closed on every node: {answer}");
    }

    let spec = rollback_spec(&f.agent.adapters, &f.app, None, Timeouts::default()).await.expect("rollback spec");
    let third = f.bg.execute(spec, &EventSink::discard()).await.expect("rollback");
    assert_eq!(f.via_caddy().await, (200, "v1\n".into()), "rolled back to v1");
    assert_eq!(f.answers_of_every_node(third.release.host_port).await, vec!["v1\n"; REPLICAS as usize]);
    let live = otturnaut_steps::live_release(&f.agent.adapters, &f.app).await.expect("live release");
    assert_eq!(live.map(|r| r.deployment), Some(third.release.deployment.clone()), "the live record says so");

    f.undeploy().await;
    assert!(f.services().await.is_empty(), "no service left");
    assert_eq!(f.agent.adapters.router.route(&f.app).await.expect("route"), None);
    assert_eq!(f.via_caddy().await.1, "", "the undeployed app is no longer served");
}

#[tokio::test]
async fn a_failed_health_check_removes_the_new_service_while_the_old_one_serves() {
    let f = Arc::new(SwarmApp::new("swarmfail", REPLICAS).await);
    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("first deploy");
    let before = f.services().await;

    // Requests through Caddy all along: every one must get v1.
    let load = f.load_v1(Duration::from_millis(20));

    f.repo.commit_with("deaf", |d| write_context(d, &Behaviour::NeverListen));
    let err = f.bg.execute(f.spec(Duration::from_secs(5)), &EventSink::discard()).await.expect_err("never healthy");
    let (ok, bad) = load.finish().await;
    assert_eq!(err.step(), Step::HealthCheck, "{err}");
    assert!(matches!(err.cause(), Error::Unhealthy { .. }), "{err}");
    assert!(err.undo().is_clean(), "{err}");
    // Other tests of this binary reload Caddy meanwhile (one client: one close each at most).
    assert_no_failed_request(&bad, ok, 20, "while a deploy failed its health check (every answer v1)");
    assert_eq!(f.services().await, before, "the new service is removed, the old one untouched");
    assert_eq!(f.dials().await, f.every_node_on(first.release.host_port), "the route is v1's");
    assert_eq!(f.via_caddy().await, (200, "v1\n".into()));

    // The manager keeps a registry copy of the live release's image only.
    let repo = format!("{}/otturnaut-{}", f.cluster.registry, f.app);
    let copies = || docker_cli(&f.cluster.manager, &["images", "--format", "{{.Repository}}:{{.Tag}}", &repo]).1;
    let live_copy = format!("{repo}:{}", first.release.deployment);
    assert_eq!(copies(), live_copy, "the failed release's registry copy is gone");
    // A copy an undo could not remove (a task still used it) is residue:
    // reconcile finds it and removes it, and nothing else.
    let stray = format!("{repo}:{}", DeploymentId::generate());
    assert!(docker_cli(&f.cluster.manager, &["tag", &live_copy, &stray]).0, "tagging {stray}");
    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    assert_eq!(copies(), live_copy, "reconcile removed the stray registry copy");
    assert_eq!(f.via_caddy().await, (200, "v1\n".into()));

    f.undeploy().await;
    assert_eq!(copies(), "", "undeploy leaves no registry copy on the manager");
}

/// `otturnaut logs APP` on the cluster prints the live service's output,
/// each task's (it says `started v1` once), bounded by `--tail` per task;
/// the agent's stream (which the daemon's endpoint serves too) agrees.
async fn the_logs_are_every_tasks_output(f: &SwarmApp) {
    let live = otturnaut_steps::live_release(&f.agent.adapters, &f.app).await.expect("live release").expect("live");
    let mut stream = f.agent.stream_logs(&live.container, 100, false);
    let mut lines = Vec::new();
    while let Some(line) = stream.next().await {
        lines.push(line.expect("a line of the service's logs"));
    }
    let started = lines.iter().filter(|l| l.as_str() == "started v1").count();
    assert_eq!(started, REPLICAS as usize, "each task's output, once: {lines:?}");

    let work = tempfile::tempdir().expect("work dir");
    let cli = |tail: &'static str| {
        let mut cmd = otturnaut_command(BIN, work.path(), "10000-10019", &[]);
        cmd.env("DOCKER_HOST", &f.cluster.manager).args([
            "--runtime",
            "swarm",
            "--registry",
            &f.cluster.registry,
            "logs",
            f.app.as_str(),
            "--tail",
            tail,
        ]);
        cmd
    };
    let all = tokio::time::timeout(Duration::from_secs(60), cli("100").output())
        .await
        .expect("otturnaut logs ends within 60 s")
        .expect("running otturnaut logs");
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success(), "otturnaut logs: {}", String::from_utf8_lossy(&all.stderr));
    assert_eq!(stdout.lines().filter(|l| *l == "started v1").count(), REPLICAS as usize, "{stdout}");
    let last = tokio::time::timeout(Duration::from_secs(60), cli("1").output())
        .await
        .expect("otturnaut logs --tail 1 ends within 60 s")
        .expect("running otturnaut logs");
    let stdout = String::from_utf8_lossy(&last.stdout);
    assert!(last.status.success(), "otturnaut logs --tail 1: {}", String::from_utf8_lossy(&last.stderr));
    let n = stdout.lines().count();
    assert!((1..=REPLICAS as usize).contains(&n), "--tail 1: one line per task at most: {stdout}");
}

/// A server of `version` that also answers `/host` with its task's container
/// hostname (one per task), to see which task served a request.
fn write_host_context(dir: &Path, version: &str) -> std::io::Result<()> {
    write_context(dir, &Behaviour::serve(version))?;
    let dockerfile =
        Behaviour::serve(version).dockerfile().replace("echo started", "cat /etc/hostname > /www/host; echo started");
    std::fs::write(dir.join("Dockerfile"), dockerfile)
}

#[tokio::test]
async fn ten_redeploys_under_load_fail_no_request_and_every_task_serves() {
    let f = Arc::new(SwarmApp::new("swarmload", REPLICAS).await);
    f.repo.commit_with("v1", |d| write_host_context(d, "v1"));
    f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("first deploy");

    // Four clients through Caddy for as long as the redeploys take.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (f, stop) = (f.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut bad) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match get_path_via(&shared_listen(), f.domain.as_str(), "/version").await {
                        Ok((200, body)) if body.starts_with('v') => ok += 1,
                        other => bad.push(format!("{other:?}")),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    for n in 2..=11 {
        let version = format!("v{n}");
        f.repo.commit_with(&version, |d| write_host_context(d, &version));
        let deployed = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await;
        let deployed = deployed.unwrap_or_else(|e| panic!("redeploy {n}: {e}"));
        assert!(deployed.residue.is_empty(), "redeploy {n}: {:?}", deployed.residue);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for client in clients {
        let (o, b) = client.await.expect("client task");
        ok += o;
        bad.extend(b);
    }
    // At most one close per client for each reload: the other tests' route
    // writes (8 at most) and, where a switch is a route write (no upstream
    // files), our 10 redeploys' too.
    let reloads = if f.dials_files().await { 8 } else { 25 };
    assert_no_failed_request(&bad, ok, 4 * reloads, "during 10 redeploys");
    assert!(ok > 100, "the clients kept asking ({ok} requests)");
    assert_eq!(f.via_caddy().await, (200, "v11\n".into()));

    // Caddy spreads requests over every task, one per node.
    let mut hosts = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (status, host) = get_path_via(&shared_listen(), f.domain.as_str(), "/host").await.expect("GET /host");
        assert_eq!(status, 200);
        hosts.insert(host);
    }
    assert_eq!(hosts.len(), REPLICAS as usize, "every task answered some of 60 requests: {hosts:?}");
    eprintln!("10 redeploys under load: {ok} requests answered");

    f.undeploy().await;
}
