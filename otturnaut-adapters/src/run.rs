//! Running a deploy to its [`Outcome`], whatever happens to it: the one place
//! that knows what an interrupted deploy means. A front end starts a
//! [`DeployRun`], reads its events, and renders the outcome.
//!
//! Cancelling (a [`Canceller`], or dropping the run before its end) drops the
//! pipeline; its tokens hand their undos to the reaper, which is flushed, and
//! a final sweep removes what finished on Docker's side after the drop. If the
//! commit had already happened, the new release stays live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otturnaut_core::{AppId, DeployEvent, DeploySpec, DeploymentId, EventSink, Step, Timeouts};
use otturnaut_steps::{
    BlueGreen, DeployError, Deployed, Residue, ResidueKind, RetryPolicy, Strategy, apply_retention, domain_owner,
    live_release, reconcile_app, rollback_spec,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Agent;
use crate::lock::{self, AppLock, Holder, LockError};
use crate::outcome::{Ending, Live, Outcome};

/// How long [`Agent::deploy`] waits for another deploy of the same app.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a deploy did not start; nothing was changed.
#[derive(Debug)]
pub enum StartError {
    /// A domain of the spec is served by another app.
    DomainTaken {
        /// The domain.
        domain: otturnaut_core::Domain,
        /// The app that has it.
        owner: AppId,
    },
    /// Docker or Caddy failed (or could not be reached) while `doing`.
    Service {
        /// What was being done.
        doing: String,
        /// How it failed.
        error: otturnaut_core::Error,
    },
    /// The app's lock could not be had.
    Lock(LockError),
    /// A rollback with nothing (or no such release) to go back to.
    NoRelease(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::DomainTaken { domain, owner } => write!(
                f,
                "domain {domain} is already served by app {owner}; a domain has one owner \
                 (undeploy {owner}, or redeploy it without {domain}, first)"
            ),
            StartError::Service { doing, error } => write!(f, "{doing}: {error}"),
            StartError::Lock(e) => e.fmt(f),
            StartError::NoRelease(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartError {}

/// Stops a running deploy, naming why (`SIGINT`, `cancel request`…).
#[derive(Debug, Clone, Default)]
pub struct Canceller {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Canceller {
    /// The first reason given wins.
    pub fn cancel(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.into());
        }
        self.token.cancel();
    }

    fn reason(&self) -> String {
        self.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "a cancel".into())
    }
}

enum Msg {
    Event(DeployEvent),
    Done(Box<Outcome>),
}

/// A deploy in progress: its events, then its outcome. Dropping it before
/// the outcome cancels the deploy (rolled back before the commit).
#[derive(Debug)]
pub struct DeployRun {
    app: AppId,
    rx: mpsc::UnboundedReceiver<Msg>,
    canceller: Canceller,
    outcome: Option<Outcome>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl DeployRun {
    /// The app being deployed.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// A handle that stops this deploy from anywhere.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// The next event, or None once the deploy has ended.
    pub async fn next_event(&mut self) -> Option<DeployEvent> {
        if self.outcome.is_some() {
            return None;
        }
        match self.rx.recv().await {
            Some(Msg::Event(e)) => Some(e),
            Some(Msg::Done(o)) => {
                self.outcome = Some(*o);
                None
            }
            None => None,
        }
    }

    /// Waits for the end (events not read are skipped) and returns it.
    pub async fn outcome(mut self) -> Outcome {
        while self.next_event().await.is_some() {}
        match self.outcome.take() {
            Some(o) => o,
            // The driver vanished without a word: only when the runtime
            // shuts down under it. What it did is for `reconcile`.
            None => Outcome {
                app: self.app.clone(),
                deployment: None,
                rollback_of: None,
                ending: Ending::Interrupted {
                    cause: "the agent shutting down".into(),
                    undo: Vec::new(),
                    residue: Vec::new(),
                    live: Err("not checked".into()),
                },
                cleaned: Vec::new(),
                elapsed: Duration::ZERO,
            },
        }
    }
}

impl Drop for DeployRun {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.canceller.cancel("the deploy's handle being dropped");
        }
    }
}

impl Agent {
    /// Where the per-app locks live.
    pub fn locks_dir(&self) -> std::path::PathBuf {
        self.config.work_dir.join("locks")
    }

    /// Deploys `spec` with every check and the app's lock (waiting up to
    /// [`LOCK_TIMEOUT`] for another deploy of it): the way in for a library
    /// consumer.
    pub async fn deploy(&self, spec: DeploySpec) -> Result<DeployRun, StartError> {
        self.check_deploy(&spec).await?;
        let lock = lock::lock(&self.locks_dir(), &spec.app, "deploy", LOCK_TIMEOUT, |_: &Holder| {})
            .await
            .map_err(StartError::Lock)?;
        self.start_deploy(spec, lock).await
    }

    /// The spec of a rollback of `app` to its retained release `to` (by
    /// default the newest): read-only, so it can be refused before anything
    /// is created. [`Agent::start_deploy`] runs it as read: a retained
    /// release never changes, and one removed meanwhile fails at the build
    /// step with nothing touched.
    pub async fn rollback_spec(&self, app: &AppId, to: Option<&DeploymentId>) -> Result<DeploySpec, StartError> {
        rollback_spec(&self.adapters, app, to, Timeouts::default()).await.map_err(|error| match error {
            otturnaut_core::Error::Invalid { .. } => StartError::NoRelease(error.to_string()),
            error => StartError::Service { doing: format!("finding the release of {app} to roll back to"), error },
        })
    }

    /// What must hold before a deploy takes the app's lock: no domain of
    /// `spec` belongs to another app, and our Caddy server exists.
    pub async fn check_deploy(&self, spec: &DeploySpec) -> Result<(), StartError> {
        let service = |doing: &str| {
            let doing = doing.to_owned();
            move |error| StartError::Service { doing, error }
        };
        let owner = domain_owner(&self.adapters, &spec.app, &spec.domains)
            .await
            .map_err(service("checking which apps serve the domains"))?;
        if let Some((domain, owner)) = owner {
            return Err(StartError::DomainTaken { domain, owner });
        }
        self.prepare().await.map_err(service("setting up our Caddy server"))
    }

    /// Starts deploying `spec` under its app's `lock`, which the run holds
    /// until its end. First removes what earlier interrupted deploys of the
    /// app left (reported as warning events): the lock says none is running.
    pub async fn start_deploy(&self, spec: DeploySpec, lock: AppLock) -> Result<DeployRun, StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let app = spec.app.clone();
        let cleaned = self.clean_before(&app, &tx).await?;
        let canceller = Canceller::default();
        let driver = Driver { agent: self.clone(), tx, canceller: canceller.clone(), started, cleaned };
        tokio::spawn(driver.run(spec, lock));
        Ok(DeployRun { app, rx, canceller, outcome: None })
    }

    async fn clean_before(&self, app: &AppId, tx: &mpsc::UnboundedSender<Msg>) -> Result<Vec<String>, StartError> {
        let report = reconcile_app(&self.adapters, app, RetryPolicy::default()).await.map_err(|error| {
            StartError::Service { doing: format!("checking {app} for leftovers of earlier deploys"), error }
        })?;
        let warn = |message: String| {
            let _ = tx.send(Msg::Event(DeployEvent::Warning { message }));
        };
        for done in &report.done {
            warn(format!("cleaned up before deploying: {done}"));
        }
        for residue in &report.residue {
            warn(format!("could not clean up a leftover of an earlier deploy: {residue}"));
        }
        Ok(report.done)
    }
}

