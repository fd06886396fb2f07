//! The reaper: performs undos handed over by dropped tokens.
//!
//! Tokens are dropped outermost first and each hands over its own undo before
//! its inner token drops, so the reaper receives a deployment's undos in
//! reverse order of acquisition. Architecture invariant: it performs those of
//! one deployment one at a time, in the order received, and those of
//! different deployments concurrently, so one hung undo (minutes of retries)
//! never holds up another app's cleanup.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use otturnaut_core::{Adapters, AppId, DeploymentId, EventSink};
use tokio::sync::{mpsc, oneshot};

use crate::handover::{Handover, Msg};
use crate::undo::{Owner, RetryPolicy, UndoAction, UndoReport, run_in_order};

/// A handle to the reaper task. Cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    // The task runs until the last handle (and so the last sender) is gone.
    tx: mpsc::UnboundedSender<Msg>,
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reaper")
    }
}

impl Reaper {
    /// Starts the reaper on the current tokio runtime.
    pub fn spawn(adapters: Adapters, events: EventSink, retry: RetryPolicy) -> Reaper {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(Task { adapters, events, retry, workers: HashMap::new(), report: UndoReport::default() }.run(rx));
        Reaper { tx }
    }

    /// A sender for the undos of one deployment.
    pub(crate) fn handover(&self, app: &AppId, deployment: &DeploymentId) -> Handover {
        Handover::new(self.tx.clone(), app.clone(), deployment.clone())
    }

    /// Waits until every undo handed over so far (and any handed over while
    /// waiting) has been performed, and returns what they came to since the
    /// last flush. Each outcome names its app and deployment.
    pub async fn flush(&self) -> UndoReport {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(reply)).is_err() {
            return UndoReport::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// The reaper's state: one worker per deployment with undos outstanding.
struct Task {
    adapters: Adapters,
    events: EventSink,
    retry: RetryPolicy,
    /// The worker of each deployment, and how many of its undos are not done.
    workers: HashMap<Owner, (mpsc::UnboundedSender<UndoAction>, usize)>,
    report: UndoReport,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Owner, UndoReport)>();
        let mut flushes: Vec<oneshot::Sender<UndoReport>> = Vec::new();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Undo(undo)) => {
                        let (owner, action) = *undo;
                        self.dispatch(owner, action, &done_tx);
                    }
                    Some(Msg::Flush(reply)) => flushes.push(reply),
                    // Every handle is gone: finish what was handed over, then stop.
                    None if self.workers.is_empty() => return,
                    None => {
                        while let Some((owner, done)) = done_rx.recv().await {
                            self.finished(&owner, done);
                            if self.workers.is_empty() {
                                return;
                            }
                        }
                        return;
                    }
                },
                Some((owner, done)) = done_rx.recv() => self.finished(&owner, done),
            }
            if self.workers.is_empty() {
                for reply in flushes.drain(..) {
                    let _ = reply.send(std::mem::take(&mut self.report));
                }
            }
        }
    }

    /// Queues `action` behind the other undos of its deployment, starting a
    /// worker for the deployment if it has none.
    fn dispatch(&mut self, owner: Owner, action: UndoAction, done: &mpsc::UnboundedSender<(Owner, UndoReport)>) {
        let (worker, outstanding) = self.workers.entry(owner.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (adapters, events, retry, done) =
                (self.adapters.clone(), self.events.clone(), self.retry, done.clone());
            tokio::spawn(work(owner, rx, adapters, events, retry, done));
            (tx, 0)
        });
        *outstanding += 1;
        // The worker only stops once its sender is dropped, below.
        let _ = worker.send(action);
    }

    fn finished(&mut self, owner: &Owner, done: UndoReport) {
        self.report.outcomes.extend(done.outcomes);
        self.report.residue.extend(done.residue);
        if let Some((_, outstanding)) = self.workers.get_mut(owner) {
            *outstanding -= 1;
            if *outstanding == 0 {
                // Dropping the sender ends the worker.
                self.workers.remove(owner);
            }
        }
    }
}

/// Performs one deployment's undos one at a time, in the order received.
async fn work(
    owner: Owner,
    mut rx: mpsc::UnboundedReceiver<UndoAction>,
    adapters: Adapters,
    events: EventSink,
    retry: RetryPolicy,
    done: mpsc::UnboundedSender<(Owner, UndoReport)>,
) {
    while let Some(action) = rx.recv().await {
        let mut one = VecDeque::from([action]);
        let report = run_in_order(&mut one, &mut false, false, &owner, &adapters, &events, retry).await;
        if done.send((owner.clone(), report)).is_err() {
            return;
        }
    }
}
