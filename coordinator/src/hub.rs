//! The agent hub: accepts agents' outbound WebSocket links, registers their hosts, keeps
//! heartbeats, and carries messages between agents and the job engine.
//!
//! Each link is one task looping over a closed set of events (a frame from the agent, a frame
//! to send, the heartbeat tick, shutdown). Live link state is kept in memory; the store holds
//! each agent's last known state (`agent` table, keyed by its client id), written when a link
//! opens and when it closes, so heartbeats never touch the database.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value as Json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{
    codec, Capabilities, CloseReason, Frame, Hello, Message, DEAD_AFTER_INTERVALS, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, PROTOCOL_VERSION_HEADER,
};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::db::{Store, StoreError};
use crate::registry::{HostRecord, Kind};
use crate::secrets::secret_eq;
use crate::validate;

/// Failed agent authentications tolerated per source address and window before answering 429.
const AUTH_FAILURES_PER_WINDOW: u32 = 20;
/// The window of [`AUTH_FAILURES_PER_WINDOW`].
const AUTH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Source addresses tracked at most by the limiter (oldest windows are dropped beyond).
const AUTH_FAILURE_TRACKED: usize = 10_000;

/// Counts failed enrollment-token checks per source address, so a peer guessing tokens is
/// slowed to a trickle without the token being compared at all.
#[derive(Default)]
struct AuthFailures {
    by_ip: Mutex<HashMap<IpAddr, (std::time::Instant, u32)>>,
}

impl AuthFailures {
    fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).is_some_and(|(since, n)| {
            since.elapsed() < AUTH_FAILURE_WINDOW && *n >= AUTH_FAILURES_PER_WINDOW
        })
    }

    fn record(&self, ip: IpAddr) {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AUTH_FAILURE_TRACKED {
            map.retain(|_, (since, _)| since.elapsed() < AUTH_FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= AUTH_FAILURE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// How long an agent has to send `Hello` after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued towards one agent before senders wait.
const OUTGOING_QUEUE: usize = 64;

/// Registrations (database writes after a hello) in progress at once; later hellos wait their
/// turn in arrival order. Unbounded, a simultaneous start of 10,000 agents ran thousands of
/// database transactions at once and the coordinator's memory peaked at 1.6 GiB (kept by the
/// allocator afterwards); see BENCHMARKS.md.
const REGISTRATION_CONCURRENCY: usize = 32;

/// Something an agent reported about a job, for the job engine.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    /// The client id of the agent's host.
    pub client_id: u64,
    /// The agent's hostname.
    pub hostname: String,
    /// The message: `JobProgress` or `JobResult` from the agent, `Hello` when a link opens,
    /// and `Close` (with why) when the host's live link ended, whoever closed it.
    pub message: Message,
}

/// What `GET /clients` shows about an agent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub connected: bool,
    pub version: String,
    /// RFC 3339.
    pub connected_since: String,
    /// RFC 3339: the last frame received from the agent.
    pub last_seen: String,
    #[schema(value_type = Object)]
    pub capabilities: Json,
}

struct LiveLink {
    link_id: u64,
    client_id: u64,
    tx: mpsc::Sender<Outgoing>,
    version: String,
    connected_since: OffsetDateTime,
    /// Unix milliseconds of the last frame received.
    last_seen: Arc<AtomicI64>,
    capabilities: Capabilities,
    addresses: Vec<IpAddr>,
}

enum Outgoing {
    Frame(Message),
    Close(CloseReason, String),
}

/// The hub: live links by hostname.
pub struct Hub {
    store: Store,
    agent_token: String,
    heartbeat: Duration,
    links: Mutex<HashMap<String, LiveLink>>,
    /// Last known state of every agent ever registered, by hostname (mirrors the `agent` table).
    known: Mutex<HashMap<String, AgentStatus>>,
    next_link: AtomicU64,
    events: mpsc::UnboundedSender<AgentEvent>,
    shutdown: CancellationToken,
    /// The registry's instance id, sent in `HelloAck`.
    instance: String,
    /// Whether a link may take over a hostname registered from elsewhere.
    takeover: TakeoverPolicy,
    /// Most agent links served at once; upgrades beyond are refused with 503.
    max_links: usize,
    /// Links upgraded and not yet closed (including those still before `Hello`).
    open_links: AtomicU64,
    auth_failures: AuthFailures,
    /// Permits for [`REGISTRATION_CONCURRENCY`] registrations at once.
    registrations: tokio::sync::Semaphore,
}

/// Why a message could not be sent to an agent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("host {0}: no agent connected")]
    NotConnected(String),
    #[error("host {0}: agent link closed while sending")]
    Closed(String),
}

