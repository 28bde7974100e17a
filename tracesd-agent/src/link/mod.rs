//! The agent's link to the coordinator: dial out, authenticate, say hello, keep heartbeats
//! going, and reconnect forever with capped exponential backoff and full jitter.
//!
//! Architecture invariant: the agent never listens on a port. It only dials out to the
//! coordinator, which never connects to agents; everything the coordinator asks travels on
//! this one outbound WebSocket.

mod backoff;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracevisor_lttng::lifecycle::LocalExecutor;
use tracevisor_protocol::{
    Capabilities, CloseReason, Hello, MAX_FRAME_BYTES, PROTOCOL_VERSION, PROTOCOL_VERSION_HEADER,
};
use tracing::Instrument as _;

pub use backoff::Backoff;
pub use session::drive;

use crate::config::AgentConfig;
use crate::jobs::Jobs;
use crate::tls::TlsError;

/// The agent's version, sent in `Hello` and in the `User-Agent` header.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a link attempt ended (other than for shutdown). Only [`LinkError::is_fatal`] errors
/// stop [`run`]; every other one is logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TLS configuration could not be built (fatal: a configuration error).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// `lttng_control = "library"` and liblttng-ctl cannot be used (fatal).
    #[error("{0}")]
    LttngControl(String),
    /// The upgrade request could not be built (fatal: a configuration error).
    #[error("cannot build the upgrade request for {url}: {message}")]
    Request {
        /// The hub URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// TCP, TLS or the upgrade failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The hub URL.
        url: String,
        /// The transport's error.
        source: WsError,
    },
    /// Connecting took longer than
    /// [`LinkSettings::connect_timeout`](crate::config::LinkSettings::connect_timeout).
    #[error("cannot connect to {url}: timed out after {} s", .timeout.as_secs_f64())]
    ConnectTimeout {
        /// The hub URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The coordinator refused the upgrade with an HTTP status (401: wrong or missing token).
    #[error("rejected: HTTP {}{}", status_text(*.status), if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Rejected {
        /// The HTTP status code.
        status: u16,
        /// The response body (trimmed, bounded), usually the reason.
        body: String,
    },
    /// No `HelloAck` within
    /// [`LinkSettings::hello_timeout`](crate::config::LinkSettings::hello_timeout).
    #[error("no hello-ack from the coordinator within {} s", .0.as_secs_f64())]
    HelloTimeout(Duration),
    /// The coordinator sent something this agent cannot accept; the link was closed with
    /// [`CloseReason::ProtocolError`] or [`CloseReason::UnsupportedVersion`].
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The coordinator sent `Close`.
    #[error("{}closed by the coordinator ({reason}){}", if *.reason == CloseReason::Unauthorized { "rejected: " } else { "" }, if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    ClosedByPeer {
        /// Its reason.
        reason: CloseReason,
        /// Its message.
        message: String,
    },
    /// The WebSocket was closed without a `Close` message.
    #[error("connection closed by the coordinator{detail}")]
    Disconnected {
        /// The WebSocket close code and reason, if any.
        detail: String,
    },
    /// Nothing was received for three heartbeat intervals.
    #[error("no frame from the coordinator for {} s (3 heartbeat intervals): link considered dead", .0.as_secs_f64())]
    Dead(Duration),
    /// Sending a frame took longer than
    /// [`LinkSettings::send_timeout`](crate::config::LinkSettings::send_timeout).
    #[error("sending to the coordinator timed out after {} s", .0.as_secs_f64())]
    SendTimeout(Duration),
    /// The connection failed while in use.
    #[error("link lost: {0}")]
    Transport(#[source] WsError),
}

impl LinkError {
    /// Whether retrying cannot help (the configuration must change).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            LinkError::Tls(_) | LinkError::Request { .. } | LinkError::LttngControl(_)
        )
    }
}

