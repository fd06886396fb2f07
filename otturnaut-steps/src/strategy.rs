//! Deploy strategies. [`BlueGreen`] is the first: start the new release next
//! to the old one, switch traffic once it is healthy, then retire the old.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otturnaut_core::traits::image_tag;
use otturnaut_core::{Adapters, AppId, DeployEvent, DeploySpec, DeploymentId, EventSink, Release, Step, Timeouts};
use serde::{Deserialize, Serialize};

use crate::DeployError;
use crate::handover::Guard;
use crate::locks::AppLocks;
use crate::reaper::Reaper;
use crate::releases::{DEFAULT_KEEP, release_spec, retained_release};
use crate::retire::{retain, retire};
use crate::tokens::{Context, Fetched};
use crate::undo::{Residue, RetryPolicy, UndoAction, perform_with_retry};

/// A deploy that reached its commit point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The release now live.
    pub release: Release,
    /// The release that was live before, now retired (kept for a rollback).
    pub previous: Option<Release>,
    /// For a rollback: the retained release made live again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<DeploymentId>,
    /// What retiring the previous release could not clean up (warnings only:
    /// the deploy itself succeeded).
    pub residue: Vec<Residue>,
    /// How long the deploy took (milliseconds in JSON).
    #[serde(with = "millis")]
    pub elapsed: Duration,
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
    }
}

/// A way of replacing an app's live release. [`BlueGreen`] is the one there is;
/// the trait is what front ends and tests drive.
#[async_trait]
pub trait Strategy: Send + Sync {
    /// Deploys `spec`. On error, everything the deploy acquired has been
    /// released (or is listed as residue in the error) and the previous
    /// release is still live.
    async fn execute(&self, spec: DeploySpec, events: &EventSink) -> Result<Deployed, DeployError>;

    /// Makes a retained release of `app` live again (`to`, or the newest
    /// retained one), exactly as it was deployed, through the pipeline from
    /// the port step on, with the same guarantees as [`Strategy::execute`].
    /// A missing release is an [`otturnaut_core::Error::Invalid`] from
    /// [`crate::rollback_spec`]: nothing was touched.
    async fn rollback(
        &self,
        app: &AppId,
        to: Option<&DeploymentId>,
        timeouts: Timeouts,
        events: &EventSink,
    ) -> Result<Result<Deployed, DeployError>, otturnaut_core::Error>;
}

/// What a caller of [`BlueGreen::run`] did before the pipeline.
struct Head {
    /// The new release's id.
    deployment: DeploymentId,
    /// The live release, when the caller has read it already (a rollback
    /// reads it while it looks up the retained release).
    live: Option<otturnaut_core::Result<Option<Release>>>,
    /// A rollback's tag of the retained image for the new release: the
    /// guard holding its undo, and the tag call's outcome.
    tagged: Option<(Guard, otturnaut_core::Result<()>)>,
}

/// Blue-green deploys over a set of adapters.
#[derive(Debug, Clone)]
pub struct BlueGreen {
    adapters: Adapters,
    reaper: Reaper,
    retry: RetryPolicy,
    locks: AppLocks,
    keep: usize,
}

impl BlueGreen {
    /// Must be called inside a tokio runtime: it starts the reaper.
    pub fn new(adapters: Adapters) -> Self {
        Self::with_retry(adapters, RetryPolicy::default())
    }

    /// Like [`BlueGreen::new`], trying each undo as `retry` says (tests use
    /// [`RetryPolicy::immediate`]).
    pub fn with_retry(adapters: Adapters, retry: RetryPolicy) -> Self {
        let reaper = Reaper::spawn(adapters.clone(), EventSink::discard(), retry);
        BlueGreen { adapters, reaper, retry, locks: AppLocks::default(), keep: DEFAULT_KEEP }
    }

