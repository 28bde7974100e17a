//! One established link, from hello to close: a single loop over incoming frames, the
//! heartbeat ticker, the liveness deadline and shutdown, generic over the WebSocket so tests
//! can drive it with any in-process stream.

use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{
    decode, encode, CloseReason, CodecError, Frame, Hello, Message, DEAD_AFTER_INTERVALS,
};

use super::LinkError;
use crate::config::LinkSettings;
use crate::fetch::Fetches;
use crate::jobs::{JobCommand, JobEvent, Jobs};
use crate::recorders::Recorders;

/// What the session loop waits on.
enum Event {
    Shutdown,
    Received(Option<Result<WsMessage, WsError>>),
    Deadline,
    HeartbeatDue,
    Job(Option<JobEvent>),
    Fetch(Option<Message>),
    Recorder(Option<Message>),
}

/// Drives one link over an upgraded WebSocket `ws`: sends `hello`, waits for `HelloAck`,
/// then exchanges heartbeats and dispatches job commands to `jobs` until the link ends.
///
/// Returns `Ok(())` when `shutdown` was cancelled (after sending `Close { Shutdown }` and
/// closing the socket), else the reason the link ended. `established` is set when
/// `HelloAck` arrives. A malformed or unexpected frame is answered with
/// `Close { ProtocolError }` (or `UnsupportedVersion`) before closing; nothing panics.
/// Trace fetches live as long as the link: they are cancelled and awaited when it ends.
pub async fn drive<S>(
    ws: &mut S,
    hello: Hello,
    jobs: &mut Jobs,
    settings: &LinkSettings,
    shutdown: &CancellationToken,
    established: &mut Option<Instant>,
) -> Result<(), LinkError>
where
    S: Sink<WsMessage, Error = WsError> + Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let mut fetches = Fetches::new(jobs.roots().clone());
    let mut recorders = Recorders::new(jobs.executor());
    let mut side = Side {
        fetches: &mut fetches,
        recorders: &mut recorders,
    };
    let ended = drive_link(ws, hello, jobs, &mut side, settings, shutdown, established).await;
    fetches.close().await;
    recorders.close().await;
    ended
}

/// What a link runs besides jobs: trace fetches and flight recorder requests.
struct Side<'a> {
    fetches: &'a mut Fetches,
    recorders: &'a mut Recorders,
}

