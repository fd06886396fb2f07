//! Reconcile and undeploy: bring apps' resources back in line with their
//! committed releases, or remove them all.
//!
//! The committed (live) release of an app is what Docker's live mark says
//! ([`otturnaut_core::live_container`]); Caddy's routes are derived from it.
//! Reconcile therefore restores, never destroys, what was committed:
//! - a live release whose route is missing, or points elsewhere, gets its
//!   route back; all such routes are written in **one** Caddy config change;
//! - a live release from before live marks existed gets its mark;
//! - a retained release (see [`otturnaut_core::releases`]) is never removed:
//!   a retirement a crash cut short is finished (container stopped, kept
//!   mark written, stale live mark removed);
//! - any other container of the app is removed, with its port; any other
//!   release image is removed (its marks first, then its release tag);
//! - a fetched source tree or key file of the app is removed;
//! - a route of an app with no live release (or one deployed without
//!   domains) is removed.
//!
//! Only genuine resources are seen at all: containers named and labelled as
//! the agent makes them, images by our tags, routes by our `@id`s, work-dir
//! files by our names. The caller must hold the apps' deploy locks, or a
//! deploy in progress would look like orphans.

use std::collections::BTreeSet;

use otturnaut_core::traits::{image_tag, kept_tag, live_tag};
use otturnaut_core::{
    Adapters, AppId, DeploymentId, ManagedContainer, ManagedImage, Release, ReleaseInfo, ReleaseState, RouteTarget,
    live_container, releases, unmarked,
};
use serde::{Deserialize, Serialize};

use crate::undo::{Residue, ResidueKind, RetryPolicy, UndoAction, perform_with_retry};

/// What a reconcile, undeploy or prune of one app did and left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// The app; `None` for work on no app in particular (leftover source trees).
    pub app: Option<AppId>,
    /// What was removed or repaired, as sentences.
    pub done: Vec<String>,
    /// What could not be removed or repaired.
    pub residue: Vec<Residue>,
}

impl CleanupReport {
    /// True when nothing was left behind.
    pub fn is_clean(&self) -> bool {
        self.residue.is_empty()
    }
}

/// Every app that has any genuine container, release image, route or source
/// leftover.
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

/// Reconciles one app (see [`reconcile`]).
pub async fn reconcile_app(a: &Adapters, app: &AppId, retry: RetryPolicy) -> otturnaut_core::Result<CleanupReport> {
    let mut reports = reconcile(a, &BTreeSet::from([app.clone()]), retry).await?;
    Ok(reports.pop().unwrap_or_else(|| CleanupReport { app: Some(app.clone()), ..CleanupReport::default() }))
}

/// Brings each of `apps` in line with its committed release (see the module
/// docs): one report per app, in order. Missing routes of all of them are
/// restored in one Caddy config change.
pub async fn reconcile(
    a: &Adapters,
    apps: &BTreeSet<AppId>,
    retry: RetryPolicy,
) -> otturnaut_core::Result<Vec<CleanupReport>> {
    let inventory = Inventory::read(a, apps).await?;
    let plans: Vec<Plan> = apps.iter().map(|app| Plan::new(app, &inventory)).collect();

    // Routes first, all in one write: a release that serves again is the
    // point of reconciling, and a container the old route still points to
    // must not be removed before traffic has moved off it.
    let restores: Vec<(AppId, RouteTarget)> =
        plans.iter().filter_map(|p| p.restore.clone().map(|t| (p.app.clone(), t))).collect();
    let (restored, mut refused) = restore_routes(a, restores).await;

    let mut reports = Vec::new();
    for plan in plans {
        let mut report = CleanupReport { app: Some(plan.app.clone()), ..CleanupReport::default() };
        let mut actions = plan.actions;
        if let Some(target) = &plan.restore {
            let outcome = match refused.remove(&plan.app) {
                Some(why) => Err(why),
                None => restored.clone(),
            };
            match &outcome {
                Ok(()) => report.done.push(format!("restored {}'s route to port {}", plan.app, target.port)),
                Err(e) => {
                    report.residue.push(Residue {
                        kind: ResidueKind::Route,
                        what: format!("restore {}'s route to port {}", plan.app, target.port),
                        error: e.clone(),
                        in_doubt: false,
                    });
                    // Traffic still goes where the route points: keep that.
                    if let Some(port) = plan.routed_port {
                        actions.retain(|act| !serves(act, &inventory.containers, port));
                    }
                }
            }
        }
        if let Some(live) = &plan.adopt {
            match adopt(a, live).await {
                Ok(()) => report.done.push(format!("recorded {} as {}'s live release", live.deployment, live.app)),
                Err(e) => report.residue.push(Residue {
                    kind: ResidueKind::State,
                    what: format!("record {} as {}'s live release", live.deployment, live.app),
                    error: e.to_string(),
                    in_doubt: false,
                }),
            }
        }
        for retire in &plan.retire {
            match retire.finish(a, &plan.app, RETIRE_GRACE).await {
                Ok(done) => report.done.push(done),
                Err(e) => report.residue.push(Residue {
                    kind: ResidueKind::State,
                    what: format!("retire {} of {}", retire.deployment, plan.app),
                    error: e.to_string(),
                    in_doubt: false,
                }),
            }
        }
        let mut rest = run(a, Some(&plan.app), actions, retry).await;
        report.done.append(&mut rest.done);
        report.residue.append(&mut rest.residue);
        reports.push(report);
    }
    Ok(reports)
}

