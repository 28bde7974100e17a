//! What several coordinators sharing one SurrealDB server arbitrate through it: their
//! membership (`member` table, a heartbeat written with the database server's clock), which
//! coordinator holds each agent's link (`agent.owner`, `agent.epoch`, written in the
//! registration transaction), which coordinator runs each job (`job.runner`), and the lease
//! that lets one of them migrate the schema at a time.
//!
//! Every decision that two coordinators could make at once writes the contended row itself:
//! SurrealDB's transactions are snapshot isolated, so of two writers of one row, one commits
//! and the other fails and is retried ([`Store::write`]), then sees the first one's write.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::{Store, StoreError};
use crate::model::JobRecord;

/// A coordinator of the cluster as its row says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberRow {
    /// Random per process start (16 hex digits).
    pub id: String,
    /// Its internal API, where the others forward requests.
    pub url: String,
    /// Its REST API as it listens (for operators).
    #[serde(default)]
    pub api: String,
    /// RFC 3339, when this process started.
    #[serde(default)]
    pub started: String,
    /// Milliseconds since its last heartbeat, by the database server's clock.
    pub age_ms: i64,
    /// Agents it held at its last heartbeat.
    #[serde(default)]
    pub agents: u64,
}

/// Where an agent's link is, as the registry says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentLocation {
    pub client_id: u64,
    pub hostname: String,
    /// The member holding its link (`None`: its last link closed).
    #[serde(default)]
    pub owner: Option<String>,
    /// Bumped by every registration: a link, or a request, naming an older epoch is stale.
    #[serde(default)]
    pub epoch: u64,
    /// The address its link comes from.
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub capabilities: Json,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub connected_since: String,
    #[serde(default)]
    pub last_seen: String,
}

/// What a registration changed: the link's epoch and the member that held it before.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ownership {
    pub epoch: u64,
    #[serde(default)]
    pub previous: Option<String>,
}

const LOCATION_FIELDS: &str = "record::id(id) AS client_id, hostname, owner, epoch, peer, capabilities, version, connected_since, last_seen";

fn locations(rows: Vec<Json>) -> Vec<AgentLocation> {
    rows.into_iter()
        .filter_map(|row| match serde_json::from_value::<AgentLocation>(row) {
            Ok(location) => Some(location),
            Err(error) => {
                tracing::warn!(%error, "skipping a malformed agent row");
                None
            }
        })
        .collect()
}

impl Store {
    /// Writes this coordinator's heartbeat (the database server's `time::now()`).
    pub async fn member_heartbeat(
        &self,
        id: &str,
        url: &str,
        api: &str,
        started: &str,
        agents: u64,
    ) -> Result<(), StoreError> {
        self.write(
            "UPSERT type::record('member', $id) SET url = $url, api = $api, started = $started, agents = $agents, heartbeat = time::now()",
            json!({ "id": id, "url": url, "api": api, "started": started, "agents": agents }),
        )
        .await
        .map(|_| ())
    }