impl Hub {
    /// A hub; agent events go to the returned receiver.
    pub fn new(
        store: Store,
        agent_token: String,
        heartbeat: Duration,
        shutdown: CancellationToken,
        instance: String,
        max_links: usize,
        takeover: TakeoverPolicy,
    ) -> (Arc<Hub>, mpsc::UnboundedReceiver<AgentEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            store,
            agent_token,
            heartbeat,
            links: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            events,
            shutdown,
            instance,
            max_links,
            takeover,
            open_links: AtomicU64::new(0),
            auth_failures: AuthFailures::default(),
            registrations: tokio::sync::Semaphore::new(REGISTRATION_CONCURRENCY),
        };
        (Arc::new(hub), rx)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveLink>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of connected agents.
    pub fn connected(&self) -> usize {
        self.links().len()
    }

    /// Agent links upgraded and not yet closed, including those not yet registered.
    pub fn open_links(&self) -> u64 {
        self.open_links.load(Ordering::Relaxed)
    }

    /// Whether an agent is connected for `hostname`, and its capabilities.
    pub fn capabilities(&self, hostname: &str) -> Option<Capabilities> {
        self.links().get(hostname).map(|l| l.capabilities.clone())
    }

    /// The hostname of the connected agent whose hostname or one of whose addresses is `host`.
    pub fn find(&self, host: &str) -> Option<String> {
        let links = self.links();
        if links.contains_key(host) {
            return Some(host.to_owned());
        }
        let ip = host.parse::<IpAddr>().ok()?;
        links
            .iter()
            .find(|(_, l)| l.addresses.contains(&ip))
            .map(|(name, _)| name.clone())
    }

    /// The client id of the connected agent of `hostname`.
    pub fn client_id(&self, hostname: &str) -> Option<u64> {
        self.links().get(hostname).map(|l| l.client_id)
    }

    /// Hostnames of all connected agents.
    pub fn hostnames(&self) -> Vec<String> {
        self.links().keys().cloned().collect()
    }

    /// Sends a message to the agent of `hostname`.
    pub async fn send(&self, hostname: &str, message: Message) -> Result<(), SendError> {
        let tx = self
            .links()
            .get(hostname)
            .map(|l| l.tx.clone())
            .ok_or_else(|| SendError::NotConnected(hostname.to_owned()))?;
        tx.send(Outgoing::Frame(message))
            .await
            .map_err(|_| SendError::Closed(hostname.to_owned()))
    }

