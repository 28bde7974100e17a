//! The REST API: routes under `/trace/api/v1.0`, authentication, CORS, limits and the OpenAPI document.

pub mod agents;
pub mod edge;
pub mod error;
pub mod extract;
pub mod internal;
pub mod jobs;
pub mod misc;
pub mod recorders;
pub mod registry;
pub mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use utoipa::OpenApi;

use crate::config::Config;
use crate::secrets::{secret_eq, SshIdentity};
use crate::store::Store;
use error::ApiError;

/// Base path of every API route, as in the seed.
pub const API_BASE: &str = "/trace/api/v1.0";

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<crate::hub::Hub>,
    pub engine: Arc<crate::jobs::Engine>,
    pub store: Store,
    pub ssh: SshIdentity,
    /// The REST bearer token, when authentication is on.
    pub rest_token: Option<String>,
    /// When this process started serving.
    pub started: std::time::Instant,
    /// `max_concurrent_requests` slots for REST requests ([`edge::request_slot`]).
    pub request_slots: Arc<tokio::sync::Semaphore>,
    /// The dashboard's sign-in sessions.
    pub sessions: ui::Sessions,
    /// Slots for the fleet's live views ([`ui::client_events`]).
    pub live_views: Arc<tokio::sync::Semaphore>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tracevisor", description = "Control plane for LTTng tracing across a fleet of Linux hosts"),
    paths(
        misc::root, misc::status, misc::metrics, misc::ssh, misc::analyses, jobs::list, jobs::create, jobs::get, jobs::cancel, jobs::events, jobs::trace, ui::client_events, recorders::create, recorders::list, recorders::get, recorders::delete, recorders::snapshot,
        registry::relays::list, registry::relays::create, registry::relays::get, registry::relays::update, registry::relays::delete,
        registry::clients::list, registry::clients::create, registry::clients::get, registry::clients::update, registry::clients::delete,
        registry::analyses_servers::list, registry::analyses_servers::create, registry::analyses_servers::get,
        registry::analyses_servers::update, registry::analyses_servers::delete,
        agents::credentials, agents::revoke,
        openapi,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/trace/api/v1.0/openapi.json", tag = "server",
    responses((status = 200, description = "this document")))]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// Builds the router with every route, auth, CORS and the body limit. The answers that grow
/// with the fleet or the job history (`GET /clients`, `/list`, `/jobs/{id}`) are gzipped for
/// clients that ask (the dashboard's browser does; curl and the CLI do not, and get them as
/// before); event streams and trace archives are never recompressed.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/status", get(misc::status))
        .route("/ssh", get(misc::ssh))
        .route("/analyses", get(misc::analyses).post(jobs::create))
        .route("/list", get(jobs::list).layer(CompressionLayer::new()))
        .route(
            "/jobs/{id}",
            get(jobs::get)
                .layer(CompressionLayer::new())
                .delete(jobs::cancel),
        )
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/trace", get(jobs::trace))
        .route("/recorders", get(recorders::list).post(recorders::create))
        .route(
            "/recorders/{id}",
            get(recorders::get).delete(recorders::delete),
        )
        .route("/recorders/{id}/snapshots", post(recorders::snapshot))
        .route("/openapi.json", get(openapi))
        .route("/agents/credentials", get(agents::credentials))
        .route(
            "/agents/credentials/{id}",
            axum::routing::delete(agents::revoke),
        )
        .route(
            "/relays",
            get(registry::relays::list).post(registry::relays::create),
        )
        .route(
            "/relays/{id}",
            get(registry::relays::get)
                .put(registry::relays::update)
                .delete(registry::relays::delete),
        )
        .route(
            "/clients",
            get(registry::clients::list)
                .layer(CompressionLayer::new())
                .post(registry::clients::create),
        )
        .route("/clients/events", get(ui::client_events))
        .route(
            "/clients/{id}",
            get(registry::clients::get)
                .put(registry::clients::update)
                .delete(registry::clients::delete),
        )
        .route(
            "/analyses_servers",
            get(registry::analyses_servers::list).post(registry::analyses_servers::create),
        )
        .route(
            "/analyses_servers/{id}",
            get(registry::analyses_servers::get)
                .put(registry::analyses_servers::update)
                .delete(registry::analyses_servers::delete),
        )
        // REST requests hold a slot; the agents' endpoint below does not (the hub has its own
        // limits), so neither can starve the other.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::request_slot,
        ))
        .route("/agents", get(agents::upgrade));
    let router = Router::new()
        .route("/", get(root))
        .route("/metrics", get(misc::metrics))
        .route(
            "/ui/session",
            get(ui::session_state)
                .post(ui::sign_in)
                .delete(ui::sign_out),
        )
        .route("/ui/{*file}", get(ui::asset))
        .nest(API_BASE, api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::browser_guard,
        ));
    // No cross-origin access unless origins are configured.
    let router = if state.config.cors_allow_origins.is_empty() {
        router
    } else {
        router.layer(cors_layer(&state.config))
    };
    router.with_state(state)
}

fn cors_layer(config: &Config) -> CorsLayer {
    let origins = if config.cors_allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            config
                .cors_allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([header::LOCATION])
}

/// `GET /`: the dashboard for a browser, the server's name and version for API clients.
async fn root(headers: axum::http::HeaderMap) -> Response {
    let mut response = if ui::wants_html(&headers) {
        ui::index(&headers)
    } else {
        misc::root().await.into_response()
    };
    // One URL, two representations: caches must keep them apart.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("path {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Checks `Authorization: Bearer TOKEN` when a token is configured. The token is compared in
/// constant time and never logged. CORS preflights pass so browsers can ask first. The
/// dashboard's files and sign-in pass (they hold no secret); its session cookie stands for
/// the token only in requests the browser says its own pages made ([`ui::cookie_request_refused`]),
/// so no other page, not even one on another port of the same host (same-site, so the cookie
/// goes along), can act with it.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.rest_token else {
        return next.run(request).await;
    };
    // The hub checks the separate agent enrollment token itself.
    let path = request.uri().path();
    if request.method() == Method::OPTIONS
        || path == "/"
        || path.starts_with("/ui/")
        || path == tracevisor_protocol::HUB_PATH
    {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match given {
        Some(token) if secret_eq(token.trim(), expected) => next.run(request).await,
        Some(_) => {
            tracing::warn!(path = %request.uri().path(), "rejected a request with a wrong bearer token");
            ApiError::unauthorized("invalid bearer token").into_response()
        }
        None if ui::signed_in(&state, request.headers()) => {
            match ui::cookie_request_refused(&request, state.config.tls.is_some()) {
                None => next.run(request).await,
                Some(why) => {
                    tracing::warn!(path = %request.uri().path(), method = %request.method(), "refused a cookie-authenticated request: {why}");
                    ApiError::new(StatusCode::FORBIDDEN, why).into_response()
                }
            }
        }
        None => ApiError::unauthorized("missing Authorization: Bearer TOKEN header (see `tracevisor serve --help` for the token)")
            .into_response(),
    }
}
