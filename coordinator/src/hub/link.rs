//! One agent link, from hello to close: a loop over a closed set of events (a frame from the
//! agent, a frame to send, the heartbeat tick, shutdown).
//!
//! [`serve_link`] is generic over the socket (a `Stream` of WebSocket messages and a `Sink` for
//! them), so it runs on axum's WebSocket in the coordinator and on in-memory channels in tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracevisor_protocol::{
    codec, CloseReason, Frame, Message, DEAD_AFTER_INTERVALS, PROTOCOL_VERSION,
};

use super::{
    canonical, unix_ms, AgentEvent, Hub, Identity, LiveLink, Outgoing, RegisterError,
    HELLO_TIMEOUT, OUTGOING_QUEUE,
};
use crate::validate;

/// What a link runs on: WebSocket messages in and out (axum's `WebSocket`, or channels in
/// tests).
pub trait Socket:
    Stream<Item = Result<WsMessage, axum::Error>> + Sink<WsMessage, Error = axum::Error> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<WsMessage, axum::Error>>
        + Sink<WsMessage, Error = axum::Error>
        + Unpin
        + Send
{
}

/// A link waiting for (or in) its registration, for the hub's backlog bound.
struct Registering<'a>(&'a Hub);

impl<'a> Registering<'a> {
    fn new(hub: &'a Hub) -> Self {
        hub.registering.fetch_add(1, Ordering::Relaxed);
        Registering(hub)
    }
}