/// Runs the agent's link until `shutdown` is cancelled: connects, registers, keeps the link
/// alive and reconnects after any loss. Returns `Ok(())` after a clean shutdown (a `Close`
/// with [`CloseReason::Shutdown`] sent when a link was up), or a fatal configuration error.
pub async fn run(mut config: AgentConfig, shutdown: CancellationToken) -> Result<(), LinkError> {
    let tls = match (&config.tls, config.is_secure()) {
        (Some(tls), _) => Some(tls.clone()),
        (None, true) => Some(crate::tls::client_config_pinned(
            config.ca_cert.as_deref(),
            &config.coordinator_fingerprints,
            None,
        )?),
        (None, false) => None,
    };
    // With several coordinators, start with one at random (agents spread over them) and move
    // to another one at random whenever a link ends: the agents of a coordinator that died
    // spread over the others instead of all landing on the next one in their lists.
    let coordinators = if config.coordinators.is_empty() {
        vec![config.coordinator.clone()]
    } else {
        config.coordinators.clone()
    };
    let mut next = rand::random::<u64>() as usize % coordinators.len();
    config.coordinator = coordinators[next].clone();
    let settings = config.link.clone();
    let allowlist = crate::allow::Allowlist::discover(&config.analysis_programs);
    tracing::info!(
        programs = allowlist.len(),
        "analysis programs allowed on this host (lttng-*-mi, babeltrace2, analysis_programs)"
    );
    tracing::info!(
        relay_roots = ?config.relay_roots,
        "analysis-only jobs read traces under the trace root and these relay roots"
    );
    let mut executor = LocalExecutor::new(&config.hostname);
    executor.policy = config.trace_policy;
    if let Some(root) = &config.trace_root {
        executor.trace_root = root.clone();
    }
    executor.control = tracevisor_lttng::control::Control::open(
        config.lttng_control,
        config.lttng_ctl_library.as_deref(),
    )
    .map_err(LinkError::LttngControl)?;
    tracing::info!(trace_root = %executor.trace_root.display(), "local traces go under this root");
    let mut jobs = Jobs::new(executor, allowlist, config.relay_roots.clone());
    let mut capabilities = CapabilityCache::default();
    let mut backoff = Backoff::new(settings.backoff_base, settings.backoff_cap);
    tracing::info!(
        coordinator = %config.coordinator,
        coordinators = coordinators.len(),
        hostname = %config.hostname,
        version = AGENT_VERSION,
        "agent starting"
    );
    let outcome = loop {
        let mut established = None;
        let span = tracing::info_span!("link", coordinator = %config.coordinator);
        let result = attempt(
            &config,
            tls.clone(),
            &mut jobs,
            &mut capabilities,
            &shutdown,
            &mut established,
        )
        .instrument(span)
        .await;
        match result {
            Ok(()) => {
                tracing::info!("agent stopped");
                break Ok(());
            }
            Err(error) if error.is_fatal() => break Err(error),
            Err(error) => tracing::warn!("{error}"),
        }
        if shutdown.is_cancelled() {
            break Ok(());
        }
        if established.is_some_and(|since: Instant| since.elapsed() >= settings.stable_after) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if coordinators.len() > 1 {
            next = another(next, coordinators.len(), rand::random::<u64>());
            config.coordinator = coordinators[next].clone();
        }
        tracing::info!(
            attempt = backoff.attempt(),
            coordinator = %config.coordinator,
            "retrying in {:.1} s",
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("agent stopped");
                break Ok(());
            }
            _ = tokio::time::sleep(delay) => {}
        }
    };
    // Sessions liblttng-ctl is still destroying in the background are finished first.
    jobs.executor().control.settle(SETTLE_TIMEOUT).await;
    outcome
}

/// How long the agent waits at exit for sessions still being destroyed in the background.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One link: hello preparation, connection, then the session until it ends.
async fn attempt(
    config: &AgentConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    jobs: &mut Jobs,
    capabilities: &mut CapabilityCache,
    shutdown: &CancellationToken,
    established: &mut Option<Instant>,
) -> Result<(), LinkError> {
    let executor = jobs.executor();
    let capabilities = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        capabilities = capabilities.get(config.link.detect_capabilities, &executor.control) => capabilities,
    };
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        hostname: config.hostname.clone(),
        addresses: crate::host::addresses(),
        agent_version: AGENT_VERSION.to_owned(),
        capabilities,
        running_jobs: jobs.running(),
    };
    let mut ws = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ws = connect(config, tls) => ws?,
    };
    tracing::debug!("upgraded, sending hello");
    drive(&mut ws, hello, jobs, &config.link, shutdown, established).await
}

