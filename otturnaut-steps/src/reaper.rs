//! The reaper: performs undos handed over by dropped tokens.
//!
//! Tokens are dropped outermost first and each hands over its own undo before
//! its inner token drops, so the reaper receives undos in reverse order of
//! acquisition and performs them one at a time, in the order received.

use std::fmt;

use otturnaut_core::{Adapters, EventSink};
use tokio::sync::{mpsc, oneshot};

use crate::undo::{PendingUndos, RetryPolicy, UndoAction, UndoReport};

enum Msg {
    Undo(UndoAction),
    Flush(oneshot::Sender<UndoReport>),
}

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
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut report = UndoReport::default();
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Undo(action) => {
                        let done = PendingUndos::new(vec![action], None).run(&adapters, &events, retry).await;
                        report.outcomes.extend(done.outcomes);
                        report.residue.extend(done.residue);
                    }
                    Msg::Flush(reply) => {
                        let _ = reply.send(std::mem::take(&mut report));
                    }
                }
            }
        });
        Reaper { tx }
    }

    pub(crate) fn hand_over(&self, action: UndoAction) {
        if let Err(lost) = self.tx.send(Msg::Undo(action)) {
            // The runtime is gone: nothing can run the undo now. Say so where
            // an operator will see it; `reconcile` finds the resource later.
            if let Msg::Undo(action) = lost.0 {
                eprintln!("otturnaut: reaper stopped; left for reconcile: {action}");
            }
        }
    }

    /// Waits until every undo handed over so far has been performed, and
    /// returns what they came to since the last flush.
    pub async fn flush(&self) -> UndoReport {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(reply)).is_err() {
            return UndoReport::default();
        }
        rx.await.unwrap_or_default()
    }
}
