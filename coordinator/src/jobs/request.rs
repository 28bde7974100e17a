//! Trace requests: the body of `POST /analyses` validated into a [`JobRequest`] (one host) or
//! a [`FleetRequest`] (many hosts), every field checked and named in errors.

use serde_json::{json, Map, Value as Json};

use crate::config::Config;
use crate::registry::FieldError;
use crate::validate;

/// A validated trace request.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub host: String,
    pub duration: f64,
    pub analysis_type: String,
    pub username: String,
    pub relay: Option<String>,
    pub analysis_host: Option<String>,
    pub mongohost: Option<String>,
    pub mongoport: Option<u16>,
    pub wait: bool,
    /// Keep the trace on the host after its analysis (default: deleted once analysed).
    pub keep_trace: bool,
    /// A snapshot of this flight recorder instead of a new trace (set by
    /// `POST /recorders/{id}/snapshots`, never from a request body).
    pub snapshot_of: Option<u64>,
}

fn field_str(
    body: &Map<String, Json>,
    field: &str,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match body.get(field) {
        None | Some(Json::Null) if required => Err(FieldError::new(field, "is required")),
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

/// An optional boolean field (`default` when absent or null).
pub fn field_bool(
    body: &Map<String, Json>,
    field: &str,
    default: bool,
) -> Result<bool, FieldError> {
    match body.get(field) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a boolean, got {other}"),
        )),
    }
}

/// The required `type`: one of the configured analysis profiles (an unknown one is refused
/// with the known ones listed, sorted).
pub fn analysis_type(body: &Map<String, Json>, config: &Config) -> Result<String, FieldError> {
    let analysis_type = field_str(body, "type", true)?.unwrap_or_default();
    if !config.profiles.contains_key(&analysis_type) {
        let mut known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(FieldError::new(
            "type",
            format!(
                "unknown analysis type {analysis_type:?}; known types: {}",
                known.join(", ")
            ),
        ));
    }
    Ok(analysis_type)
}

impl JobRequest {
    /// Validates a `POST /analyses` body; errors name the field.
    pub fn parse(body: &Map<String, Json>, config: &Config) -> Result<JobRequest, FieldError> {
        let host = field_str(body, "host", true)?.unwrap_or_default();
        validate::hostname(&host).map_err(|e| FieldError::new("host", format!("{host:?} {e}")))?;
        let duration = match body.get("duration") {
            None | Some(Json::Null) => return Err(FieldError::new("duration", "is required")),
            Some(v) => v.as_f64().ok_or_else(|| {
                FieldError::new("duration", format!("must be a number of seconds, got {v}"))
            })?,
        };
        let max = config.max_duration_secs as f64;
        if !(duration > 0.0 && duration <= max) {
            return Err(FieldError::new(
                "duration",
                format!("{duration} is not in (0, {max}] seconds"),
            ));
        }
        let analysis_type = analysis_type(body, config)?;
        let username = field_str(body, "username", true)?.unwrap_or_default();
        validate::username(&username)
            .map_err(|e| FieldError::new("username", format!("{username:?} {e}")))?;
        let optional_host = |field: &str| -> Result<Option<String>, FieldError> {
            let value = field_str(body, field, false)?.filter(|s| !s.is_empty());
            if let Some(v) = &value {
                validate::hostname(v).map_err(|e| FieldError::new(field, format!("{v:?} {e}")))?;
            }
            Ok(value)
        };
        let relay = optional_host("relay")?;
        let analysis_host = optional_host("analysis")?;
        let mongohost = optional_host("mongohost")?;
        let mongoport = match body.get("mongoport") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let n = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        FieldError::new("mongoport", format!("must be a port number, got {v}"))
                    })?;
                Some(validate::port(n).map_err(|e| FieldError::new("mongoport", e))?)
            }
        };
        let wait = field_bool(body, "wait", true)?;
        let keep_trace = field_bool(body, "keep_trace", false)?;
        Ok(JobRequest {
            host,
            duration,
            analysis_type,
            username,
            relay,
            analysis_host,
            mongohost,
            mongoport,
            wait,
            keep_trace,
            snapshot_of: None,
        })
    }

    /// The request as a body [`JobRequest::parse`] takes again (for the coordinator that
    /// holds the host's agent, which validates it once more); `wait` is not carried.
    pub fn to_body(&self) -> Map<String, Json> {
        let mut body = Map::new();
        body.insert("host".into(), json!(self.host));
        body.insert("duration".into(), json!(self.duration));
        body.insert("type".into(), json!(self.analysis_type));
        body.insert("username".into(), json!(self.username));
        body.insert("keep_trace".into(), json!(self.keep_trace));
        for (field, value) in [
            ("relay", &self.relay),
            ("analysis", &self.analysis_host),
            ("mongohost", &self.mongohost),
        ] {
            if let Some(v) = value {
                body.insert(field.into(), json!(v));
            }
        }
        if let Some(port) = self.mongoport {
            body.insert("mongoport".into(), json!(port));
        }
        body
    }
}

