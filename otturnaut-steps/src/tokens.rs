// Long file: the seven tokens of the typestate chain share their guards and unwinding, kept in one module.
//! The typestate tokens. Each step consumes the previous token and returns the
//! next, so steps cannot run out of order: there is no `switch_route` on a
//! [`Built`]. Each token owns its resource (through an armed [`Guard`]) and
//! the token before it.
//!
//! Field order matters: a token's `guard` is declared before `prev`, so on a
//! drop the token hands over its own undo before the older tokens do theirs,
//! which is reverse order of acquisition.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otturnaut_core::traits::{BuildRequest, FetchRequest, FetchedSource, RunRequest, container_name, image_tag};
use otturnaut_core::{
    Adapters, CommitSha, ContainerId, DeployEvent, DeploySpec, DeploymentId, Error, EventSink, HostPort, ImageRef,
    Release, RouteTarget, Source, Step,
};

use crate::DeployError;
use crate::handover::{Guard, Handover, PendingUndos};
use crate::reaper::Reaper;
use crate::undo::{RetryPolicy, UndoAction, UndoReport};

/// Extra time given to an adapter past its own deadline before the pipeline
/// gives up on it: the adapter should report its timeout first.
const BACKSTOP: Duration = Duration::from_secs(10);

/// Everything the steps of one deployment share.
#[derive(Debug)]
pub struct Context {
    /// The ports the steps act through.
    pub adapters: Adapters,
    /// Where progress events go.
    pub events: EventSink,
    /// Where the undos of a dropped token go.
    pub reaper: Reaper,
    /// How hard each undo is tried.
    pub retry: RetryPolicy,
    /// What is being deployed.
    pub spec: DeploySpec,
    /// This attempt's id: it names the tag, container and port owner.
    pub deployment: DeploymentId,
}

impl Context {
    /// Where this deploy's dropped undos go: the reaper, tagged with it.
    pub(crate) fn handover(&self) -> Handover {
        self.reaper.handover(&self.spec.app, &self.deployment)
    }
}

/// Runs one step: emits started/finished/failed events with its duration and
/// bounds it by `limit` (plus a backstop).
async fn timed<T>(
    ctx: &Context,
    step: Step,
    limit: Option<Duration>,
    work: impl Future<Output = Result<T, Error>>,
    detail: impl FnOnce(&T) -> Option<String>,
) -> Result<T, Error> {
    ctx.events.emit(DeployEvent::StepStarted { step });
    let started = Instant::now();
    let result = match limit {
        // Saturating: a spec built by a library caller may hold any duration.
        Some(limit) => match tokio::time::timeout(limit.saturating_add(BACKSTOP), work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { operation: step.to_string(), after: limit.saturating_add(BACKSTOP) }),
        },
        None => work.await,
    };
    match &result {
        Ok(v) => ctx.events.emit(DeployEvent::step_finished(step, started.elapsed(), detail(v))),
        Err(e) => ctx.events.emit(DeployEvent::step_failed(step, started.elapsed(), e)),
    }
    result
}

/// Rolls back after `step` failed: first its own in-doubt undo (armed before
/// its call), then `older` (already newest first), and builds the error.
async fn fail(ctx: &Context, step: Step, cause: Error, own: Option<UndoAction>, older: Vec<UndoAction>) -> DeployError {
    let undo = PendingUndos::after_failure(own, older, ctx.handover()).run(&ctx.adapters, &ctx.events, ctx.retry).await;
    DeployError::new(ctx.spec.app.clone(), ctx.deployment.clone(), step, cause, undo)
}

async fn undo_all(ctx: &Context, actions: Vec<UndoAction>) -> UndoReport {
    PendingUndos::new(actions, ctx.handover()).run(&ctx.adapters, &ctx.events, ctx.retry).await
}

fn chain(own: Option<UndoAction>, older: Vec<UndoAction>) -> Vec<UndoAction> {
    own.into_iter().chain(older).collect()
}

/// The source tree (for a git deploy) or nothing (for a prebuilt image).
#[derive(Debug)]
pub struct Fetched {
    source: Option<FetchedSource>,
    guard: Guard,
    /// A rollback that tagged the retained image for this release ahead of
    /// the pipeline (beside reading the release back): that tag call's
    /// outcome, whose undo `guard` holds.
    tagged: Option<Result<(), Error>>,
    ctx: Arc<Context>,
}

