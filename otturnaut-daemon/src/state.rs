//! What the daemon keeps in memory: running deploys (to cancel them and to
//! wait for them at shutdown), idempotent results, metrics, and the
//! snapshot `GET /v1/apps` answers from (see [`crate::snapshot`]).
//! Everything else is read from Docker and Caddy on each request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use otturnaut_adapters::{Agent, Canceller};
use otturnaut_core::{AppId, DeploymentId, Secret};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::snapshot::AppsSnapshot;

/// How long a result is kept for a repeated `Idempotency-Key`.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// What every request handler shares: the agent, the token, metrics and
/// the deploys this daemon runs.
#[derive(Debug)]
pub struct State {
    /// The connected adapters.
    pub agent: Agent,
    /// The bearer token requests must carry.
    pub token: Secret,
    /// Counters for `GET /metrics`.
    pub metrics: Metrics,
    /// Permits for requests in flight (see [`crate::MAX_CONCURRENT`]).
    pub requests: Arc<Semaphore>,
    running: Mutex<HashMap<AppId, Running>>,
    /// Keyed by app and key: the result, once there is one.
    idempotent: Mutex<HashMap<(AppId, String), (Instant, ResultWatch)>>,
    deploys: TaskTracker,
    /// Every app's status as `GET /v1/apps` answers it.
    pub apps: Arc<AppsSnapshot>,
}

/// A deploy this daemon runs.
#[derive(Debug, Clone)]
pub struct Running {
    pub deployment: Option<DeploymentId>,
    pub canceller: Canceller,
}

/// A first request with an `Idempotency-Key` fills this in.
pub type ResultSlot = watch::Sender<Option<Value>>;

/// What a repeat of that request waits on.
pub type ResultWatch = watch::Receiver<Option<Value>>;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The state of a daemon over `agent`, accepting `token`.
    pub fn new(agent: Agent, token: Secret) -> Arc<State> {
        Arc::new(State {
            token,
            metrics: Metrics::default(),
            requests: Arc::new(Semaphore::new(crate::MAX_CONCURRENT)),
            running: Mutex::default(),
            idempotent: Mutex::default(),
            deploys: TaskTracker::new(),
            apps: AppsSnapshot::new(agent.clone()),
            agent,
        })
    }

    /// The deploy of `app` this daemon is running, if any.
    pub fn running(&self, app: &AppId) -> Option<Running> {
        locked(&self.running).get(app).cloned()
    }

    /// Tracks `running` as `app`'s deploy (for cancelling and status).
    pub fn set_running(&self, app: &AppId, running: Running) {
        locked(&self.running).insert(app.clone(), running);
    }

    /// Notes the deployment id of `app`'s running deploy once it has one.
    pub fn set_deployment(&self, app: &AppId, deployment: &DeploymentId) {
        if let Some(r) = locked(&self.running).get_mut(app) {
            r.deployment = Some(deployment.clone());
        }
    }

    /// Forgets `app`'s deploy: it has ended.
    pub fn done_running(&self, app: &AppId) {
        locked(&self.running).remove(app);
    }

    /// Runs `task` as a deploy: tracked, so that shutdown waits for it.
    pub fn spawn_deploy(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.deploys.spawn(task);
    }

    /// The earlier request's result slot for this key, or a new slot to fill.
    pub fn idempotency(&self, app: &AppId, key: &str) -> Result<ResultWatch, ResultSlot> {
        let mut map = locked(&self.idempotent);
        map.retain(|_, (at, _)| at.elapsed() < IDEMPOTENCY_WINDOW);
        let k = (app.clone(), key.to_owned());
        if let Some((_, rx)) = map.get(&k) {
            return Ok(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(k, (Instant::now(), rx));
        Err(tx)
    }

    /// Forgets a key whose request never started a deploy (refused), so a
    /// corrected repeat is not answered with the refusal.
    pub fn forget_idempotency(&self, app: &AppId, key: &str) {
        locked(&self.idempotent).remove(&(app.clone(), key.to_owned()));
    }

    /// Waits for running deploys; after `grace`, cancels those still going
    /// (they roll back) and waits for their outcomes.
    pub async fn finish_deploys(&self, grace: Duration) {
        self.deploys.close();
        if tokio::time::timeout(grace, self.deploys.wait()).await.is_err() {
            let running: Vec<Running> = locked(&self.running).values().cloned().collect();
            tracing::warn!(count = running.len(), "deploys still running after the grace period: rolling them back");
            for r in running {
                r.canceller.cancel("the agent shutting down");
            }
            self.deploys.wait().await;
        }
    }
}
