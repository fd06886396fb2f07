//! A node leaving the cluster (drained, as for maintenance): Swarm moves its
//! task to another node, Caddy keeps answering through the other upstreams,
//! and `reconcile` brings the route in line with where the tasks now run.
//!
//! A binary of its own: draining a node would starve the 3-task releases of
//! `swarm.rs` if both ran at once (cargo runs test binaries one at a time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use otturnaut_core::EventSink;
use otturnaut_steps::{RetryPolicy, Strategy, reconcile_app};
use otturnaut_tests::caddy_proc::{get_via, shared_listen};
use otturnaut_tests::cluster::{SwarmApp, docker_cli};

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
    // Two tasks on three nodes: Swarm has a node to move one to.
    let f = Arc::new(SwarmApp::new("swarmdrain", 2).await);
    let first = f.bg.execute(f.spec(Duration::from_secs(30)), &EventSink::discard()).await.expect("deploy");
    let port = first.release.host_port;
    let before = f.dials().await;
    assert_eq!(before.len(), 2, "one upstream per task: {before:?}");
    // A worker that runs a task (the manager stays: a single manager is the whole control plane).
    let node = f.cluster.nodes[1..]
        .iter()
        .find(|n| before.contains(&format!("{}:{port}", n.address)))
        .unwrap_or_else(|| panic!("no worker runs a task: {before:?}"))
        .clone();

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (f, stop) = (f.clone(), stop.clone());
        async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get_via(&shared_listen(), f.domain.as_str()).await {
                    Ok((200, body)) if body == "v1\n" => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, bad)
        }
    });

    let undrain = Undrain { manager: f.cluster.manager.clone(), node: node.name.clone() };
    let (ok, _) = docker_cli(&f.cluster.manager, &["node", "update", "--availability", "drain", &node.name]);
    assert!(ok, "draining {}", node.name);
    // Wait until Swarm runs both tasks elsewhere.
    let service = format!("otturnaut-{}-{}", f.app, first.release.deployment);
    let deadline = Instant::now() + Duration::from_secs(60);
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
        if running.len() == 2 && !running.iter().any(|l| l.starts_with(&format!("{} ", node.name))) {
            break;
        }
        assert!(Instant::now() < deadline, "Swarm did not move the task off {} within 60 s: {tasks}", node.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let report = reconcile_app(&f.agent.adapters, &f.app, RetryPolicy::default()).await.expect("reconcile");
    assert!(report.residue.is_empty(), "{report:?}");
    let after = f.dials().await;
    assert_eq!(after.len(), 2, "one upstream per running task: {after:?}");
    assert!(!after.contains(&format!("{}:{port}", node.address)), "the drained node left the route: {after:?}");
    for dial in &after {
        assert_eq!(get_via(dial, "x").await.expect("GET a task"), (200, "v1\n".into()), "the task on {dial} serves");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = load.await.expect("load task");
    assert!(bad.is_empty() && ok > 0, "{ok} requests got v1 while the node left, these did not: {bad:?}");

    drop(undrain);
    f.undeploy().await;
}