impl Fetched {
    /// First step: clone the repository, or nothing to do for an image.
    pub async fn fetch(ctx: Arc<Context>) -> Result<Fetched, DeployError> {
        let Source::Git { url, git_ref, ssh_key, .. } = &ctx.spec.source else {
            return Ok(Fetched { source: None, guard: Guard::empty(ctx.handover()), tagged: None, ctx });
        };
        let app = ctx.spec.app.clone();
        let mut guard = Guard::armed(
            UndoAction::RemoveSource { app: app.clone(), deployment: ctx.deployment.clone() },
            ctx.handover(),
        );
        let req = FetchRequest {
            app,
            deployment: ctx.deployment.clone(),
            url: url.clone(),
            git_ref: git_ref.clone(),
            ssh_key: ssh_key.clone(),
            timeout: ctx.spec.timeouts.fetch,
        };
        let fetched = timed(&ctx, Step::Fetch, Some(req.timeout), ctx.adapters.fetcher.fetch(&req), |s| {
            Some(format!("commit {}", s.commit))
        })
        .await;
        match fetched {
            Ok(source) => Ok(Fetched { source: Some(source), guard, tagged: None, ctx }),
            Err(e) => Err(fail(&ctx, Step::Fetch, e, guard.disarm(), Vec::new()).await),
        }
    }

    /// The first step of a rollback whose retained image was tagged for this
    /// release already (`tagged`, the tag call's outcome; `guard` holds its
    /// undo): nothing to fetch, and [`Fetched::build`] only reports the tag.
    pub(crate) fn tagged(ctx: Arc<Context>, guard: Guard, tagged: Result<(), Error>) -> Fetched {
        Fetched { source: None, guard, tagged: Some(tagged), ctx }
    }

    /// Builds the image from the fetched tree, or makes sure the prebuilt
    /// image is present.
    pub async fn build(mut self) -> Result<Built, DeployError> {
        let ctx = self.ctx.clone();
        let spec = &ctx.spec;
        let (work, mut guard): (_, Guard) = match (&spec.source, &self.source, self.tagged.take()) {
            (Source::Git { url, dockerfile, build_args, build_secrets, .. }, Some(source), _) => {
                let req = BuildRequest {
                    app: spec.app.clone(),
                    deployment: ctx.deployment.clone(),
                    context_dir: source.dir.clone(),
                    dockerfile: dockerfile.clone(),
                    build_args: build_args.clone(),
                    build_secrets: build_secrets.clone(),
                    repo: url.clone(),
                    commit: source.commit.clone(),
                    timeout: spec.timeouts.build,
                };
                let guard = Guard::armed(UndoAction::RemoveImage { image: req.tag() }, ctx.handover());
                let builder = ctx.adapters.builder.clone();
                let events = ctx.events.clone();
                let work: std::pin::Pin<Box<dyn Future<Output = Result<ImageRef, Error>> + Send>> =
                    Box::pin(async move { builder.build(&req, &events).await });
                (work, guard)
            }
            (Source::Image { reference }, _, _) => {
                // The release's own tag on the prebuilt image: removing it
                // only untags, never the user's image.
                let tag = image_tag(&spec.app, &ctx.deployment);
                let guard = Guard::armed(UndoAction::RemoveImage { image: tag.clone() }, ctx.handover());
                let builder = ctx.adapters.builder.clone();
                let events = ctx.events.clone();
                let reference = reference.clone();
                let pull = spec.timeouts.pull;
                // The app's lock is held while a registry trickles an image in.
                let work: std::pin::Pin<Box<dyn Future<Output = Result<ImageRef, Error>> + Send>> =
                    Box::pin(async move {
                        match tokio::time::timeout(pull, builder.ensure_image(&reference, &tag, &events)).await {
                            Ok(result) => result?,
                            Err(_) => {
                                return Err(Error::Timeout {
                                    operation: format!("pulling image {reference}"),
                                    after: pull,
                                });
                            }
                        }
                        Ok(reference)
                    });
                (work, guard)
            }
            (Source::Release { image, .. }, _, Some(tagged)) => {
                let guard = std::mem::replace(&mut self.guard, Guard::empty(ctx.handover()));
                let work: std::pin::Pin<Box<dyn Future<Output = Result<ImageRef, Error>> + Send>> =
                    Box::pin(std::future::ready(tagged.map(|()| image.clone())));
                (work, guard)
            }
            (Source::Release { deployment: from, image, .. }, _, _) => {
                // A rollback: the retained release's image under this
                // release's own tag. No build; a missing release tag fails here.
                let tag = image_tag(&spec.app, &ctx.deployment);
                let guard = Guard::armed(UndoAction::RemoveImage { image: tag.clone() }, ctx.handover());
                let builder = ctx.adapters.builder.clone();
                let (source, image) = (image_tag(&spec.app, from), image.clone());
                let work: std::pin::Pin<Box<dyn Future<Output = Result<ImageRef, Error>> + Send>> =
                    Box::pin(async move {
                        builder.tag_image(source.as_str(), &tag).await?;
                        Ok(image)
                    });
                (work, guard)
            }
            (Source::Git { .. }, None, _) => {
                let e = Error::failed("build", "no fetched source to build from");
                return Err(fail(&ctx, Step::Build, e, None, self.unwind()).await);
            }
        };
        let limit = match spec.source {
            Source::Git { .. } => spec.timeouts.build,
            Source::Image { .. } | Source::Release { .. } => spec.timeouts.pull,
        };
        let limit = Some(limit);
        let detail = |image: &ImageRef| match &spec.source {
            Source::Release { deployment, .. } => Some(format!("{image}: the image of release {deployment}, no build")),
            _ => Some(image.to_string()),
        };
        match timed(&ctx, Step::Build, limit, work, detail).await {
            Ok(image) => {
                let commit = match &spec.source {
                    Source::Release { commit, .. } => commit.clone(),
                    _ => self.source.as_ref().map(|s| s.commit.clone()),
                };
                Ok(Built { image, commit, guard, prev: self })
            }
            Err(e) => Err(fail(&ctx, Step::Build, e, guard.disarm(), self.unwind()).await),
        }
    }