/// Capabilities detected at most once a minute (a reconnect loop must not run lttng at
/// every attempt), so a sessiond started since is reported by a later hello.
#[derive(Default)]
struct CapabilityCache {
    detected: Option<(Instant, Capabilities)>,
}

impl CapabilityCache {
    const MAX_AGE: Duration = Duration::from_secs(60);

    async fn get(
        &mut self,
        detect: bool,
        control: &tracevisor_lttng::control::Control,
    ) -> Capabilities {
        if !detect {
            return Capabilities::default();
        }
        if let Some((at, capabilities)) = &self.detected {
            if at.elapsed() < Self::MAX_AGE {
                return capabilities.clone();
            }
        }
        let mut capabilities = tracevisor_lttng::capabilities::detect().await;
        capabilities.lttng_control = Some(control.describe().await);
        tracing::info!(
            lttng_control = capabilities.lttng_control.as_deref().unwrap_or_default(),
            lttng = capabilities.lttng_version.as_deref().unwrap_or("not installed"),
            sessiond = capabilities.sessiond_running,
            kernel = %availability(capabilities.kernel_tracer, &capabilities.kernel_tracer_error),
            userspace = %availability(capabilities.userspace_tracer, &capabilities.userspace_tracer_error),
            babeltrace2 = capabilities.babeltrace2,
            analyses = capabilities.analyses.len(),
            "capabilities detected"
        );
        self.detected = Some((Instant::now(), capabilities.clone()));
        capabilities
    }
}

fn availability(available: bool, error: &Option<String>) -> String {
    match (available, error) {
        (true, _) => "available".to_owned(),
        (false, Some(error)) => error.clone(),
        (false, None) => "not available".to_owned(),
    }
}

/// The WebSocket configuration of the link: messages and frames bounded like the codec.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// The upgrade request: the hub URL with `Authorization: Bearer <token>`, the protocol
/// version header and a `User-Agent`.
pub fn upgrade_request(config: &AgentConfig) -> Result<Request, LinkError> {
    let url = config.coordinator.to_string();
    let request_error = |message: String| LinkError::Request {
        url: url.clone(),
        message,
    };
    let mut request = Uri::clone(&config.coordinator)
        .into_client_request()
        .map_err(|error| request_error(error.to_string()))?;
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
        .map_err(|_| request_error("the token is not a valid header value".to_owned()))?;
    authorization.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, authorization);
    headers.insert(PROTOCOL_VERSION_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("tracesd/", env!("CARGO_PKG_VERSION"))),
    );
    Ok(request)
}

/// Dials the hub and upgrades; an HTTP refusal is [`LinkError::Rejected`].
pub async fn connect(
    config: &AgentConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>, LinkError> {
    let url = config.coordinator.to_string();
    let request = upgrade_request(config)?;
    let connector = match tls {
        Some(tls) => Connector::Rustls(tls),
        None => Connector::Plain,
    };
    let timeout = config.link.connect_timeout;
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(websocket_config()),
        true,
        Some(connector),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(LinkError::ConnectTimeout { url, timeout }),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(|body| bounded_text(body, 300))
                .unwrap_or_default();
            Err(LinkError::Rejected {
                status: response.status().as_u16(),
                body,
            })
        }
        Ok(Err(source)) => Err(LinkError::Connect { url, source }),
    }
}

/// `401 Unauthorized` from `401`.
fn status_text(status: u16) -> String {
    let reason = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason());
    match reason {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// At most `max` characters of `bytes` as trimmed text.
fn bounded_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A coordinator other than `current` among `len` (`len` > 1), picked uniformly by `roll`.
fn another(current: usize, len: usize, roll: u64) -> usize {
    (current + 1 + (roll % (len as u64 - 1)) as usize) % len
}

#[cfg(test)]
mod tests;
