//! HTTP client of the REST API: one place that turns transport failures and error answers
//! into [`CliError`]s with the right exit code, and a Server-Sent Events reader for
//! `GET /jobs/{id}/events`.

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

use super::{
    CliError, Settings, EXIT_NOT_FOUND, EXIT_OTHER, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE,
};

/// Base path of the REST API.
pub const API_BASE: &str = "/trace/api/v1.0";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence on the event stream (the server sends a keep-alive every 15 s).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host:port`, as given (for messages).
    server: String,
    /// `scheme://host:port/trace/api/v1.0`.
    base: String,
    token: Option<String>,
}

/// An answer: status, `Location` header and JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: Json,
}

impl Client {
    /// Builds the client; a malformed URL or an unreadable CA file is a usage error.
    pub fn new(settings: &Settings) -> Result<Client, CliError> {
        let server = normalize_server(&settings.server)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tracevisor-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::usage(format!("cannot read --ca-cert {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CliError::usage(format!(
                    "--ca-cert {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(CliError::usage(format!(
                    "--ca-cert {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::other(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: format!("{server}{API_BASE}"),
            server,
            token: settings.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// The coordinator URL (`http://127.0.0.1:5000`).
    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }

    /// Sends a request and reads the whole answer; only transport failures are errors.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Answer, CliError> {
        let mut rb = self.request(method, path).timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.map_err(|e| self.transport_error(&e))?;
        let body = if text.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Json::String(text))
        };
        Ok(Answer {
            status,
            location,
            body,
        })
    }

    /// Sends a request; a non-2xx answer is an error (see [`Client::answer_error`]).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Json, CliError> {
        let answer = self.send(method, path, body).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(self.answer_error(&answer))
        }
    }

    pub async fn get(&self, path: &str) -> Result<Json, CliError> {
        self.call(Method::GET, path, None).await
    }

    /// The error of a non-2xx answer: 404 → not found (5), other 4xx → refused (4),
    /// anything else → other (1). The server's message is quoted.
    pub fn answer_error(&self, answer: &Answer) -> CliError {
        let status = answer.status;
        let message = error_message(&answer.body);
        let code = status.as_u16();
        match status {
            StatusCode::UNAUTHORIZED => CliError::new(
                EXIT_REFUSED,
                format!(
                    "{} refused the request (401: {message}); pass its API token with --token or TRACEVISOR_TOKEN (the coordinator keeps it in DATA_DIR/api-token)",
                    self.server
                ),
            ),
            StatusCode::NOT_FOUND => CliError::new(EXIT_NOT_FOUND, format!("{message} (404)")),
            s if s.is_client_error() => CliError::new(
                EXIT_REFUSED,
                format!("the server refused the request ({code}): {message}"),
            ),
            _ => CliError::new(
                EXIT_OTHER,
                format!("the server failed ({code}): {message}; see the coordinator's log"),
            ),
        }
    }

    /// The error of a request that got no answer.
    pub fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let reason = root_cause(e);
        let lower = reason.to_ascii_lowercase();
        if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            return CliError::new(
                EXIT_UNREACHABLE,
                format!(
                    "cannot reach {} over TLS ({reason}); it may serve plain http: try --server http://...",
                    self.server
                ),
            );
        }
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            return CliError::new(
                EXIT_UNREACHABLE,
                format!(
                    "cannot reach {} over TLS ({reason}); pass the CA that signed its certificate with --ca-cert FILE",
                    self.server
                ),
            );
        }
        if e.is_connect() || e.is_timeout() || e.is_request() {
            let what = if e.is_timeout() && !e.is_connect() {
                format!("no answer from {} in time ({reason})", self.server)
            } else {
                format!("cannot reach {} ({reason})", self.server)
            };
            return CliError::new(
                EXIT_UNREACHABLE,
                format!("{what}; is `tracevisor serve` running? (--server / TRACEVISOR_SERVER)"),
            );
        }
        CliError::new(
            EXIT_OTHER,
            format!("bad answer from {} ({reason})", self.server),
        )
    }

    /// Starts a download (`GET path` with `accept`): the response once its status is a
    /// success, with the body left to read (no overall timeout: the caller bounds each read).
    pub async fn download(&self, path: &str, accept: &str) -> Result<reqwest::Response, CliError> {
        let resp = self
            .request(Method::GET, path)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Json::String(text));
        Err(self.answer_error(&Answer {
            status,
            location: None,
            body,
        }))
    }

    /// Opens `GET /jobs/{id}/events`; `None` when the server has no such endpoint or job (404).
    pub async fn events(&self, id: u64) -> Result<Option<EventStream>, CliError> {
        let resp = self
            .request(Method::GET, &format!("/jobs/{id}/events"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(None);
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Json::String(text));
            return Err(self.answer_error(&Answer {
                status,
                location: None,
                body,
            }));
        }
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Ok(None);
        }
        Ok(Some(EventStream {
            resp,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            client: self.clone(),
        }))
    }
}

