//! The small read-only endpoints: server root, SSH keys, analysis profiles, sessions, OpenAPI.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::profiles::Profile;

/// `GET /`: name and version.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServerInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// Base path of the REST API.
    pub api: &'static str,
}

#[utoipa::path(get, path = "/", tag = "server", responses((status = 200, body = ServerInfo)))]
pub async fn root() -> Json<ServerInfo> {
    Json(ServerInfo {
        name: "tracevisor",
        version: env!("CARGO_PKG_VERSION"),
        api: super::API_BASE,
    })
}

/// `GET /ssh`: the public keys the SSH fallback uses.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SshKeys {
    pub keys: Vec<String>,
}

#[utoipa::path(get, path = "/trace/api/v1.0/ssh", tag = "server",
    responses((status = 200, description = "authorize one of these keys on hosts driven over SSH", body = SshKeys)))]
pub async fn ssh(State(state): State<Arc<AppState>>) -> Json<SshKeys> {
    Json(SshKeys {
        keys: vec![state.ssh.public_key.clone()],
    })
}

#[utoipa::path(get, path = "/trace/api/v1.0/analyses", tag = "analyses",
    responses((status = 200, description = "analysis types and their configuration", body = [Profile])))]
pub async fn analyses(State(state): State<Arc<AppState>>) -> Json<Vec<Profile>> {
    Json(state.config.profiles.values().cloned().collect())
}
