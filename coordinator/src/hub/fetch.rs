//! Trace fetches over agent links: the coordinator's side of `FetchTrace` (see the protocol
//! crate's docs): a window of credit, granted again as the reader takes the bytes.
//!
//! Each fetch has a bounded channel from the link task to its reader. The link never waits on
//! it: a frame that finds it full means the agent sent beyond its credit, and the fetch fails.
//! Frames are accepted only from the link of the host the fetch was sent to, so an agent can
//! neither feed nor end another host's fetch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracevisor_protocol::{FetchError, Message, TRACE_CHUNK_BYTES};

use super::{Hub, Outgoing, SendError};

/// Bytes an agent may send ahead of the reader: the most a fetch holds in memory.
pub const FETCH_WINDOW: u32 = 8 * 1024 * 1024;
/// Frames a fetch's channel holds: the window in full chunks, and the start and end.
const FETCH_QUEUE: usize = FETCH_WINDOW as usize / TRACE_CHUNK_BYTES + 2;
/// How long the agent may take to start sending, and between two chunks.
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Fetches running at once through one agent (the agent's own limit too).
pub const MAX_FETCHES_PER_AGENT: usize = 4;

/// A fetch's frame, as the link task passes it on.
#[derive(Debug)]
enum Frame {
    Start { bytes: u64, files: u32 },
    Chunk(Vec<u8>),
    End(Option<FetchError>),
}

/// The hub's record of a running fetch.
pub(super) struct Sink {
    hostname: String,
    tx: mpsc::Sender<Frame>,
}

/// Why a fetch through an agent did not (fully) happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchFailure {
    /// The host's agent is not connected.
    #[error("host {0}: no agent connected")]
    NotConnected(String),
    /// The trace is not on the host (any more).
    #[error("{0}")]
    Gone(String),
    /// The agent refused or failed, the link dropped, or the agent broke the protocol.
    #[error("{0}")]
    Failed(String),
    /// Too many fetches already run through this agent.
    #[error("host {0}: {MAX_FETCHES_PER_AGENT} traces are already being fetched from it")]
    Busy(String),
}

/// A fetch under way: the tar stream of one trace directory, chunk by chunk.
pub struct TraceFetch {
    hub: Arc<Hub>,
    hostname: String,
    fetch_id: u64,
    rx: mpsc::Receiver<Frame>,
    /// Bytes of the last chunk handed out, credited back at the next call.
    owed: u32,
    ended: bool,
    /// The size of the trace's files, as the agent counted them.
    pub bytes: u64,
    /// How many files it holds.
    pub files: u32,
}

impl Hub {
    /// Asks the agent of `hostname` for the trace directory `path`; returns once the agent
    /// started sending it (or said why not).
    pub async fn fetch_trace(
        self: &Arc<Self>,
        hostname: &str,
        path: &str,
    ) -> Result<TraceFetch, FetchFailure> {
        let fetch_id = self.next_fetch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(FETCH_QUEUE);
        {
            let mut fetches = self.fetches();
            let running = fetches.values().filter(|s| s.hostname == hostname).count();
            if running >= MAX_FETCHES_PER_AGENT {
                return Err(FetchFailure::Busy(hostname.to_owned()));
            }
            fetches.insert(
                fetch_id,
                Sink {
                    hostname: hostname.to_owned(),
                    tx,
                },
            );
        }
        let mut fetch = TraceFetch {
            hub: self.clone(),
            hostname: hostname.to_owned(),
            fetch_id,
            rx,
            owed: 0,
            ended: false,
            bytes: 0,
            files: 0,
        };
        let ask = Message::FetchTrace {
            fetch_id,
            path: path.to_owned(),
            window: FETCH_WINDOW,
        };
        if let Err(e) = self.send(hostname, ask).await {
            fetch.ended = true;
            return Err(match e {
                SendError::NotConnected(h) => FetchFailure::NotConnected(h),
                e @ SendError::Closed(_) => FetchFailure::Failed(e.to_string()),
            });
        }
        match fetch.frame().await? {
            Frame::Start { bytes, files } => {
                fetch.bytes = bytes;
                fetch.files = files;
                Ok(fetch)
            }
            Frame::End(error) => {
                fetch.ended = true;
                Err(fetch.ended_early(error))
            }
            Frame::Chunk(_) => Err(fetch.broken("a chunk before trace-start")),
        }
    }