    /// How many releases besides the live one to retain for rollbacks (at
    /// least 1; [`DEFAULT_KEEP`] unless set).
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The reaper performing undos of dropped deploys; `flush` it to wait
    /// for them (e.g. before exiting after a cancelled deploy).
    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// The ports this strategy deploys through.
    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    async fn run(&self, spec: DeploySpec, head: Head, events: &EventSink) -> Result<Deployed, DeployError> {
        let started = Instant::now();
        let Head { deployment, live, tagged } = head;
        events.emit(DeployEvent::Started { app: spec.app.clone(), deployment: deployment.clone() });
        let ctx = Arc::new(Context {
            adapters: self.adapters.clone(),
            events: events.clone(),
            reaper: self.reaper.clone(),
            retry: self.retry,
            spec,
            deployment,
        });

        // Loading the live release is read-only and independent of the
        // build, so it runs beside fetch and build.
        let load = async {
            ctx.events.emit(DeployEvent::StepStarted { step: Step::LoadState });
            let t = Instant::now();
            let r = match live {
                Some(r) => r,
                None => ctx.adapters.state.load(&ctx.spec.app).await,
            };
            match &r {
                Ok(prev) => ctx.events.emit(DeployEvent::step_finished(
                    Step::LoadState,
                    t.elapsed(),
                    Some(prev.as_ref().map_or("first deploy".into(), |p| format!("live: {}", p.deployment))),
                )),
                Err(e) => ctx.events.emit(DeployEvent::step_failed(Step::LoadState, t.elapsed(), e)),
            }
            r
        };
        let fetch = async {
            match tagged {
                Some((guard, tagged)) => Ok(Fetched::tagged(ctx.clone(), guard, tagged)),
                None => Fetched::fetch(ctx.clone()).await,
            }
        };
        let (built, previous) = tokio::join!(async { fetch.await?.build().await }, load);
        let built = built?;
        let previous = match previous {
            Ok(previous) => previous,
            Err(e) => return Err(built.roll_back_after(Step::LoadState, e).await),
        };

        let committed = built
            .allocate_port(previous)
            .await?
            .start_container()
            .await?
            .health_check()
            .await?
            .switch_route()
            .await?
            .commit()
            .await?;

        let mut residue = committed.residue;
        if let Some(old) = &committed.previous {
            residue.extend(retire(&committed.ctx, old, &committed.release).await);
        }
        residue.extend(retain(&committed.ctx, self.keep).await);
        Ok(Deployed {
            release: committed.release,
            previous: committed.previous,
            rollback_of: committed.ctx.spec.rollback_of().cloned(),
            residue,
            elapsed: started.elapsed(),
        })
    }
}

#[async_trait]
impl Strategy for BlueGreen {
    async fn execute(&self, spec: DeploySpec, events: &EventSink) -> Result<Deployed, DeployError> {
        let _lock = self.locks.lock(&spec.app).await;
        self.run(spec, Head { deployment: DeploymentId::generate(), live: None, tagged: None }, events).await
    }

    async fn rollback(
        &self,
        app: &AppId,
        to: Option<&DeploymentId>,
        timeouts: Timeouts,
        events: &EventSink,
    ) -> Result<Result<Deployed, DeployError>, otturnaut_core::Error> {
        let _lock = self.locks.lock(app).await;
        let deployment = DeploymentId::generate();
        // The live release is read while the retained one is looked up, and
        // the retained image is tagged for the new release while its
        // container is read back: a rollback waits for Docker no more often
        // than a deploy does.
        let ahead = async {
            let target = retained_release(&self.adapters, app, to).await?;
            let tag = image_tag(app, &deployment);
            let mut guard =
                Guard::armed(UndoAction::RemoveImage { image: tag.clone() }, self.reaper.handover(app, &deployment));
            let source = image_tag(app, &target.deployment);
            let (spec, tagged) = tokio::join!(
                release_spec(&self.adapters, &target, timeouts),
                self.adapters.builder.tag_image(source.as_str(), &tag)
            );
            match spec {
                Ok(spec) => Ok((spec, guard, tagged)),
                Err(e) => {
                    // Nothing may be left behind when there is no rollback.
                    if let Some(undo) = guard.disarm()
                        && let (_, Err(left)) = perform_with_retry(&undo, &self.adapters, self.retry).await
                    {
                        // `reconcile` removes a release tag with no container.
                        tracing::warn!(%app, %deployment, error = %left, "could not remove the rollback's image tag");
                    }
                    Err(e)
                }
            }
        };
        let (ahead, live) = tokio::join!(ahead, self.adapters.state.load(app));
        let (spec, guard, tagged) = ahead?;
        let head = Head { deployment, live: Some(live), tagged: Some((guard, tagged)) };
        Ok(self.run(spec, head, events).await)
    }
}