/// Writes `restores` in one config change. An app whose domain another app
/// already has (two releases deployed before domains had one owner) is left
/// out, with the reason, and the others are written without it: one
/// conflict must not keep every app unrouted.
async fn restore_routes(
    a: &Adapters,
    mut restores: Vec<(AppId, RouteTarget)>,
) -> (Result<(), String>, std::collections::BTreeMap<AppId, String>) {
    let mut refused = std::collections::BTreeMap::new();
    while !restores.is_empty() {
        match a.router.set_routes(&restores).await {
            Err(otturnaut_core::Error::DomainTaken { domain, owner }) => {
                let Some(i) = restores.iter().position(|(app, t)| *app != owner && t.domains.contains(&domain)) else {
                    return (Err(format!("domain {domain} is already served by app {owner}")), refused);
                };
                let (app, _) = restores.remove(i);
                refused.insert(app, format!("domain {domain} is already served by app {owner}"));
            }
            other => return (other.map_err(|e| e.to_string()), refused),
        }
    }
    (Ok(()), refused)
}

/// True when `action` removes the container serving `port`.
fn serves(action: &UndoAction, containers: &[ManagedContainer], port: otturnaut_core::HostPort) -> bool {
    let UndoAction::RemoveContainer { name } = action else {
        return false;
    };
    containers.iter().any(|c| c.id == *name && c.host_port == Some(port))
}

/// Writes the live mark of a release deployed before marks existed, pinning
/// its image under its release tag too (prebuilt images had none).
async fn adopt(a: &Adapters, live: &ManagedContainer) -> otturnaut_core::Result<()> {
    a.builder.tag_image(&live.image_id, &image_tag(&live.app, &live.deployment)).await?;
    a.builder.tag_image(&live.image_id, &live_tag(&live.app, &live.deployment)).await
}

/// What reconciling one app will do.
struct Plan {
    app: AppId,
    /// The route to write, if the app's route is not what its live release needs.
    restore: Option<RouteTarget>,
    /// Where the app's route points now.
    routed_port: Option<otturnaut_core::HostPort>,
    /// A live release without a live mark, to be marked.
    adopt: Option<ManagedContainer>,
    /// Retained releases whose retirement a crash cut short.
    retire: Vec<Retire>,
    actions: Vec<UndoAction>,
}

/// What is left to do to retire a retained release.
struct Retire {
    deployment: DeploymentId,
    container: otturnaut_core::ContainerId,
    stop: bool,
    keep: bool,
    unmark: bool,
}

impl Retire {
    /// Stops the container, writes the kept mark, then removes the stale
    /// live mark (only once the kept mark is there).
    async fn finish(&self, a: &Adapters, app: &AppId, grace: std::time::Duration) -> otturnaut_core::Result<String> {
        if self.stop {
            a.runtime.stop(&self.container, grace).await?;
        }
        if self.keep {
            a.builder.tag_image(image_tag(app, &self.deployment).as_str(), &kept_tag(app, &self.deployment)).await?;
        }
        if self.unmark {
            a.builder.remove_image(&live_tag(app, &self.deployment)).await?;
        }
        Ok(format!("retired {} of {app}: stopped and kept for a rollback", self.deployment))
    }
}

