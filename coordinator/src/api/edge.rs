//! What stands between the REST routes and the outside: browsers kept to their own origin, and
//! request slots that a request waiting for its job gives back.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::AppState;

/// Whether a `Host` header (name or address, with an optional port) names this machine's
/// loopback ([`tracevisor_protocol::is_loopback_host`] once the port is off).
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => host,
        }
    };
    !name.is_empty() && tracevisor_protocol::is_loopback_host(name)
}

/// Whether the request's `Origin` may use this API: no `Origin` (curl, the CLI, agents), the
/// server's own origin (`http(s)://` + the `Host` it was asked as), or a configured one.
fn origin_allowed(headers: &HeaderMap, allowed: &[String], tls: bool) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    if is_own_origin(headers, tls) {
        return Ok(());
    }
    Err(format!(
        "cross-origin request from {origin:?} refused: this API answers browsers only from its own origin or one listed in cors_allow_origins"
    ))
}

/// Whether the request's `Origin` is this server's own: `http(s)://` + the `Host` it was
/// asked as.
pub fn is_own_origin(headers: &HeaderMap, tls: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = format!("{}://{host}", if tls { "https" } else { "http" });
    !host.is_empty() && origin.eq_ignore_ascii_case(&own)
}

/// Keeps web pages the operator opens from driving the API in the operator's name. Without a
/// token (the loopback default, as in the original), any page could otherwise start traces:
/// a request whose `Origin` is another site's is refused, and on a loopback listener so is
/// one whose `Host` is not a loopback name (a DNS-rebinding page reaches 127.0.0.1 under its
/// own name). With a token, browsers cannot send it cross-site without CORS allowing it, and
/// the `Origin` check still applies. The agents' endpoint authenticates with its own token
/// and is not a browser's business.
pub async fn browser_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if state.rest_token.is_none() && state.config.is_loopback() {
        if let Some(host) = headers.get(header::HOST) {
            let host = String::from_utf8_lossy(host.as_bytes()).into_owned();
            if !is_loopback_host(&host) {
                tracing::warn!(%host, path = %request.uri().path(), "refused a request for a non-loopback Host on the loopback listener (DNS rebinding?)");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} is not a loopback name: without a token this API only answers requests for localhost, 127.0.0.1 or [::1] (set a token to serve other names)"),
                )
                .into_response();
            }
        }
    }
    if let Err(why) = origin_allowed(
        headers,
        &state.config.cors_allow_origins,
        state.config.tls.is_some(),
    ) {
        tracing::warn!(path = %request.uri().path(), "{why}");
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    next.run(request).await
}

/// A REST request's slot among `max_concurrent_requests`. A handler that waits for a long time
/// without doing work (a job's end) gives it back with [`RequestSlot::release`].
#[derive(Clone)]
pub struct RequestSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl RequestSlot {
    /// Gives the slot back before the request ends.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Holds one of `max_concurrent_requests` slots while a REST request runs (more wait their
/// turn). Agent links do not go through it.
pub async fn request_slot(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = state.request_slots.clone().acquire_owned().await else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    };
    let slot = RequestSlot(Arc::new(Mutex::new(Some(permit))));
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    slot.release();
    response
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "LOCALHOST.",
            "app.localhost:80",
            "127.0.0.1",
            "127.1.2.3:5000",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:5000",
            "localhost.evil.example",
            "10.0.0.1:5000",
            "[fe80::1]:80",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn origins() {
        let headers = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::HOST,
                HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
            );
            if let Some(o) = origin {
                h.insert(
                    header::ORIGIN,
                    HeaderValue::from_str(o).unwrap_or(HeaderValue::from_static("x")),
                );
            }
            h
        };
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&headers(None, "localhost:5000"), &none, false).is_ok());
        assert!(origin_allowed(
            &headers(Some("http://localhost:5000"), "localhost:5000"),
            &none,
            false
        )
        .is_ok());
        assert!(origin_allowed(
            &headers(Some("https://localhost:5000"), "localhost:5000"),
            &none,
            false
        )
        .is_err());
        assert!(origin_allowed(
            &headers(Some("https://evil.example"), "localhost:5000"),
            &none,
            false
        )
        .is_err());
        assert!(origin_allowed(&headers(Some("null"), "localhost:5000"), &none, false).is_err());
        let listed = vec!["https://ops.example".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://ops.example"), "localhost:5000"),
            &listed,
            false
        )
        .is_ok());
        let any = vec!["*".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://evil.example"), "localhost:5000"),
            &any,
            false
        )
        .is_ok());
    }
}