    /// The agent status of every host that ever had an agent, by hostname.
    pub fn statuses(&self) -> HashMap<String, AgentStatus> {
        let mut map = self.known().clone();
        for (hostname, link) in self.links().iter() {
            map.insert(
                hostname.clone(),
                AgentStatus {
                    connected: true,
                    version: link.version.clone(),
                    connected_since: rfc3339(link.connected_since),
                    last_seen: rfc3339_ms(link.last_seen.load(Ordering::Relaxed)),
                    capabilities: capabilities_json(&link.capabilities),
                },
            );
        }
        map
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentStatus>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the last known state of every agent from the store (once, at start-up); from then
    /// on it is kept in memory and written through.
    pub async fn load(&self) -> Result<(), StoreError> {
        let rows = self.store.query("SELECT * FROM agent", json!({})).await?;
        let mut known = self.known();
        for row in rows {
            let Some(hostname) = row.get("hostname").and_then(Json::as_str) else {
                continue;
            };
            let text = |k: &str| {
                row.get(k)
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            known.insert(
                hostname.to_owned(),
                AgentStatus {
                    connected: false,
                    version: text("version"),
                    connected_since: text("connected_since"),
                    last_seen: text("last_seen"),
                    capabilities: row.get("capabilities").cloned().unwrap_or(Json::Null),
                },
            );
        }
        Ok(())
    }

    /// Finds or creates the client record of an agent's host, and records the agent.
    async fn register(
        &self,
        hello: &Hello,
        peer: SocketAddr,
        now: OffsetDateTime,
    ) -> Result<u64, RegisterError> {
        let peer_ip = canonical(peer.ip());
        let (client, pinned) = match self
            .store
            .find_by_hostname(Kind::Clients, &hello.hostname)
            .await?
        {
            Some(existing) => {
                let pinned: Vec<String> = self
                    .store
                    .query(
                        "SELECT VALUE peers FROM type::record('agent', $id)",
                        json!({ "id": existing.id }),
                    )
                    .await?
                    .first()
                    .and_then(Json::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if self.takeover == TakeoverPolicy::PinAddress
                    && !peer_allowed(&existing, &pinned, peer_ip)
                {
                    return Err(RegisterError::Refused(format!(
                        "hostname {} is registered for {}; this link comes from {peer_ip} (agent_takeover = \"pin-address\"): update the client's address to move it",
                        hello.hostname,
                        [existing.ipv4.clone(), existing.ipv6.clone()].into_iter().flatten().chain(pinned.iter().cloned()).collect::<Vec<_>>().join(", ")
                    )));
                }
                (existing, pinned)
            }
            None => {
                let (ipv4, ipv6) = addresses(&hello.addresses, peer_ip);
                let record = HostRecord::new(Kind::Clients, hello.hostname.clone(), ipv4, ipv6);
                match self.store.create(Kind::Clients, &record).await {
                    Ok(created) => {
                        tracing::info!(hostname = %hello.hostname, id = created.id, "agent host registered");
                        (created, vec![peer_ip.to_string()])
                    }
                    // Another link for the same hostname registered it first: try again.
                    Err(StoreError::Duplicate { .. }) => {
                        return Err(RegisterError::Store(StoreError::Db(
                            "concurrent registration of the same hostname; retry".into(),
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.store
            .query(
                // A row left by a deleted or renamed client of the same hostname goes first
                // (the hostname index is unique), in the same transaction.
                "BEGIN TRANSACTION; \
                 DELETE agent WHERE hostname = $data.hostname AND id != type::record('agent', $id); \
                 UPSERT type::record('agent', $id) CONTENT $data; \
                 COMMIT TRANSACTION;",
                json!({
                    "id": client.id,
                    "data": {
                        "hostname": hello.hostname,
                        "version": hello.agent_version,
                        "connected_since": rfc3339(now),
                        "last_seen": rfc3339(now),
                        "addresses": hello.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "peer": peer_ip.to_string(),
                        "peers": pinned,
                        "capabilities": capabilities_json(&hello.capabilities),
                    }
                }),
            )
            .await?;
        self.known().insert(
            hello.hostname.clone(),
            AgentStatus {
                connected: false,
                version: hello.agent_version.clone(),
                connected_since: rfc3339(now),
                last_seen: rfc3339(now),
                capabilities: capabilities_json(&hello.capabilities),
            },
        );
        Ok(client.id)
    }

    async fn record_disconnect(&self, client_id: u64, hostname: &str, last_seen_ms: i64) {
        if let Some(status) = self.known().get_mut(hostname) {
            status.last_seen = rfc3339_ms(last_seen_ms);
        }
        let result = self
            .store
            .query(
                "UPDATE type::record('agent', $id) SET last_seen = $last_seen",
                json!({ "id": client_id, "last_seen": rfc3339_ms(last_seen_ms) }),
            )
            .await;
        if let Err(error) = result {
            tracing::warn!(client_id, %error, "could not record the agent's last contact");
        }
    }
}

/// Whether a link for an existing hostname may take it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TakeoverPolicy {
    /// Only from the client record's addresses, the address its agent first registered from,
    /// or loopback (default).
    PinAddress,
    /// Any agent holding the enrollment token may take over any hostname.
    Allow,
}

/// Why a link was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn peer_allowed(record: &HostRecord, pinned: &[String], peer: IpAddr) -> bool {
    let peer_text = peer.to_string();
    peer.is_loopback()
        || record.ipv4.as_deref() == Some(peer_text.as_str())
        || record.ipv6.as_deref() == Some(peer_text.as_str())
        || pinned.contains(&peer_text)
}

/// `GET /trace/api/v1.0/agents`: the WebSocket endpoint agents dial. The enrollment token and
/// the protocol version are checked before the upgrade.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let hub = state.hub.clone();
    if hub.auth_failures.blocked(peer.ip()) {
        return ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many failed agent authentications from this address; retry later",
        )
        .into_response();
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if secret_eq(t.trim(), &hub.agent_token) => {}
        Some(_) => {
            hub.auth_failures.record(peer.ip());
            tracing::warn!(%peer, "agent rejected: wrong enrollment token");
            return ApiError::unauthorized("invalid agent enrollment token").into_response();
        }
        None => {
            hub.auth_failures.record(peer.ip());
            tracing::warn!(%peer, "agent rejected: no enrollment token");
            return ApiError::unauthorized("missing Authorization: Bearer AGENT_TOKEN header")
                .into_response();
        }
    }
    if let Some(version) = headers.get(PROTOCOL_VERSION_HEADER) {
        let speaks = version
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u16>().ok());
        if speaks != Some(PROTOCOL_VERSION) {
            let shown = String::from_utf8_lossy(version.as_bytes()).into_owned();
            tracing::warn!(%peer, version = %shown, "agent rejected: unsupported protocol version");
            return ApiError::bad_request(format!(
                "agent protocol version {shown:?} is not supported; this coordinator speaks version {PROTOCOL_VERSION}"
            ))
            .with(json!({ "supported": [PROTOCOL_VERSION] }))
            .into_response();
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                format!("not a WebSocket upgrade: {}", rejection.body_text()),
            )
            .into_response()
        }
    };
    if hub.open_links.load(Ordering::Relaxed) >= hub.max_links as u64 {
        tracing::warn!(%peer, max = hub.max_links, "agent refused: link limit reached");
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this coordinator serves at most {} agent links (max_agent_links)",
                hub.max_links
            ),
        )
        .into_response();
    }
    hub.open_links.fetch_add(1, Ordering::Relaxed);
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // tungstenite's default 128 KiB read buffer is zero-filled, so resident for every link:
        // 4 KiB (it grows for larger frames) keeps an idle link at about 33 KiB.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_failed_upgrade({
            let hub = hub.clone();
            move |_| {
                hub.open_links.fetch_sub(1, Ordering::Relaxed);
            }
        })
        .on_upgrade(move |socket| async move {
            serve_link(hub.clone(), socket, peer).await;
            hub.open_links.fetch_sub(1, Ordering::Relaxed);
        })
}