    fn fetches(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Sink>> {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes a fetch frame from the link of `hostname` to its reader. Frames of fetches that
    /// ended (cancelled, failed) are dropped; so are frames for another host's fetch.
    pub(super) fn fetch_frame(&self, hostname: &str, message: Message) {
        let (fetch_id, frame) = match message {
            Message::TraceStart {
                fetch_id,
                bytes,
                files,
            } => (fetch_id, Frame::Start { bytes, files }),
            Message::TraceChunk { fetch_id, data } => (fetch_id, Frame::Chunk(data)),
            Message::TraceEnd { fetch_id, error } => (fetch_id, Frame::End(error)),
            _ => return,
        };
        let mut fetches = self.fetches();
        let Some(sink) = fetches.get(&fetch_id) else {
            tracing::debug!(hostname, fetch_id, "frame of a fetch that ended; dropped");
            return;
        };
        if sink.hostname != hostname {
            tracing::warn!(hostname, fetch_id, owner = %sink.hostname, "an agent sent a frame of another host's fetch; dropped");
            return;
        }
        let last = matches!(frame, Frame::End(_));
        let oversized = matches!(&frame, Frame::Chunk(data) if data.len() > TRACE_CHUNK_BYTES);
        let refused = if oversized {
            Some("a chunk over the chunk limit")
        } else {
            match sink.tx.try_send(frame) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Some("more than its window without credit")
                }
                // The reader went away: its drop cancels the fetch.
                Err(mpsc::error::TrySendError::Closed(_)) => None,
            }
        };
        if last {
            fetches.remove(&fetch_id);
        }
        if let Some(why) = refused {
            // Dropping the sender ends the reader's stream; it reports the failure.
            fetches.remove(&fetch_id);
            tracing::warn!(
                hostname,
                fetch_id,
                why,
                "agent broke the fetch protocol; fetch failed"
            );
            self.cancel_fetch(hostname, fetch_id);
        }
    }

    /// Ends the fetches through `hostname`'s link, which closed.
    pub(super) fn end_fetches_of(&self, hostname: &str) {
        self.fetches().retain(|_, sink| sink.hostname != hostname);
    }

    /// Tells the agent to stop a fetch, without waiting (a full queue drops the request: the
    /// agent's frames are then dropped here, and its credit runs out).
    fn cancel_fetch(&self, hostname: &str, fetch_id: u64) {
        if let Some(link) = self.links().get(hostname) {
            let _ = link
                .tx
                .try_send(Outgoing::Frame(Message::CancelFetch { fetch_id }));
        }
    }
}

impl TraceFetch {
    /// The next bytes of the tar stream, `None` once it is complete. Each call first credits
    /// the agent with the bytes of the previous chunk, which the caller has passed on.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FetchFailure> {
        if self.ended {
            return Ok(None);
        }
        if self.owed > 0 {
            let credit = Message::TraceCredit {
                fetch_id: self.fetch_id,
                bytes: std::mem::take(&mut self.owed),
            };
            if self.hub.send(&self.hostname, credit).await.is_err() {
                return Err(self.lost());
            }
        }
        match self.frame().await? {
            Frame::Chunk(data) => {
                self.owed = u32::try_from(data.len()).unwrap_or(u32::MAX);
                Ok(Some(data))
            }
            Frame::End(None) => {
                self.ended = true;
                Ok(None)
            }
            Frame::End(error) => {
                self.ended = true;
                Err(self.ended_early(error))
            }
            Frame::Start { .. } => Err(self.broken("a second trace-start")),
        }
    }

    async fn frame(&mut self) -> Result<Frame, FetchFailure> {
        match tokio::time::timeout(FETCH_IDLE_TIMEOUT, self.rx.recv()).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(self.lost()),
            Err(_) => Err(FetchFailure::Failed(format!(
                "host {}: the agent sent nothing for {} s",
                self.hostname,
                FETCH_IDLE_TIMEOUT.as_secs()
            ))),
        }
    }

    fn lost(&self) -> FetchFailure {
        FetchFailure::Failed(format!(
            "host {}: the agent link closed during the fetch, or the agent sent more than its window",
            self.hostname
        ))
    }

    fn broken(&mut self, what: &str) -> FetchFailure {
        FetchFailure::Failed(format!(
            "host {}: the agent broke the fetch protocol ({what})",
            self.hostname
        ))
    }

    fn ended_early(&self, error: Option<FetchError>) -> FetchFailure {
        match error {
            Some(e) if e.gone => {
                FetchFailure::Gone(format!("host {}: {}", self.hostname, e.message))
            }
            Some(e) => FetchFailure::Failed(format!("host {}: {}", self.hostname, e.message)),
            None => FetchFailure::Failed(format!(
                "host {}: the agent ended the fetch before sending the trace",
                self.hostname
            )),
        }
    }
}

impl Drop for TraceFetch {
    fn drop(&mut self) {
        let running = self.hub.fetches().remove(&self.fetch_id).is_some();
        if running && !self.ended {
            self.hub.cancel_fetch(&self.hostname, self.fetch_id);
        }
    }
}