async fn drive_link<S>(
    ws: &mut S,
    hello: Hello,
    jobs: &mut Jobs,
    side: &mut Side<'_>,
    settings: &LinkSettings,
    shutdown: &CancellationToken,
    established: &mut Option<Instant>,
) -> Result<(), LinkError>
where
    S: Sink<WsMessage, Error = WsError> + Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let mut session = Session {
        ws,
        settings,
        heartbeat: None,
        next_seq: 0,
        last_received: Instant::now(),
    };
    session.send(Message::Hello(hello)).await?;
    let hello_deadline = tokio::time::Instant::now() + settings.hello_timeout;
    loop {
        let deadline = match &session.heartbeat {
            None => hello_deadline,
            Some(heartbeat) => {
                tokio::time::Instant::from_std(session.last_received) + heartbeat.dead_after
            }
        };
        // Biased, in this order: shutdown first; a due heartbeat is not starved by a busy
        // peer; a frame already received wins over the liveness deadline.
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Event::Shutdown,
            _ = next_tick(&mut session.heartbeat) => Event::HeartbeatDue,
            received = session.ws.next() => Event::Received(received),
            // Job reports wait for HelloAck, so they follow the re-sent results in order.
            event = jobs.next_event(), if session.heartbeat.is_some() => Event::Job(event),
            frame = side.fetches.next() => Event::Fetch(frame),
            frame = side.recorders.next() => Event::Recorder(frame),
            _ = tokio::time::sleep_until(deadline) => Event::Deadline,
        };
        match event {
            Event::Shutdown => {
                session
                    .close(CloseReason::Shutdown, "agent shutting down")
                    .await;
                return Ok(());
            }
            Event::Deadline => {
                let Some(heartbeat) = &session.heartbeat else {
                    let error = LinkError::HelloTimeout(settings.hello_timeout);
                    session
                        .close(CloseReason::ProtocolError, &error.to_string())
                        .await;
                    return Err(error);
                };
                let error = LinkError::Dead(heartbeat.dead_after);
                session
                    .close(CloseReason::HeartbeatTimeout, &error.to_string())
                    .await;
                return Err(error);
            }
            Event::Job(Some(event)) => {
                let message = jobs.on_event(event);
                session.send(message).await?;
            }
            Event::Job(None) | Event::Fetch(None) | Event::Recorder(None) => {}
            Event::Fetch(Some(message)) | Event::Recorder(Some(message)) => {
                session.send(message).await?
            }
            Event::HeartbeatDue => {
                let seq = session.next_seq;
                session.next_seq += 1;
                session.send(Message::Heartbeat { seq }).await?;
            }
            Event::Received(None) => {
                return Err(LinkError::Disconnected {
                    detail: String::new(),
                })
            }
            Event::Received(Some(Err(error))) => {
                if let WsError::Capacity(_) = &error {
                    let message = format!("frame refused: {error}");
                    session.close(CloseReason::ProtocolError, &message).await;
                    return Err(LinkError::Protocol(message));
                }
                return Err(LinkError::Transport(error));
            }
            Event::Received(Some(Ok(message))) => {
                session.last_received = Instant::now();
                match message {
                    WsMessage::Binary(bytes) => {
                        let frame = match decode(&bytes) {
                            Ok(frame) => frame,
                            Err(error) => return Err(session.refuse_frame(error).await),
                        };
                        session.handle(frame.body, jobs, side, established).await?;
                    }
                    WsMessage::Text(_) => {
                        let message = "text message (the protocol uses binary frames only)";
                        session.close(CloseReason::ProtocolError, message).await;
                        return Err(LinkError::Protocol(message.to_owned()));
                    }
                    WsMessage::Close(frame) => {
                        let detail = match frame {
                            Some(frame) if frame.reason.is_empty() => {
                                format!(" (code {})", u16::from(frame.code))
                            }
                            Some(frame) => {
                                format!(" (code {}: {})", u16::from(frame.code), frame.reason)
                            }
                            None => String::new(),
                        };
                        return Err(LinkError::Disconnected { detail });
                    }
                    // Pings are answered by tungstenite; any frame counts as a sign of life.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                }
            }
        }
    }
}

/// The heartbeat schedule, once `HelloAck` gave the interval.
struct Heartbeat {
    ticker: Interval,
    dead_after: Duration,
}

struct Session<'a, S> {
    ws: &'a mut S,
    settings: &'a LinkSettings,
    heartbeat: Option<Heartbeat>,
    next_seq: u64,
    last_received: Instant,
}