/// How long reconcile lets a retained release's container stop.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Plan {
    fn new(app: &AppId, inv: &Inventory) -> Plan {
        let route = inv.routes.iter().find(|(a, _)| a == app).map(|(_, t)| t.clone());
        // The live rule looks at the app's own containers and images only.
        let live = live_container(app, &inv.containers, &inv.images, route.as_ref().map(|r| r.port)).cloned();

        let mut actions = Vec::new();
        let wanted = live
            .as_ref()
            .filter(|l| !l.domains.is_empty())
            .and_then(|l| Some(RouteTarget { domains: l.domains.clone(), port: l.host_port? }));
        let restore = match (&wanted, &route) {
            (Some(w), Some(r)) if w == r && !inv.stale.contains(app) => None,
            (Some(w), _) => Some(w.clone()),
            (None, Some(_)) => {
                actions.push(UndoAction::RestoreRoute { app: app.clone(), previous: None });
                None
            }
            (None, None) => None,
        };
        // Retained releases (committed once, kept for a rollback) stay.
        let retained: Vec<ReleaseInfo> = releases(app, &inv.containers, &inv.images, route.as_ref().map(|r| r.port))
            .into_iter()
            .filter(|r| r.state == ReleaseState::Retained)
            .collect();
        let is_retained = |d: &DeploymentId| retained.iter().any(|r| r.deployment == *d);
        for c in inv.containers.iter().filter(|c| c.app == *app) {
            if live.as_ref().is_none_or(|l| l.id != c.id) && !is_retained(&c.deployment) {
                actions.push(UndoAction::RemoveContainer { name: c.id.clone() });
                actions.push(UndoAction::ReleasePort { deployment: c.deployment.clone() });
            }
        }
        for image in inv.images.iter().filter(|i| i.app == *app) {
            if live.as_ref().is_none_or(|l| l.deployment != image.deployment) && !is_retained(&image.deployment) {
                actions.extend(image.tags.iter().map(|t| UndoAction::RemoveImage { image: t.clone() }));
            }
        }
        // A retirement cut short: finish it (stopped, kept mark, no live mark).
        let retire: Vec<Retire> = retained
            .iter()
            .filter_map(|r| {
                let image = inv.images.iter().find(|i| i.app == *app && i.deployment == r.deployment)?;
                let retire = Retire {
                    deployment: r.deployment.clone(),
                    container: r.container.clone(),
                    stop: r.running,
                    keep: !image.kept,
                    unmark: image.live,
                };
                (retire.stop || retire.keep || retire.unmark).then_some(retire)
            })
            .collect();
        for (owner, deployment) in &inv.sources {
            if owner == app {
                actions.push(UndoAction::RemoveSource { app: app.clone(), deployment: deployment.clone() });
            }
        }
        let adopt = live.clone().filter(|_| unmarked(app, &inv.images));
        Plan { app: app.clone(), restore, routed_port: route.map(|r| r.port), adopt, retire, actions }
    }
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
    let inv = Inventory::read(a, &BTreeSet::from([app.clone()])).await?;
    let mut actions = Vec::new();
    if !inv.routes.is_empty() {
        actions.push(UndoAction::RestoreRoute { app: app.clone(), previous: None });
    }
    let mut report = CleanupReport { app: Some(app.clone()), ..CleanupReport::default() };
    for c in inv.containers.iter().filter(|c| c.running) {
        // Best effort: the forced removal below ends it anyway.
        if a.runtime.stop(&c.id, grace).await.is_ok() {
            report.done.push(format!("stopped container {}", c.name));
        }
    }
    for c in &inv.containers {
        actions.push(UndoAction::RemoveContainer { name: c.id.clone() });
        actions.push(UndoAction::ReleasePort { deployment: c.deployment.clone() });
    }
    for image in &inv.images {
        actions.extend(image.tags.iter().map(|t| UndoAction::RemoveImage { image: t.clone() }));
    }
    for (_, deployment) in inv.sources {
        actions.push(UndoAction::RemoveSource { app: app.clone(), deployment });
    }
    let mut rest = run(a, Some(app), actions, retry).await;
    report.done.append(&mut rest.done);
    report.residue = rest.residue;
    Ok(report)
}

