//! The background watch: a reconcile at start, then every few seconds a
//! look at Caddy; apps whose route is missing (a Caddy restart) are
//! reconciled, which serves them again from Docker's record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use otturnaut_adapters::status::statuses;
use otturnaut_core::AppId;

use crate::state::State;

pub async fn run(state: Arc<State>, every: Duration) {
    repair(&state, None).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let agent = &state.agent;
        let (docker, caddy) = tokio::join!(agent.docker.client().ping(), agent.caddy.list_routes());
        state.metrics.docker_up.store(docker.is_ok(), Ordering::Relaxed);
        state.metrics.caddy_up.store(caddy.is_ok(), Ordering::Relaxed);
        if docker.is_err() || caddy.is_err() {
            continue;
        }
        match statuses(agent, None).await {
            Ok(all) => {
                let lost: Vec<AppId> = all.into_iter().filter(|s| s.route_missing).map(|s| s.app).collect();
                if !lost.is_empty() {
                    repair(&state, Some(lost)).await;
                }
            }
            Err(e) => tracing::warn!("watch: cannot read the apps: {e}"),
        }
    }
}

/// Reconciles `apps` (or all), after making sure our Caddy server exists: a
/// restarted Caddy without its autosave has none.
async fn repair(state: &State, apps: Option<Vec<AppId>>) {
    if let Err(e) = state.agent.prepare().await {
        tracing::warn!("watch: cannot set up our Caddy server: {e}");
        return;
    }
    let only = apps.clone().unwrap_or_default().into_iter().collect();
    match state.agent.reconcile(only).await {
        Ok(r) => {
            let done: usize = r.reports.iter().map(|r| r.done.len()).sum();
            if done > 0 {
                tracing::info!(?apps, done, "reconciled");
                state.metrics.restored(done as u64);
            }
            for (app, why) in r.skipped {
                tracing::info!(%app, "reconcile skipped: {why}");
            }
        }
        Err(e) => tracing::warn!("reconcile failed: {e}"),
    }
}