impl Drop for Registering<'_> {
    fn drop(&mut self) {
        self.0.registering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One agent link, from hello to close; or, for `Identity::Enrollment`, one enrollment.
pub async fn serve_link<S: Socket>(
    hub: Arc<Hub>,
    mut socket: S,
    peer: SocketAddr,
    identity: Identity,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut socket)).await {
        Ok(Ok(Some(Message::Enroll { hostname }))) => {
            return serve_enrollment(&hub, socket, peer, &identity, hostname).await
        }
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        Ok(Ok(Some(other))) => {
            let why = format!("expected hello, got {}", other.kind());
            return close(socket, CloseReason::ProtocolError, &why, peer).await;
        }
        Ok(Ok(None)) => return,
        Ok(Err((reason, why))) => return close(socket, reason, &why, peer).await,
        Err(_) => {
            return close(
                socket,
                CloseReason::ProtocolError,
                "no hello within 10 s",
                peer,
            )
            .await
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let why = format!(
            "protocol version {} is not supported; this coordinator speaks version {PROTOCOL_VERSION}",
            hello.protocol_version
        );
        return close(socket, CloseReason::UnsupportedVersion, &why, peer).await;
    }
    if let Err(e) = validate::agent_hostname(&hello.hostname) {
        let why = format!("hostname {:?} {e}", hello.hostname);
        return close(socket, CloseReason::ProtocolError, &why, peer).await;
    }
    if let Err(why) = hello_within_bounds(&hello) {
        return close(socket, CloseReason::ProtocolError, &why, peer).await;
    }
    let credential = match &identity {
        Identity::Host {
            credential,
            hostname,
        } if *hostname == hello.hostname => credential.clone(),
        Identity::Host {
            credential,
            hostname,
        } => {
            let why = format!(
                "credential {credential} was issued to {hostname}; it cannot register {}",
                hello.hostname
            );
            tracing::warn!(%peer, claimed = %hello.hostname, %hostname, "agent refused: hello for another host than its credential's");
            return close(socket, CloseReason::Unauthorized, &why, peer).await;
        }
        Identity::Enrollment => {
            let why = format!(
                "this agent authenticates with the shared enrollment token, which only enrolls: \
                 run `tracesd enroll --coordinator URL --token TOKEN` on {} to give it its own \
                 credential (it keeps the rest of its configuration)",
                hello.hostname
            );
            tracing::warn!(%peer, hostname = %hello.hostname, "agent refused: it sent the enrollment token instead of a credential");
            return close(socket, CloseReason::Unauthorized, &why, peer).await;
        }
    };
    let registered = async {
        // Counted from the upgrade's admission (see `Hub::accept`) until registered.
        let _waiting = Registering::new(&hub);
        // The semaphore is never closed, so acquiring only waits.
        let _turn = hub.registrations.acquire().await.ok();
        let now = OffsetDateTime::now_utc();
        hub.register(&hello, peer, now)
            .await
            .map(|(id, epoch)| (id, epoch, now))
    };
    let (client_id, epoch, now) = match registered.await {
        Ok(id) => id,
        Err(RegisterError::Refused(why)) => {
            tracing::warn!(hostname = %hello.hostname, %peer, why = %why, "agent refused: hostname belongs to another host");
            return close(socket, CloseReason::Unauthorized, &why, peer).await;
        }
        Err(error) => {
            tracing::error!(hostname = %hello.hostname, %error, "agent registration failed");
            return close(
                socket,
                CloseReason::Shutdown,
                "registration failed; retry later",
                peer,
            )
            .await;
        }
    };
    // Revoked since the upgrade: refused before it can replace the host's live link.
    if let Some(why) = hub.revoked_reason(&credential) {
        let why = format!("this agent's credential was revoked: {why}");
        return close(socket, CloseReason::Unauthorized, &why, peer).await;
    }
    let link_id = hub.next_link.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(OUTGOING_QUEUE);
    // The silence clock starts once the link is registered: registration may have queued
    // behind many others, and the agent owes nothing before HelloAck.
    let last_seen = Arc::new(AtomicI64::new(unix_ms(OffsetDateTime::now_utc())));
    let revoked = tokio_util::sync::CancellationToken::new();
    let revoked_why = Arc::new(std::sync::Mutex::new(String::new()));
    let replaced = hub.links().insert(
        hello.hostname.clone(),
        LiveLink {
            link_id,
            client_id,
            tx,
            version: hello.agent_version.clone(),
            connected_since: now,
            last_seen: last_seen.clone(),
            capabilities: hello.capabilities.clone(),
            peer: canonical(peer.ip()),
            credential: credential.clone(),
            epoch,
            revoked: revoked.clone(),
            revoked_why: revoked_why.clone(),
        },
    );
    // Revoked between the upgrade and now: the revocation found no link to close, so this
    // link closes itself at once.
    if let Some(why) = hub.revoked_reason(&credential) {
        *revoked_why.lock().unwrap_or_else(|p| p.into_inner()) = why;
        revoked.cancel();
    }
    hub.changed(&hello.hostname);
    crate::metrics::agent_registered();
    if let Some(old) = replaced {
        tracing::warn!(hostname = %hello.hostname, %peer, "agent link replaced by a newer one for the same hostname");
        let _ = old.tx.try_send(Outgoing::Close(
            CloseReason::Replaced,
            "a newer link for this hostname replaced this one".into(),
        ));
    }
    tracing::info!(
        hostname = %hello.hostname, %peer, client_id, version = %hello.agent_version,
        kernel_tracer = hello.capabilities.kernel_tracer, "agent connected"
    );
    hub.emit(AgentEvent {
        client_id,
        hostname: hello.hostname.clone(),
        message: Message::Hello(hello.clone()),
    })
    .await;

    let ack = Message::HelloAck {
        agent_id: client_id,
        heartbeat_interval_ms: u32::try_from(hub.heartbeat.as_millis()).unwrap_or(u32::MAX),
        coordinator_id: hub.instance.clone(),
    };
    let mut end: Option<(CloseReason, String)> = None;
    if send_frame(&mut socket, ack).await.is_err() {
        end = Some((CloseReason::Shutdown, "could not send hello-ack".into()));
    }
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + hub.heartbeat, hub.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead_after = hub.heartbeat * DEAD_AFTER_INTERVALS;
    let mut seq = 0u64;
    while end.is_none() {
        tokio::select! {
            frame = next_frame(&mut socket) => match frame {
                Ok(Some(message)) => {
                    last_seen.store(unix_ms(OffsetDateTime::now_utc()), Ordering::Relaxed);
                    match message {
                        Message::Heartbeat { seq } => {
                            if send_frame(&mut socket, Message::HeartbeatAck { seq }).await.is_err() {
                                end = Some((CloseReason::Shutdown, "send failed".into()));
                            }
                        }
                        Message::HeartbeatAck { .. } => {}
                        Message::Close { reason, message } => {
                            tracing::info!(hostname = %hello.hostname, %reason, %message, "agent closed its link");
                            break;
                        }
                        m @ (Message::JobProgress { .. } | Message::JobResult { .. } | Message::RecordersArmed { .. }) => {
                            hub.emit(AgentEvent { client_id, hostname: hello.hostname.clone(), message: m }).await;
                        }
                        m @ (Message::TraceStart { .. } | Message::TraceChunk { .. } | Message::TraceEnd { .. }) => {
                            hub.fetch_frame(&hello.hostname, m);
                        }
                        other => {
                            end = Some((CloseReason::ProtocolError, format!("unexpected {} from an agent", other.kind())));
                        }
                    }
                }
                Ok(None) => break,
                Err((reason, why)) => end = Some((reason, why)),
            },
            out = rx.recv() => match out {
                Some(Outgoing::Frame(message)) => {
                    if send_frame(&mut socket, message).await.is_err() {
                        end = Some((CloseReason::Shutdown, "send failed".into()));
                    }
                }
                Some(Outgoing::Close(reason, why)) => end = Some((reason, why)),
                None => end = Some((CloseReason::Shutdown, "hub dropped the link".into())),
            },
            _ = tick.tick() => {
                let silent_ms = unix_ms(OffsetDateTime::now_utc()) - last_seen.load(Ordering::Relaxed);
                if silent_ms > i64::try_from(dead_after.as_millis()).unwrap_or(i64::MAX) {
                    end = Some((CloseReason::HeartbeatTimeout, format!("nothing received for {} ms", silent_ms)));
                } else {
                    if send_frame(&mut socket, Message::Heartbeat { seq }).await.is_err() {
                        end = Some((CloseReason::Shutdown, "send failed".into()));
                    }
                    seq += 1;
                }
            }
            _ = hub.shutdown.cancelled() => end = Some((CloseReason::Shutdown, "coordinator shutting down".into())),
            _ = revoked.cancelled() => {
                let why = revoked_why.lock().map(|w| w.clone()).unwrap_or_default();
                end = Some((CloseReason::Unauthorized, format!("this agent's credential was revoked: {why}")));
            }
        }
    }
    // Only the link still registered for this hostname removes it (a replaced one does not).
    let removed = {
        let mut links = hub.links();
        match links.get(&hello.hostname) {
            Some(l) if l.link_id == link_id => links.remove(&hello.hostname).is_some(),
            _ => false,
        }
    };
    if removed {
        hub.end_fetches_of(&hello.hostname);
        hub.record_disconnect(
            client_id,
            epoch,
            &hello.hostname,
            last_seen.load(Ordering::Relaxed),
        )
        .await;
        let (reason, why) = end
            .clone()
            .unwrap_or((CloseReason::Shutdown, "closed by the agent".into()));
        hub.emit(AgentEvent {
            client_id,
            hostname: hello.hostname.clone(),
            message: Message::Close {
                reason,
                message: why,
            },
        })
        .await;
    }
    match &end {
        Some((reason, why)) => {
            tracing::warn!(hostname = %hello.hostname, %peer, %reason, why = %why, "agent disconnected");
        }
        None => tracing::info!(hostname = %hello.hostname, %peer, "agent disconnected"),
    }
    if let Some((reason, why)) = end {
        close(socket, reason, &why, peer).await;
    }
}

