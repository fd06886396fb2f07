//! What `GET /v1/apps` answers from: the last read of every app's status,
//! kept for a few seconds, so that many clients polling at once cost one
//! read of Docker and Caddy per second instead of one each.
//!
//! How fresh an answer is:
//! - a change this daemon makes (deploy, rollback, undeploy, prune,
//!   reconcile, the watch's repairs) shows in every answer given after the
//!   request that made it was answered: the daemon reads anew before it
//!   answers (a deploy's result line comes after that read);
//! - a change made elsewhere (a CLI deploy, a Caddy restart) shows within
//!   [`MAX_AGE`]: no answer is built from a read started longer ago. A
//!   snapshot older than [`REFRESH_AFTER`] is still served while a new read
//!   runs in the background; one older than [`MAX_AGE`] is not served at
//!   all, the request waits for a new read (shared by all who wait).
//!
//! An idle daemon reads nothing: reads are only made for requests.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use otturnaut_adapters::Agent;
use otturnaut_adapters::status::{AppStatus, statuses};

/// A snapshot older than this is served while a new read runs.
pub const REFRESH_AFTER: Duration = Duration::from_secs(1);

/// No answer comes from a read started longer ago than this.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// How long a change waits for the read that shows it; past that (or if the
/// read fails) the older snapshots are dropped, so requests read anew.
const CHANGE_READ_WAIT: Duration = Duration::from_secs(10);

/// One read of every app.
#[derive(Debug)]
pub struct Apps {
    /// When the read started: everything in it is at least this recent.
    pub read_at: Instant,
    pub list: Vec<AppStatus>,
    /// `list` as the JSON body of `GET /v1/apps`.
    pub body: Bytes,
}

/// A read's outcome: the apps, or the error status and message.
pub type ReadResult = Result<Arc<Apps>, (StatusCode, String)>;

type Read = Shared<BoxFuture<'static, ReadResult>>;

#[derive(Debug, Default)]
struct Slots {
    current: Option<Arc<Apps>>,
    /// The newest read running, with when it started.
    in_flight: Option<(Instant, Read)>,
    /// Snapshots read before this are never served (set by a change whose
    /// own read did not land).
    valid_after: Option<Instant>,
}

#[derive(Debug)]
pub struct AppsSnapshot {
    agent: Agent,
    slots: Mutex<Slots>,
}

impl AppsSnapshot {
    pub fn new(agent: Agent) -> Arc<AppsSnapshot> {
        Arc::new(AppsSnapshot { agent, slots: Mutex::default() })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding the slots leaves them usable.
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The apps for a request: the snapshot if it is young enough, else a
    /// read (running or new) recent enough.
    pub async fn get(self: &Arc<Self>) -> ReadResult {
        let now = Instant::now();
        let since = {
            let slots = self.slots();
            let oldest = now.checked_sub(MAX_AGE);
            let since = slots.valid_after.max(oldest);
            if let Some(current) = slots.current.clone().filter(|c| since.is_none_or(|s| c.read_at >= s)) {
                let stale = now.duration_since(current.read_at) >= REFRESH_AFTER;
                let refreshing = slots.in_flight.as_ref().is_some_and(|(started, _)| *started > current.read_at);
                drop(slots);
                if stale && !refreshing {
                    // Runs on its own: nobody waits for it.
                    drop(self.read_since(now));
                }
                return Ok(current);
            }
            since
        };
        self.read_since(since.unwrap_or(now)).await
    }

    /// A read started now, for a caller that wants the apps as they are
    /// (the watch); it becomes the snapshot.
    pub async fn fresh(self: &Arc<Self>) -> ReadResult {
        self.read_since(Instant::now()).await
    }

    /// Called once this daemon changed something: reads anew, so that every
    /// answer from now on shows the change. Returns once that read landed
    /// (or failed, or took too long: then no older snapshot is served).
    pub async fn changed(self: &Arc<Self>) {
        let at = Instant::now();
        let read = self.read_since(at);
        match tokio::time::timeout(CHANGE_READ_WAIT, read).await {
            Ok(Ok(_)) => {}
            Ok(Err((_, e))) => tracing::warn!("reading the apps after a change: {e}"),
            Err(_) => tracing::warn!("reading the apps after a change took over {CHANGE_READ_WAIT:?}"),
        }
        let mut slots = self.slots();
        slots.valid_after = slots.valid_after.max(Some(at));
    }

    /// The running read if it started at `since` or later, else a new one.
    /// Every read runs in a task of its own, to its end even if all who
    /// waited for it went away, and lands as the snapshot unless a newer
    /// one landed first.
    fn read_since(self: &Arc<Self>, since: Instant) -> Read {
        let mut slots = self.slots();
        if let Some((started, read)) = &slots.in_flight
            && *started >= since
        {
            return read.clone();
        }
        let started = Instant::now();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let result = read_apps(&me.agent, started).await;
            let mut slots = me.slots();
            if let Ok(apps) = &result
                && slots.current.as_ref().is_none_or(|c| c.read_at < started)
            {
                slots.current = Some(apps.clone());
            }
            if slots.in_flight.as_ref().is_some_and(|(s, _)| *s == started) {
                slots.in_flight = None;
            }
            result
        });
        let read = async move {
            task.await.unwrap_or_else(|e| {
                Err((StatusCode::INTERNAL_SERVER_ERROR, format!("reading the apps failed unexpectedly: {e}")))
            })
        }
        .boxed()
        .shared();
        slots.in_flight = Some((started, read.clone()));
        read
    }
}

async fn read_apps(agent: &Agent, read_at: Instant) -> ReadResult {
    let list = statuses(agent, None).await.map_err(|e| {
        let e = crate::error::ApiError::service("reading the apps", &e);
        (e.status, e.body.error)
    })?;
    let body = serde_json::to_vec(&list)
        .map(Bytes::from)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("serialising the apps: {e}")))?;
    Ok(Arc::new(Apps { read_at, list, body }))
}
