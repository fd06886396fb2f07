//! Releases kept for a rollback: listing them, making one live again, and
//! retention (removing those beyond `keep`).
//!
//! A release that was live once is retained when it is retired: its
//! container is stopped (it holds no host port then), its live mark is
//! replaced by a kept mark, and its image and container stay. A rollback is
//! a deploy whose source is a retained release ([`Source::Release`]): same
//! image, env, container port, domains and health check, read back from the
//! retained container, through the pipeline from the port step on.

use std::collections::BTreeSet;

use otturnaut_core::traits::{container_name, image_tag, kept_tag, live_tag};
use otturnaut_core::{
    Adapters, AppId, DeploySpec, DeploymentId, Error, ManagedImage, ReleaseInfo, ReleaseState, Source, Timeouts,
    beyond_keep, releases,
};
use serde::{Deserialize, Serialize};

use crate::reconcile::CleanupReport;
use crate::undo::{Residue, RetryPolicy, UndoAction, perform_with_retry};

/// How many releases besides the live one are retained unless told otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// The releases of `app`, newest first (see [`otturnaut_core::releases`]).
pub async fn list_releases(a: &Adapters, app: &AppId) -> otturnaut_core::Result<Vec<ReleaseInfo>> {
    let (containers, images, route) =
        tokio::try_join!(a.runtime.list(Some(app)), a.builder.list_images(Some(app)), a.router.route(app))?;
    Ok(releases(app, &containers, &images, route.map(|r| r.port)))
}

/// The deploy spec that makes a retained release of `app` live again: `to`,
/// or by default the newest retained release. Read-only; an
/// [`Error::Invalid`] when there is no such release, before anything is
/// touched. The drain and stop timeouts are the caller's, everything else
/// is the release's own.
pub async fn rollback_spec(
    a: &Adapters,
    app: &AppId,
    to: Option<&DeploymentId>,
    timeouts: Timeouts,
) -> otturnaut_core::Result<DeploySpec> {
    let target = retained_release(a, app, to).await?;
    release_spec(a, &target, timeouts).await
}

/// The retained release a rollback of `app` goes to: `to`, or by default
/// the newest. An [`Error::Invalid`] when there is none.
pub(crate) async fn retained_release(
    a: &Adapters,
    app: &AppId,
    to: Option<&DeploymentId>,
) -> otturnaut_core::Result<ReleaseInfo> {
    // Caddy's route matters only to releases from before live marks, which
    // are never kept: one read fewer on the way to a rollback.
    let (containers, images) = tokio::try_join!(a.runtime.list(Some(app)), a.builder.list_images(Some(app)))?;
    let all = releases(app, &containers, &images, None);
    let retained = || all.iter().filter(|r| r.state == ReleaseState::Retained);
    match to {
        Some(to) => retained().find(|r| r.deployment == *to).cloned().ok_or_else(|| {
            let why = if all.iter().any(|r| r.deployment == *to) {
                format!("it is {app}'s live release already")
            } else {
                let known: Vec<String> = retained().map(|r| r.deployment.to_string()).collect();
                match known.is_empty() {
                    true => format!("{app} has no retained release"),
                    false => format!("not a retained release of {app}; retained: {}", known.join(", ")),
                }
            };
            Error::invalid("release to roll back to", to.as_str(), why)
        }),
        None => retained().next().cloned().ok_or_else(|| {
            let why = match all.is_empty() {
                true => format!("{app} has no releases"),
                false => format!("{app} has no retained release to go back to"),
            };
            Error::invalid("app to roll back", app.as_str(), why)
        }),
    }
}

/// The deploy spec that makes `target` live again, read back from its
/// retained container.
pub(crate) async fn release_spec(
    a: &Adapters,
    target: &ReleaseInfo,
    timeouts: Timeouts,
) -> otturnaut_core::Result<DeploySpec> {
    let app = &target.app;
    let recorded = a.runtime.recorded(&target.container).await?;
    // The release comes back with the stop and drain timeouts it was
    // deployed with; the caller's apply to releases that recorded none.
    let timeouts = Timeouts {
        stop: recorded.record.stop_timeout.unwrap_or(timeouts.stop),
        drain: recorded.record.drain_timeout.unwrap_or(timeouts.drain),
        ..timeouts
    };
    Ok(DeploySpec {
        app: app.clone(),
        source: Source::Release {
            deployment: target.deployment.clone(),
            image: recorded.image,
            commit: recorded.record.commit.clone().or_else(|| target.commit.clone()),
        },
        container_port: recorded.container_port,
        env: recorded.env,
        domains: recorded.domains,
        runtime: recorded.record.runtime,
        health: recorded.record.health,
        timeouts,
    })
}

