//! Flight recorders on this host: applies the coordinator's `ArmRecorders` (the whole set it
//! wants armed here) with [`tracevisor_lttng::recorder::arm_recorders`] on a task, one at a time
//! and in order, and answers `RecordersArmed` once it is applied.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracevisor_lttng::lifecycle::LocalExecutor;
use tracevisor_lttng::recorder::arm_recorders;
use tracevisor_protocol::{Message, RecorderSpec};

/// Answers waiting for the link.
const OUTGOING: usize = 4;

/// The recorder requests of one link.
pub struct Recorders {
    executor: Arc<LocalExecutor>,
    /// Held while a request is applied: requests apply one at a time, in arrival order.
    turn: Arc<tokio::sync::Mutex<()>>,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    tasks: TaskTracker,
}

impl Recorders {
    pub fn new(executor: Arc<LocalExecutor>) -> Self {
        let (tx, rx) = mpsc::channel(OUTGOING);
        Recorders {
            executor,
            turn: Arc::new(tokio::sync::Mutex::new(())),
            tx,
            rx,
            tasks: TaskTracker::new(),
        }
    }

    /// Starts applying an `ArmRecorders`.
    pub fn handle(&mut self, owner: String, recorders: Vec<RecorderSpec>) {
        let executor = self.executor.clone();
        let tx = self.tx.clone();
        // Taken now, so requests apply in the order they arrived.
        let turn = self.turn.clone().try_lock_owned();
        let queue = self.turn.clone();
        self.tasks.spawn(async move {
            let _turn = match turn {
                Ok(turn) => turn,
                Err(_) => queue.lock_owned().await,
            };
            let states = arm_recorders(&*executor, &owner, &recorders).await;
            let _ = tx.send(Message::RecordersArmed { states }).await;
        });
    }

    /// The next answer to send.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Waits for the requests being applied (each is bounded by the lttng commands' timeouts);
    /// their answers are dropped with the link.
    pub async fn close(&mut self) {
        self.tasks.close();
        self.rx.close();
        self.tasks.wait().await;
    }
}
