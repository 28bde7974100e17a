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

mod auth;
mod credentials;
mod fetch;
mod link;

use axum::extract::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value as Json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{
    Capabilities, CloseReason, Hello, Message, MAX_FRAME_BYTES, PROTOCOL_VERSION,
    PROTOCOL_VERSION_HEADER,
};

use crate::registry::{HostRecord, Kind};
use crate::secrets::secret_eq;
use crate::store::{AgentRow, Store, StoreError};
use auth::AuthFailures;
pub use credentials::Identity;
use credentials::{CheckError, Credentials};
pub use fetch::{FetchFailure, TraceFetch, FETCH_WINDOW};
pub use link::serve_link;
#[cfg(test)]
pub(crate) use link::testing;

/// How long an agent has to send `Hello` after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Agent events queued towards the job engine before links wait.
const EVENT_QUEUE: usize = 1024;
/// Frames queued towards one agent before senders wait.
const OUTGOING_QUEUE: usize = 64;

/// Registrations (database writes after a hello) in progress at once; later hellos wait their
/// turn in arrival order. Unbounded, a simultaneous start of 10,000 agents ran thousands of
/// database transactions at once and the coordinator's memory peaked at 1.6 GiB (kept by the
/// allocator afterwards); see BENCHMARKS.md.
const REGISTRATION_CONCURRENCY: usize = 32;

/// Links that may wait for their turn to register; upgrades beyond are refused (503) and the
/// agents retry after their backoff. Unbounded, a fleet arriving faster than registrations
/// complete (a cluster's shared database answers in milliseconds, not microseconds) queued
/// longer than the agents' 10 s hello timeout: every registration then completed for an
/// agent that had given up, and none stuck (BENCHMARKS.md, "Several coordinators").
const REGISTRATION_BACKLOG: u64 = 1000;

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
    /// In a cluster: the coordinator (member id) holding its link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
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
    /// The address the link comes from.
    peer: IpAddr,
    /// The id of the credential the link authenticated with.
    credential: String,
    /// The registration's epoch in the agent's row (in a cluster): a newer link elsewhere has
    /// a higher one.
    epoch: u64,
    /// Cancelled when that credential is revoked; the link then closes, giving
    /// `revoked_why`.
    revoked: CancellationToken,
    revoked_why: Arc<Mutex<String>>,
}

// A frame is as large as a `StartJob` (its spec inline); queues towards an agent are bounded
// (64), so boxing every frame would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Frame(Message),
    Close(CloseReason, String),
}

impl LiveLink {
    /// What `GET /clients` shows of a connected agent.
    fn status(&self) -> AgentStatus {
        AgentStatus {
            connected: true,
            version: self.version.clone(),
            connected_since: rfc3339(self.connected_since),
            last_seen: rfc3339_ms(self.last_seen.load(Ordering::Relaxed)),
            capabilities: capabilities_json(&self.capabilities),
            coordinator: None,
        }
    }
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
    /// Towards the job engine; bounded, so a slow engine slows the links that report, not
    /// the coordinator's memory.
    events: mpsc::Sender<AgentEvent>,
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
    /// Links upgraded whose hello is not yet registered ([`REGISTRATION_BACKLOG`]).
    registering: AtomicU64,
    /// Every agent credential, by id (mirrors the `agent_credential` table).
    credentials: Mutex<Credentials>,
    /// Held by an enrollment or a revocation, from its store write to its map update.
    credential_writes: tokio::sync::Mutex<()>,
    /// Last contact of the links closed by shutdown, written together by
    /// [`Hub::flush_last_seen`].
    last_seen_at_exit: Mutex<Vec<(u64, String)>>,
    /// Trace fetches under way, by fetch id ([`fetch`]).
    fetches: Mutex<HashMap<u64, fetch::Sink>>,
    next_fetch: AtomicU64,
    /// Hostnames whose agent connected or disconnected, for live views ([`Hub::changes`]).
    /// Bounded: a subscriber that falls behind is told it lagged and reads the whole state.
    changes: tokio::sync::broadcast::Sender<String>,
    /// In a cluster: this member's id (written as the owner of the links it holds) and where
    /// to say that a registration took a link from another member.
    member: std::sync::OnceLock<(String, mpsc::Sender<Eviction>)>,
    /// Links closed by shutdown in a cluster: client id, epoch, last contact.
    released_at_exit: Mutex<Vec<(u64, u64, String)>>,
}

/// A registration took a host's link from another member of the cluster, which must close
/// its older link (`POST /internal/v1/agents/evict`).
#[derive(Debug, Clone)]
pub struct Eviction {
    pub member: String,
    pub hostname: String,
    pub epoch: u64,
}

/// Evictions queued towards the other members before new ones are dropped (a link left
/// behind then ends with its heartbeats; routing already follows the newer one).
pub const EVICTION_QUEUE: usize = 1024;

