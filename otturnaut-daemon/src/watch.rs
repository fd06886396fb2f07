//! The background watch: a reconcile at start, then every few seconds a
//! look at Caddy; apps whose route is missing (a Caddy restart) are
//! reconciled, which serves them again from Docker's record.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use otturnaut_core::AppId;

use crate::state::State;

pub async fn run(state: Arc<State>, every: Duration, scope: Option<BTreeSet<AppId>>) {
    repair(&state, scope.clone().unwrap_or_default()).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let agent = &state.agent;
        let (docker, caddy) = tokio::join!(agent.docker.ping(), agent.caddy.list_routes());
        state.metrics.docker_up.store(docker.is_ok(), Ordering::Relaxed);
        state.metrics.caddy_up.store(caddy.is_ok(), Ordering::Relaxed);
        if docker.is_err() || caddy.is_err() {
            continue;
        }
        match state.apps.fresh().await {
            Ok(apps) => {
                let lost: BTreeSet<AppId> = apps
                    .list
                    .iter()
                    .filter(|s| s.route_missing && scope.as_ref().is_none_or(|only| only.contains(&s.app)))
                    .map(|s| s.app.clone())
                    .collect();
                if !lost.is_empty() {
                    repair(&state, lost).await;
                }
            }
            Err((_, e)) => tracing::warn!("watch: cannot read the apps: {e}"),
        }
    }
}

/// Reconciles `apps` (all when empty), after making sure our Caddy server
/// exists: a restarted Caddy without its autosave has none.
async fn repair(state: &State, apps: BTreeSet<AppId>) {
    if let Err(e) = state.agent.prepare().await {
        tracing::warn!("watch: cannot set up our Caddy server: {e}");
        return;
    }
    match state.agent.reconcile(apps.clone()).await {
        Ok(r) => {
            let done: usize = r.reports.iter().map(|r| r.done.len()).sum();
            if done > 0 {
                tracing::info!(?apps, done, "reconciled");
                state.metrics.restored(done as u64);
                state.apps.changed().await;
            }
            for (app, why) in r.skipped {
                tracing::info!(%app, "reconcile skipped: {why}");
            }
        }
        Err(e) => tracing::warn!("reconcile failed: {e}"),
    }
}
