//! The `agent` table: each agent's last known state, keyed by its host's client id. Written when
//! a link opens and when it closes, never per heartbeat.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::{Store, StoreError};

/// An agent's last known state as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentRow {
    pub hostname: String,
    #[serde(default)]
    pub version: String,
    /// RFC 3339.
    #[serde(default)]
    pub connected_since: String,
    /// RFC 3339.
    #[serde(default)]
    pub last_seen: String,
    /// Addresses the agent reported about itself.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The address its link came from.
    #[serde(default)]
    pub peer: String,
    /// Addresses the hostname is pinned to (`agent_takeover = "pin-address"`).
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub capabilities: Json,
}

impl Store {
    /// Every agent ever registered.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let rows = self.query("SELECT * OMIT id FROM agent", json!({})).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| match serde_json::from_value::<AgentRow>(row) {
                Ok(agent) => Some(agent),
                Err(error) => {
                    tracing::warn!(%error, "skipping a malformed agent row");
                    None
                }
            })
            .collect())
    }

    /// The addresses the agent of client `client_id` is pinned to.
    pub async fn agent_pinned_peers(&self, client_id: u64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT VALUE peers FROM type::record('agent', $id)",
                json!({ "id": client_id }),
            )
            .await?;
        Ok(rows
            .first()
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Records the agent of client `client_id`. A row left by a deleted or renamed client of
    /// the same hostname goes first (the hostname index is unique), in the same transaction.
    pub async fn upsert_agent(&self, client_id: u64, row: &AgentRow) -> Result<(), StoreError> {
        self.query(
            "BEGIN TRANSACTION; \
             DELETE agent WHERE hostname = $data.hostname AND id != type::record('agent', $id); \
             UPSERT type::record('agent', $id) CONTENT $data; \
             COMMIT TRANSACTION;",
            json!({ "id": client_id, "data": row }),
        )
        .await
        .map(|_| ())
    }

    /// Records when each of these agents (client id, RFC 3339) was last heard from, in one
    /// transaction.
    pub async fn set_agents_last_seen(&self, rows: &[(u64, String)]) -> Result<(), StoreError> {
        let rows: Vec<Json> = rows
            .iter()
            .map(|(id, last_seen)| json!({ "id": id, "last_seen": last_seen }))
            .collect();
        self.query(
            "FOR $row IN $rows { \
                 UPDATE type::record('agent', $row.id) SET last_seen = $row.last_seen; \
             };",
            json!({ "rows": rows }),
        )
        .await
        .map(|_| ())
    }

    /// Records when the agent of client `client_id` was last heard from.
    pub async fn set_agent_last_seen(
        &self,
        client_id: u64,
        last_seen: &str,
    ) -> Result<(), StoreError> {
        self.query(
            "UPDATE type::record('agent', $id) SET last_seen = $last_seen",
            json!({ "id": client_id, "last_seen": last_seen }),
        )
        .await
        .map(|_| ())
    }
}