/// `undeploy --volumes`, after [`undeploy_app`]: removes the named volumes
/// made for `app`, and the data in them. Nothing else ever removes a volume.
/// While a container of the app is left (a residue of `undeploy_app`) its
/// volumes are in use: they stay, as a residue too.
pub async fn remove_app_volumes(a: &Adapters, app: &AppId, report: &mut CleanupReport) {
    let residue = |error: String| Residue {
        kind: ResidueKind::Volume,
        what: format!("remove the volumes of {app}"),
        error,
        in_doubt: false,
    };
    if report.residue.iter().any(|r| r.kind == ResidueKind::Container) {
        report.residue.push(residue("a container of the app is still there".into()));
        return;
    }
    match a.runtime.remove_volumes(app).await {
        Ok(names) => report.done.extend(names.into_iter().map(|n| format!("removed volume {n}"))),
        Err(e) => report.residue.push(residue(e.to_string())),
    }
}

/// What exists of a set of apps, wherever it lives, read once.
struct Inventory {
    containers: Vec<ManagedContainer>,
    images: Vec<ManagedImage>,
    routes: Vec<(AppId, RouteTarget)>,
    /// Routed apps whose route targets the right port but must be written
    /// again ([`otturnaut_core::traits::Router::needs_rewrite`]).
    stale: BTreeSet<AppId>,
    /// Fetched sources still in the work dir.
    sources: Vec<(AppId, DeploymentId)>,
}

impl Inventory {
    async fn read(a: &Adapters, apps: &BTreeSet<AppId>) -> otturnaut_core::Result<Inventory> {
        // One app: ask Docker for just that app's; several: list everything once.
        let only = match apps.len() {
            1 => apps.first(),
            _ => None,
        };
        let (containers, images, routes, sources) = tokio::try_join!(
            a.runtime.list(only),
            a.builder.list_images(only),
            async {
                match only {
                    Some(app) => Ok(a.router.route(app).await?.map(|t| (app.clone(), t)).into_iter().collect()),
                    None => a.router.routes().await,
                }
            },
            a.fetcher.leftovers()
        )?;
        let wanted = |app: &AppId| apps.contains(app);
        let routes: Vec<(AppId, RouteTarget)> = routes.into_iter().filter(|(app, _)| wanted(app)).collect();
        let mut stale = BTreeSet::new();
        for (app, _) in &routes {
            if a.router.needs_rewrite(app).await? {
                stale.insert(app.clone());
            }
        }
        Ok(Inventory {
            containers: containers.into_iter().filter(|c| wanted(&c.app)).collect(),
            images: images.into_iter().filter(|i| wanted(&i.app)).collect(),
            routes,
            stale,
            sources: sources.into_iter().filter(|(app, _)| wanted(app)).collect(),
        })
    }
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
                kind: action.kind(),
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

/// The first of `domains` that another app already has, with that app: in
/// Caddy's routes, or as a domain of another app's committed release (which
/// owns it even while Caddy has lost its route). Read-only: front ends call
/// it to refuse a deploy before anything is created; the route write checks
/// again, so a race between two deploys cannot give a domain two owners.
pub async fn domain_owner(
    a: &Adapters,
    app: &AppId,
    domains: &[otturnaut_core::Domain],
) -> otturnaut_core::Result<Option<(otturnaut_core::Domain, AppId)>> {
    if domains.is_empty() {
        return Ok(None);
    }
    let (containers, images, routes) =
        tokio::try_join!(a.runtime.list(None), a.builder.list_images(None), a.router.routes())?;
    let apps: BTreeSet<&AppId> = containers.iter().map(|c| &c.app).filter(|other| *other != app).collect();
    let live: Vec<(AppId, Vec<otturnaut_core::Domain>)> = apps
        .into_iter()
        .filter_map(|other| {
            let routed = routes.iter().find(|(a, _)| a == other).map(|(_, t)| t.port);
            live_container(other, &containers, &images, routed).map(|c| (other.clone(), c.domains.clone()))
        })
        .collect();
    let owners =
        routes.iter().map(|(a, t)| (a, t.domains.as_slice())).chain(live.iter().map(|(a, d)| (a, d.as_slice())));
    Ok(otturnaut_core::domain_conflict(app, domains, owners))
}
