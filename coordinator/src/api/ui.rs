//! The web dashboard: a single-page app embedded in the binary (`coordinator/ui/`), served to
//! browsers on `/`, with its assets under `/ui/`, its sign-in sessions and the fleet's live
//! view (`GET /clients/events`).
//!
//! The app reads the same JSON API as the CLI; nothing here renders data. Its pages are
//! static files: they carry no secret, so they are served without authentication, under a
//! Content-Security-Policy that allows nothing from another origin, no inline script and no
//! inline style attribute. With a REST token configured, the sign-in page exchanges the token
//! for a session cookie (HttpOnly, SameSite=Strict, `Secure` behind TLS) that
//! [`super::authenticate`] accepts in place of the bearer token; a request authenticated by
//! that cookie that changes anything must also carry this server's own `Origin`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::secrets::secret_eq;

/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "tracevisor_session";
/// How long a dashboard session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most dashboard sessions held at once; the oldest goes first beyond it.
pub const MAX_SESSIONS: usize = 1024;
/// Most fleet live views (`GET /clients/events`) served at once.
pub const MAX_LIVE_VIEWS: usize = 256;
/// How long agent changes are gathered before a live view sends them, so a fleet that
/// reconnects at once costs a browser a few batches, not thousands of events.
const LIVE_BATCH: Duration = Duration::from_millis(250);
/// How long one live view lasts; the browser's `EventSource` then reconnects by itself (and is
/// authenticated again), so no client holds a place for ever.
pub const LIVE_VIEW_LIFETIME: Duration = Duration::from_secs(600);
/// How often a quiet live view checks that its dashboard session still holds.
const SESSION_CHECK: Duration = Duration::from_secs(15);

/// What every dashboard answer carries: nothing runs or loads from another origin, the app
/// cannot be framed, and no page address leaks in a `Referer`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Every file of the dashboard, embedded at build time.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../ui/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../ui/app.css"),
    },
    Asset {
        path: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../ui/vendor/uPlot.min.css"),
    },
    Asset {
        path: "vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../../ui/vendor/uPlot.LICENSE"),
    },
    // Titles, columns and units of the lttng-*-mi tables, shared with the CLI's renderer.
    Asset {
        path: "lami_classes.json",
        content_type: "application/json",
        bytes: include_bytes!("../cli/lami_classes.json"),
    },
];

/// An asset ready to serve: its bytes, gzipped once, and an entity tag.
struct Prepared {
    asset: &'static Asset,
    gzip: Vec<u8>,
    etag: String,
}

fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Writing to a Vec cannot fail.
                let gzip = gz
                    .write_all(asset.bytes)
                    .and_then(|()| gz.finish())
                    .unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, asset.bytes);
                let etag = format!(
                    "\"{}\"",
                    digest.as_ref()[..12]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                Prepared { asset, gzip, etag }
            })
            .collect()
    })
}

/// Headers of every dashboard answer.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// One embedded file: gzipped when the client takes it, `304` when its copy is current.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = prepared().iter().find(|p| p.asset.path == path) else {
        return ApiError::not_found(format!("dashboard file {path:?}")).into_response();
    };
    let mut headers = HeaderMap::new();
    security_headers(&mut headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.asset.content_type),
    );
    // Revalidated on every load (cheap: 304), so an upgraded coordinator never serves a
    // browser yesterday's app against today's API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&file.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == file.etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let gzip_ok = request
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|e| {
                let mut parts = e.split(';');
                let name = parts.next().unwrap_or_default().trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                });
                name.eq_ignore_ascii_case("gzip") && !refused
            })
        });
    if gzip_ok && !file.gzip.is_empty() && file.gzip.len() < file.asset.bytes.len() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (headers, file.gzip.clone()).into_response()
    } else {
        (headers, file.asset.bytes).into_response()
    }
}

/// Whether a request is a browser navigation (it prefers HTML), not an API client.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|m| m.split(';').next().unwrap_or_default().trim() == "text/html")
        })
}

/// `GET /` for a browser: the dashboard's page.
pub fn index(headers: &HeaderMap) -> Response {
    serve("index.html", headers)
}

/// `GET /ui/{*file}`: the dashboard's scripts, styles and data files.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

// ---------------------------------------------------------------------------------------
// Sessions

/// Dashboard sessions in memory, by the SHA-256 of their cookie value (a restart signs
/// everyone out, which is what a restarted coordinator with a rotated token needs anyway).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Instant>>,
}