/// An enrollment link: one `Enroll`, answered with the host's credential once it is stored.
async fn serve_enrollment<S: Socket>(
    hub: &Hub,
    mut socket: S,
    peer: SocketAddr,
    identity: &Identity,
    hostname: String,
) {
    if *identity != Identity::Enrollment {
        let why = "enrolling takes the enrollment token, not a credential";
        return close(socket, CloseReason::Unauthorized, why, peer).await;
    }
    if let Err(e) = validate::agent_hostname(&hostname) {
        let why = format!("hostname {hostname:?} {e}");
        return close(socket, CloseReason::ProtocolError, &why, peer).await;
    }
    let issued = async {
        let _turn = hub.registrations.acquire().await.ok();
        hub.enroll(&hostname, canonical(peer.ip())).await
    };
    match issued.await {
        Ok(credential) => {
            let answer = Message::Enrolled {
                hostname: hostname.clone(),
                credential,
            };
            if send_frame(&mut socket, answer).await.is_err() {
                tracing::warn!(%hostname, %peer, "enrolled agent left before receiving its credential");
            }
            close(socket, CloseReason::Shutdown, "enrolled", peer).await;
        }
        Err(RegisterError::Refused(why)) => {
            tracing::warn!(%hostname, %peer, why = %why, "enrollment refused");
            close(socket, CloseReason::Unauthorized, &why, peer).await;
        }
        Err(error) => {
            tracing::error!(%hostname, %error, "enrollment failed");
            close(
                socket,
                CloseReason::Shutdown,
                "enrollment failed; retry later",
                peer,
            )
            .await;
        }
    }
}

