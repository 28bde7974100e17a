//! Trace job endpoints: `POST /analyses` (the seed's trace request), `GET /list`,
//! `GET /jobs/{id}` and `DELETE /jobs/{id}` (cancel).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json_};

use super::edge::RequestSlot;
use super::error::ApiError;
use super::extract::JsonObject;
use super::{AppState, API_BASE};
use crate::jobs::{FleetRequest, JobRequest};
use crate::model::{JobRecord, JobStatus, Outcome};

/// The seed's trace request.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AnalysisRequest {
    /// Host to trace: an agent's hostname or address, a registered client, or an address reached over SSH.
    host: String,
    /// Seconds to trace, above 0 and at most `max_duration_secs` (3600).
    duration: f64,
    /// Analysis type, one of `GET /analyses`.
    #[serde(rename = "type")]
    analysis_type: String,
    /// User for SSH when the host is neither an agent nor a registered client.
    username: String,
    /// Relay to stream the trace to (registered hostname or address).
    relay: Option<String>,
    /// Host that runs the analysis (default: the relay, else the traced host).
    analysis: Option<String>,
    /// Passed to analysis commands declaring `{mongohost}`.
    mongohost: Option<String>,
    /// Passed to analysis commands declaring `{mongoport}`.
    mongoport: Option<u16>,
    /// `false` answers 202 at once with the job's Location (also `Prefer: respond-async`).
    wait: Option<bool>,
}

pub(super) fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// The HTTP answer of a job that ended or is still running.
fn job_response(job: JobRecord) -> Response {
    let status = StatusCode::from_u16(job.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body = json!(job);
    if status.is_client_error() || status.is_server_error() {
        body["error_message"] = body["error"]["message"].clone();
    }
    (status, Json(body)).into_response()
}

#[utoipa::path(post, path = "/trace/api/v1.0/analyses", tag = "analyses", request_body = AnalysisRequest,
    responses(
        (status = 200, description = "the completed job with its result"),
        (status = 202, description = "accepted (wait=false or Prefer: respond-async); Location names the job"),
        (status = 409, description = "the job was cancelled"),
        (status = 422, description = "invalid field, unknown type (the known ones are listed), or the host lacks the kernel tracer"),
        (status = 502, description = "a tracing or analysis command failed on the host; the job names the step"),
        (status = 503, description = "host unreachable (SSH) or agent lost"),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<RequestSlot>>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let (wait, job_id, updates) = if body.0.contains_key("hosts") {
        let mut request = FleetRequest::parse(&body.0, &state.config)?;
        if prefers_async(&headers) {
            request.template.wait = false;
        }
        let wait = request.template.wait;
        let (id, updates) = state.engine.submit_fleet(request).await?;
        (wait, id, updates)
    } else {
        let mut request = JobRequest::parse(&body.0, &state.config)?;
        if prefers_async(&headers) {
            request.wait = false;
        }
        let wait = request.wait;
        let (id, updates) = state.engine.submit(request).await?;
        (wait, id, updates)
    };
    answer_job(&state, slot, wait, job_id, updates).await
}

/// The answer to a job just submitted: 202 with `Location` without `wait`, else the job once it
/// ended (with the status its end maps to). Waiting gives the request slot back.
pub(super) async fn answer_job(
    state: &Arc<AppState>,
    slot: Option<Extension<RequestSlot>>,
    wait: bool,
    job_id: u64,
    mut updates: crate::jobs::JobView,
) -> Result<Response, ApiError> {
    let location = format!("{API_BASE}/jobs/{job_id}");
    if !wait {
        let current = updates.borrow().clone();
        let job = current.map_or_else(|| json!({ "id": job_id, "jobid": job_id }), |j| json!(j));
        let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(response);
    }
    // Waiting costs nothing but the connection: give the request slot back, so that
    // long-waiting jobs cannot starve the API.
    if let Some(Extension(slot)) = slot {
        slot.release();
    }
    // Wait until the job ends (the sender is dropped after the final view).
    loop {
        let done = {
            let current = updates.borrow_and_update();
            current.as_ref().is_some_and(|j| j.status.is_ended())
        };
        if done || updates.changed().await.is_err() {
            break;
        }
    }
    let last = updates.borrow().clone();
    let job = match last {
        Some(job) => job,
        None => state
            .engine
            .get(job_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {job_id}")))?,
    };
    let mut response = job_response(job);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

fn parse_job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("job {raw:?}")))
}

#[utoipa::path(get, path = "/trace/api/v1.0/jobs/{id}", tag = "analyses", params(("id" = u64, Path, description = "job id")),
    responses((status = 200, description = "the job with its status, timings, error and result"), (status = 404, description = "unknown job")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = parse_job_id(&raw)?;
    state
        .engine
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

#[utoipa::path(delete, path = "/trace/api/v1.0/jobs/{id}", tag = "analyses", params(("id" = u64, Path, description = "job id")),
    responses((status = 202, description = "cancellation requested: the session is stopped and destroyed, the job ends with status -1"),
              (status = 404, description = "unknown job"), (status = 409, description = "the job already ended")))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&raw)?;
    let job = state
        .engine
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    if state.engine.cancel(id) || (!job.status.is_ended() && state.engine.cancel_remote(id).await) {
        tracing::info!(job_id = id, "job cancellation requested");
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "jobid": id, "cancelling": true })),
        )
            .into_response())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} is not running (status {})", job.status),
        )
        .with(json!({ "job": job })))
    }
}