/// The task behind a [`DeployRun`].
struct Driver {
    agent: Agent,
    tx: mpsc::UnboundedSender<Msg>,
    canceller: Canceller,
    started: Instant,
    cleaned: Vec<String>,
}

enum End {
    Done(Box<Result<Deployed, DeployError>>),
    Interrupted(String),
}

impl Driver {
    fn send(&self, event: DeployEvent) {
        // A consumer that went away does not stop the deploy.
        let _ = self.tx.send(Msg::Event(event));
    }

    async fn run(self, spec: DeploySpec, lock: AppLock) {
        let strategy = BlueGreen::new(self.agent.adapters.clone()).keep(self.agent.config.keep);
        let (sink, mut rx) = EventSink::channel();
        let mut deployment: Option<DeploymentId> = None;
        // Set once the new release is recorded: from then on nothing is undone.
        let mut committed = false;
        // A task of its own, so that a panic in the deploy ends only that
        // task: its tokens still hand their undos to the reaper.
        let mut task = tokio::spawn({
            let (strategy, spec, sink) = (strategy.clone(), spec.clone(), sink.clone());
            // A rollback's spec was read before the lock and is not read
            // again: a retained release never changes, and one removed
            // meanwhile fails the build step, where its tag is copied, with
            // nothing touched.
            async move { strategy.execute(spec, &sink).await }
        });
        drop(sink);
        let token = self.canceller.token.clone();
        let mut finished = false;
        let end = loop {
            tokio::select! {
                biased;
                Some(event) = rx.recv() => {
                    match &event {
                        DeployEvent::Started { deployment: d, .. } => deployment = Some(d.clone()),
                        DeployEvent::StepFinished { step: Step::RecordState, .. } => committed = true,
                        _ => {}
                    }
                    self.send(event);
                }
                result = &mut task => {
                    // The task is over: it must not be awaited again below.
                    finished = true;
                    break match result {
                        Ok(result) => End::Done(Box::new(result)),
                        Err(e) => End::Interrupted(format!("a panic ({})", panic_message(e))),
                    };
                }
                () = token.cancelled() => break End::Interrupted(self.canceller.reason()),
            }
        };
        if !finished {
            // Drop the deploy and wait until it is gone: its tokens hand
            // their undos to the reaper before `flush` is asked for.
            task.abort();
            let _ = task.await;
        }
        while let Ok(event) = rx.try_recv() {
            if let DeployEvent::StepFinished { step: Step::RecordState, .. } = &event {
                committed = true;
            }
            self.send(event);
        }
        let app = spec.app.clone();
        let ending = match end {
            End::Done(result) => match *result {
                Ok(deployed) => {
                    deployment = Some(deployed.release.deployment.clone());
                    let urls = self.agent.config.urls(&deployed.release.domains);
                    Ending::Deployed { deployed, container_port: spec.container_port, urls }
                }
                Err(e) => {
                    let (d, step, cause, undo) = e.into_parts();
                    deployment = Some(d);
                    let live = self.live(&app).await;
                    Ending::Failed { step, cause, undo: undo.outcomes, residue: undo.residue, live }
                }
            },
            End::Interrupted(cause) => self.interrupted(&strategy, &spec, cause, committed).await,
        };
        let rollback_of = match &ending {
            Ending::Deployed { deployed, .. } => deployed.rollback_of.clone(),
            _ => spec.rollback_of().cloned(),
        };
        let (cleaned, elapsed) = (self.cleaned.clone(), self.started.elapsed());
        let outcome = Outcome { app, deployment, rollback_of, ending, cleaned, elapsed };
        // Free the app before anyone hears of the end, so that a deploy
        // started on that news does not find it locked.
        drop(lock);
        let _ = self.tx.send(Msg::Done(Box::new(outcome)));
    }