    /// The fetched tree and its commit; `None` for a prebuilt image or a rollback.
    pub fn source(&self) -> Option<&FetchedSource> {
        self.source.as_ref()
    }

    /// Undoes this token and every token before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        let ctx = self.ctx.clone();
        undo_all(&ctx, self.unwind()).await
    }

    fn unwind(mut self) -> Vec<UndoAction> {
        chain(self.guard.disarm(), Vec::new())
    }
}

/// A built image, or a prebuilt one present and tagged for this release.
#[derive(Debug)]
pub struct Built {
    image: ImageRef,
    commit: Option<CommitSha>,
    guard: Guard,
    prev: Fetched,
}

impl Built {
    /// The image as the user knows it: the built tag or the prebuilt reference.
    pub fn image(&self) -> &ImageRef {
        &self.image
    }

    /// Fails this deploy at `step` (a read-only step run beside the build,
    /// such as loading state): rolls back and returns the error.
    pub async fn roll_back_after(self, step: Step, cause: Error) -> DeployError {
        let ctx = self.prev.ctx.clone();
        fail(&ctx, step, cause, None, self.unwind()).await
    }

    /// Reserves a host port for the new container.
    pub async fn allocate_port(self, previous: Option<Release>) -> Result<PortHeld, DeployError> {
        let ctx = self.prev.ctx.clone();
        let mut guard = Guard::armed(UndoAction::ReleasePort { deployment: ctx.deployment.clone() }, ctx.handover());
        let work = ctx.adapters.ports.allocate(&ctx.deployment, &[]);
        match timed(&ctx, Step::AllocatePort, None, work, |p| Some(format!("port {p}"))).await {
            Ok(port) => Ok(PortHeld { port, previous, guard, prev: self }),
            Err(e) => Err(fail(&ctx, Step::AllocatePort, e, guard.disarm(), self.unwind()).await),
        }
    }

    /// Undoes this step and every one before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        let ctx = self.prev.ctx.clone();
        undo_all(&ctx, self.unwind()).await
    }

    fn unwind(mut self) -> Vec<UndoAction> {
        chain(self.guard.disarm(), self.prev.unwind())
    }
}

