//! CRUD handlers for relays, clients and analyses servers, at the seed's paths.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::extract::JsonObject;
use super::{AppState, API_BASE};
use crate::hub::AgentStatus;
use crate::registry::{HostRecord, Kind};

/// Parses the `{id}` path segment.
pub fn parse_id(kind: Kind, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("{} {raw:?}", kind.singular())))
}

/// A record as the API shows it: clients also say whether an agent runs on the host.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    #[serde(flatten)]
    pub record: HostRecord,
    /// Clients only: `null` when no agent ever connected for this hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Option<AgentStatus>>,
}

async fn views(
    state: &AppState,
    kind: Kind,
    records: Vec<HostRecord>,
) -> Result<Vec<RecordView>, ApiError> {
    if kind != Kind::Clients {
        return Ok(records
            .into_iter()
            .map(|record| RecordView {
                record,
                agent: None,
            })
            .collect());
    }
    let mut statuses = state.engine.agent_statuses().await?;
    Ok(records
        .into_iter()
        .map(|record| {
            let agent = Some(statuses.remove(&record.hostname));
            RecordView { record, agent }
        })
        .collect())
}

pub async fn list(state: &AppState, kind: Kind) -> Result<Json<Vec<RecordView>>, ApiError> {
    let records = state.store.list(kind).await?;
    Ok(Json(views(state, kind, records).await?))
}

pub async fn create(
    state: &AppState,
    kind: Kind,
    body: JsonObject,
) -> Result<impl IntoResponse, ApiError> {
    let record = HostRecord::from_post(kind, &body.0)?;
    let created = state.store.create(kind, &record).await?;
    let location = format!("{API_BASE}/{}/{}", kind.path(), created.id);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    tracing::info!(kind = kind.singular(), id = created.id, hostname = %created.hostname, "registered");
    Ok((
        StatusCode::CREATED,
        headers,
        Json(view(state, kind, created).await?),
    ))
}

/// One record as the API shows it (the same shape as in lists).
async fn view(state: &AppState, kind: Kind, record: HostRecord) -> Result<RecordView, ApiError> {
    views(state, kind, vec![record])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("record view missing"))
}

pub async fn get(state: &AppState, kind: Kind, raw: &str) -> Result<Json<RecordView>, ApiError> {
    let id = parse_id(kind, raw)?;
    let record = state
        .store
        .get(kind, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{} {id}", kind.singular())))?;
    Ok(Json(view(state, kind, record).await?))
}

pub async fn update(
    state: &AppState,
    kind: Kind,
    raw: &str,
    body: JsonObject,
) -> Result<Json<RecordView>, ApiError> {
    let id = parse_id(kind, raw)?;
    let not_found = || ApiError::not_found(format!("{} {id}", kind.singular()));
    let mut record = state.store.get(kind, id).await?.ok_or_else(not_found)?;
    record.apply(kind, &body.0)?;
    let updated = state
        .store
        .replace(kind, id, &record)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view(state, kind, updated).await?))
}

pub async fn delete(
    state: &AppState,
    kind: Kind,
    raw: &str,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(kind, raw)?;
    if state.store.delete(kind, id).await? {
        tracing::info!(kind = kind.singular(), id, "deleted");
        Ok(Json(serde_json::json!({ "result": true })))
    } else {
        Err(ApiError::not_found(format!("{} {id}", kind.singular())))
    }
}

/// Generates the five annotated handlers of one kind, so the OpenAPI document lists each path.
macro_rules! registry_handlers {
    ($module:ident, $kind:expr, $tag:literal, $collection:literal, $item:literal) => {
        pub mod $module {
            use super::*;

            #[utoipa::path(get, path = $collection, tag = $tag,
                responses((status = 200, description = "all records in id order", body = [RecordView])))]
            pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<RecordView>>, ApiError> {
                super::list(&state, $kind).await
            }

            #[utoipa::path(post, path = $collection, tag = $tag, request_body = HostRecord,
                responses((status = 201, description = "created; Location names it", body = RecordView),
                          (status = 400, description = "malformed JSON"),
                          (status = 409, description = "hostname already registered"),
                          (status = 413, description = "body too large"),
                          (status = 415, description = "not application/json"),
                          (status = 422, description = "invalid field")))]
            pub async fn create(State(state): State<Arc<AppState>>, body: JsonObject) -> Result<impl IntoResponse, ApiError> {
                super::create(&state, $kind, body).await
            }

            #[utoipa::path(get, path = $item, tag = $tag, params(("id" = u64, Path, description = "record id")),
                responses((status = 200, body = RecordView), (status = 404, description = "unknown id")))]
            pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<RecordView>, ApiError> {
                super::get(&state, $kind, &id).await
            }

            #[utoipa::path(put, path = $item, tag = $tag, params(("id" = u64, Path, description = "record id")),
                request_body = HostRecord,
                responses((status = 200, description = "the updated record", body = RecordView),
                          (status = 404, description = "unknown id"), (status = 409, description = "duplicate hostname"),
                          (status = 422, description = "invalid field")))]
            pub async fn update(State(state): State<Arc<AppState>>, Path(id): Path<String>, body: JsonObject) -> Result<Json<RecordView>, ApiError> {
                super::update(&state, $kind, &id, body).await
            }

            #[utoipa::path(delete, path = $item, tag = $tag, params(("id" = u64, Path, description = "record id")),
                responses((status = 200, description = "deleted"), (status = 404, description = "unknown id")))]
            pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
                super::delete(&state, $kind, &id).await
            }
        }
    };
}

registry_handlers!(
    relays,
    Kind::Relays,
    "relays",
    "/trace/api/v1.0/relays",
    "/trace/api/v1.0/relays/{id}"
);
registry_handlers!(
    clients,
    Kind::Clients,
    "clients",
    "/trace/api/v1.0/clients",
    "/trace/api/v1.0/clients/{id}"
);
registry_handlers!(
    analyses_servers,
    Kind::AnalysesServers,
    "analyses_servers",
    "/trace/api/v1.0/analyses_servers",
    "/trace/api/v1.0/analyses_servers/{id}"
);
