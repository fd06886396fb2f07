//! Nodes leaving the cluster: drained (maintenance) or lost (its `dockerd`
//! killed, after a deploy and during one). Swarm moves the tasks to other
//! nodes, Caddy keeps answering through the other upstreams, and `reconcile`
//! brings the route in line with where the tasks now run.
//!
//! A binary of its own: a node out of service would starve the 3-task
//! releases of `swarm.rs` if both ran at once (cargo runs test binaries one
//! at a time); the tests here take turns ([`NODES`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use otturnaut_core::{DeploymentId, EventSink, HostPort};
use otturnaut_steps::{RetryPolicy, Strategy, reconcile_app};
use otturnaut_tests::caddy_proc::{get_via, shared_listen};
use otturnaut_tests::cluster::{Node, SwarmApp, assert_no_failed_request, docker_cli};
use otturnaut_tests::fixtures::{Behaviour, write_context};

/// One test at a time takes a node out.
static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Requests through Caddy until stopped: (answers among `want`, everything else).
fn load(
    f: &Arc<SwarmApp>,
    want: &'static [&'static str],
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    let (f, stop) = (f.clone(), stop.clone());
    tokio::spawn(async move {
        let (mut ok, mut bad) = (0u32, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match get_via(&shared_listen(), f.domain.as_str()).await {
                Ok((200, body)) if want.contains(&body.as_str()) => ok += 1,
                other => bad.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, bad)
    })
}