fn session_key(value: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session; returns its cookie value (256 random bits, hex).
    pub fn create(&self) -> String {
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, expiry| *expiry > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(session_key(&value), now + SESSION_TTL);
        value
    }

    /// Whether `value` is a live session.
    pub fn valid(&self, value: &str) -> bool {
        let key = session_key(value);
        let mut map = self.map();
        match map.get(&key) {
            Some(expiry) if *expiry > Instant::now() => true,
            Some(_) => {
                map.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Ends a session.
    pub fn remove(&self, value: &str) {
        self.map().remove(&session_key(value));
    }

    /// Live sessions (for tests and status).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.map().values().filter(|e| **e > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every value of the session cookie in a request (another service on the same host may set
/// one of the same name: cookies are not kept apart by port).
pub fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value.trim())
        })
}

/// The live dashboard session of a request, if any.
pub fn live_session<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    session_cookies(headers).find(|v| state.sessions.valid(v))
}

/// Whether the request holds a live dashboard session.
pub fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    live_session(state, headers).is_some()
}

/// Why a request authenticated by the session cookie is refused, if it is: the cookie stands
/// for the token only in what this server's own pages ask. Browsers say who made a request:
/// `Sec-Fetch-Site` must be `same-origin` (or `none`: the operator typed the address), so an
/// `<img>` or link on another port of the same host (same-site: the cookie goes along) gets
/// nothing; a request that changes anything must also carry exactly this server's `Origin`,
/// which every browser sends with such requests (also one too old for `Sec-Fetch-Site`).
pub fn cookie_request_refused(request: &axum::extract::Request, tls: bool) -> Option<String> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        if site != "same-origin" && site != "none" {
            return Some(format!(
                "the dashboard's cookie is only good for this server's own pages (Sec-Fetch-Site: {site}); scripts use the bearer token"
            ));
        }
    }
    let safe = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !safe && !super::edge::is_own_origin(headers, tls) {
        return Some("a request signed in by the dashboard's cookie that changes anything must carry this server's own Origin (browsers send it; scripts use the bearer token)".into());
    }
    None
}