/// A host port reserved for this deployment.
#[derive(Debug)]
pub struct PortHeld {
    port: HostPort,
    previous: Option<Release>,
    guard: Guard,
    prev: Built,
}

/// How many times a port someone else grabbed first is swapped for another.
const PORT_RETRIES: usize = 5;

impl PortHeld {
    /// The reserved host port.
    pub fn port(&self) -> HostPort {
        self.port
    }

    /// Creates and starts the new container on the reserved port. If another
    /// process took the port meanwhile, swaps it for a fresh one and retries.
    pub async fn start_container(mut self) -> Result<Running, DeployError> {
        let ctx = self.prev.prev.ctx.clone();
        let spec = &ctx.spec;
        let name = container_name(&spec.app, &ctx.deployment);
        let mut guard = Guard::armed(UndoAction::RemoveContainer { name: ContainerId(name.clone()) }, ctx.handover());
        let adapters = ctx.adapters.clone();
        let image = self.prev.image.clone();
        let mut port = self.port;
        let work = async {
            let mut taken = Vec::new();
            loop {
                let req = RunRequest {
                    app: spec.app.clone(),
                    deployment: ctx.deployment.clone(),
                    image: image_tag(&spec.app, &ctx.deployment),
                    reference: image.clone(),
                    host_port: port,
                    container_port: spec.container_port,
                    env: spec.env.clone(),
                    domains: spec.domains.clone(),
                    health: spec.health.clone(),
                    commit: self.prev.commit.clone(),
                    rollback_of: spec.rollback_of().cloned(),
                    options: spec.runtime.clone(),
                    stop_timeout: spec.timeouts.stop,
                    drain_timeout: spec.timeouts.drain,
                };
                match adapters.runtime.start(&req).await {
                    Err(Error::PortTaken(p)) if taken.len() < PORT_RETRIES => {
                        ctx.events.warn(format!("host port {p} was taken by someone else; trying another"));
                        taken.push(p);
                        adapters.ports.release(&ctx.deployment).await?;
                        port = adapters.ports.allocate(&ctx.deployment, &taken).await?;
                    }
                    other => return other,
                }
            }
        };
        let started = timed(&ctx, Step::StartContainer, None, work, |_| Some(name.clone())).await;
        self.port = port;
        match started {
            Ok(container) => Ok(Running { container, guard, prev: self }),
            Err(e) => Err(fail(&ctx, Step::StartContainer, e, guard.disarm(), self.unwind()).await),
        }
    }

    /// Undoes this step and every one before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        let ctx = self.prev.prev.ctx.clone();
        undo_all(&ctx, self.unwind()).await
    }

    fn unwind(mut self) -> Vec<UndoAction> {
        chain(self.guard.disarm(), self.prev.unwind())
    }
}

/// The new container, started but not yet known to be healthy.
#[derive(Debug)]
pub struct Running {
    container: ContainerId,
    guard: Guard,
    prev: PortHeld,
}

impl Running {
    fn ctx(&self) -> Arc<Context> {
        self.prev.prev.prev.ctx.clone()
    }

    /// The new container.
    pub fn container(&self) -> &ContainerId {
        &self.container
    }

    /// Waits until the new container passes its health check. Read-only: has
    /// no undo of its own; a failure rolls back everything before it.
    pub async fn health_check(self) -> Result<Healthy, DeployError> {
        let ctx = self.ctx();
        let check = &ctx.spec.health;
        let work = ctx.adapters.health.check(&self.container, self.prev.port, check);
        match timed(&ctx, Step::HealthCheck, Some(check.deadline), work, |_| None).await {
            Ok(()) => Ok(Healthy { running: self }),
            Err(e) => Err(fail(&ctx, Step::HealthCheck, e, None, self.unwind()).await),
        }
    }

    /// Undoes this step and every one before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        let ctx = self.ctx();
        undo_all(&ctx, self.unwind()).await
    }

    fn unwind(mut self) -> Vec<UndoAction> {
        chain(self.guard.disarm(), self.prev.unwind())
    }
}

/// A running container that passed its health check.
#[derive(Debug)]
pub struct Healthy {
    running: Running,
}