    /// Every member row, with the age of its heartbeat by the database server's clock.
    pub async fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let rows = self
            .query(
                "SELECT record::id(id) AS id, url, api, started, agents, duration::millis(time::now() - heartbeat) AS age_ms FROM member ORDER BY started",
                json!({}),
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                serde_json::from_value(row).map_err(|e| StoreError::Corrupt(format!("member: {e}")))
            })
            .collect()
    }

    /// Removes a member's row (a clean shutdown, or one silent for longer than `older_ms`).
    pub async fn forget_member(&self, id: &str) -> Result<(), StoreError> {
        self.write("DELETE type::record('member', $id)", json!({ "id": id }))
            .await
            .map(|_| ())
    }

    /// Removes the rows of members silent for more than `older_ms` milliseconds.
    pub async fn forget_silent_members(&self, older_ms: i64) -> Result<(), StoreError> {
        self.write(
            "DELETE member WHERE duration::millis(time::now() - heartbeat) > $older",
            json!({ "older": older_ms }),
        )
        .await
        .map(|_| ())
    }

    /// Takes (or renews) the schema migration lease for `holder`, for 60 s; `false` when
    /// another coordinator holds it.
    pub async fn take_migration_lease(&self, holder: &str) -> Result<bool, StoreError> {
        let rows = self
            .write(
                "DEFINE TABLE IF NOT EXISTS meta SCHEMALESS; \
                 UPSERT meta:migration_lease SET holder = $holder, until = time::now() + 60s \
                     WHERE holder = NONE OR holder = $holder OR until < time::now() RETURN AFTER",
                json!({ "holder": holder }),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Gives the migration lease back.
    pub async fn release_migration_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.write(
            "DELETE meta:migration_lease WHERE holder = $holder",
            json!({ "holder": holder }),
        )
        .await
        .map(|_| ())
    }

    /// Records that `owner` holds the link of client `client_id`'s agent, in the same
    /// transaction as the agent's row: the epoch goes up by one, and the member that held it
    /// before (if another) is returned so it can drop its older link.
    pub async fn claim_agent(
        &self,
        client_id: u64,
        row: &super::AgentRow,
        owner: &str,
    ) -> Result<Ownership, StoreError> {
        let rows = self
            .write(
                "BEGIN TRANSACTION; \
                 DELETE agent WHERE hostname = $data.hostname AND id != type::record('agent', $id); \
                 LET $before = (SELECT owner, epoch FROM ONLY type::record('agent', $id)); \
                 LET $epoch = ($before.epoch ?? 0) + 1; \
                 UPSERT type::record('agent', $id) CONTENT object::extend($data, { owner: $owner, epoch: $epoch }); \
                 COMMIT TRANSACTION; \
                 RETURN { epoch: $epoch, previous: $before.owner };",
                json!({ "id": client_id, "data": row, "owner": owner }),
            )
            .await?;
        let answer = rows
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Db("the agent's registration returned nothing".into()))?;
        serde_json::from_value(answer).map_err(|e| StoreError::Corrupt(format!("ownership: {e}")))
    }

    /// Ends `owner`'s hold on client `client_id`'s agent at `epoch` and records its last
    /// contact; a newer link's hold (another epoch) is left as it is.
    pub async fn release_agent(
        &self,
        client_id: u64,
        owner: &str,
        epoch: u64,
        last_seen: &str,
    ) -> Result<bool, StoreError> {
        let rows = self
            .write(
                "UPDATE type::record('agent', $id) SET owner = NONE, last_seen = $last_seen \
                     WHERE owner = $owner AND epoch = $epoch RETURN VALUE epoch",
                json!({ "id": client_id, "owner": owner, "epoch": epoch, "last_seen": last_seen }),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Like [`Store::release_agent`] for many links at once (shutdown), in one transaction.
    pub async fn release_agents(
        &self,
        owner: &str,
        links: &[(u64, u64, String)],
    ) -> Result<(), StoreError> {
        let rows: Vec<Json> = links
            .iter()
            .map(|(id, epoch, last_seen)| json!({ "id": id, "epoch": epoch, "last_seen": last_seen }))
            .collect();
        self.write(
            "FOR $row IN $rows { \
                 UPDATE type::record('agent', $row.id) SET owner = NONE, last_seen = $row.last_seen \
                     WHERE owner = $owner AND epoch = $row.epoch; \
             };",
            json!({ "rows": rows, "owner": owner }),
        )
        .await
        .map(|_| ())
    }

    /// The agent registered under `hostname`, or whose link comes from the address `peer`
    /// (every agent of that address), wherever its link is.
    pub async fn agent_locations(
        &self,
        hostname: &str,
        peer: Option<&str>,
    ) -> Result<Vec<AgentLocation>, StoreError> {
        let rows = match peer {
            Some(peer) => {
                self.query(
                    &format!("SELECT {LOCATION_FIELDS} FROM agent WHERE hostname = $hostname OR peer = $peer"),
                    json!({ "hostname": hostname, "peer": peer }),
                )
                .await?
            }
            None => {
                self.query(
                    &format!("SELECT {LOCATION_FIELDS} FROM agent WHERE hostname = $hostname"),
                    json!({ "hostname": hostname }),
                )
                .await?
            }
        };
        Ok(locations(rows))
    }

    /// Every agent whose link some member holds (whether that member is alive is the caller's
    /// to judge).
    pub async fn held_agents(&self) -> Result<Vec<AgentLocation>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {LOCATION_FIELDS} FROM agent WHERE owner != NONE"),
                json!({}),
            )
            .await?;
        Ok(locations(rows))
    }

    /// Every agent row (connected or not), with where its link is.
    pub async fn agent_rows(&self) -> Result<Vec<AgentLocation>, StoreError> {
        let rows = self
            .query(&format!("SELECT {LOCATION_FIELDS} FROM agent"), json!({}))
            .await?;
        Ok(locations(rows))
    }

    /// Hands `runner` the running jobs of members that are not alive now (by the database
    /// server's clock: a heartbeat within `dead_ms`, judged in the same statement, so a
    /// member that joined a moment ago is alive); returns them. Two coordinators doing this
    /// at once write the same rows: one commits, the other is retried and finds them taken.
    pub async fn adopt_jobs(
        &self,
        runner: &str,
        dead_ms: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .write(
                "LET $live = (SELECT VALUE record::id(id) FROM member WHERE duration::millis(time::now() - heartbeat) <= $dead); \
                 UPDATE job SET adopted_from = runner, runner = $runner \
                     WHERE status IN $running AND (runner = NONE OR runner NOT IN $live) RETURN AFTER",
                json!({ "runner": runner, "dead": dead_ms, "running": super::jobs::running() }),
            )
            .await?;
        rows.into_iter().map(super::jobs::job_from_row).collect()
    }

    /// Clears the owner of agents whose owner is not alive now (judged as in
    /// [`Store::adopt_jobs`]): they show as disconnected and are planned as any disconnected
    /// agent until they register again. How many.
    pub async fn release_dead_owners(&self, dead_ms: i64) -> Result<usize, StoreError> {
        let rows = self
            .write(
                "LET $live = (SELECT VALUE record::id(id) FROM member WHERE duration::millis(time::now() - heartbeat) <= $dead); \
                 UPDATE agent SET owner = NONE WHERE owner != NONE AND owner NOT IN $live RETURN VALUE record::id(id)",
                json!({ "dead": dead_ms }),
            )
            .await?;
        Ok(rows.len())
    }

    /// Hands job `id`, stored by member `from` for a link `me` holds, to `me`: once, while it
    /// runs and nobody took it. The job when this call took it.
    pub async fn accept_job(
        &self,
        id: u64,
        from: &str,
        me: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .write(
                "UPDATE type::record('job', $id) SET runner = $me, accepted = true \
                     WHERE runner = $from AND accepted != true AND status IN $running RETURN AFTER",
                json!({ "id": id, "from": from, "me": me, "running": super::jobs::running() }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(super::jobs::job_from_row)
            .transpose()
    }

    /// Ends job `id` with `error` unless another member accepted it ([`Store::accept_job`]);
    /// the ended job, `None` when it was accepted (or had ended).
    pub async fn fail_unaccepted_job(
        &self,
        id: u64,
        error: &crate::model::JobError,
        now: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .write(
                "UPDATE type::record('job', $id) SET status = $status, finished = $now, error = $error \
                     WHERE status IN $running AND accepted != true RETURN AFTER",
                json!({ "id": id, "status": crate::model::JobStatus::Failed, "now": now, "error": error, "running": super::jobs::running() }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(super::jobs::job_from_row)
            .transpose()
    }

    /// The member that runs job `id` (`None`: no member, or no such job).
    pub async fn job_runner(&self, id: u64) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT VALUE runner FROM type::record('job', $id)",
                json!({ "id": id }),
            )
            .await?;
        Ok(rows.first().and_then(Json::as_str).map(str::to_owned))
    }

    /// One credential row, by id (a credential another coordinator issued).
    pub async fn credential(&self, id: &str) -> Result<Option<super::CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT *, record::id(id) AS id FROM type::record('agent_credential', $id)",
                json!({ "id": id }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|row| {
                serde_json::from_value(row)
                    .map_err(|e| StoreError::Corrupt(format!("agent credential: {e}")))
            })
            .transpose()
    }

    /// Credentials revoked at or after `since` (RFC 3339).
    pub async fn credentials_revoked_since(
        &self,
        since: &str,
    ) -> Result<Vec<super::CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT *, record::id(id) AS id FROM agent_credential WHERE revoked != NONE AND <datetime> revoked >= <datetime> $since",
                json!({ "since": since }),
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                serde_json::from_value(row)
                    .map_err(|e| StoreError::Corrupt(format!("agent credential: {e}")))
            })
            .collect()
    }
}
