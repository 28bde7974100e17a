//! The `agent_credential` table: each agent's own credential, issued when its host enrolls.
//! Only the secret's SHA-256 is stored; a revoked credential keeps its row (when and why), so
//! the list shows what happened and a reconnect is refused with the reason.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Store, StoreError};

/// One credential as stored (and as `GET /agents/credentials` shows it, without the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialRow {
    /// 16 hex digits, the middle part of the credential.
    pub id: String,
    /// The hostname the credential may register; a link with it speaks only for this host.
    pub hostname: String,
    /// Hex SHA-256 of the secret part.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    #[schema(ignore)]
    pub secret_sha256: String,
    /// RFC 3339.
    pub created: String,
    /// The address the enrollment came from.
    pub created_from: String,
    /// RFC 3339, when revoked. (Absent rather than null when not: the schema's
    /// `option<string>` takes NONE, not NULL.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// Why it was revoked (an operator's request, or a new enrollment of the same host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_why: Option<String>,
}

impl Store {
    /// Every credential ever issued, oldest first.
    pub async fn credentials(&self) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT *, record::id(id) AS id FROM agent_credential",
                json!({}),
            )
            .await?;
        let mut credentials = rows
            .into_iter()
            .map(|row| {
                serde_json::from_value::<CredentialRow>(row)
                    .map_err(|e| StoreError::Corrupt(format!("agent credential: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // RFC 3339 in UTC sorts as text.
        credentials.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(credentials)
    }

    /// Stores a new credential for `row.hostname` and revokes the host's earlier one, in one
    /// transaction: a host holds one live credential, and enrolling again replaces it. Rows
    /// revoked before are deleted then, so a host keeps at most two (the live one and the one
    /// it replaced) however often it enrolls.
    pub async fn issue_credential(
        &self,
        row: &CredentialRow,
        why_earlier_revoked: &str,
    ) -> Result<(), StoreError> {
        let mut data = serde_json::to_value(row).map_err(|e| StoreError::Db(e.to_string()))?;
        if let Some(map) = data.as_object_mut() {
            map.remove("id");
        }
        self.write(
            "BEGIN TRANSACTION; \
             DELETE agent_credential WHERE hostname = $data.hostname AND revoked != NONE; \
             UPDATE agent_credential SET revoked = $data.created, revoked_why = $why \
                 WHERE hostname = $data.hostname AND revoked = NONE; \
             CREATE type::record('agent_credential', $id) CONTENT $data; \
             COMMIT TRANSACTION;",
            json!({ "id": row.id, "data": data, "why": why_earlier_revoked }),
        )
        .await
        .map(|_| ())
    }

    /// Marks credential `id` revoked (once: a second revocation keeps the first time and
    /// reason); `None` when there is no such credential.
    pub async fn revoke_credential(
        &self,
        id: &str,
        when: &str,
        why: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let rows = self
            .write(
                "UPDATE type::record('agent_credential', $id) \
                     SET revoked = revoked ?? $when, revoked_why = revoked_why ?? $why \
                     WHERE hostname != NONE \
                     RETURN AFTER;",
                json!({ "id": id, "when": when, "why": why }),
            )
            .await?;
        let Some(mut row) = rows.into_iter().next() else {
            return Ok(None);
        };
        if let Some(map) = row.as_object_mut() {
            map.insert("id".into(), json!(id));
        }
        serde_json::from_value(row)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("agent credential: {e}")))
    }
}
