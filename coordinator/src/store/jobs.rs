//! The `job` table: single jobs and fleet records, typed in and out ([`JobRecord`]).

use serde_json::{json, Value as Json};

use super::{record_key, Store, StoreError};
use crate::model::{FleetEntry, JobError, JobRecord, JobStatus, OutcomeCounts, SshSession};

/// A fleet record's progress or end.
/// How much of the job history `GET /list` reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListView {
    /// Only the newest this many.
    pub limit: Option<u64>,
    /// Without a fleet's per-host entries (its `outcomes` counts stay).
    pub brief: bool,
}

#[derive(Debug, Clone)]
pub struct FleetUpdate<'a> {
    pub status: JobStatus,
    pub hosts: &'a [FleetEntry],
    /// Set when the fleet ended.
    pub error: Option<&'a JobError>,
    /// RFC 3339, set when the fleet ended.
    pub finished: Option<&'a str>,
}

/// A stored row as a record: the record id becomes `id` and `jobid`.
pub(super) fn job_from_row(mut row: Json) -> Result<JobRecord, StoreError> {
    let id = record_key(&row["id"])?;
    row["id"] = json!(id);
    row["jobid"] = json!(id);
    serde_json::from_value(row).map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))
}

fn first_job(rows: Vec<Json>) -> Result<Option<JobRecord>, StoreError> {
    rows.into_iter().next().map(job_from_row).transpose()
}

pub(super) fn running() -> Vec<i64> {
    JobStatus::codes(&JobStatus::RUNNING)
}

impl Store {
    /// Stores a new job with the next id of the job sequence; returns it with its id.
    pub async fn create_job(&self, job: &JobRecord) -> Result<JobRecord, StoreError> {
        let mut content = serde_json::to_value(job)
            .map_err(|e| StoreError::Corrupt(format!("job does not serialize: {e}")))?;
        if let Some(map) = content.as_object_mut() {
            map.remove("id");
            map.remove("jobid");
        }
        let rows = self
            .query(
                "CREATE type::record('job', sequence::nextval('job_id')) CONTENT $job RETURN AFTER",
                json!({ "job": content }),
            )
            .await?;
        first_job(rows)?.ok_or_else(|| StoreError::Db("job create returned nothing".into()))
    }

    /// One job.
    pub async fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT * FROM type::record('job', $id)",
                json!({ "id": id }),
            )
            .await?;
        first_job(rows)
    }

    /// Jobs in id order, without their results: the running ones, or all.
    pub async fn jobs(&self, all: bool, view: ListView) -> Result<Vec<JobRecord>, StoreError> {
        let omit = if view.brief {
            "result, hosts"
        } else {
            "result"
        };
        let filter = if all { "" } else { "WHERE status IN $running" };
        let rows = match view.limit {
            None => {
                self.query(
                    &format!("SELECT * OMIT {omit} FROM job {filter} ORDER BY id"),
                    json!({ "running": running() }),
                )
                .await?
            }
            Some(limit) => {
                // The newest `limit`, still answered oldest first.
                let mut rows = self
                    .query(
                        &format!(
                            "SELECT * OMIT {omit} FROM job {filter} ORDER BY id DESC LIMIT $limit"
                        ),
                        json!({ "running": running(), "limit": limit }),
                    )
                    .await?;
                rows.reverse();
                rows
            }
        };
        rows.into_iter().map(job_from_row).collect()
    }

    /// Every job that has not ended, with everything (for recovery after a restart).
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT * FROM job WHERE status IN $running ORDER BY id",
                json!({ "running": running() }),
            )
            .await?;
        rows.into_iter().map(job_from_row).collect()
    }

    /// Moves a running job forward to `status` (never back, never out of an end); `None` when
    /// nothing changed.
    pub async fn advance_job(
        &self,
        id: u64,
        status: JobStatus,
        now: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .query(
                "UPDATE type::record('job', $id) SET status = $status, trace_started = IF $status = $tracing THEN $now ELSE trace_started END WHERE status IN $running AND status < $status RETURN AFTER",
                json!({
                    "id": id,
                    "status": status,
                    "tracing": JobStatus::TraceRunning,
                    "now": now,
                    "running": running(),
                }),
            )
            .await?;
        first_job(rows)
    }

    /// Stores the end of a running job (once: an ended job is left as it is) and forgets its
    /// SSH session; `None` when the job had already ended or does not exist.
    pub async fn finish_job(
        &self,
        id: u64,
        result: Result<&Json, &JobError>,
        now: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let (status, result, error) = match result {
            Ok(r) => (JobStatus::Complete, r.clone(), Json::Null),
            Err(e) => (JobStatus::Failed, Json::Null, json!(e)),
        };
        let rows = self
            .query(
                "UPDATE type::record('job', $id) SET status = $status, finished = $now, result = $result, error = $error, ssh_session = NONE WHERE status IN $running RETURN AFTER",
                json!({ "id": id, "status": status, "now": now, "result": result, "error": error, "running": running() }),
            )
            .await?;
        first_job(rows)
    }

    /// Records the SSH session a running job creates, so that a later run can destroy it.
    pub async fn set_job_ssh_session(
        &self,
        id: u64,
        session: &SshSession,
    ) -> Result<(), StoreError> {
        self.query(
            "UPDATE type::record('job', $id) SET ssh_session = $ssh WHERE status IN $running",
            json!({ "id": id, "ssh": session, "running": running() }),
        )
        .await
        .map(|_| ())
    }

    /// Writes a fleet's hosts (and its end); returns the record.
    pub async fn update_fleet(
        &self,
        id: u64,
        update: FleetUpdate<'_>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .query(
                "UPDATE type::record('job', $id) SET status = $status, hosts = $hosts, outcomes = $outcomes, error = $error, finished = $finished RETURN AFTER",
                json!({
                    "id": id,
                    "status": update.status,
                    "hosts": update.hosts,
                    "outcomes": OutcomeCounts::of(update.hosts),
                    "error": update.error,
                    "finished": update.finished,
                }),
            )
            .await?;
        first_job(rows)
    }

    /// Deletes the jobs that ended before `cutoff` (RFC 3339); returns how many.
    pub async fn prune_jobs(&self, cutoff: &str) -> Result<usize, StoreError> {
        let rows = self
            .query(
                "DELETE job WHERE status IN $ended AND finished != NONE AND finished != NULL AND <datetime> finished < <datetime> $cutoff RETURN VALUE id",
                json!({ "cutoff": cutoff, "ended": JobStatus::codes(&JobStatus::ENDED) }),
            )
            .await?;
        Ok(rows.len())
    }
}
