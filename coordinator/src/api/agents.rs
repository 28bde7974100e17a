//! `GET /trace/api/v1.0/agents`: the WebSocket endpoint agents dial. The hub checks the
//! enrollment token and the protocol version before the upgrade; this maps its refusals to
//! the API's JSON errors.

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
        Refusal::NoToken | Refusal::WrongToken => ApiError::unauthorized(message),
        Refusal::Version(_) => {
            ApiError::bad_request(message).with(json!({ "supported": [PROTOCOL_VERSION] }))
        }
        Refusal::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
    }
    .into_response()
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(refusal) = state.hub.admit(peer, &headers) {
        return refused(refusal);
    }
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
    state.hub.accept(ws, peer).unwrap_or_else(refused)
}