    async fn live(&self, app: &AppId) -> Live {
        live_release(&self.agent.adapters, app).await.map_err(|e| e.to_string())
    }

    async fn interrupted(&self, strategy: &BlueGreen, spec: &DeploySpec, cause: String, committed: bool) -> Ending {
        let app = &spec.app;
        let undo = strategy.reaper().flush().await;
        for o in &undo.outcomes {
            self.send(DeployEvent::UndoFinished {
                resource: o.action.clone(),
                ok: o.ok,
                attempts: o.attempts,
                error: o.error.clone(),
            });
        }
        // A final sweep, as `reconcile` would: it also catches what finished
        // on Docker's side after the deploy was dropped (a build, say).
        let residue: Vec<Residue> = match reconcile_app(&self.agent.adapters, app, RetryPolicy::default()).await {
            Ok(mut sweep) => {
                // A retirement cut short did not get to remove what is beyond `keep`.
                if committed {
                    match apply_retention(&self.agent.adapters, app, self.agent.config.keep, RetryPolicy::default())
                        .await
                    {
                        Ok(kept) => {
                            sweep.done.extend(kept.done);
                            sweep.residue.extend(kept.residue);
                        }
                        Err(e) => self
                            .send(DeployEvent::Warning { message: format!("could not apply retention to {app}: {e}") }),
                    }
                }
                for done in sweep.done {
                    self.send(DeployEvent::UndoFinished { resource: done, ok: true, attempts: 1, error: None });
                }
                sweep.residue
            }
            Err(e) => {
                self.send(DeployEvent::Warning { message: format!("could not check {app} for leftovers: {e}") });
                // Port reservations live in this process and end with the deploy.
                undo.residue.into_iter().filter(|r| r.kind != ResidueKind::Port).collect()
            }
        };
        let live = self.live(app).await;
        if committed {
            Ending::InterruptedAfterCommit { cause, domains: spec.domains.clone(), residue, live }
        } else {
            Ending::Interrupted { cause, undo: undo.outcomes, residue, live }
        }
    }
}

/// The message of a panic that ended the deploy task.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}
