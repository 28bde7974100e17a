//! `GET /trace/api/v1.0/agents`: the WebSocket endpoint agents dial. The hub checks the
//! agent's credential (or the enrollment token, for an enrollment link) and the protocol
//! version before the upgrade; this maps its refusals to the API's JSON errors.
//!
//! `GET /agents/credentials` and `DELETE /agents/credentials/{id}`: the operator's view of the
//! per-agent credentials, and revocation.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracevisor_protocol::PROTOCOL_VERSION;

use super::error::ApiError;
use super::AppState;
use crate::hub::Refusal;

fn refused(refusal: Refusal) -> Response {
    let message = refusal.to_string();
    match refusal {
        Refusal::Throttled => ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).retry_after(60),
        Refusal::NoToken
        | Refusal::WrongToken
        | Refusal::UnknownCredential(_)
        | Refusal::Revoked { .. } => ApiError::unauthorized(message),
        Refusal::Version(_) => {
            ApiError::bad_request(message).with(json!({ "supported": [PROTOCOL_VERSION] }))
        }
        Refusal::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
        Refusal::Backlog(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(1)
        }
    }
    .into_response()
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let identity = match state.hub.admit(peer, &headers).await {
        Ok(identity) => identity,
        Err(refusal) => return refused(refusal),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                format!("not a WebSocket upgrade: {}", rejection.body_text()),
            )
            .into_response()
        }
    };
    state.hub.accept(ws, peer, identity).unwrap_or_else(refused)
}

/// One agent credential, as `GET /agents/credentials` lists it (the secret is never shown).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    #[serde(flatten)]
    pub credential: crate::store::CredentialRow,
    /// Whether an agent link authenticated with it is open now.
    pub connected: bool,
}

#[utoipa::path(get, path = "/trace/api/v1.0/agents/credentials", tag = "agents",
    responses((status = 200, description = "every agent credential ever issued, revoked ones with when and why", body = [CredentialView])))]
pub async fn credentials(
    State(state): State<Arc<AppState>>,
) -> Result<axum::Json<Vec<CredentialView>>, ApiError> {
    let list = state.hub.list_credentials().await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|(credential, connected)| CredentialView {
                credential,
                connected,
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/trace/api/v1.0/agents/credentials/{id}", tag = "agents",
    params(("id" = String, Path, description = "the credential's id (16 hex digits)")),
    responses(
        (status = 200, description = "revoked (again: the first time and reason are kept); its links were closed"),
        (status = 404, description = "no such credential"),
    ))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<crate::store::CredentialRow>, ApiError> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found(format!("agent credential {id:?}")));
    }
    let id = id.to_ascii_lowercase();
    match state
        .hub
        .revoke_credential(&id, "revoked by the operator")
        .await?
    {
        Some(row) => Ok(axum::Json(row)),
        None => Err(ApiError::not_found(format!("agent credential {id}"))),
    }
}
