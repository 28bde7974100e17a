//! The small read-only endpoints: server root, status, SSH keys, analysis profiles, OpenAPI.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
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

/// `GET /status`: whether the coordinator can serve, and what it holds.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok`, or why the database does not answer (then the status is 503).
    pub database: String,
    pub schema_version: u64,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub agents_connected: usize,
    /// Agent links open, including those not yet registered.
    pub agent_links_open: u64,
    /// Trace jobs (single or fleet) running.
    pub jobs_running: usize,
    /// Resident memory of the coordinator process (Linux `/proc`).
    pub resident_memory_bytes: Option<u64>,
    /// Open file descriptors of the coordinator process (Linux `/proc`).
    pub open_fds: Option<usize>,
    /// In a cluster: this coordinator's member id and every member the database knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// The cluster as `GET /status` shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// This coordinator's member id.
    pub member: String,
    /// Every member row: `alive` when its heartbeat (by the database server's clock) is
    /// younger than the dead-after time.
    pub members: Vec<ClusterMember>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterMember {
    #[serde(flatten)]
    pub row: crate::store::MemberRow,
    pub alive: bool,
}

#[utoipa::path(get, path = "/trace/api/v1.0/status", tag = "server",
    responses((status = 200, description = "serving", body = Status),
              (status = 503, description = "the database does not answer", body = Status)))]
pub async fn status(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Status>) {
    let (database, schema_version) = match state.store.schema_version().await {
        Ok(version) => ("ok".to_owned(), version),
        Err(error) => (error.to_string(), 0),
    };
    let code = if database == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (resident_memory_bytes, open_fds) = process_figures();
    let cluster = match state.engine.cluster() {
        None => None,
        Some(cluster) => Some(ClusterStatus {
            member: cluster.id.clone(),
            members: cluster
                .members()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|row| ClusterMember {
                    alive: row.age_ms <= crate::cluster::DEAD_AFTER.as_millis() as i64,
                    row,
                })
                .collect(),
        }),
    };
    let body = Status {
        database,
        schema_version,
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        agents_connected: state.hub.connected(),
        agent_links_open: state.hub.open_links(),
        jobs_running: state.engine.running(),
        resident_memory_bytes,
        open_fds,
        cluster,
    };
    (code, Json(body))
}

/// Resident memory and open descriptors of this process (Linux `/proc`).
pub fn process_figures() -> (Option<u64>, Option<usize>) {
    let resident_memory_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    (resident_memory_bytes, open_fds)
}

/// `GET /metrics`: the coordinator's figures in the Prometheus text format
/// ([`crate::metrics`]). With a token configured it wants the token, like the API.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format 0.0.4: agents, registrations, jobs ended by kind, type and status, job durations, database answer times", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (resident_memory_bytes, open_fds) = process_figures();
    let gauges = crate::metrics::Gauges {
        agents_connected: state.hub.connected() as u64,
        agent_links_open: state.hub.open_links(),
        jobs_running: state.engine.running() as u64,
        live_views: (super::ui::MAX_LIVE_VIEWS - state.live_views.available_permits()) as u64,
        database_up: state.store.schema_version().await.is_ok(),
        uptime_secs: state.started.elapsed().as_secs_f64(),
        resident_memory_bytes,
        open_fds: open_fds.map(|n| n as u64),
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&gauges),
    )
        .into_response()
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