/// `host:port`, `http://host:port/`, `https://host/trace/api/v1.0` → `scheme://host:port`.
pub fn normalize_server(raw: &str) -> Result<String, CliError> {
    let trimmed = raw.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        CliError::new(
            EXIT_USAGE,
            format!("--server {raw:?} is not a URL ({e}); e.g. http://127.0.0.1:5000"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CliError::new(
            EXIT_USAGE,
            format!("--server {raw:?} must be an http:// or https:// URL with a host"),
        ));
    }
    let text = url.as_str().trim_end_matches('/');
    let text = text.strip_suffix(API_BASE).unwrap_or(text);
    Ok(text.trim_end_matches('/').to_owned())
}

/// The innermost cause of an error, without the `(os error N)` suffix.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// The message of an error answer: `{"error": "..."}` (registry) or `{"error": {"message"}}`
/// (a failed job), with the `field` and `known` values when present.
pub fn error_message(body: &Json) -> String {
    let mut message = match &body["error"] {
        Json::String(s) => s.clone(),
        Json::Object(o) => o
            .get("message")
            .and_then(Json::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| Json::Object(o.clone()).to_string()),
        _ => match body {
            Json::String(s) => s.chars().take(200).collect(),
            Json::Null => "no details".to_owned(),
            other => other.to_string().chars().take(200).collect(),
        },
    };
    if let Some(field) = body["field"].as_str() {
        if !message.contains(field) {
            message = format!("{message} (field {field})");
        }
    }
    if let Some(known) = body["known"].as_array() {
        let names: Vec<&str> = known.iter().filter_map(Json::as_str).collect();
        if !names.is_empty() && !names.iter().all(|n| message.contains(n)) {
            message = format!("{message}; known: {}", names.join(", "));
        }
    }
    super::one_line(&message)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser of a `text/event-stream` body (bytes may split anywhere).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseEvent {
                        event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                        data,
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        out
    }
}

/// The open event stream of a job.
pub struct EventStream {
    resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    client: Client,
}

impl EventStream {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, CliError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let chunk = tokio::time::timeout(STREAM_IDLE_TIMEOUT, self.resp.chunk())
                .await
                .map_err(|_| {
                    CliError::new(
                        EXIT_UNREACHABLE,
                        format!(
                            "the event stream of {} went silent for {} s",
                            self.client.server,
                            STREAM_IDLE_TIMEOUT.as_secs()
                        ),
                    )
                })?
                .map_err(|e| self.client.transport_error(&e))?;
            match chunk {
                Some(bytes) => self.pending.extend(self.parser.feed(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_urls_are_normalized() {
        assert_eq!(
            normalize_server("127.0.0.1:5000").as_deref(),
            Ok("http://127.0.0.1:5000")
        );
        assert_eq!(
            normalize_server("http://h:5000/").as_deref(),
            Ok("http://h:5000")
        );
        assert_eq!(
            normalize_server("https://h/trace/api/v1.0/").as_deref(),
            Ok("https://h")
        );
        assert_eq!(
            normalize_server("ftp://h").map_err(|e| e.code),
            Err(EXIT_USAGE)
        );
        assert_eq!(
            normalize_server("http://").map_err(|e| e.code),
            Err(EXIT_USAGE)
        );
    }

    #[test]
    fn sse_events_split_anywhere() {
        let text = ": keep-alive\n\nevent: status\ndata: {\"jobid\":1,\"status\":2}\n\nevent: progress\r\ndata: {\"fraction\":0.5}\r\n\r\ndata: a\ndata: b\n\nevent: done\ndata: {}\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut events = p.feed(&text.as_bytes()[..split]);
            events.extend(p.feed(&text.as_bytes()[split..]));
            assert_eq!(events.len(), 4, "split at {split}");
            assert_eq!(events[0].event, "status");
            assert_eq!(events[0].data, "{\"jobid\":1,\"status\":2}");
            assert_eq!(events[1].event, "progress");
            assert_eq!(events[2].event, "message");
            assert_eq!(events[2].data, "a\nb");
            assert_eq!(events[3].event, "done");
        }
    }

    #[test]
    fn error_messages_quote_the_server() {
        assert_eq!(
            error_message(
                &json!({"error": "invalid duration: must be above 0", "status": 422, "field": "duration"})
            ),
            "invalid duration: must be above 0"
        );
        assert_eq!(
            error_message(&json!({"error": "must be an integer", "field": "sshport"})),
            "must be an integer (field sshport)"
        );
        assert_eq!(
            error_message(
                &json!({"error": {"step": "kernel", "host": "h", "message": "no\nkernel tracer"}})
            ),
            "no kernel tracer"
        );
        assert_eq!(
            error_message(&json!({"error": "unknown type \"x\"", "known": ["cpu", "io"]})),
            "unknown type \"x\"; known: cpu, io"
        );
    }
}