/// Most addresses a `Hello` may report.
const MAX_HELLO_ADDRESSES: usize = 64;
/// Most running jobs a `Hello` may list.
const MAX_HELLO_RUNNING_JOBS: usize = 10_000;
/// Most analyses a `Hello` may report, and the longest name of one.
const MAX_HELLO_ANALYSES: usize = 256;
/// Longest version string, and longest capability error message, a `Hello` may carry.
const MAX_HELLO_SHORT: usize = 128;
const MAX_HELLO_MESSAGE: usize = 1024;

/// What a `Hello` may carry: it is kept in memory for the link's life, stored, and shown by
/// `GET /clients` for every host, so a hostile agent must not make it grow without bound.
/// (Control characters in its strings are the CLI's to show harmlessly; JSON escapes them.)
fn hello_within_bounds(hello: &tracevisor_protocol::Hello) -> Result<(), String> {
    let text = |what: &str, value: &str, max: usize| {
        if value.len() > max {
            return Err(format!(
                "hello: {what} is {} bytes (at most {max})",
                value.len()
            ));
        }
        Ok(())
    };
    if hello.addresses.len() > MAX_HELLO_ADDRESSES {
        return Err(format!(
            "hello: {} addresses (at most {MAX_HELLO_ADDRESSES})",
            hello.addresses.len()
        ));
    }
    if hello.running_jobs.len() > MAX_HELLO_RUNNING_JOBS {
        return Err(format!(
            "hello: {} running jobs (at most {MAX_HELLO_RUNNING_JOBS})",
            hello.running_jobs.len()
        ));
    }
    text("agent_version", &hello.agent_version, MAX_HELLO_SHORT)?;
    let caps = &hello.capabilities;
    text(
        "lttng_version",
        caps.lttng_version.as_deref().unwrap_or_default(),
        MAX_HELLO_SHORT,
    )?;
    for (what, error) in [
        ("kernel_tracer_error", &caps.kernel_tracer_error),
        ("userspace_tracer_error", &caps.userspace_tracer_error),
        ("lttng_control", &caps.lttng_control),
    ] {
        text(
            what,
            error.as_deref().unwrap_or_default(),
            MAX_HELLO_MESSAGE,
        )?;
    }
    if caps.analyses.len() > MAX_HELLO_ANALYSES {
        return Err(format!(
            "hello: {} analyses (at most {MAX_HELLO_ANALYSES})",
            caps.analyses.len()
        ));
    }
    for analysis in &caps.analyses {
        text("an analysis name", analysis, MAX_HELLO_SHORT)?;
    }
    Ok(())
}