fn cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// `GET /ui/session`: whether the dashboard must sign in first.
pub async fn session_state(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let body = json!({
        "auth_required": state.rest_token.is_some(),
        "signed_in": state.rest_token.is_some() && signed_in(&state, &headers),
        "live_clients": true,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /ui/session` `{"token": "..."}`: exchanges the REST token for a session cookie.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(expected) = &state.rest_token else {
        return ApiError::new(
            StatusCode::CONFLICT,
            "this coordinator has no token: the dashboard is open without signing in",
        )
        .into_response();
    };
    let given: SignIn = match serde_json::from_slice(&body) {
        Ok(given) => given,
        Err(e) => {
            return ApiError::bad_request(format!("expected {{\"token\": \"...\"}}: {e}"))
                .into_response()
        }
    };
    if !secret_eq(given.token.trim(), expected) {
        tracing::warn!("dashboard sign-in with a wrong token");
        // Wrong guesses take turns, 250 ms each: at most 4 a second from all clients together
        // (a right token does not wait).
        static GUESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = GUESSES.lock().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        return ApiError::unauthorized("wrong token").into_response();
    }
    // A new session, never one the browser brought (no fixation); the old one ends.
    for old in session_cookies(&request_headers) {
        state.sessions.remove(old);
    }
    let value = state.sessions.create();
    tracing::info!("dashboard session opened");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        cookie(&state, &value, SESSION_TTL.as_secs()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// `DELETE /ui/session`: signs out (the session ends on the server, the cookie is cleared).
pub async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    for value in session_cookies(&headers) {
        state.sessions.remove(value);
    }
    let mut out = HeaderMap::new();
    out.insert(header::SET_COOKIE, cookie(&state, "", 0));
    (StatusCode::NO_CONTENT, out).into_response()
}

// ---------------------------------------------------------------------------------------
// The fleet's live view

/// `GET /clients/events`: Server-Sent Events as agents connect and disconnect. The stream
/// opens with `resync` (read `GET /clients` now); then each `agent` event is
/// `{"hostname", "agent"}` with the same `agent` member as `GET /clients`, sent in batches at
/// most every 250 ms; `resync` again when the client fell behind. A view ends after 10 minutes
/// (the browser reconnects), at shutdown, and within 15 s of its dashboard session's end.
#[utoipa::path(get, path = "/trace/api/v1.0/clients/events", tag = "clients",
    responses((status = 200, description = "text/event-stream: agent and resync events", content_type = "text/event-stream"),
              (status = 503, description = "too many live views open")))]
pub async fn client_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let permit = state.live_views.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_LIVE_VIEWS} live fleet views are already open; poll GET /clients"),
        )
        .retry_after(10)
    })?;
    struct View {
        changes: tokio::sync::broadcast::Receiver<String>,
        state: Arc<AppState>,
        /// The dashboard session that opened the view (none with a bearer token or no
        /// token): the view ends soon after it does.
        session: Option<String>,
        shutdown: tokio_util::sync::CancellationToken,
        ends: tokio::time::Instant,
        first: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let view = View {
        changes: state.hub.changes(),
        session: live_session(&state, &headers).map(str::to_owned),
        shutdown: state.hub.shutdown_token(),
        ends: tokio::time::Instant::now() + LIVE_VIEW_LIFETIME,
        first: true,
        state,
        _permit: permit,
    };
    use tokio::sync::broadcast::error::RecvError;
    // One step: wait for a change, gather those of the next 250 ms, send them.
    let batches = futures_util::stream::unfold(view, |mut view| async move {
        let resync = || vec![Event::default().event("resync").data("{}")];
        if view.first {
            // The client reads `GET /clients` now that its stream is open: no change can fall
            // between the two.
            view.first = false;
            return Some((events(resync()), view));
        }
        let mut hosts = HashSet::new();
        let mut lagged = false;
        loop {
            tokio::select! {
                first = view.changes.recv() => match first {
                    Ok(host) => { hosts.insert(host); break; }
                    Err(RecvError::Lagged(_)) => { lagged = true; break; }
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(SESSION_CHECK) => {
                    let signed_out = view
                        .session
                        .as_deref()
                        .is_some_and(|s| !view.state.sessions.valid(s));
                    if signed_out {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(view.ends) => return None,
                _ = view.shutdown.cancelled() => return None,
            }
        }
        let gather = tokio::time::sleep(LIVE_BATCH);
        tokio::pin!(gather);
        loop {
            tokio::select! {
                next = view.changes.recv() => match next {
                    Ok(host) => { hosts.insert(host); }
                    Err(RecvError::Lagged(_)) => lagged = true,
                    Err(RecvError::Closed) => break,
                },
                _ = &mut gather => break,
                _ = view.shutdown.cancelled() => return None,
            }
        }
        let batch = if lagged {
            resync()
        } else {
            hosts
                .into_iter()
                .map(|hostname| {
                    let agent = view.state.hub.status_of(&hostname);
                    Event::default()
                        .event("agent")
                        .data(json!({ "hostname": hostname, "agent": agent }).to_string())
                })
                .collect()
        };
        Some((events(batch), view))
    });
    use futures_util::StreamExt as _;
    Ok(Sse::new(batches.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn events(
    batch: Vec<Event>,
) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Event, std::convert::Infallible>>> {
    futures_util::stream::iter(batch.into_iter().map(Ok).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_compressed_with_a_tag() {
        for p in prepared() {
            assert!(!p.asset.bytes.is_empty(), "{}", p.asset.path);
            assert!(p.etag.starts_with('"') && p.etag.len() == 26, "{}", p.etag);
        }
        let mut request = HeaderMap::new();
        request.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip"),
        );
        let response = serve("app.js", &request);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_ENCODING).unwrap(),
            "gzip"
        );
        assert!(response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .is_some());
        let etag = response.headers().get(header::ETAG).unwrap().clone();
        request.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &request).status(), StatusCode::NOT_MODIFIED);
        let mut refused = HeaderMap::new();
        refused.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(serve("app.js", &refused)
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none());
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn html_is_what_browsers_ask_for() {
        let with = |accept: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            wants_html(&h)
        };
        assert!(with(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!with("application/json"));
        assert!(!with("*/*"));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn sessions_are_bounded_and_end() {
        let sessions = Sessions::default();
        let a = sessions.create();
        assert_eq!(a.len(), 64);
        assert!(sessions.valid(&a));
        assert!(!sessions.valid("0000"));
        sessions.remove(&a);
        assert!(!sessions.valid(&a));
        let first = sessions.create();
        for _ in 0..MAX_SESSIONS {
            sessions.create();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(!sessions.valid(&first), "the oldest session goes first");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tracevisor_session=abc ; b=2"),
        );
        assert_eq!(session_cookies(&h).collect::<Vec<_>>(), ["abc"]);
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("xtracevisor_session=abc"),
        );
        assert_eq!(session_cookies(&other).count(), 0);
        // Another service's cookie of the same name first does not hide ours.
        let mut two = HeaderMap::new();
        two.insert(
            header::COOKIE,
            HeaderValue::from_static("tracevisor_session=junk; tracevisor_session=abc"),
        );
        assert_eq!(session_cookies(&two).collect::<Vec<_>>(), ["junk", "abc"]);
    }
}