/// `GET /jobs/{id}/events`: Server-Sent Events of a job: `status` on each change, `progress`
/// (share of the duration elapsed) while tracing, `host` for each fleet host's outcome, and a
/// final `done` with the whole job, after which the stream ends.
#[utoipa::path(get, path = "/trace/api/v1.0/jobs/{id}/events", tag = "analyses", params(("id" = u64, Path, description = "job id")),
    responses((status = 200, description = "text/event-stream: status, progress, host and done events", content_type = "text/event-stream"),
              (status = 404, description = "unknown job")))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let id = parse_job_id(&raw)?;
    let first = state
        .engine
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    let updates = state.engine.subscribe(id);
    let engine = state.engine.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let event = |name: &str, data: &Json_| Event::default().event(name).data(data.to_string());
        let mut last_status = None;
        let mut seen_hosts: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut current = first;
        let mut updates = updates;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            let status = Some(current.status);
            if status != last_status {
                last_status = status;
                if tx
                    .send(event("status", &json!({ "jobid": id, "status": status })))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(hosts) = &current.hosts {
                for h in hosts {
                    if h.outcome != Outcome::Pending
                        && seen_hosts.insert(h.host.clone())
                        && tx.send(event("host", &json!(h))).await.is_err()
                    {
                        return;
                    }
                }
            }
            if current.status.is_ended() {
                let _ = tx.send(event("done", &json!(current))).await;
                return;
            }
            let Some(rx) = updates.as_mut() else {
                // Not running in this process (e.g. started before a restart): poll the store.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                match engine.get(id).await {
                    Ok(Some(job)) => current = job,
                    _ => return,
                }
                continue;
            };
            tokio::select! {
                changed = rx.changed() => {
                    let closed = changed.is_err();
                    let latest = rx.borrow_and_update().clone();
                    if let Some(job) = latest {
                        current = job;
                    }
                    if closed {
                        // The job ended (its final view was sent) or its task went away.
                        if !current.status.is_ended() {
                            if let Ok(Some(job)) = engine.get(id).await {
                                current = job;
                            }
                        }
                        updates = None;
                    }
                }
                _ = tick.tick() => {
                    if current.status == JobStatus::TraceRunning {
                        if let Some(fraction) = elapsed_fraction(&current) {
                            if tx.send(event("progress", &json!({ "jobid": id, "fraction": fraction }))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Share of the duration elapsed since the trace started, 0 to 1.
fn elapsed_fraction(job: &JobRecord) -> Option<f64> {
    let duration = job.duration;
    let started = job.trace_started.as_deref().unwrap_or(&job.started);
    let started =
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .ok()?;
    let elapsed = (time::OffsetDateTime::now_utc() - started).as_seconds_f64();
    Some((elapsed / duration).clamp(0.0, 1.0))
}

/// `GET /list` query.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Include finished jobs.
    #[serde(default)]
    all: bool,
    /// Only the newest N jobs (1 to 100,000), still oldest first.
    limit: Option<u64>,
    /// Leave out each fleet job's per-host entries (`hosts`); its `outcomes` counts stay.
    #[serde(default)]
    brief: bool,
}

/// `GET /list`: trace sessions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    /// Jobs as `{"jobid", "status", "host", "type", "started", ...}`.
    #[schema(value_type = Vec<Object>)]
    pub sessions: Vec<JobRecord>,
}

#[utoipa::path(get, path = "/trace/api/v1.0/list", tag = "analyses", params(ListQuery),
    responses((status = 200, description = "running jobs (all with ?all=true); status 1 started, 2 trace running, 3 analysis running, 4 complete, -1 error", body = SessionList)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    // A malformed query gets the API's JSON error, like every other failure.
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(SessionList {
        sessions: state
            .engine
            .list(
                q.all,
                crate::store::ListView {
                    limit: match q.limit {
                        Some(n) if (1..=100_000).contains(&n) => Some(n),
                        Some(n) => {
                            return Err(ApiError::unprocessable(
                                "limit",
                                format!("{n} is not between 1 and 100000"),
                            ))
                        }
                        None => None,
                    },
                    brief: q.brief,
                },
            )
            .await?,
    }))
}

/// `GET /jobs/{id}/trace`: the job's kept trace as an archive of its CTF trace directory
/// (`.tar.gz` by default, `.tar.zst` with `Accept: application/zstd`, plain tar with
/// `Accept: application/x-tar`), streamed from the host holding it; a fleet job's traces in
/// one archive, a folder per host. `X-Trace-Bytes` gives the size of the trace's files when
/// known (the archive is streamed: no `Content-Length`).
#[utoipa::path(get, path = "/trace/api/v1.0/jobs/{id}/trace", tag = "analyses", params(("id" = u64, Path, description = "job id")),
    responses((status = 200, description = "the trace archive (application/gzip, application/zstd or application/x-tar)", content_type = "application/gzip"),
              (status = 404, description = "unknown job"), (status = 409, description = "the job is still running"),
              (status = 410, description = "the trace was not kept, or is no longer on its host: says when and why"),
              (status = 502, description = "the host could not send it"), (status = 503, description = "the host's agent is not connected, or too many downloads run (Retry-After)")))]
pub async fn trace(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::archive::Encoding;
    let id = parse_job_id(&raw)?;
    let record = state
        .engine
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let encoding = Encoding::from_accept(accept);
    let download = match state.engine.trace_download(&record, encoding).await {
        Ok(download) => download,
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut error = ApiError::new(status, refused.message).with(json!({ "jobid": id }));
            if let Some(secs) = refused.retry_after {
                error = error.retry_after(secs);
            }
            return Err(error);
        }
    };
    tracing::info!(job_id = id, encoding = ?download.encoding, bytes = ?download.bytes, "streaming a trace archive");
    let stream = futures_util::stream::unfold(download.body, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(download.encoding.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"job-{id}-trace.{}\"",
        download.encoding.extension()
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(bytes) = download.bytes {
        h.insert("x-trace-bytes", HeaderValue::from(bytes));
    }
    Ok(response)
}
