//! Flight recorders on this host: applies the coordinator's `ArmRecorders` (the whole set it
//! wants armed here) with [`tracevisor_lttng::recorder::arm_recorders`] on one worker task and
//! answers `RecordersArmed` once it is applied. Each request is the whole desired set, so only
//! the latest matters: requests that arrive while one is applied are coalesced into the newest,
//! and an older set is never applied after a newer one.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracevisor_lttng::lifecycle::LocalExecutor;
use tracevisor_lttng::recorder::arm_recorders;
use tracevisor_protocol::{Message, RecorderSpec};

/// Answers waiting for the link.
const OUTGOING: usize = 4;

/// The latest request: the owner prefix and the whole set.
type Request = Option<(String, Vec<RecorderSpec>)>;

/// The recorder requests of one link.
pub struct Recorders {
    latest: Option<watch::Sender<Request>>,
    rx: mpsc::Receiver<Message>,
    tasks: TaskTracker,
}

impl Recorders {
    /// Starts the worker (on the current runtime).
    pub fn new(executor: Arc<LocalExecutor>) -> Self {
        let (tx, rx) = mpsc::channel(OUTGOING);
        let (latest, mut requests) = watch::channel::<Request>(None);
        let tasks = TaskTracker::new();
        tasks.spawn(async move {
            while requests.changed().await.is_ok() {
                let request = requests.borrow_and_update().clone();
                let Some((owner, recorders)) = request else {
                    continue;
                };
                let states = arm_recorders(&*executor, &owner, &recorders).await;
                if tx.send(Message::RecordersArmed { states }).await.is_err() {
                    return;
                }
            }
        });
        Recorders {
            latest: Some(latest),
            rx,
            tasks,
        }
    }

    /// Takes an `ArmRecorders`: applied after the one being applied, if any.
    pub fn handle(&mut self, owner: String, recorders: Vec<RecorderSpec>) {
        if let Some(latest) = &self.latest {
            latest.send_replace(Some((owner, recorders)));
        }
    }

    /// The next answer to send.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Stops the worker once the request being applied is done (each is bounded by the lttng
    /// commands' timeouts); its answer is dropped with the link.
    pub async fn close(&mut self) {
        self.latest = None;
        self.tasks.close();
        self.rx.close();
        self.tasks.wait().await;
    }
}
