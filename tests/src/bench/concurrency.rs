//! Concurrency: many different apps deployed at once, from one process
//! (one `BlueGreen`, one port pool) and from separate `otturnaut` processes
//! (which only Docker's port binding keeps apart).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use otturnaut_core::{AppId, EventSink};
use otturnaut_steps::Strategy as _;

use super::app::{Rig, app_id, domain, image_spec};
use super::cli::Cli;

#[derive(Debug, Clone)]
pub struct Row {
    pub how: String,
    pub apps: usize,
    pub succeeded: usize,
    /// Apps answering their own version through Caddy afterwards.
    pub serving: usize,
    pub distinct_ports: usize,
    pub wall: Duration,
    pub errors: Vec<String>,
}

impl Row {
    pub fn all_good(&self) -> bool {
        self.succeeded == self.apps && self.serving == self.apps && self.distinct_ports == self.apps
    }
}

fn apps(prefix: &str, n: usize) -> Vec<AppId> {
    (0..n).map(|i| app_id(&format!("{prefix}-{i}"))).collect()
}

pub async fn in_process(rig: &Rig, n: usize) -> Result<Row> {
    let apps = apps("cc", n);
    for app in &apps {
        let _ = rig.undeploy(app).await;
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = apps
        .iter()
        .map(|app| {
            let strategy = rig.strategy.clone();
            let spec = image_spec(app, &format!("{app}-v1"));
            tokio::spawn(async move { strategy.execute(spec, &EventSink::discard()).await })
        })
        .collect();
    let mut errors = Vec::new();
    let mut succeeded = 0;
    for (app, task) in apps.iter().zip(tasks) {
        match task.await {
            Ok(Ok(_)) => succeeded += 1,
            Ok(Err(e)) => errors.push(format!("{app}: {e}")),
            Err(e) => errors.push(format!("{app}: task failed: {e}")),
        }
    }
    let wall = t0.elapsed();
    finish(rig, format!("one process, {n} concurrent tasks"), &apps, succeeded, wall, errors).await
}

pub async fn processes(rig: &Rig, cli: &Cli, n: usize) -> Result<Row> {
    let apps = apps("cp", n);
    for app in &apps {
        let _ = rig.undeploy(app).await;
    }
    let t0 = Instant::now();
    let mut children = Vec::new();
    for app in &apps {
        let mut args = Cli::deploy_args(app, &format!("{app}-v1"));
        args.push("--json".into());
        children.push(cli.command(&args).spawn()?);
    }
    let mut errors = Vec::new();
    let mut succeeded = 0;
    for (app, child) in apps.iter().zip(children) {
        match tokio::time::timeout(Duration::from_secs(300), child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => succeeded += 1,
            Ok(Ok(out)) => errors.push(format!(
                "{app}: otturnaut exited with {}: {}",
                out.status,
                last_lines(&String::from_utf8_lossy(&out.stderr), &String::from_utf8_lossy(&out.stdout))
            )),
            Ok(Err(e)) => errors.push(format!("{app}: {e}")),
            Err(_) => errors.push(format!("{app}: otturnaut deploy did not finish within 300 s")),
        }
    }
    let wall = t0.elapsed();
    finish(rig, format!("{n} otturnaut processes"), &apps, succeeded, wall, errors).await
}

fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() { stdout } else { stderr };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Checks every app routes to its own container on its own port, then removes them.
async fn finish(
    rig: &Rig,
    how: String,
    apps: &[AppId],
    succeeded: usize,
    wall: Duration,
    mut errors: Vec<String>,
) -> Result<Row> {
    let mut ports = BTreeSet::new();
    let mut serving = 0;
    let client = crate::caddy_proc::client();
    for app in apps {
        if let Ok(Some(route)) = rig.adapters.router.route(app).await {
            ports.insert(route.port);
        }
        let answer = client
            .get(format!("http://{}/version", rig.caddy.listen))
            .header("Host", domain(app).to_string())
            .send()
            .await;
        match answer {
            Ok(r) => match r.text().await {
                Ok(body) if body.trim() == format!("{app}-v1") => serving += 1,
                Ok(body) => errors.push(format!("{app} answered {:?}", body.trim())),
                Err(e) => errors.push(format!("{app}: {e}")),
            },
            Err(e) => errors.push(format!("{app}: {e}")),
        }
    }
    for app in apps {
        rig.undeploy(app).await?;
    }
    Ok(Row { how, apps: apps.len(), succeeded, serving, distinct_ports: ports.len(), wall, errors })
}
