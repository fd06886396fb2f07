//! Reconcile and undeploy: bring an app's resources back in line with its
//! live release, or remove them all.
//!
//! What is an orphan (and only these are touched; everything is found by our
//! labels, our Caddy route ids and our work-dir names):
//! - a managed container of the app that is not its live release
//!   ([`otturnaut_core::live_container`]);
//! - a managed image of the app that the live release does not run;
//! - a fetched source tree or key file of the app (no deploy is running: the
//!   caller holds the app's lock);
//! - a route to an upstream nothing serves: removed.
//!
//! The caller must hold the app's deploy lock, or a deploy in progress would
//! look like orphans.

use std::collections::BTreeSet;

use otturnaut_core::{
    Adapters, AppId, DeploymentId, ManagedContainer, ManagedImage, Release, RouteTarget, live_container,
};
use serde::{Deserialize, Serialize};

use crate::undo::{Residue, RetryPolicy, UndoAction, perform_with_retry};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub app: Option<AppId>,
    /// What was removed or repaired, as sentences.
    pub done: Vec<String>,
    /// What could not be removed.
    pub residue: Vec<Residue>,
}

impl CleanupReport {
    pub fn is_clean(&self) -> bool {
        self.residue.is_empty()
    }
}

/// Every app that has any managed container, image, route or source leftover.
pub async fn apps_with_resources(a: &Adapters) -> otturnaut_core::Result<BTreeSet<AppId>> {
    let (containers, images, routes, sources) =
        tokio::try_join!(a.runtime.list(None), a.builder.list_images(None), a.router.routes(), a.fetcher.leftovers())?;
    Ok(containers
        .into_iter()
        .map(|c| c.app)
        .chain(images.into_iter().map(|i| i.app))
        .chain(routes.into_iter().map(|(app, _)| app))
        .chain(sources.into_iter().map(|(app, _)| app))
        .collect())
}

/// Removes what interrupted deploys of `app` left behind; keeps the live release.
pub async fn reconcile_app(a: &Adapters, app: &AppId, retry: RetryPolicy) -> otturnaut_core::Result<CleanupReport> {
    let Inventory { containers, images, route, sources } = inventory(a, app).await?;
    let live = live_container(&containers, route.as_ref().map(|r| r.port));
    let mut actions = Vec::new();
    // A route whose upstream nothing serves has no live release behind it
    // (the live release is defined by the route): remove it.
    if route.is_some() && live.is_none() {
        actions.push(UndoAction::RestoreRoute { app: app.clone(), previous: None });
    }
    for c in &containers {
        if live.is_none_or(|l| l.id != c.id) {
            actions.push(UndoAction::RemoveContainer { name: c.id.0.clone() });
            actions.push(UndoAction::ReleasePort { deployment: c.deployment.clone() });
        }
    }
    for image in &images {
        let in_use = live.is_some_and(|l| l.image == image.id || image.tags.contains(&l.image));
        if !in_use {
            actions.push(UndoAction::RemoveImage { image: image_name(image) });
        }
    }
    for deployment in sources {
        actions.push(UndoAction::RemoveSource { app: app.clone(), deployment });
    }
    Ok(run(a, Some(app), actions, retry).await)
}

/// Removes everything of `app`: its route first (so no request reaches a
/// stopping container), then its containers (gracefully), images and
/// leftovers. Running it again finds nothing and does nothing.
pub async fn undeploy_app(
    a: &Adapters,
    app: &AppId,
    grace: std::time::Duration,
    retry: RetryPolicy,
) -> otturnaut_core::Result<CleanupReport> {
    let Inventory { containers, images, route, sources } = inventory(a, app).await?;
    let mut actions = Vec::new();
    if route.is_some() {
        actions.push(UndoAction::RestoreRoute { app: app.clone(), previous: None });
    }
    let mut report = CleanupReport { app: Some(app.clone()), ..CleanupReport::default() };
    for c in containers.iter().filter(|c| c.running) {
        // Best effort: the forced removal below ends it anyway.
        if a.runtime.stop(&c.id, grace).await.is_ok() {
            report.done.push(format!("stopped container {}", c.name));
        }
    }
    for c in &containers {
        actions.push(UndoAction::RemoveContainer { name: c.id.0.clone() });
        actions.push(UndoAction::ReleasePort { deployment: c.deployment.clone() });
    }
    for image in &images {
        actions.push(UndoAction::RemoveImage { image: image_name(image) });
    }
    for deployment in sources {
        actions.push(UndoAction::RemoveSource { app: app.clone(), deployment });
    }
    let mut rest = run(a, Some(app), actions, retry).await;
    report.done.append(&mut rest.done);
    report.residue = rest.residue;
    Ok(report)
}

/// What exists of one app, wherever it lives.
struct Inventory {
    containers: Vec<ManagedContainer>,
    images: Vec<ManagedImage>,
    route: Option<RouteTarget>,
    /// Deployments whose fetched sources are still in the work dir.
    sources: Vec<DeploymentId>,
}

async fn inventory(a: &Adapters, app: &AppId) -> otturnaut_core::Result<Inventory> {
    let (containers, images, route, sources) = tokio::try_join!(
        a.runtime.list(Some(app)),
        a.builder.list_images(Some(app)),
        a.router.route(app),
        a.fetcher.leftovers()
    )?;
    let sources = sources.into_iter().filter(|(owner, _)| owner == app).map(|(_, d)| d).collect();
    Ok(Inventory { containers, images, route, sources })
}

/// How an image is named for removal: by tag when it has one.
fn image_name(image: &ManagedImage) -> String {
    image.tags.first().cloned().unwrap_or_else(|| image.id.clone())
}

async fn run(a: &Adapters, app: Option<&AppId>, actions: Vec<UndoAction>, retry: RetryPolicy) -> CleanupReport {
    let mut report = CleanupReport { app: app.cloned(), ..CleanupReport::default() };
    for action in actions {
        match perform_with_retry(&action, a, retry).await {
            (_, Ok(())) => {
                // Port releases are bookkeeping, not worth a line of output.
                if !matches!(action, UndoAction::ReleasePort { .. }) {
                    report.done.push(action.to_string());
                }
            }
            (_, Err(e)) => report.residue.push(Residue {
                kind: action.kind().into(),
                what: action.to_string(),
                error: e.to_string(),
                in_doubt: false,
            }),
        }
    }
    report
}

/// The live release of `app` as the outside world says (for `status`).
pub async fn live_release(a: &Adapters, app: &AppId) -> otturnaut_core::Result<Option<Release>> {
    a.state.load(app).await
}
