//! `/recorders`: flight recorders across the fleet. `POST` arms a snapshot-mode session on
//! each host (agents only), `GET` lists them with each host's state, `DELETE` disarms them,
//! and `POST /recorders/{id}/snapshots` records a snapshot on every host at once and analyses
//! it, answering like a fleet job (see `jobs/recorders.rs`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Map, Value as Json_};

use super::edge::RequestSlot;
use super::error::ApiError;
use super::extract::JsonObject;
use super::jobs::{answer_job, prefers_async};
use super::AppState;
use crate::jobs::{
    analysis_type, field_bool, HostSelection, RecorderRequest, DEFAULT_BUFFER_MIB, MAX_BUFFER_MIB,
};
use crate::model::RecorderRecord;
use crate::registry::FieldError;

/// `POST /recorders` (documentation of the body; parsed by hand for field-named errors).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RecorderBody {
    /// One agent's hostname (or `hosts`).
    host: Option<String>,
    /// Agents' hostnames, or `{"agents": "connected", "require": [...]}`.
    #[schema(value_type = Object)]
    hosts: Option<Json_>,
    /// The analysis type: its events are recorded, its analysis runs on each snapshot.
    #[schema(rename = "type")]
    analysis_type: String,
    /// Ring buffer per channel and CPU, in MiB (1 to 1024, default 16).
    buffer_mib: Option<u64>,
}

/// `POST /recorders/{id}/snapshots` (optional body).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SnapshotBody {
    /// Keep each host's snapshot for `GET /jobs/{id}/trace` (default false).
    keep_trace: Option<bool>,
    /// Answer once every host is done (default true), else 202 with `Location`.
    wait: Option<bool>,
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("recorder {raw:?}")))
}

/// Validates a `POST /recorders` body: `host` or `hosts` (a list or the connected-agent
/// selector), `type`, `buffer_mib`.
fn parse(body: &Map<String, Json_>, state: &AppState) -> Result<RecorderRequest, FieldError> {
    let hosts = match (body.get("host"), body.get("hosts")) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "host",
                "give either host or hosts, not both",
            ))
        }
        (Some(Json_::String(host)), None) => {
            crate::validate::hostname(host)
                .map_err(|e| FieldError::new("host", format!("{host:?} {e}")))?;
            HostSelection::List(vec![host.clone()])
        }
        (Some(other), None) => {
            return Err(FieldError::new(
                "host",
                format!("must be a string, got {other}"),
            ))
        }
        (None, hosts @ Some(_)) => HostSelection::parse(hosts)?,
        (None, None) => return Err(FieldError::new("hosts", "is required (or host)")),
    };
    let analysis_type = analysis_type(body, &state.config)?;
    let buffer_mib = match body.get("buffer_mib") {
        None | Some(Json_::Null) => DEFAULT_BUFFER_MIB,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_BUFFER_MIB).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    "buffer_mib",
                    format!("must be an integer from 1 to {MAX_BUFFER_MIB} (MiB per channel and CPU), got {v}"),
                )
            })?,
    };
    Ok(RecorderRequest {
        hosts,
        analysis_type,
        buffer_mib,
    })
}

#[utoipa::path(post, path = "/trace/api/v1.0/recorders", tag = "recorders", request_body = RecorderBody,
    responses((status = 201, description = "the recorder with each host's state (armed, pending, offline, error)", body = RecorderRecord),
              (status = 422, description = "invalid field: a host without an agent, an unknown type, a buffer out of bounds, too many recorders on a host")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let request = parse(&body.0, &state)?;
    let record = state.engine.create_recorder(request).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

#[utoipa::path(get, path = "/trace/api/v1.0/recorders", tag = "recorders",
    responses((status = 200, description = "every recorder with each host's state", body = [RecorderRecord])))]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Vec<RecorderRecord>> {
    Json(state.engine.recorders())
}

#[utoipa::path(get, path = "/trace/api/v1.0/recorders/{id}", tag = "recorders", params(("id" = u64, Path, description = "recorder id")),
    responses((status = 200, description = "the recorder with each host's state", body = RecorderRecord), (status = 404, description = "unknown recorder")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<RecorderRecord>, ApiError> {
    let id = parse_id(&raw)?;
    state
        .engine
        .recorder(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("recorder {id}")))
}

#[utoipa::path(delete, path = "/trace/api/v1.0/recorders/{id}", tag = "recorders", params(("id" = u64, Path, description = "recorder id")),
    responses((status = 200, description = "deleted; each host says disarmed (its session destroyed) or pending (destroyed when its agent connects)", body = RecorderRecord),
              (status = 404, description = "unknown recorder")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<RecorderRecord>, ApiError> {
    let id = parse_id(&raw)?;
    state
        .engine
        .delete_recorder(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("recorder {id}")))
}

#[utoipa::path(post, path = "/trace/api/v1.0/recorders/{id}/snapshots", tag = "recorders", params(("id" = u64, Path, description = "recorder id")), request_body = SnapshotBody,
    responses((status = 200, description = "the snapshot fleet job: every host's snapshot analysed"),
              (status = 207, description = "some host did not complete"),
              (status = 202, description = "accepted (wait=false or Prefer: respond-async); Location names the job"),
              (status = 404, description = "unknown recorder")))]
pub async fn snapshot(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<RequestSlot>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    // The body is optional: none, or a JSON object with `keep_trace` and `wait`.
    let body: Map<String, Json_> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be a JSON object: {e}")))?
    };
    let keep_trace = field_bool(&body, "keep_trace", false)?;
    let wait = field_bool(&body, "wait", true)? && !prefers_async(&headers);
    let Some((job_id, updates)) = state.engine.snapshot(id, keep_trace, wait).await? else {
        return Err(ApiError::not_found(format!("recorder {id}")).with(json!({ "recorder": id })));
    };
    answer_job(&state, slot, wait, job_id, updates).await
}