/// One agent link, from hello to close.
async fn serve_link(hub: Arc<Hub>, mut socket: WebSocket, peer: SocketAddr) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut socket)).await {
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
    if let Err(e) = validate::dns_name(&hello.hostname) {
        let why = format!("hostname {:?} {e}", hello.hostname);
        return close(socket, CloseReason::ProtocolError, &why, peer).await;
    }
    let registered = async {
        // The semaphore is never closed, so acquiring only waits.
        let _turn = hub.registrations.acquire().await.ok();
        let now = OffsetDateTime::now_utc();
        hub.register(&hello, peer, now).await.map(|id| (id, now))
    };
    let (client_id, now) = match registered.await {
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
    let link_id = hub.next_link.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(OUTGOING_QUEUE);
    // The silence clock starts once the link is registered: registration may have queued
    // behind many others, and the agent owes nothing before HelloAck.
    let last_seen = Arc::new(AtomicI64::new(unix_ms(OffsetDateTime::now_utc())));
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
            addresses: hello.addresses.clone(),
        },
    );
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
    let _ = hub.events.send(AgentEvent {
        client_id,
        hostname: hello.hostname.clone(),
        message: Message::Hello(hello.clone()),
    });

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
                        m @ (Message::JobProgress { .. } | Message::JobResult { .. }) => {
                            let _ = hub.events.send(AgentEvent { client_id, hostname: hello.hostname.clone(), message: m });
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
        hub.record_disconnect(
            client_id,
            &hello.hostname,
            last_seen.load(Ordering::Relaxed),
        )
        .await;
        let (reason, why) = end
            .clone()
            .unwrap_or((CloseReason::Shutdown, "closed by the agent".into()));
        let _ = hub.events.send(AgentEvent {
            client_id,
            hostname: hello.hostname.clone(),
            message: Message::Close {
                reason,
                message: why,
            },
        });
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

/// Receives the next protocol frame; `Ok(None)` when the peer closed.
async fn next_frame(socket: &mut WebSocket) -> Result<Option<Message>, (CloseReason, String)> {
    loop {
        match socket.recv().await {
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

async fn send_frame(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
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
async fn close(mut socket: WebSocket, reason: CloseReason, why: &str, peer: SocketAddr) {
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

/// Picks the record's addresses: the agent's own first, else the address it connected from.
fn addresses(reported: &[IpAddr], peer: IpAddr) -> (Option<String>, Option<String>) {
    // A link from another address than the ones the agent reports (NAT) is pinned by its peer
    // address in the agent record; the client record keeps what the host says about itself.
    let v4 = reported.iter().find(|a| a.is_ipv4()).copied();
    let v6 = reported.iter().find(|a| a.is_ipv6()).copied();
    match (v4, v6) {
        (None, None) => match peer {
            IpAddr::V4(a) => (Some(a.to_string()), None),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => (Some(v4.to_string()), None),
                None => (None, Some(a.to_string())),
            },
        },
        (v4, v6) => (v4.map(|a| a.to_string()), v6.map(|a| a.to_string())),
    }
}

pub fn capabilities_json(c: &Capabilities) -> Json {
    json!({
        "lttng_version": c.lttng_version,
        "sessiond_running": c.sessiond_running,
        "kernel_tracer": c.kernel_tracer,
        "kernel_tracer_error": c.kernel_tracer_error,
        "userspace_tracer": c.userspace_tracer,
        "userspace_tracer_error": c.userspace_tracer_error,
        "babeltrace2": c.babeltrace2,
        "analyses": c.analyses,
    })
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}
