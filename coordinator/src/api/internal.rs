//! The internal API the members of a cluster call on each other (`cluster_listen`, its own
//! port): run a job stored for an agent link held here, run a fleet's share of hosts, cancel,
//! acknowledge fleet results, drop a link another member took over. Every request carries the
//! cluster token (`cluster_token_file`), compared in constant time; anything else is 401.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::cluster::INTERNAL_BASE;
use crate::jobs::cluster::{FleetShare, ForwardRefusal, ForwardedJob};
use crate::jobs::JobRequest;
use crate::secrets::secret_eq;

/// Largest request body: a fleet share names at most `MAX_FLEET_HOSTS` hosts.
const MAX_INTERNAL_BODY: usize = 32 << 20;

/// The internal API's router.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/jobs/{id}/run", post(run_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/fleets/{id}/share", post(run_share))
        .route("/acks", post(acks))
        .route("/agents/evict", post(evict));
    Router::new()
        .nest(INTERNAL_BASE, api)
        .fallback(|| async { ApiError::not_found("no such internal route".to_owned()) })
        .layer(middleware::from_fn_with_state(state.clone(), member_only))
        .layer(DefaultBodyLimit::max(MAX_INTERNAL_BODY))
        .with_state(state)
}

/// Refuses any request without this cluster's token (401).
async fn member_only(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let expected = state.engine.cluster().map(|c| c.token().to_owned());
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (expected, given) {
        (Some(expected), Some(given)) if secret_eq(given, &expected) => next.run(request).await,
        _ => {
            crate::metrics::forwarded_refused();
            tracing::warn!(path = %request.uri().path(), "internal API request refused: wrong or missing cluster token");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this is a cluster's internal API: a member's cluster token is required".to_owned(),
            )
            .into_response()
        }
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "member": state.engine.cluster().map(|c| c.id.clone()),
        "agents": state.hub.connected(),
        "jobs_running": state.engine.running(),
    }))
}

fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("job {raw:?}")))
}

async fn run_job(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Json(forward): Json<ForwardedJob>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    // Validated again here: a member's request is checked like any other.
    let mut request = JobRequest::parse(&forward.request, &state.config)?;
    request.snapshot_of = forward.snapshot_of;
    match state
        .engine
        .accept_forwarded(id, request, &forward.from, &forward.hostname, forward.epoch)
        .await
    {
        Ok(started) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "jobid": id, "started": started })),
        )
            .into_response()),
        Err(ForwardRefusal::Stale(why)) => Err(ApiError::new(StatusCode::CONFLICT, why)),
        Err(ForwardRefusal::NoSuchJob(_)) => Err(ApiError::not_found(format!("job {id}"))),
        Err(ForwardRefusal::Submit(e)) => Err(e.into()),
    }
}

async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    if state.engine.cancel(id) {
        tracing::info!(
            job_id = id,
            "job cancellation requested by another coordinator of the cluster"
        );
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "jobid": id, "cancelling": true })),
        )
            .into_response());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("job {id} is not running on this coordinator"),
    ))
}

async fn run_share(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Json(share): Json<FleetShare>,
) -> Result<Response, ApiError> {
    let fleet = job_id(&raw)?;
    if share.children.len() > crate::jobs::MAX_FLEET_HOSTS {
        return Err(ApiError::bad_request(format!(
            "a share names at most {} hosts",
            crate::jobs::MAX_FLEET_HOSTS
        )));
    }
    // The template is checked as a request for its first host (each child's host is its own,
    // checked below).
    let mut body = share.request.clone();
    let first = share
        .children
        .first()
        .map(|c| c.host.clone())
        .unwrap_or_else(|| "localhost".into());
    body.insert("host".into(), json!(first));
    let template = JobRequest::parse(&body, &state.config)?;
    for child in &share.children {
        crate::validate::hostname(&child.host)
            .map_err(|e| ApiError::bad_request(format!("host {:?} {e}", child.host)))?;
        if crate::jobs::child_of_fleet(child.job_id) != Some((fleet, child.index)) {
            return Err(ApiError::bad_request(format!(
                "job id {} is not child {} of fleet {fleet}",
                child.job_id, child.index
            )));
        }
    }
    tracing::info!(
        fleet,
        hosts = share.children.len(),
        "running a share of another coordinator's fleet"
    );
    let lines = state.engine.run_share(share, template);
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes), lines))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize)]
struct Acks {
    job_ids: Vec<u64>,
}

async fn acks(
    State(state): State<Arc<AppState>>,
    Json(acks): Json<Acks>,
) -> Json<serde_json::Value> {
    let sent = state.engine.release_acks(&acks.job_ids);
    Json(json!({ "acknowledged": sent }))
}

#[derive(Deserialize)]
struct Evict {
    hostname: String,
    epoch: u64,
}

async fn evict(
    State(state): State<Arc<AppState>>,
    Json(evict): Json<Evict>,
) -> Json<serde_json::Value> {
    let closed = state.hub.evict(&evict.hostname, evict.epoch);
    Json(json!({ "closed": closed }))
}