/// Which hosts a fleet job runs on.
#[derive(Debug, Clone)]
pub enum HostSelection {
    /// These hosts.
    List(Vec<String>),
    /// Every connected agent, optionally only those with the given capabilities.
    Agents { require: Vec<String> },
}

impl HostSelection {
    /// Validates a request's `hosts`: a list of hosts, or the connected-agent selector
    /// `{"agents": "connected", "require": [...]}`.
    pub fn parse(value: Option<&Json>) -> Result<HostSelection, FieldError> {
        let hosts = match value {
            Some(Json::Array(items)) => {
                if items.is_empty() || items.len() > MAX_FLEET_HOSTS {
                    return Err(FieldError::new(
                        "hosts",
                        format!("must list 1 to {MAX_FLEET_HOSTS} hosts"),
                    ));
                }
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    let host = item.as_str().ok_or_else(|| {
                        FieldError::new("hosts", format!("must be strings, got {item}"))
                    })?;
                    validate::hostname(host)
                        .map_err(|e| FieldError::new("hosts", format!("{host:?} {e}")))?;
                    if list.iter().any(|h| h == host) {
                        return Err(FieldError::new(
                            "hosts",
                            format!("{host:?} is listed twice"),
                        ));
                    }
                    list.push(host.to_owned());
                }
                HostSelection::List(list)
            }
            Some(Json::Object(selector)) => {
                if selector.get("agents").and_then(Json::as_str) != Some("connected") {
                    return Err(FieldError::new(
                        "hosts",
                        "a selector must be {\"agents\": \"connected\", \"require\": [...]}",
                    ));
                }
                let require = match selector.get("require") {
                    None | Some(Json::Null) => Vec::new(),
                    Some(Json::Array(items)) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .filter(|c| CAPABILITIES.contains(c))
                                .map(str::to_owned)
                                .ok_or_else(|| {
                                    FieldError::new(
                                        "hosts",
                                        format!(
                                            "unknown capability {i}; known: {}",
                                            CAPABILITIES.join(", ")
                                        ),
                                    )
                                })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(FieldError::new(
                            "hosts",
                            format!("require must be a list, got {other}"),
                        ))
                    }
                };
                HostSelection::Agents { require }
            }
            other => {
                return Err(FieldError::new(
                    "hosts",
                    format!(
                        "must be a list of hosts or a selector, got {}",
                        other.unwrap_or(&Json::Null)
                    ),
                ))
            }
        };
        Ok(hosts)
    }
}

/// A validated fleet request: the same analysis on many hosts.
#[derive(Debug, Clone)]
pub struct FleetRequest {
    pub hosts: HostSelection,
    /// The request each child job is made from (its `host` is replaced).
    pub template: JobRequest,
    /// Seconds each host may take beyond the duration before its outcome is `timeout`.
    pub host_timeout: f64,
}

/// Default `host_timeout`: room for session set-up, flush and analysis.
pub const DEFAULT_HOST_TIMEOUT: f64 = 120.0;
/// Most hosts one fleet request may name.
pub const MAX_FLEET_HOSTS: usize = 10_000;
/// Capabilities a fleet selector may require.
pub const CAPABILITIES: [&str; 4] = [
    "kernel_tracer",
    "userspace_tracer",
    "babeltrace2",
    "sessiond_running",
];

pub fn capability(caps: &tracevisor_protocol::Capabilities, name: &str) -> bool {
    match name {
        "kernel_tracer" => caps.kernel_tracer,
        "userspace_tracer" => caps.userspace_tracer,
        "babeltrace2" => caps.babeltrace2,
        "sessiond_running" => caps.sessiond_running,
        _ => false,
    }
}

impl FleetRequest {
    /// Validates a `POST /analyses` body that has `hosts`.
    pub fn parse(body: &Map<String, Json>, config: &Config) -> Result<FleetRequest, FieldError> {
        let hosts = HostSelection::parse(body.get("hosts"))?;
        if body.contains_key("host") {
            return Err(FieldError::new(
                "host",
                "give either host or hosts, not both",
            ));
        }
        let mut single = body.clone();
        single.insert("host".into(), json!("fleet.invalid"));
        let template = JobRequest::parse(&single, config)?;
        let host_timeout = match body.get("host_timeout") {
            None | Some(Json::Null) => DEFAULT_HOST_TIMEOUT,
            Some(v) => v
                .as_f64()
                .filter(|t| *t > 0.0 && *t <= 24.0 * 3600.0)
                .ok_or_else(|| {
                    FieldError::new(
                        "host_timeout",
                        format!("must be seconds in (0, 86400], got {v}"),
                    )
                })?,
        };
        Ok(FleetRequest {
            hosts,
            template,
            host_timeout,
        })
    }
}