impl Healthy {
    /// Points the app's domains at the new container in one config change.
    /// Undo puts the previous route back (or removes it on a first deploy).
    pub async fn switch_route(self) -> Result<Routed, DeployError> {
        let ctx = self.running.ctx();
        let app = &ctx.spec.app;
        let domains = ctx.spec.domains.clone();
        let port = self.running.prev.port;
        let router = ctx.adapters.router.clone();
        let target = RouteTarget { domains: domains.clone(), port };
        // Reading the current route is part of the step, so a failure to read
        // it is reported (events, error) as this step failing.
        let mut guard = Guard::empty(ctx.handover());
        let work = async {
            let current = router.route(app).await?;
            if domains.is_empty() && current.is_none() {
                // Nothing routes to an app without domains: callers reach it by port.
                return Ok(false);
            }
            guard = Guard::armed(UndoAction::RestoreRoute { app: app.clone(), previous: current }, ctx.handover());
            if domains.is_empty() {
                router.remove_route(app).await?
            } else {
                router.set_route(app, &target).await?
            }
            Ok(true)
        };
        let detail =
            |routed: &bool| Some(if *routed { format!("port {port}") } else { "no domains: not routed".into() });
        match timed(&ctx, Step::SwitchRoute, None, work, detail).await {
            Ok(_) => Ok(Routed { guard, prev: self }),
            Err(e) => Err(fail(&ctx, Step::SwitchRoute, e, guard.disarm(), self.running.unwind()).await),
        }
    }

    /// Undoes this step and every one before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        self.running.rollback().await
    }
}

/// Traffic goes to the new container; not yet recorded.
#[derive(Debug)]
pub struct Routed {
    guard: Guard,
    prev: Healthy,
}

/// The deploy after its commit point: the new release is routed and
/// recorded. Nothing from here on is undone.
#[derive(Debug)]
pub struct Committed {
    /// The release now recorded as live.
    pub release: Release,
    /// The release that was live before, still running until retired.
    pub previous: Option<Release>,
    /// What cleaning up after the commit (the fetched source) left behind.
    pub residue: Vec<crate::Residue>,
    pub(crate) ctx: Arc<Context>,
}

impl Routed {
    fn ctx(&self) -> Arc<Context> {
        self.prev.running.ctx()
    }

    /// Records the new release: the commit point. On success every guard is
    /// disarmed for good; the fetched source is then removed (best effort).
    pub async fn commit(self) -> Result<Committed, DeployError> {
        let ctx = self.ctx();
        let running = &self.prev.running;
        let held = &running.prev;
        let built = &held.prev;
        let spec = &ctx.spec;
        let release = Release {
            app: spec.app.clone(),
            deployment: ctx.deployment.clone(),
            container: running.container.clone(),
            image: built.image.clone(),
            host_port: held.port,
            domains: spec.domains.clone(),
            commit: built.commit.clone(),
        };
        let previous = held.previous.clone();
        let mut guard = Guard::armed(
            UndoAction::RestoreState { previous: previous.clone(), app: spec.app.clone() },
            ctx.handover(),
        );
        let work = ctx.adapters.state.record(&release);
        match timed(&ctx, Step::RecordState, None, work, |_| Some(format!("deployment {}", release.deployment))).await {
            Ok(()) => {
                guard.disarm();
                let leftovers: Vec<UndoAction> =
                    self.unwind().into_iter().filter(|a| matches!(a, UndoAction::RemoveSource { .. })).collect();
                let cleanup =
                    PendingUndos::cleanup(leftovers, ctx.handover()).run(&ctx.adapters, &ctx.events, ctx.retry).await;
                for r in &cleanup.residue {
                    ctx.events.warn(format!("after commit: {r}"));
                }
                Ok(Committed { release, previous, residue: cleanup.residue, ctx })
            }
            Err(e) => Err(fail(&ctx, Step::RecordState, e, guard.disarm(), self.unwind()).await),
        }
    }

    /// Undoes this step and every one before it, newest first.
    pub async fn rollback(self) -> UndoReport {
        let ctx = self.ctx();
        undo_all(&ctx, self.unwind()).await
    }

    fn unwind(mut self) -> Vec<UndoAction> {
        chain(self.guard.disarm(), self.prev.running.unwind())
    }
}