/// What removing one retained release takes: its container, then its
/// image's tags (the image goes with the last one).
fn removal(release: &ReleaseInfo, images: &[ManagedImage]) -> Vec<UndoAction> {
    // By name: it says which release (Docker takes a name wherever an id goes).
    let name = otturnaut_core::ContainerId(container_name(&release.app, &release.deployment));
    let mut actions = vec![UndoAction::RemoveContainer { name }];
    let tags = images.iter().filter(|i| i.app == release.app && i.deployment == release.deployment);
    actions.extend(tags.flat_map(|i| i.tags.iter()).map(|t| UndoAction::RemoveImage { image: t.clone() }));
    for tag in [
        kept_tag(&release.app, &release.deployment),
        live_tag(&release.app, &release.deployment),
        image_tag(&release.app, &release.deployment),
    ] {
        let action = UndoAction::RemoveImage { image: tag };
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    actions
}

/// Removes `app`'s retained releases beyond the newest `keep` (never the
/// live one). The caller holds the app's lock.
pub async fn apply_retention(
    a: &Adapters,
    app: &AppId,
    keep: usize,
    retry: RetryPolicy,
) -> otturnaut_core::Result<CleanupReport> {
    let (containers, images) = tokio::try_join!(a.runtime.list(Some(app)), a.builder.list_images(Some(app)))?;
    // Caddy's route only matters to releases from before live marks, and
    // those are never retained: no need to ask.
    let all = releases(app, &containers, &images, None);
    let mut report = CleanupReport { app: Some(app.clone()), ..CleanupReport::default() };
    for release in beyond_keep(&all, keep.max(1)) {
        let mut failed = false;
        for action in removal(release, &images) {
            // An image whose container could not be removed stays (it is
            // still a release): residue too, for reconcile to finish.
            if failed && matches!(action, UndoAction::RemoveImage { .. }) {
                report.residue.push(Residue {
                    kind: action.kind(),
                    what: format!("{action} (release {} beyond keep = {keep})", release.deployment),
                    error: "not attempted: the release's container could not be removed".into(),
                    in_doubt: false,
                });
                continue;
            }
            match perform_with_retry(&action, a, retry).await {
                (_, Ok(())) => {}
                (_, Err(e)) => {
                    failed = true;
                    report.residue.push(Residue {
                        kind: action.kind(),
                        what: action.to_string(),
                        error: e.to_string(),
                        in_doubt: false,
                    });
                }
            }
        }
        if !failed {
            report.done.push(format!("removed release {} of {app} (beyond keep = {keep})", release.deployment));
        }
    }
    Ok(report)
}

/// What `otturnaut prune` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Retention, one report per app.
    pub apps: Vec<CleanupReport>,
    /// Dangling images left by the agent's own builds that were removed.
    pub dangling: Vec<String>,
    /// Disk space freed, in bytes: removed release images and dangling ones.
    pub freed_bytes: u64,
}

/// Applies retention to each of `apps` and removes dangling images of the
/// agent's builds (of those apps, or of every app when `all`). The caller
/// holds the apps' locks.
pub async fn prune(
    a: &Adapters,
    apps: &BTreeSet<AppId>,
    all: bool,
    keep: usize,
    retry: RetryPolicy,
) -> otturnaut_core::Result<PruneReport> {
    let before = a.builder.list_images(None).await?;
    let mut report = PruneReport::default();
    for app in apps {
        report.apps.push(apply_retention(a, app, keep, retry).await?);
    }
    let after = a.builder.list_images(None).await?;
    let still: BTreeSet<&str> = after.iter().map(|i| i.id.as_str()).collect();
    let gone: BTreeSet<(&str, i64)> =
        before.iter().filter(|i| !still.contains(i.id.as_str())).map(|i| (i.id.as_str(), i.size)).collect();
    report.freed_bytes = gone.iter().map(|(_, size)| u64::try_from(*size).unwrap_or(0)).sum();

    let scopes: Vec<Option<&AppId>> = if all { vec![None] } else { apps.iter().map(Some).collect() };
    for scope in scopes {
        let dangling = a.builder.prune_dangling(scope).await?;
        report.freed_bytes += dangling.freed_bytes;
        report.dangling.extend(dangling.removed);
    }
    Ok(report)
}