/// Waits (up to 90 s) until Swarm runs `n` tasks of the release, none on `away`.
async fn wait_tasks_moved(f: &SwarmApp, deployment: &DeploymentId, n: usize, away: &Node) {
    let service = format!("otturnaut-{}-{deployment}", f.app);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, tasks) = docker_cli(
            &f.cluster.manager,
            &[
                "service",
                "ps",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
                &service,
            ],
        );
        let running: Vec<&str> = tasks.lines().filter(|l| l.contains("Running")).collect();
        if running.len() == n && !running.iter().any(|l| l.starts_with(&format!("{} ", away.name))) {
            return;
        }
        assert!(Instant::now() < deadline, "Swarm did not move the tasks off {} within 90 s: {tasks}", away.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A worker (not the manager: a single manager is the whole control plane)
/// running a task of the release on `port`.
fn worker_with_a_task(f: &SwarmApp, dials: &[String], port: HostPort) -> Node {
    f.cluster.nodes[1..]
        .iter()
        .find(|n| dials.contains(&format!("{}:{port}", n.address)))
        .unwrap_or_else(|| panic!("no worker runs a task: {dials:?}"))
        .clone()
}

/// After reconcile: one live service, and the route dials exactly its
/// running tasks, each answering `want`, none on `away` unless it runs a task again.
async fn assert_one_live_service_with_healthy_upstreams(f: &SwarmApp, want: &str) {
    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    let running: Vec<String> = f.services().await.into_iter().filter(|(_, r)| *r).map(|(n, _)| n).collect();
    assert_eq!(running.len(), 1, "one live service: {:?}", f.services().await);
    let dials = f.dials().await;
    assert_eq!(dials.len(), 2, "one upstream per task: {dials:?}");
    for dial in &dials {
        assert_eq!(get_via(dial, "x").await.expect("GET a task"), (200, want.to_owned()), "the task on {dial} serves");
    }
}

/// Puts a drained node back to work, even when the test fails.
struct Undrain {
    manager: String,
    node: String,
}

impl Drop for Undrain {
    fn drop(&mut self) {
        let (ok, _) = docker_cli(&self.manager, &["node", "update", "--availability", "active", &self.node]);
        if !ok {
            eprintln!("could not set node {} active again: `docker node update --availability active` it", self.node);
        }
    }
}

#[tokio::test]
async fn a_drained_node_leaves_the_route_on_reconcile_and_no_request_fails() {
    let _turn = NODES.lock().await;
    // Two tasks on three nodes: Swarm has a node to move one to.
    let f = Arc::new(SwarmApp::new("swarmdrain", 2).await);
    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("deploy");
    let port = first.release.host_port;
    let before = f.dials().await;
    assert_eq!(before.len(), 2, "one upstream per task: {before:?}");
    let node = worker_with_a_task(&f, &before, port);

    let load = f.load_v1(Duration::from_millis(10));

    let undrain = Undrain { manager: f.cluster.manager.clone(), node: node.name.clone() };
    let (ok, _) = docker_cli(&f.cluster.manager, &["node", "update", "--availability", "drain", &node.name]);
    assert!(ok, "draining {}", node.name);
    // Wait until Swarm runs both tasks elsewhere.
    wait_tasks_moved(&f, &first.release.deployment, 2, &node).await;

    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    let after = f.dials().await;
    assert_eq!(after.len(), 2, "one upstream per running task: {after:?}");
    assert!(!after.contains(&format!("{}:{port}", node.address)), "the drained node left the route: {after:?}");
    for dial in &after {
        assert_eq!(get_via(dial, "x").await.expect("GET a task"), (200, "v1\n".into()), "the task on {dial} serves");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, bad) = load.finish().await;
    assert_no_failed_request(&bad, ok, 5, "while a node was drained (every answer v1)");

    drop(undrain);
    f.undeploy().await;
}

#[tokio::test]
async fn a_node_whose_daemon_dies_after_a_deploy_leaves_the_route_and_comes_back() {
    let _turn = NODES.lock().await;
    let f = Arc::new(SwarmApp::new("swarmkill", 2).await);
    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("deploy");
    let port = first.release.host_port;
    let node = worker_with_a_task(&f, &f.dials().await, port);

    let stop = Arc::new(AtomicBool::new(false));
    let requests = load(&f, &["v1\n"], &stop);
    let mut killed = node.kill_daemon(&f.cluster);
    // Swarm sees the node down (no heartbeat) and starts its task elsewhere.
    wait_tasks_moved(&f, &first.release.deployment, 2, &node).await;
    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    let dials = f.dials().await;
    assert!(!dials.contains(&format!("{}:{port}", node.address)), "the lost node left the route: {dials:?}");

    killed.restart();
    assert_one_live_service_with_healthy_upstreams(&f, "v1\n").await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = requests.await.expect("load task");
    assert_no_failed_request(&bad, ok, 5, "while a node was lost (every answer v1)");

    f.undeploy().await;
}

/// Waits (up to 120 s) until the app has a service other than `old`: the
/// deploy reached its start step.
async fn wait_new_service(f: &SwarmApp, old: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let services = f.services().await;
        if services.iter().any(|(name, _)| name != old) {
            return;
        }
        assert!(Instant::now() < deadline, "the deploy made no new service within 120 s: {services:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_whose_daemon_dies_during_a_deploy_leaves_one_live_release() {
    let _turn = NODES.lock().await;
    let f = Arc::new(SwarmApp::new("swarmkilldeploy", 2).await);
    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("deploy");
    let old = format!("otturnaut-{}-{}", f.app, first.release.deployment);
    let node = worker_with_a_task(&f, &f.dials().await, first.release.host_port);

    let stop = Arc::new(AtomicBool::new(false));
    let requests = load(&f, &["v1\n", "v2\n"], &stop);
    f.repo.commit_with("v2", |d| write_context(d, &Behaviour::serve("v2")));
    let began = Instant::now();
    let deploy = tokio::spawn({
        let f = f.clone();
        async move { f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await }
    });
    // Once the new service exists: Swarm is placing its tasks, maybe one on the node that dies.
    wait_new_service(&f, &old).await;
    let mut killed = node.kill_daemon(&f.cluster);
    let outcome = tokio::time::timeout(Duration::from_secs(300), deploy)
        .await
        .expect("the deploy ends within 300 s of losing a node")
        .expect("deploy task");
    let took = began.elapsed();
    let services = f.services().await;
    let (live, want) = match &outcome {
        Ok(deployed) => {
            assert!(deployed.residue.is_empty(), "a completed deploy leaves nothing to clean: {:?}", deployed.residue);
            let new = format!("otturnaut-{}-{}", f.app, deployed.release.deployment);
            let mut expected = vec![(new, true), (old.clone(), false)];
            expected.sort();
            assert_eq!(services, expected, "the new service runs, the old one is kept stopped, nothing else");
            (deployed.release.deployment.clone(), "v2\n")
        }
        Err(e) => {
            assert!(e.undo().is_clean(), "a failed deploy is undone: {e}");
            assert_eq!(services, vec![(old.clone(), true)], "the new service is removed, the old one serves: {e}");
            (first.release.deployment.clone(), "v1\n")
        }
    };
    eprintln!(
        "deploy with a node lost: {} after {took:.1?}",
        outcome.as_ref().map(|_| "completed".to_owned()).unwrap_or_else(|e| format!("rolled back ({e})"))
    );
    assert_eq!(f.via_caddy().await, (200, want.to_owned()), "the committed release serves");

    // The live release answers from the other nodes once Swarm moved its tasks off the lost one.
    wait_tasks_moved(&f, &live, 2, &node).await;
    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    let dials = f.dials().await;
    assert_eq!(dials.len(), 2, "one upstream per running task: {dials:?}");
    for dial in &dials {
        assert!(!dial.starts_with(&format!("{}:", node.address)), "the lost node left the route: {dials:?}");
        assert_eq!(get_via(dial, "x").await.expect("GET a task"), (200, want.to_owned()), "the task on {dial} serves");
    }

    killed.restart();
    assert_one_live_service_with_healthy_upstreams(&f, want).await;
    assert_eq!(f.via_caddy().await, (200, want.to_owned()));
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = requests.await.expect("load task");
    assert_no_failed_request(&bad, ok, 5, "while a node died mid-deploy (every answer v1 or v2)");

    f.undeploy().await;
}