async fn next_tick(heartbeat: &mut Option<Heartbeat>) {
    match heartbeat {
        Some(heartbeat) => {
            heartbeat.ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl<S> Session<'_, S>
where
    S: Sink<WsMessage, Error = WsError> + Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    /// Handles one decoded message from the coordinator.
    async fn handle(
        &mut self,
        message: Message,
        jobs: &mut Jobs,
        side: &mut Side<'_>,
        established: &mut Option<Instant>,
    ) -> Result<(), LinkError> {
        let kind = message.kind();
        match message {
            Message::HelloAck {
                agent_id,
                heartbeat_interval_ms,
                coordinator_id,
            } => {
                if self.heartbeat.is_some() {
                    tracing::warn!(agent_id, "ignoring a second hello-ack");
                    return Ok(());
                }
                if heartbeat_interval_ms == 0 {
                    return Err(self
                        .protocol_error("hello-ack with a zero heartbeat interval")
                        .await);
                }
                let interval = Duration::from_millis(u64::from(heartbeat_interval_ms));
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.heartbeat = Some(Heartbeat {
                    ticker,
                    dead_after: interval.saturating_mul(DEAD_AFTER_INTERVALS),
                });
                *established = Some(Instant::now());
                tracing::info!(agent_id, heartbeat_interval_ms, "connected");
                // Leftovers of a previous run of this agent fail their jobs; they are among the
                // pending results sent below.
                let _ = jobs.recover(&coordinator_id).await;
                for result in jobs.pending_results() {
                    self.send(result).await?;
                }
                Ok(())
            }
            Message::Heartbeat { seq } => self.send(Message::HeartbeatAck { seq }).await,
            Message::HeartbeatAck { seq } => {
                tracing::trace!(seq, "heartbeat acknowledged");
                Ok(())
            }
            Message::Close { reason, message } => {
                // The coordinator closes the socket itself; nothing more to send.
                Err(LinkError::ClosedByPeer { reason, message })
            }
            Message::StartJob { .. } | Message::CancelJob { .. } | Message::ResultAck { .. } => {
                if self.heartbeat.is_none() {
                    return Err(self
                        .protocol_error(&format!("{kind} before hello-ack"))
                        .await);
                }
                match JobCommand::from_message(message) {
                    Some(command) => {
                        for reply in jobs.handle(command) {
                            self.send(reply).await?;
                        }
                        Ok(())
                    }
                    None => Err(self.protocol_error(&format!("unexpected {kind}")).await),
                }
            }
            Message::FetchTrace { .. }
            | Message::TraceCredit { .. }
            | Message::CancelFetch { .. } => {
                if self.heartbeat.is_none() {
                    return Err(self
                        .protocol_error(&format!("{kind} before hello-ack"))
                        .await);
                }
                match side.fetches.handle(message) {
                    Some(reply) => self.send(reply).await,
                    None => Ok(()),
                }
            }
            Message::ArmRecorders { owner, recorders } => {
                if self.heartbeat.is_none() {
                    return Err(self
                        .protocol_error(&format!("{kind} before hello-ack"))
                        .await);
                }
                side.recorders.handle(owner, recorders);
                Ok(())
            }
            Message::Hello(_)
            | Message::JobProgress { .. }
            | Message::JobResult { .. }
            | Message::Enroll { .. }
            | Message::Enrolled { .. }
            | Message::TraceStart { .. }
            | Message::TraceChunk { .. }
            | Message::TraceEnd { .. }
            | Message::RecordersArmed { .. } => Err(self
                .protocol_error(&format!("unexpected {kind} from the coordinator"))
                .await),
        }
    }

    /// Closes the link after an undecodable frame.
    async fn refuse_frame(&mut self, error: CodecError) -> LinkError {
        let reason = match error {
            CodecError::UnsupportedVersion { .. } => CloseReason::UnsupportedVersion,
            _ => CloseReason::ProtocolError,
        };
        let message = error.to_string();
        self.close(reason, &message).await;
        LinkError::Protocol(message)
    }

    /// Closes the link with [`CloseReason::ProtocolError`].
    async fn protocol_error(&mut self, message: &str) -> LinkError {
        self.close(CloseReason::ProtocolError, message).await;
        LinkError::Protocol(message.to_owned())
    }

    /// Encodes and sends one message, bounded by the send timeout.
    async fn send(&mut self, message: Message) -> Result<(), LinkError> {
        let kind = message.kind();
        let bytes = encode(&Frame::new(message))
            .map_err(|error| LinkError::Protocol(format!("cannot send {kind}: {error}")))?;
        let timeout = self.settings.send_timeout;
        match tokio::time::timeout(timeout, self.ws.send(WsMessage::binary(bytes))).await {
            Ok(Ok(())) => {
                tracing::trace!(kind, "sent");
                Ok(())
            }
            Ok(Err(error)) => Err(LinkError::Transport(error)),
            Err(_) => Err(LinkError::SendTimeout(timeout)),
        }
    }

    /// Best effort: sends `Close { reason, message }`, then the WebSocket close frame, then
    /// waits briefly for the peer to close too. Each step is bounded by the close timeout.
    async fn close(&mut self, reason: CloseReason, message: &str) {
        tracing::debug!(%reason, message, "closing the link");
        let timeout = self.settings.close_timeout;
        let close = Message::Close {
            reason,
            message: message.to_owned(),
        };
        if let Ok(bytes) = encode(&Frame::new(close)) {
            let _ = tokio::time::timeout(timeout, self.ws.send(WsMessage::binary(bytes))).await;
        }
        let code = match reason {
            CloseReason::Shutdown => CloseCode::Away,
            CloseReason::ProtocolError | CloseReason::UnsupportedVersion => CloseCode::Protocol,
            _ => CloseCode::Normal,
        };
        let frame = CloseFrame {
            code,
            reason: reason.to_string().into(),
        };
        let _ = tokio::time::timeout(timeout, self.ws.send(WsMessage::Close(Some(frame)))).await;
        // Read until the peer's close frame (or the end), so the close handshake completes.
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(message)) = self.ws.next().await {
                if let WsMessage::Close(_) = message {
                    break;
                }
            }
        })
        .await;
    }
}