/// How many agent changes a live view may fall behind before it must read the whole fleet.
const CHANGES_QUEUE: usize = 4096;

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
    ) -> (Arc<Hub>, mpsc::Receiver<AgentEvent>) {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
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
            registering: AtomicU64::new(0),
            credentials: Mutex::new(Credentials::default()),
            credential_writes: tokio::sync::Mutex::new(()),
            last_seen_at_exit: Mutex::new(Vec::new()),
            fetches: Mutex::new(HashMap::new()),
            next_fetch: AtomicU64::new(1),
            changes: tokio::sync::broadcast::channel(CHANGES_QUEUE).0,
            member: std::sync::OnceLock::new(),
            released_at_exit: Mutex::new(Vec::new()),
        };
        (Arc::new(hub), rx)
    }

    /// Makes this hub a member of a cluster: registrations record `member` as the owner of
    /// each link (with an epoch), and closes clear it; evictions of other members' older
    /// links are returned to be sent.
    pub fn join_cluster(&self, member: String) -> mpsc::Receiver<Eviction> {
        let (tx, rx) = mpsc::channel(EVICTION_QUEUE);
        let _ = self.member.set((member, tx));
        rx
    }

    /// This member's id in a cluster.
    pub fn member(&self) -> Option<&str> {
        self.member.get().map(|(id, _)| id.as_str())
    }

    /// Closes the local link of `hostname` if its epoch is older than `epoch` (a newer link
    /// registered on another member); whether one was closed.
    pub fn evict(&self, hostname: &str, epoch: u64) -> bool {
        let links = self.links();
        match links.get(hostname) {
            Some(link) if link.epoch < epoch => {
                tracing::warn!(%hostname, old = link.epoch, new = epoch, "agent link replaced by a newer one on another coordinator of the cluster");
                let _ = link.tx.try_send(Outgoing::Close(
                    CloseReason::Replaced,
                    "a newer link for this hostname on another coordinator replaced this one"
                        .into(),
                ));
                true
            }
            _ => false,
        }
    }

    /// The epoch of the local link of `hostname`.
    pub fn epoch(&self, hostname: &str) -> Option<u64> {
        self.links().get(hostname).map(|l| l.epoch)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveLink>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an agent's event to the job engine, waiting for room (not past shutdown).
    async fn emit(&self, event: AgentEvent) {
        tokio::select! {
            _ = self.events.send(event) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Waits (at most `limit`) until every agent link has closed after shutdown; returns how
    /// many were still open.
    pub async fn closed(&self, limit: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        while self.open_links() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_links()
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

    /// The hostname of the connected agent for `host`: its hostname, or an address its link
    /// comes from (not loopback: every agent on the coordinator's host shares it). What an
    /// agent says about its own addresses is never used to route: addresses in the registry
    /// are resolved by the caller, through the client record.
    pub fn find(&self, host: &str) -> Option<String> {
        let links = self.links();
        if links.contains_key(host) {
            return Some(host.to_owned());
        }
        let ip = canonical(host.parse::<IpAddr>().ok()?);
        if ip.is_loopback() {
            return None;
        }
        let mut from_ip = links.iter().filter(|(_, l)| l.peer == ip);
        match (from_ip.next(), from_ip.next()) {
            // Several agents behind one address (NAT): which one is meant is not known.
            (Some((name, _)), None) => Some(name.clone()),
            _ => None,
        }
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
        let member = self.member().map(str::to_owned);
        for (hostname, link) in self.links().iter() {
            let mut status = link.status();
            status.coordinator = member.clone();
            map.insert(hostname.clone(), status);
        }
        map
    }

    /// The agent status of one host, as in [`Hub::statuses`].
    pub fn status_of(&self, hostname: &str) -> Option<AgentStatus> {
        if let Some(link) = self.links().get(hostname) {
            let mut status = link.status();
            status.coordinator = self.member().map(str::to_owned);
            return Some(status);
        }
        self.known().get(hostname).cloned()
    }

    /// Cancelled when the coordinator shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Hostnames whose agent connects or disconnects from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Tells live views that `hostname`'s agent connected or disconnected.
    fn changed(&self, hostname: &str) {
        // No subscriber is not an error.
        let _ = self.changes.send(hostname.to_owned());
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentStatus>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the last known state of every agent and every credential from the store (once,
    /// at start-up); from then on they are kept in memory and written through.
    pub async fn load(&self) -> Result<(), StoreError> {
        self.load_credentials().await?;
        let rows = self.store.agents().await?;
        let mut known = self.known();
        for row in rows {
            known.insert(
                row.hostname.clone(),
                AgentStatus {
                    connected: false,
                    version: row.version,
                    connected_since: row.connected_since,
                    last_seen: row.last_seen,
                    capabilities: row.capabilities,
                    coordinator: None,
                },
            );
        }
        Ok(())
    }

    /// Finds or creates the client record of an agent's host, and records the agent; its
    /// client id and (in a cluster) the epoch of this link.
    async fn register(
        &self,
        hello: &Hello,
        peer: SocketAddr,
        now: OffsetDateTime,
    ) -> Result<(u64, u64), RegisterError> {
        let peer_ip = canonical(peer.ip());
        // Twice at most: a link for the same hostname (here, or on another coordinator of a
        // cluster) may create the client record between the lookup and the create.
        let mut attempts = 0;
        let (client, pinned) = loop {
            attempts += 1;
            match self
                .store
                .find_by_hostname(Kind::Clients, &hello.hostname)
                .await?
            {
                Some(existing) => {
                    let pinned = self.store.agent_pinned_peers(existing.id).await?;
                    self.check_takeover(&existing, &pinned, &hello.hostname, peer_ip)?;
                    break (existing, pinned);
                }
                None => {
                    self.may_claim(&hello.hostname, peer_ip).await?;
                    let (ipv4, ipv6) = addresses(&hello.addresses, peer_ip);
                    let record = HostRecord::new(Kind::Clients, hello.hostname.clone(), ipv4, ipv6);
                    match self.store.create(Kind::Clients, &record).await {
                        Ok(created) => {
                            tracing::info!(hostname = %hello.hostname, id = created.id, "agent host registered");
                            break (created, vec![peer_ip.to_string()]);
                        }
                        // Another link for the same hostname registered it first: read it.
                        Err(StoreError::Duplicate { .. }) if attempts < 2 => continue,
                        Err(StoreError::Duplicate { .. }) => {
                            return Err(RegisterError::Store(StoreError::Db(
                                "concurrent registration of the same hostname; retry".into(),
                            )))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        let row = AgentRow {
            hostname: hello.hostname.clone(),
            version: hello.agent_version.clone(),
            connected_since: rfc3339(now),
            last_seen: rfc3339(now),
            addresses: hello.addresses.iter().map(ToString::to_string).collect(),
            peer: peer_ip.to_string(),
            peers: pinned,
            capabilities: capabilities_json(&hello.capabilities),
        };
        let mut epoch = 0;
        match self.member.get() {
            None => self.store.upsert_agent(client.id, &row).await?,
            Some((member, evictions)) => {
                // Ownership is written in the registration's own transaction.
                let owned = self.store.claim_agent(client.id, &row, member).await?;
                epoch = owned.epoch;
                if let Some(previous) = owned.previous.filter(|p| p != member) {
                    let _ = evictions.try_send(Eviction {
                        member: previous,
                        hostname: hello.hostname.clone(),
                        epoch,
                    });
                }
            }
        }
        self.known().insert(
            hello.hostname.clone(),
            AgentStatus {
                connected: false,
                version: hello.agent_version.clone(),
                connected_since: rfc3339(now),
                last_seen: rfc3339(now),
                capabilities: capabilities_json(&hello.capabilities),
                coordinator: None,
            },
        );
        Ok((client.id, epoch))
    }

    /// Whether a link from `peer` may speak for `hostname`, already a client: under
    /// `agent_takeover = "pin-address"` only from the client's addresses, those its agent
    /// registered from, or this coordinator's host.
    fn check_takeover(
        &self,
        existing: &HostRecord,
        pinned: &[String],
        hostname: &str,
        peer: IpAddr,
    ) -> Result<(), RegisterError> {
        if self.takeover == TakeoverPolicy::PinAddress && !peer_allowed(existing, pinned, peer) {
            return Err(RegisterError::Refused(format!(
                "hostname {hostname} is registered for {}; this link comes from {peer} (agent_takeover = \"pin-address\"): update the client's address to move it",
                [existing.ipv4.clone(), existing.ipv6.clone()]
                    .into_iter()
                    .flatten()
                    .chain(pinned.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// Whether a new agent may register `hostname`, which no client has yet: not a name the
    /// registry already gives a relay or an analyses server (jobs address those by name), and
    /// not a loopback name (`localhost`, the built-in agent's) from another host.
    async fn may_claim(&self, hostname: &str, peer: IpAddr) -> Result<(), RegisterError> {
        for kind in [Kind::Relays, Kind::AnalysesServers] {
            // Records made over REST may spell the name otherwise (`Relay-A`, `relay-a.`).
            let same = |r: &HostRecord| {
                r.hostname
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(hostname)
            };
            if self.store.list(kind).await?.iter().any(same) {
                return Err(RegisterError::Refused(format!(
                    "hostname {hostname} is registered as {} {hostname}; an agent cannot claim it (register a client of that name first to let its agent in)",
                    if kind == Kind::Relays { "the relay" } else { "the analyses server" }
                )));
            }
        }
        if tracevisor_protocol::is_loopback_host(hostname) && !peer.is_loopback() {
            return Err(RegisterError::Refused(format!(
                "hostname {hostname} names this coordinator's own host; an agent from {peer} cannot claim it"
            )));
        }
        Ok(())
    }

    async fn record_disconnect(
        &self,
        client_id: u64,
        epoch: u64,
        hostname: &str,
        last_seen_ms: i64,
    ) {
        if let Some(status) = self.known().get_mut(hostname) {
            status.last_seen = rfc3339_ms(last_seen_ms);
        }
        self.changed(hostname);
        if let Some(member) = self.member() {
            if self.shutdown.is_cancelled() {
                self.released_at_exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((client_id, epoch, rfc3339_ms(last_seen_ms)));
                return;
            }
            // Only this link's hold ends: a newer link's (a higher epoch) stays.
            let released = self
                .store
                .release_agent(client_id, member, epoch, &rfc3339_ms(last_seen_ms))
                .await;
            if let Err(error) = released {
                tracing::warn!(client_id, %error, "could not record the agent's disconnection");
            }
            return;
        }
        if self.shutdown.is_cancelled() {
            // Every link closes at once at shutdown: one write for all of them
            // ([`Hub::flush_last_seen`]) instead of one each, which kept a 10,000-agent
            // coordinator stopping for 2 s while its agents' retries failed.
            self.last_seen_at_exit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((client_id, rfc3339_ms(last_seen_ms)));
            return;
        }
        let result = self
            .store
            .set_agent_last_seen(client_id, &rfc3339_ms(last_seen_ms))
            .await;
        if let Err(error) = result {
            tracing::warn!(client_id, %error, "could not record the agent's last contact");
        }
    }

    /// Writes the last contact of the links closed by shutdown, in one transaction per 5,000.
    pub async fn flush_last_seen(&self) {
        if let Some(member) = self.member() {
            let rows = std::mem::take(
                &mut *self
                    .released_at_exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for chunk in rows.chunks(5_000) {
                if let Err(error) = self.store.release_agents(member, chunk).await {
                    tracing::warn!(agents = chunk.len(), %error, "could not release the agents' links");
                }
            }
        }
        let rows = std::mem::take(
            &mut *self
                .last_seen_at_exit
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for chunk in rows.chunks(5_000) {
            if let Err(error) = self.store.set_agents_last_seen(chunk).await {
                tracing::warn!(agents = chunk.len(), %error, "could not record the agents' last contact");
            }
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

/// Why an agent's upgrade request is refused, before any WebSocket exists.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("too many failed agent authentications from this address; retry later")]
    Throttled,
    #[error("missing Authorization: Bearer CREDENTIAL header (the agent's own credential, or the enrollment token to enroll)")]
    NoToken,
    #[error("invalid agent enrollment token")]
    WrongToken,
    #[error("unknown agent credential {0}: enroll the host again with `tracesd enroll`")]
    UnknownCredential(String),
    #[error("agent credential {id} of {hostname} was revoked at {when} ({why}): enroll the host again with `tracesd enroll`")]
    Revoked {
        id: String,
        hostname: String,
        when: String,
        why: String,
    },
    #[error("agent protocol version {0:?} is not supported; this coordinator speaks version {PROTOCOL_VERSION}")]
    Version(String),
    #[error("this coordinator serves at most {0} agent links (max_agent_links)")]
    Full(usize),
    #[error("{0} agents are waiting to register here; retry later")]
    Backlog(u64),
}

impl Hub {
    /// Checks an upgrade request before the upgrade: not throttled, who it is (a host's
    /// credential, or the enrollment token), the protocol version. Failed checks count
    /// towards the source address's throttle.
    /// In a cluster, a credential this hub does not know may have been issued by another
    /// member since start-up: it is looked up in the store once before being refused.
    pub async fn admit(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<Identity, Refusal> {
        if self.auth_failures.blocked(peer.ip()) {
            return Err(Refusal::Throttled);
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let identity = match token.map(|t| (t, tracevisor_protocol::split_credential(t))) {
            Some((_, Some((id, secret)))) => {
                let mut checked = self.check_credential(id, secret);
                if checked == Err(CheckError::Unknown)
                    && self.member().is_some()
                    && !self.credentials().by_id.contains_key(id)
                {
                    match self.fetch_credential(id).await {
                        Ok(true) => checked = self.check_credential(id, secret),
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(%peer, credential = %id, %error, "cannot look the agent's credential up in the cluster's store");
                        }
                    }
                }
                match checked {
                    Ok(hostname) => Identity::Host {
                        credential: id.to_owned(),
                        hostname,
                    },
                    Err(CheckError::Unknown) => {
                        self.auth_failures.record(peer.ip());
                        tracing::warn!(%peer, credential = %id, "agent rejected: unknown credential");
                        return Err(Refusal::UnknownCredential(id.to_owned()));
                    }
                    Err(CheckError::Revoked {
                        hostname,
                        when,
                        why,
                    }) => {
                        // Not counted towards the throttle: revoked agents keep retrying, and
                        // several behind one address must not lock out the others there.
                        tracing::warn!(%peer, credential = %id, %hostname, "agent rejected: revoked credential");
                        return Err(Refusal::Revoked {
                            id: id.to_owned(),
                            hostname,
                            when,
                            why,
                        });
                    }
                }
            }
            Some((t, None)) if secret_eq(t, &self.agent_token) => Identity::Enrollment,
            Some(_) => {
                self.auth_failures.record(peer.ip());
                tracing::warn!(%peer, "agent rejected: wrong enrollment token");
                return Err(Refusal::WrongToken);
            }
            None => {
                self.auth_failures.record(peer.ip());
                tracing::warn!(%peer, "agent rejected: no enrollment token");
                return Err(Refusal::NoToken);
            }
        };
        if let Some(version) = headers.get(PROTOCOL_VERSION_HEADER) {
            let speaks = version
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u16>().ok());
            if speaks != Some(PROTOCOL_VERSION) {
                let shown = String::from_utf8_lossy(version.as_bytes()).into_owned();
                tracing::warn!(%peer, version = %shown, "agent rejected: unsupported protocol version");
                return Err(Refusal::Version(shown));
            }
        }
        Ok(identity)
    }

    /// Accepts an admitted upgrade within the link limit and serves the link.
    pub fn accept(
        self: &Arc<Self>,
        ws: WebSocketUpgrade,
        peer: SocketAddr,
        identity: Identity,
    ) -> Result<Response, Refusal> {
        if self.open_links.load(Ordering::Relaxed) >= self.max_links as u64 {
            tracing::warn!(%peer, max = self.max_links, "agent refused: link limit reached");
            return Err(Refusal::Full(self.max_links));
        }
        let waiting = self.registering.load(Ordering::Relaxed);
        if waiting >= REGISTRATION_BACKLOG {
            tracing::debug!(%peer, waiting, "agent refused: registration backlog full");
            return Err(Refusal::Backlog(waiting));
        }
        self.open_links.fetch_add(1, Ordering::Relaxed);
        let hub = self.clone();
        Ok(ws
            .max_message_size(MAX_FRAME_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            // tungstenite's default 128 KiB read buffer is zero-filled, so resident for every
            // link: 4 KiB (it grows for larger frames) keeps an idle link at about 33 KiB.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .on_failed_upgrade({
                let hub = hub.clone();
                move |_| {
                    hub.open_links.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .on_upgrade(move |socket| async move {
                serve_link(hub.clone(), socket, peer, identity).await;
                hub.open_links.fetch_sub(1, Ordering::Relaxed);
            }))
    }
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
    peer.is_loopback() || record.has_address(&peer_text) || pinned.contains(&peer_text)
}

/// Picks a new client record's addresses: the address the link comes from. Only an agent on
/// the coordinator's own host (a loopback peer, which says nothing about which host it is)
/// has its record take the addresses it reports: what a remote agent says about itself must
/// not make jobs for another host's address reach it.
fn addresses(reported: &[IpAddr], peer: IpAddr) -> (Option<String>, Option<String>) {
    let (v4, v6) = if peer.is_loopback() {
        (
            reported.iter().find(|a| a.is_ipv4()).copied(),
            reported.iter().find(|a| a.is_ipv6()).copied(),
        )
    } else {
        (None, None)
    };
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
        "lttng_control": c.lttng_control,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracevisor_protocol::{CloseReason, Hello, Message, PROTOCOL_VERSION};

    use super::testing::FakeAgent;
    use super::*;
    use crate::store::StorageLimits;

    async fn hub() -> (Arc<Hub>, Store, mpsc::Receiver<AgentEvent>) {
        let store = Store::open("mem://", StorageLimits::default())
            .await
            .unwrap();
        let (hub, events) = hub_on(&store, 100);
        (hub, store, events)
    }

    /// A hub on `store` serving at most `max_links` links.
    fn hub_on(store: &Store, max_links: usize) -> (Arc<Hub>, mpsc::Receiver<AgentEvent>) {
        Hub::new(
            store.clone(),
            "agent-token".into(),
            Duration::from_secs(5),
            CancellationToken::new(),
            "0test000".into(),
            max_links,
            TakeoverPolicy::PinAddress,
        )
    }

    fn hello(hostname: &str) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            hostname: hostname.into(),
            addresses: Vec::new(),
            agent_version: "0.0.0-test".into(),
            capabilities: Capabilities::default(),
            running_jobs: Vec::new(),
        }
    }

    fn refused(answer: &Message) -> (CloseReason, String) {
        match answer {
            Message::Close { reason, message } => (*reason, message.clone()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 40000);
    const REMOTE: ([u8; 4], u16) = ([10, 0, 0, 7], 40000);

    #[tokio::test]
    async fn a_hello_that_would_grow_without_bound_is_refused() {
        let (hub, _store, _events) = hub().await;
        let mut big = hello("web-1");
        big.addresses = (0..65u8).map(|i| IpAddr::from([10, 0, 1, i])).collect();
        let (_, answer) = FakeAgent::open(&hub, big, LOOPBACK.into()).await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::ProtocolError);
        assert!(why.contains("65 addresses"), "{why}");
        let mut long = hello("web-1");
        long.capabilities.kernel_tracer_error = Some("x".repeat(4096));
        let (_, answer) = FakeAgent::open(&hub, long, LOOPBACK.into()).await;
        assert!(refused(&answer).1.contains("kernel_tracer_error"));
        let mut many = hello("web-1");
        many.capabilities.analyses = (0..300).map(|i| format!("lttng-{i}-mi")).collect();
        let (_, answer) = FakeAgent::open(&hub, many, LOOPBACK.into()).await;
        assert!(refused(&answer).1.contains("300 analyses"));
        assert_eq!(hub.connected(), 0);
        // Within bounds, the same host registers.
        let (_, answer) = FakeAgent::open(&hub, hello("web-1"), LOOPBACK.into()).await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
    }

    #[tokio::test]
    async fn an_agent_cannot_claim_a_relay_an_analyses_server_or_localhost() {
        let (hub, store, _events) = hub().await;
        for (kind, name) in [(Kind::Relays, "relay-a"), (Kind::AnalysesServers, "lami-1")] {
            let mut record = HostRecord::new(kind, name.into(), Some("10.0.0.9".into()), None);
            if kind == Kind::Relays {
                record.ctrlport = Some(crate::registry::DEFAULT_CTRLPORT);
                record.dataport = Some(crate::registry::DEFAULT_DATAPORT);
            } else {
                record.sshport = Some(22);
                record.sshuser = Some("root".into());
            }
            store.create(kind, &record).await.unwrap();
            let (_, answer) = FakeAgent::open(&hub, hello(name), REMOTE.into()).await;
            let (reason, why) = refused(&answer);
            assert_eq!(reason, CloseReason::Unauthorized);
            assert!(why.contains(name), "{why}");
        }
        let (_, answer) = FakeAgent::open(&hub, hello("localhost"), REMOTE.into()).await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::Unauthorized);
        assert!(why.contains("own host"), "{why}");
        assert!(
            store.list(Kind::Clients).await.unwrap().is_empty(),
            "nothing registered"
        );
        // The coordinator's own host may still register its local agent.
        let (_, answer) = FakeAgent::open(&hub, hello("localhost"), LOOPBACK.into()).await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
    }

    fn enroll(hostname: &str) -> Message {
        Message::Enroll {
            hostname: hostname.into(),
        }
    }

    fn host(credential: &str, hostname: &str) -> Identity {
        Identity::Host {
            credential: credential.into(),
            hostname: hostname.into(),
        }
    }

    /// Enrolls `hostname` from `peer`; the credential's id and secret.
    async fn enrolled(hub: &Arc<Hub>, hostname: &str, peer: ([u8; 4], u16)) -> (String, String) {
        let (_, answer) =
            FakeAgent::open_as(hub, Identity::Enrollment, enroll(hostname), peer.into()).await;
        let Message::Enrolled {
            hostname: issued_to,
            credential,
        } = answer
        else {
            panic!("not enrolled: {answer:?}");
        };
        assert_eq!(issued_to, hostname);
        let (id, secret) = tracevisor_protocol::split_credential(&credential).unwrap();
        (id.to_owned(), secret.to_owned())
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {value}").parse().unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn the_enrollment_token_only_enrolls_and_a_credential_speaks_for_its_host_only() {
        let (hub, store, _events) = hub().await;
        // The shared token no longer opens an agent link: the refusal says what to run.
        let (_, answer) = FakeAgent::open_as(
            &hub,
            Identity::Enrollment,
            Message::Hello(hello("web-1")),
            REMOTE.into(),
        )
        .await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::Unauthorized);
        assert!(why.contains("tracesd enroll"), "{why}");
        assert!(store.list(Kind::Clients).await.unwrap().is_empty());
        // Enrolling issues a credential bound to the hostname, checked before the upgrade.
        let (id, secret) = enrolled(&hub, "web-1", REMOTE).await;
        let credential = format!("{}{id}_{secret}", tracevisor_protocol::CREDENTIAL_PREFIX);
        assert_eq!(
            hub.admit(REMOTE.into(), &bearer(&credential))
                .await
                .unwrap(),
            host(&id, "web-1")
        );
        assert_eq!(
            hub.admit(REMOTE.into(), &bearer("agent-token"))
                .await
                .unwrap(),
            Identity::Enrollment
        );
        let forged = format!(
            "{}{id}_{}",
            tracevisor_protocol::CREDENTIAL_PREFIX,
            "0".repeat(64)
        );
        assert!(matches!(
            hub.admit(REMOTE.into(), &bearer(&forged)).await,
            Err(Refusal::UnknownCredential(_))
        ));
        // The credential cannot register another hostname.
        let (_, answer) = FakeAgent::open_as(
            &hub,
            host(&id, "web-1"),
            Message::Hello(hello("victim")),
            REMOTE.into(),
        )
        .await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::Unauthorized);
        assert!(why.contains("issued to web-1"), "{why}");
        // Another spelling of a name is not another host: refused.
        for spelling in ["WEB-1", "web-1."] {
            let (_, answer) =
                FakeAgent::open_as(&hub, Identity::Enrollment, enroll(spelling), REMOTE.into())
                    .await;
            let (reason, why) = refused(&answer);
            assert_eq!(reason, CloseReason::ProtocolError, "{why}");
            assert!(why.contains("lowercase"), "{why}");
        }
        // Its own host registers.
        let (_, answer) = FakeAgent::open_as(
            &hub,
            host(&id, "web-1"),
            Message::Hello(hello("web-1")),
            REMOTE.into(),
        )
        .await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
        // Enrollment meets the same name rules as a hello: not a relay's name, and not a
        // registered client's from another address.
        let mut relay = HostRecord::new(
            Kind::Relays,
            "relay-a".into(),
            Some("10.0.0.9".into()),
            None,
        );
        relay.ctrlport = Some(crate::registry::DEFAULT_CTRLPORT);
        relay.dataport = Some(crate::registry::DEFAULT_DATAPORT);
        store.create(Kind::Relays, &relay).await.unwrap();
        for (name, peer) in [("relay-a", REMOTE), ("web-1", ([10, 0, 0, 66], 40000))] {
            let (_, answer) =
                FakeAgent::open_as(&hub, Identity::Enrollment, enroll(name), peer.into()).await;
            let (reason, why) = refused(&answer);
            assert_eq!(reason, CloseReason::Unauthorized, "{why}");
            assert!(why.contains(name), "{why}");
        }
        // The hijacker's attempt did not revoke the host's credential.
        assert_eq!(hub.check_credential(&id, &secret), Ok("web-1".into()));
    }

    #[tokio::test]
    async fn a_revoked_credential_closes_its_link_at_once_and_is_refused_after() {
        let (hub, store, _events) = hub().await;
        let (id, secret) = enrolled(&hub, "web-2", REMOTE).await;
        let (mut agent, answer) = FakeAgent::open_as(
            &hub,
            host(&id, "web-2"),
            Message::Hello(hello("web-2")),
            REMOTE.into(),
        )
        .await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
        let listed = hub.list_credentials().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1, "connected");
        assert!(
            listed[0].0.secret_sha256.is_empty(),
            "the hash is not shown"
        );
        let revoked = hub
            .revoke_credential(&id, "stolen laptop")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revoked_why.as_deref(), Some("stolen laptop"));
        let closed = agent.recv(Duration::from_secs(1)).await;
        match closed {
            Some(Message::Close { reason, message }) => {
                assert_eq!(reason, CloseReason::Unauthorized);
                assert!(message.contains("revoked: stolen laptop"), "{message}");
            }
            other => panic!("the link was not closed within a second: {other:?}"),
        }
        let credential = format!("{}{id}_{secret}", tracevisor_protocol::CREDENTIAL_PREFIX);
        match hub.admit(REMOTE.into(), &bearer(&credential)).await {
            Err(refusal @ Refusal::Revoked { .. }) => {
                let text = refusal.to_string();
                assert!(
                    text.contains("web-2") && text.contains("stolen laptop"),
                    "{text}"
                );
            }
            other => panic!("a revoked credential was not refused: {other:?}"),
        }
        // Revocation is durable: a hub loading the store refuses it too.
        let (fresh, _) = hub_on(&store, 100);
        fresh.load().await.unwrap();
        assert!(matches!(
            fresh.check_credential(&id, &secret),
            Err(CheckError::Revoked { .. })
        ));
        // Enrolling again gives a working credential; unknown ids are not found.
        let (id2, secret2) = enrolled(&hub, "web-2", REMOTE).await;
        assert_eq!(hub.check_credential(&id2, &secret2), Ok("web-2".into()));
        assert!(hub
            .revoke_credential("ffffffffffffffff", "x")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn enrolling_again_replaces_the_credential_and_drops_its_link() {
        let (hub, _store, _events) = hub().await;
        let (old, old_secret) = enrolled(&hub, "web-3", REMOTE).await;
        let (mut agent, _) = FakeAgent::open_as(
            &hub,
            host(&old, "web-3"),
            Message::Hello(hello("web-3")),
            REMOTE.into(),
        )
        .await;
        let (new, _) = enrolled(&hub, "web-3", REMOTE).await;
        assert_ne!(old, new);
        match agent.recv(Duration::from_secs(1)).await {
            Some(Message::Close { reason, message }) => {
                assert_eq!(reason, CloseReason::Unauthorized);
                assert!(message.contains("new enrollment"), "{message}");
            }
            other => panic!("the old link stayed: {other:?}"),
        }
        assert!(matches!(
            hub.check_credential(&old, &old_secret),
            Err(CheckError::Revoked { .. })
        ));
    }

    #[tokio::test]
    async fn jobs_are_routed_by_the_link_address_not_by_what_an_agent_reports() {
        let (hub, store, _events) = hub().await;
        let mut liar = hello("rogue");
        liar.addresses = vec![IpAddr::from([10, 0, 0, 5])];
        let (_agent, answer) = FakeAgent::open(&hub, liar, REMOTE.into()).await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
        assert_eq!(
            hub.find("10.0.0.5"),
            None,
            "a claimed address routes nothing"
        );
        assert_eq!(
            hub.find("10.0.0.7"),
            Some("rogue".into()),
            "its link's address does"
        );
        let record = store
            .find_by_hostname(Kind::Clients, "rogue")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            record.ipv4.as_deref(),
            Some("10.0.0.7"),
            "registered at its link's address"
        );
        // Agents on the coordinator's own host share loopback: it routes to none of them.
        let (_local, _) = FakeAgent::open(&hub, hello("local-1"), LOOPBACK.into()).await;
        assert_eq!(hub.find("127.0.0.1"), None);
    }

    #[tokio::test]
    async fn links_closed_by_shutdown_record_their_last_contact_in_one_write() {
        let (hub, store, _events) = hub().await;
        let (mut agent, answer) = FakeAgent::open(&hub, hello("web-9"), REMOTE.into()).await;
        assert!(matches!(answer, Message::HelloAck { .. }), "{answer:?}");
        hub.shutdown.cancel();
        match agent.recv(Duration::from_secs(10)).await {
            Some(Message::Close { reason, .. }) => assert_eq!(reason, CloseReason::Shutdown),
            other => panic!("not closed by the shutdown: {other:?}"),
        }
        assert_eq!(hub.closed(Duration::from_secs(10)).await, 0);
        let shown = hub.statuses()["web-9"].last_seen.clone();
        let stored = || async {
            store
                .agents()
                .await
                .unwrap()
                .into_iter()
                .find(|a| a.hostname == "web-9")
                .unwrap()
                .last_seen
        };
        assert_ne!(
            stored().await,
            shown,
            "not written link by link at shutdown"
        );
        hub.flush_last_seen().await;
        assert_eq!(stored().await, shown);
    }

    #[tokio::test]
    async fn enrolling_over_and_over_keeps_two_credentials_per_host() {
        let (hub, store, _events) = hub().await;
        let mut last = (String::new(), String::new());
        for _ in 0..5 {
            last = enrolled(&hub, "web-4", REMOTE).await;
        }
        let rows: Vec<_> = store
            .credentials()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.hostname == "web-4")
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows.iter().filter(|c| c.revoked.is_none()).count(), 1);
        assert_eq!(hub.credentials().by_id.len(), 2);
        assert_eq!(hub.check_credential(&last.0, &last.1), Ok("web-4".into()));
    }

    #[tokio::test]
    async fn enrollment_stops_at_twice_the_link_limit() {
        let store = Store::open("mem://", StorageLimits::default())
            .await
            .unwrap();
        let (hub, _events) = hub_on(&store, 2);
        for name in ["a-1", "a-2", "a-3", "a-4"] {
            enrolled(&hub, name, REMOTE).await;
        }
        let (_, answer) =
            FakeAgent::open_as(&hub, Identity::Enrollment, enroll("a-5"), REMOTE.into()).await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::Unauthorized);
        assert!(why.contains("max_agent_links"), "{why}");
    }

    #[tokio::test]
    async fn an_enrolled_name_cannot_be_enrolled_again_from_elsewhere_before_it_connects() {
        let (hub, _store, _events) = hub().await;
        let (id, secret) = enrolled(&hub, "web-8", REMOTE).await;
        let (_, answer) = FakeAgent::open_as(
            &hub,
            Identity::Enrollment,
            enroll("web-8"),
            ([10, 0, 0, 66], 40000).into(),
        )
        .await;
        let (reason, why) = refused(&answer);
        assert_eq!(reason, CloseReason::Unauthorized);
        assert!(why.contains("enrolled from 10.0.0.7"), "{why}");
        assert_eq!(hub.check_credential(&id, &secret), Ok("web-8".into()));
        // From its own address it may enroll again (a reinstalled host).
        enrolled(&hub, "web-8", REMOTE).await;
    }
}
