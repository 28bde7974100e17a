//! Several coordinators sharing one SurrealDB server: this coordinator's membership (its row
//! in `member`, a heartbeat every [`HEARTBEAT`] written with the database server's clock), the
//! members it judges alive, and the client of their internal APIs (`api/internal.rs`), which
//! carries the requests forwarded to the member holding a host's agent link.
//!
//! Nothing here decides alone: liveness is a heartbeat's age measured by the database server,
//! ownership of a link is the registration's transaction, and adoption of a dead member's jobs
//! is a write the database arbitrates (`store/cluster.rs`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value as Json;

use crate::config::ClusterSettings;
use crate::store::{MemberRow, Store, StoreError};

/// How often a member writes its heartbeat and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A member whose heartbeat is older than this (by the database server's clock) is dead: its
/// links are taken by the others as its agents reconnect, and its jobs are adopted.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// Rows of members silent for this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How long a forwarded request may take (the owner answers at once: it only starts the job).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// What a client refused during a fail-over is told to wait before retrying.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The path prefix of the internal API.
pub const INTERNAL_BASE: &str = "/internal/v1";

/// Why a request to another member failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("coordinator {0} is not a live member of the cluster")]
    NotMember(String),
    #[error("coordinator {member} did not answer: {message}")]
    Unreachable { member: String, message: String },
    #[error("coordinator {member} answered {status}: {message}")]
    Refused {
        member: String,
        status: u16,
        message: String,
    },
}

/// This coordinator's membership and its view of the others.
pub struct Cluster {
    /// This member's id: random per process start.
    pub id: String,
    settings: ClusterSettings,
    /// The REST API's address, shown in `/status`.
    api: String,
    started: String,
    store: Store,
    /// Members alive at the last heartbeat, by id (this one included once it has joined).
    live: RwLock<HashMap<String, MemberRow>>,
    client: reqwest::Client,
}

impl Cluster {
    /// `ca`: a PEM certificate the other members' internal APIs may present (this
    /// coordinator's own, when the members share it or its CA), besides the system's roots.
    pub fn new(
        settings: ClusterSettings,
        api: String,
        store: Store,
        ca: Option<std::path::PathBuf>,
    ) -> Result<Arc<Cluster>, String> {
        let mut client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(path) = ca {
            let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            client = client.add_root_certificate(cert);
        }
        let client = client.build().map_err(|e| format!("cluster client: {e}"))?;
        Ok(Arc::new(Cluster {
            id: format!("{:016x}", rand::random::<u64>()),
            settings,
            api,
            started: crate::hub::rfc3339(time::OffsetDateTime::now_utc()),
            store,
            live: RwLock::new(HashMap::new()),
            client,
        }))
    }

    /// The token members present to each other.
    pub fn token(&self) -> &str {
        &self.settings.token
    }

    /// Writes this member's heartbeat and reads every member's; returns the members that were
    /// alive at the previous beat and are not any more.
    pub async fn beat(&self, agents: u64) -> Result<Vec<String>, StoreError> {
        self.store
            .member_heartbeat(
                &self.id,
                &self.settings.url,
                &self.api,
                &self.started,
                agents,
            )
            .await?;
        let rows = self.store.members().await?;
        let dead_ms = DEAD_AFTER.as_millis() as i64;
        let now_live: HashMap<String, MemberRow> = rows
            .into_iter()
            .filter(|m| m.age_ms <= dead_ms)
            .map(|m| (m.id.clone(), m))
            .collect();
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = live
            .keys()
            .filter(|id| !now_live.contains_key(*id))
            .cloned()
            .collect();
        for id in &gone {
            tracing::warn!(member = %id, "a coordinator of the cluster stopped heartbeating; its agents reconnect to the others and its jobs are adopted");
        }
        for id in now_live.keys().filter(|id| !live.contains_key(*id)) {
            if *id != self.id {
                tracing::info!(member = %id, url = %now_live[id].url, "a coordinator joined the cluster");
            }
        }
        *live = now_live;
        crate::metrics::cluster_members(live.len());
        Ok(gone)
    }

    /// Deletes the rows of members silent for an hour.
    pub async fn forget_old_members(&self) {
        if let Err(error) = self
            .store
            .forget_silent_members(FORGET_AFTER.as_millis() as i64)
            .await
        {
            tracing::debug!(%error, "could not delete old member rows");
        }
    }

    /// Removes this member's row (clean shutdown): the others see it gone at once.
    pub async fn leave(&self) {
        if let Err(error) = self.store.forget_member(&self.id).await {
            tracing::warn!(%error, "could not remove this coordinator's member row");
        }
    }

    /// Whether `member` heartbeated within [`DEAD_AFTER`] at the last beat.
    pub fn is_live(&self, member: &str) -> bool {
        self.live().contains_key(member)
    }

    /// Every member row, alive or not, as the database has them.
    pub async fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        self.store.members().await
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, MemberRow>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn url_of(&self, member: &str) -> Result<String, ForwardError> {
        self.live()
            .get(member)
            .map(|m| m.url.trim_end_matches('/').to_owned())
            .ok_or_else(|| ForwardError::NotMember(member.to_owned()))
    }

    /// POSTs `body` to `path` (under [`INTERNAL_BASE`]) of `member`'s internal API; the
    /// response when it is a success.
    pub async fn post(
        &self,
        member: &str,
        path: &str,
        body: &Json,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ForwardError> {
        let url = format!("{}{INTERNAL_BASE}{path}", self.url_of(member)?);
        let mut request = self
            .client
            .post(&url)
            .bearer_auth(&self.settings.token)
            .header("tracevisor-member", &self.id)
            .json(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ForwardError::Unreachable {
                member: member.to_owned(),
                message: e.to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|j| j["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(ForwardError::Refused {
            member: member.to_owned(),
            status: status.as_u16(),
            message,
        })
    }
}