/// Receives the next protocol frame; `Ok(None)` when the peer closed.
async fn next_frame<S: Socket>(socket: &mut S) -> Result<Option<Message>, (CloseReason, String)> {
    loop {
        match socket.next().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err((CloseReason::ProtocolError, format!("websocket error: {e}")))
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                return match codec::decode(&bytes) {
                    Ok(frame) => Ok(Some(frame.body)),
                    Err(codec::CodecError::UnsupportedVersion { .. }) => Err((
                        CloseReason::UnsupportedVersion,
                        format!("frame version is not {PROTOCOL_VERSION}"),
                    )),
                    Err(e) => Err((CloseReason::ProtocolError, e.to_string())),
                };
            }
            Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => {
                return Err((
                    CloseReason::ProtocolError,
                    "text messages are not part of the protocol".into(),
                ))
            }
        }
    }
}

async fn send_frame<S: Socket>(socket: &mut S, message: Message) -> Result<(), ()> {
    let bytes = codec::encode(&Frame::new(message)).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a frame");
    })?;
    tokio::time::timeout(
        Duration::from_secs(10),
        socket.send(WsMessage::Binary(bytes.into())),
    )
    .await
    .map_err(|_| ())?
    .map_err(|_| ())
}

/// Sends `Close` with a reason, then closes the WebSocket.
async fn close<S: Socket>(mut socket: S, reason: CloseReason, why: &str, peer: SocketAddr) {
    if !matches!(reason, CloseReason::Shutdown | CloseReason::Replaced) {
        tracing::warn!(%peer, %reason, why, "closing agent link");
    }
    let _ = send_frame(
        &mut socket,
        Message::Close {
            reason,
            message: why.to_owned(),
        },
    )
    .await;
    let code = match reason {
        CloseReason::ProtocolError => 1002,
        CloseReason::Shutdown => 1001,
        _ => 1000,
    };
    let reason_text: String = why.chars().take(120).collect();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        socket.send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason_text.into(),
        }))),
    )
    .await;
}

/// A link over in-memory channels, driven by a test as an agent would drive its WebSocket.
#[cfg(test)]
pub(crate) mod testing {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio_util::sync::PollSender;

    use super::*;

    /// One end of a link: what the hub reads and where it writes.
    struct ChannelSocket {
        incoming: mpsc::Receiver<WsMessage>,
        outgoing: PollSender<WsMessage>,
    }

    impl Stream for ChannelSocket {
        type Item = Result<WsMessage, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<WsMessage> for ChannelSocket {
        type Error = axum::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_ready(cx)
                .map_err(axum::Error::new)
        }

        fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
            Pin::new(&mut self.outgoing)
                .start_send(item)
                .map_err(axum::Error::new)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_flush(cx)
                .map_err(axum::Error::new)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_close(cx)
                .map_err(axum::Error::new)
        }
    }

    /// A test's agent: speaks the real protocol to [`serve_link`] over channels.
    pub(crate) struct FakeAgent {
        to_hub: Option<mpsc::Sender<WsMessage>>,
        from_hub: mpsc::Receiver<WsMessage>,
        link: tokio::task::JoinHandle<()>,
    }

    impl FakeAgent {
        /// Opens a link from `peer` with `hello`; the hub's answer to it comes back: `HelloAck`
        /// (the link is up) or `Close` (refused).
        pub(crate) async fn open(
            hub: &Arc<Hub>,
            hello: tracevisor_protocol::Hello,
            peer: SocketAddr,
        ) -> (FakeAgent, Message) {
            let identity = Identity::Host {
                credential: "0000000000000000".into(),
                hostname: hello.hostname.clone(),
            };
            Self::open_as(hub, identity, Message::Hello(hello), peer).await
        }

        /// Opens a link from `peer` as `identity` and sends `first`; the hub's first answer
        /// comes back (`HelloAck`, `Enrolled` or `Close`).
        pub(crate) async fn open_as(
            hub: &Arc<Hub>,
            identity: Identity,
            first: Message,
            peer: SocketAddr,
        ) -> (FakeAgent, Message) {
            let (to_hub, incoming) = mpsc::channel(64);
            let (outgoing, from_hub) = mpsc::channel(64);
            let socket = ChannelSocket {
                incoming,
                outgoing: PollSender::new(outgoing),
            };
            let link = tokio::spawn(serve_link(hub.clone(), socket, peer, identity));
            let mut agent = FakeAgent {
                to_hub: Some(to_hub),
                from_hub,
                link,
            };
            agent.send(first).await;
            let answer = agent
                .expect("an answer", |m| {
                    matches!(
                        m,
                        Message::HelloAck { .. } | Message::Enrolled { .. } | Message::Close { .. }
                    )
                })
                .await;
            (agent, answer)
        }

        /// Opens a link for `hostname` (from loopback) and waits for `HelloAck`.
        pub(crate) async fn connect(
            hub: &Arc<Hub>,
            hostname: &str,
            running_jobs: Vec<u64>,
        ) -> FakeAgent {
            let (to_hub, incoming) = mpsc::channel(64);
            let (outgoing, from_hub) = mpsc::channel(64);
            let socket = ChannelSocket {
                incoming,
                outgoing: PollSender::new(outgoing),
            };
            let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
            let identity = Identity::Host {
                credential: "0000000000000000".into(),
                hostname: hostname.to_owned(),
            };
            let link = tokio::spawn(serve_link(hub.clone(), socket, peer, identity));
            let mut agent = FakeAgent {
                to_hub: Some(to_hub),
                from_hub,
                link,
            };
            agent
                .send(Message::Hello(tracevisor_protocol::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    hostname: hostname.to_owned(),
                    addresses: Vec::new(),
                    agent_version: "0.0.0-test".into(),
                    capabilities: Default::default(),
                    running_jobs,
                }))
                .await;
            agent
                .expect("hello-ack", |m| matches!(m, Message::HelloAck { .. }))
                .await;
            agent
        }

        pub(crate) async fn send(&self, message: Message) {
            let bytes = codec::encode(&Frame::new(message)).expect("encodable");
            if let Some(tx) = &self.to_hub {
                let _ = tx.send(WsMessage::Binary(bytes.into())).await;
            }
        }

        /// The next frame within `limit` (heartbeats answered and skipped).
        pub(crate) async fn recv(&mut self, limit: Duration) -> Option<Message> {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let ws = tokio::time::timeout_at(deadline, self.from_hub.recv())
                    .await
                    .ok()??;
                let WsMessage::Binary(bytes) = ws else {
                    continue;
                };
                match codec::decode(&bytes).expect("decodable").body {
                    Message::Heartbeat { seq } => self.send(Message::HeartbeatAck { seq }).await,
                    Message::HeartbeatAck { .. } => {}
                    other => return Some(other),
                }
            }
        }

        /// Waits (10 s at most) for a frame matching `pred`, skipping others.
        pub(crate) async fn expect(
            &mut self,
            what: &str,
            pred: impl Fn(&Message) -> bool,
        ) -> Message {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.recv(left).await {
                    Some(m) if pred(&m) => return m,
                    Some(_) => {}
                    None => panic!("no {what} within 10 s"),
                }
            }
        }

        /// Cuts the link as a dropped connection would, and waits for the hub to notice.
        pub(crate) async fn cut(mut self) {
            self.to_hub = None;
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.link).await;
        }
    }
}
