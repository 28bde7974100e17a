//! The agent's configuration: command-line flags, `TRACESD_*` environment variables and a
//! TOML file (flags win over the environment, which wins over the file), validated with
//! errors that name the key.
//!
//! The file takes the same keys as the flags:
//!
//! ```toml
//! coordinator = "wss://coordinator.example:5000"
//! credential = "tvc1_..."       # this host's own credential, written by `tracesd enroll`
//! hostname = "web-1"            # default: the system's hostname
//! # SHA-256 fingerprints of the coordinator's certificate, pinned by `tracesd enroll`:
//! coordinator_fingerprints = ["sha256:..."]
//! ca_cert = "/etc/tracesd/ca.pem" # default: the system's root certificates
//! # Analysis programs run beyond the lttng-*-mi analyses and babeltrace2 (absolute paths).
//! analysis_programs = ["/usr/local/bin/my-analysis-mi"]
//! # Output directories of this host's lttng-relayd, read by analysis-only jobs.
//! relay_roots = ["/var/lib/lttng-relayd"]
//! # How LTTng is driven: "auto" (liblttng-ctl when usable, else the lttng CLI), "library"
//! # or "cli"; and where liblttng-ctl is (default: liblttng-ctl.so.0 where the loader looks).
//! lttng_control = "auto"
//! lttng_ctl_library = "/usr/lib/x86_64-linux-gnu/liblttng-ctl.so.0"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Uri;
use tracevisor_protocol::HUB_PATH;

/// Command-line flags of `tracesd`, each also read from its `TRACESD_*` variable.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "tracesd",
    version,
    about = "Tracevisor agent: keeps an outbound link to the coordinator and runs LTTng on this host",
    // Help is printed as written, never wrapped to the terminal (the man page tests read it).
    term_width = 0
)]
pub struct Cli {
    /// Coordinator URL: ws(s)://host:port[/path]; http(s):// is accepted, and with no path the
    /// hub path /trace/api/v1.0/agents is used. Given several times (or comma-separated in
    /// TRACESD_COORDINATOR), the agent starts with one picked at random and moves to another
    /// when a link fails.
    #[arg(
        long,
        env = "TRACESD_COORDINATOR",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub coordinator: Vec<String>,
    /// This host's own credential, as `tracesd enroll` wrote it (prefer the config file or
    /// the environment: flags are visible to other users in the process list).
    #[arg(
        long,
        env = "TRACESD_CREDENTIAL",
        value_name = "CREDENTIAL",
        hide_env_values = true
    )]
    pub credential: Option<String>,
    /// The shared enrollment token: only `tracesd enroll` uses it, to obtain the credential.
    /// Kept so that a configuration holding only it is refused with what to do.
    #[arg(
        long,
        env = "TRACESD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub token: Option<String>,
    /// Name this host registers under [default: the system's hostname].
    #[arg(long, env = "TRACESD_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// PEM file of the CA certificates to trust for wss:// [default: the system's roots].
    #[arg(long, env = "TRACESD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// TOML configuration file with the same keys (coordinator, token, hostname, ca_cert).
    #[arg(long, env = "TRACESD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Allow ws:// (plaintext) to a coordinator that is not on this host: the token and the
    /// commands this root agent runs then cross the network in clear (a trusted network only).
    #[arg(long, env = "TRACESD_INSECURE_WS")]
    pub insecure_ws: bool,
    /// How jobs drive LTTng: `auto` (the host's liblttng-ctl when it loads and matches the
    /// session daemon's version, else the `lttng` CLI), `library` (refuse to start without
    /// it) or `cli` [default: auto].
    #[arg(long, env = "TRACESD_LTTNG_CONTROL", value_name = "auto|library|cli")]
    pub lttng_control: Option<tracevisor_lttng::control::ControlChoice>,
    /// The liblttng-ctl to load [default: liblttng-ctl.so.0, where the dynamic loader looks].
    #[arg(long, env = "TRACESD_LTTNG_CTL_LIBRARY", value_name = "FILE")]
    pub lttng_ctl_library: Option<PathBuf>,
}

/// The keys of the TOML configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Cli::coordinator`].
    pub coordinator: Option<String>,
    /// More coordinators sharing the same registry, to move to when a link fails (see
    /// [`Cli::coordinator`]); `coordinator` is one of the set.
    pub coordinators: Option<Vec<String>>,
    /// See [`Cli::credential`].
    pub credential: Option<String>,
    /// See [`Cli::token`].
    pub token: Option<String>,
    /// SHA-256 fingerprints of the coordinator's TLS certificate (`sha256:` and 64 hex
    /// digits, colons allowed): the agent accepts only a coordinator presenting one of them.
    pub coordinator_fingerprints: Option<Vec<String>>,
    /// See [`Cli::hostname`].
    pub hostname: Option<String>,
    /// See [`Cli::ca_cert`]; a relative path is relative to the file's directory.
    pub ca_cert: Option<PathBuf>,
    /// Analysis programs this host runs beyond the built-in ones (absolute paths).
    pub analysis_programs: Option<Vec<PathBuf>>,
    /// See [`Cli::insecure_ws`].
    pub insecure_ws: Option<bool>,
    /// Output directories of the `lttng-relayd` on this host (its `--output`), where
    /// analysis-only jobs may read traces besides the agent's own trace root (absolute paths).
    pub relay_roots: Option<Vec<PathBuf>>,
    /// Kept traces older than this are deleted (default: a week; at least 3 hours).
    pub trace_retention_secs: Option<u64>,
    /// Beyond this many MiB in the trace root, the oldest kept traces are deleted (default:
    /// 10 GiB).
    pub trace_quota_mib: Option<u64>,
    /// Where jobs write local traces (default: /var/lib/tracesd/traces); an absolute path,
    /// created mode 0700 and checked before each job like the default.
    pub trace_root: Option<PathBuf>,
    /// See [`Cli::lttng_control`].
    pub lttng_control: Option<tracevisor_lttng::control::ControlChoice>,
    /// See [`Cli::lttng_ctl_library`].
    pub lttng_ctl_library: Option<PathBuf>,
}

/// An invalid or missing setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has no value or an invalid one.
    #[error("{key}: {message}")]
    Invalid {
        /// The key (as in the config file; flags and variables use the same name).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The config file could not be read or parsed.
    #[error("config file {}: {message}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The enrollment token; its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Validates a token: non-empty printable ASCII without spaces (it goes in an HTTP header).
    pub fn new(token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.trim().is_empty() {
            return Err(invalid("token", "must not be empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("token", "must be printable ASCII without spaces"));
        }
        Ok(Self(token))
    }

    /// The token itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Timeouts, backoff and other tuning of the link; the defaults suit production.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Bound on TCP connect, TLS handshake and WebSocket upgrade together.
    pub connect_timeout: Duration,
    /// Bound on the wait for `HelloAck` after the upgrade.
    pub hello_timeout: Duration,
    /// Bound on sending one frame (a peer that stops reading must not block the agent).
    pub send_timeout: Duration,
    /// Bound on each step of closing the link.
    pub close_timeout: Duration,
    /// Backoff: the first retry waits at most this long.
    pub backoff_base: Duration,
    /// Backoff: no retry waits longer than this.
    pub backoff_cap: Duration,
    /// A link that stayed up this long resets the backoff, so its loss is retried quickly.
    pub stable_after: Duration,
    /// Whether to detect the capabilities before each hello (false sends empty ones: for
    /// tests and simulators).
    pub detect_capabilities: bool,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            detect_capabilities: true,
        }
    }
}

/// Everything the agent needs to run, validated.
#[derive(Clone)]
pub struct AgentConfig {
    /// The full WebSocket URL of the coordinator's hub (`ws://` or `wss://`) the link dials.
    pub coordinator: Uri,
    /// Every coordinator the agent may dial (`coordinator` among them), all `ws://` or all
    /// `wss://`: the link starts with one picked at random and moves to another one at random when it fails.
    pub coordinators: Vec<Uri>,
    /// What the link authenticates with, sent as `Authorization: Bearer <token>`: this host's
    /// credential (or the enrollment token, on `tracesd enroll`'s enrollment link).
    pub token: Token,
    /// Fingerprints of the coordinator's certificate the agent accepts (none: any certificate
    /// that chains to `ca_cert` or the system roots).
    pub coordinator_fingerprints: Vec<crate::tls::Fingerprint>,
    /// The name this host registers under (a lowercase DNS name).
    pub hostname: String,
    /// CA certificates to trust for `wss://` instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// A ready TLS client configuration, used instead of `ca_cert` and the system roots when
    /// set (for agents embedded in other programs, and tests).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Timeouts, backoff and other link tuning.
    pub link: LinkSettings,
    /// Analysis programs this host runs beyond the `lttng-*-mi` analyses and `babeltrace2`
    /// (absolute paths; see [`crate::allow`]).
    pub analysis_programs: Vec<PathBuf>,
    /// Output directories of the relay daemon on this host, where analysis-only jobs may read
    /// traces besides the agent's own trace root (absolute paths).
    pub relay_roots: Vec<PathBuf>,
    /// Retention and quota of the traces jobs keep on this host.
    pub trace_policy: tracevisor_lttng::lifecycle::TracePolicy,
    /// Where jobs write local traces (`None`: the default root).
    pub trace_root: Option<PathBuf>,
    /// How jobs drive LTTng (liblttng-ctl or the CLI).
    pub lttng_control: tracevisor_lttng::control::ControlChoice,
    /// The liblttng-ctl to load (`None`: the soname, where the dynamic loader looks).
    pub lttng_ctl_library: Option<PathBuf>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("coordinator", &self.coordinator.to_string())
            .field(
                "coordinators",
                &self
                    .coordinators
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("token", &self.token)
            .field("hostname", &self.hostname)
            .field("ca_cert", &self.ca_cert)
            .field("coordinator_fingerprints", &self.coordinator_fingerprints)
            .field("tls", &self.tls.as_ref().map(|_| "<client config>"))
            .field("link", &self.link)
            .field("analysis_programs", &self.analysis_programs)
            .field("relay_roots", &self.relay_roots)
            .field("trace_policy", &self.trace_policy)
            .field("trace_root", &self.trace_root)
            .field("lttng_control", &self.lttng_control)
            .field("lttng_ctl_library", &self.lttng_ctl_library)
            .finish()
    }
}

impl AgentConfig {
    /// A validated configuration with default link settings and the system roots; for
    /// programs that embed an agent (the coordinator's local agent, tests).
    pub fn new(coordinator: &str, token: &str, hostname: &str) -> Result<Self, ConfigError> {
        let coordinator = hub_url(coordinator)?;
        Ok(Self {
            coordinators: vec![coordinator.clone()],
            coordinator,
            token: Token::new(token)?,
            hostname: validate_hostname(hostname)?,
            coordinator_fingerprints: Vec::new(),
            ca_cert: None,
            tls: None,
            link: LinkSettings::default(),
            analysis_programs: Vec::new(),
            relay_roots: Vec::new(),
            trace_policy: Default::default(),
            trace_root: None,
            lttng_control: Default::default(),
            lttng_ctl_library: None,
        })
    }

    /// Reads the config file named by `cli.config` (if any) and merges it under the flags.
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Merges flags (and environment, already folded into `cli` by clap) over the file, then
    /// validates. The link authenticates with the host's credential; a configuration that
    /// holds only the enrollment token is refused with the command that fixes it.
    pub fn merge(cli: Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let credential = cli.credential.clone().or(file.credential.clone());
        let token = match credential {
            Some(credential) => {
                if tracevisor_protocol::split_credential(credential.trim()).is_none() {
                    return Err(invalid(
                        "credential",
                        "not a Tracevisor agent credential (tvc1_...): copy it as `tracesd enroll` wrote it, or enroll again",
                    ));
                }
                credential.trim().to_owned()
            }
            None if cli.token.is_some() || file.token.is_some() => {
                return Err(invalid(
                    "credential",
                    "missing: this configuration has only the shared enrollment token (`token`), which no longer opens a link; run `tracesd enroll --coordinator URL --token TOKEN` on this host to obtain its own credential (the file is rewritten with it)",
                ))
            }
            None => {
                return Err(invalid(
                    "credential",
                    "missing (run `tracesd enroll --coordinator URL --token TOKEN`, or set `credential` in the config file or TRACESD_CREDENTIAL)",
                ))
            }
        };
        Self::merge_with(cli, file, token)
    }

    /// The configuration of `tracesd enroll`'s enrollment link: as [`AgentConfig::merge`], but
    /// authenticated with the enrollment token.
    pub fn for_enrollment(cli: Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let token = cli.token.clone().or(file.token.clone()).ok_or_else(|| {
            invalid(
                "token",
                "missing (set TRACESD_TOKEN or --token: the enrollment token printed by `tracevisor agent-token`)",
            )
        })?;
        Self::merge_with(cli, file, token)
    }

    fn merge_with(cli: Cli, file: FileConfig, token: String) -> Result<Self, ConfigError> {
        let listed: Vec<String> = if cli.coordinator.is_empty() {
            file.coordinator
                .into_iter()
                .chain(file.coordinators.unwrap_or_default())
                .collect()
        } else {
            cli.coordinator
        };
        if listed.is_empty() {
            return Err(invalid(
                "coordinator",
                "missing (set --coordinator, TRACESD_COORDINATOR or `coordinator` in the config file)",
            ));
        }
        let coordinator_fingerprints = file
            .coordinator_fingerprints
            .unwrap_or_default()
            .iter()
            .map(|text| {
                crate::tls::Fingerprint::parse(text)
                    .map_err(|why| invalid("coordinator_fingerprints", why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hostname = match cli.hostname.or(file.hostname) {
            Some(name) => name,
            None => crate::host::system_hostname().ok_or_else(|| {
                invalid(
                    "hostname",
                    "the system has no hostname: set --hostname or TRACESD_HOSTNAME",
                )
            })?,
        };
        let ca_cert = cli.ca_cert.or(file.ca_cert);
        if let Some(path) = &ca_cert {
            crate::tls::load_ca_file(path)
                .map_err(|error| invalid("ca_cert", error.to_string()))?;
        }
        // Every URL's form first, then the hostname, then plaintext (as with one coordinator).
        let mut coordinators: Vec<Uri> = Vec::new();
        for text in &listed {
            let url = hub_url(text.trim())?;
            if !coordinators.contains(&url) {
                coordinators.push(url);
            }
        }
        let hostname = validate_hostname(&hostname)?;
        let insecure_ws = cli.insecure_ws || file.insecure_ws.unwrap_or(false);
        for url in &coordinators {
            refuse_plaintext(url, insecure_ws)?;
        }
        let coordinator = coordinators[0].clone();
        if coordinators
            .iter()
            .any(|c| c.scheme_str() != coordinator.scheme_str())
        {
            return Err(invalid(
                "coordinator",
                "the coordinators mix ws:// and wss://: use one scheme for all",
            ));
        }
        let analysis_programs = file.analysis_programs.unwrap_or_default();
        if let Some(bad) = analysis_programs.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "analysis_programs",
                format!("{} is not an absolute path", bad.display()),
            ));
        }
        let mut trace_policy = tracevisor_lttng::lifecycle::TracePolicy::default();
        if let Some(secs) = file.trace_retention_secs {
            let min = tracevisor_lttng::lifecycle::TRACE_MIN_AGE.as_secs();
            if secs < min {
                return Err(invalid(
                    "trace_retention_secs",
                    format!("{secs} is under {min} (a younger trace may be a running job's)"),
                ));
            }
            trace_policy.retention = Duration::from_secs(secs);
        }
        if let Some(mib) = file.trace_quota_mib {
            if mib == 0 {
                return Err(invalid("trace_quota_mib", "must be at least 1"));
            }
            trace_policy.quota_bytes = mib.saturating_mul(1 << 20);
        }
        if let Some(bad) = file.trace_root.as_ref().filter(|p| {
            !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        }) {
            return Err(invalid(
                "trace_root",
                format!("{} is not an absolute path without `..`", bad.display()),
            ));
        }
        let relay_roots = file.relay_roots.unwrap_or_default();
        if let Some(bad) = relay_roots.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "relay_roots",
                format!("{} is not an absolute path", bad.display()),
            ));
        }
        Ok(Self {
            coordinator,
            coordinators,
            token: Token::new(token)?,
            hostname,
            coordinator_fingerprints,
            ca_cert,
            tls: None,
            link: LinkSettings::default(),
            analysis_programs,
            relay_roots,
            trace_policy,
            trace_root: file.trace_root,
            lttng_control: cli.lttng_control.or(file.lttng_control).unwrap_or_default(),
            lttng_ctl_library: cli.lttng_ctl_library.or(file.lttng_ctl_library),
        })
    }

    /// Whether the link uses TLS (`wss://`).
    pub fn is_secure(&self) -> bool {
        self.coordinator.scheme_str() == Some("wss")
    }
}

/// Parses a TOML config file; a relative `ca_cert` is taken relative to the file's directory.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| file_error(format!("cannot read: {error}")))?;
    let mut file: FileConfig =
        toml::from_str(&text).map_err(|error| file_error(error.message().to_owned()))?;
    if let (Some(ca_cert), Some(dir)) = (&file.ca_cert, path.parent()) {
        if ca_cert.is_relative() {
            file.ca_cert = Some(dir.join(ca_cert));
        }
    }
    Ok(file)
}

/// The hub's WebSocket URL from what the user gave: `http`/`https` become `ws`/`wss`, and an
/// empty path becomes [`HUB_PATH`].
pub fn hub_url(input: &str) -> Result<Uri, ConfigError> {
    let key = "coordinator";
    let uri: Uri = input
        .trim()
        .parse()
        .map_err(|error| invalid(key, format!("`{input}` is not a valid URL: {error}")))?;
    let scheme = match uri.scheme_str() {
        Some("ws" | "http") => "ws",
        Some("wss" | "https") => "wss",
        Some(other) => {
            return Err(invalid(
                key,
                format!("unsupported scheme `{other}` in `{input}` (use ws:// or wss://)"),
            ))
        }
        None => {
            return Err(invalid(
                key,
                format!("`{input}` has no scheme (use ws://host:port or wss://host:port)"),
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(key, format!("`{input}` has no host")))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            key,
            "credentials in the URL are not supported (use the token)",
        ));
    }
    if authority.host().is_empty() {
        return Err(invalid(key, format!("`{input}` has no host")));
    }
    let path_and_query = match uri.path_and_query().map(|pq| pq.as_str()) {
        None | Some("" | "/") => HUB_PATH,
        Some(pq) => pq,
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|error| invalid(key, format!("`{input}` is not a valid URL: {error}")))
}

/// Refuses `ws://` to another host unless `insecure` says so: over the network in clear, the
/// enrollment token can be read and a man in the middle can send this root agent its jobs.
fn refuse_plaintext(coordinator: &Uri, insecure: bool) -> Result<(), ConfigError> {
    let host = coordinator.host().unwrap_or_default();
    if coordinator.scheme_str() != Some("ws")
        || insecure
        || tracevisor_protocol::is_loopback_host(host)
    {
        return Ok(());
    }
    Err(invalid(
        "coordinator",
        format!(
            "ws://{host} is plaintext over the network: the enrollment token and the commands this agent runs as root would cross it in clear; use wss:// (with --ca-cert for a private CA), or set insecure_ws = true (--insecure-ws, TRACESD_INSECURE_WS) on a network you trust"
        ),
    ))
}

/// Checks a DNS hostname (RFC 1123: labels of 1 to 63 letters, digits and inner hyphens, 253
/// characters at most) and lowercases it.
pub fn validate_hostname(name: &str) -> Result<String, ConfigError> {
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 253 {
        Some("is longer than 253 characters")
    } else if name.split('.').any(|label| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        Some("is not a valid DNS name (dot-separated labels of 1 to 63 letters, digits and inner hyphens)")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid("hostname", format!("`{name}` {problem}"))),
        None => Ok(name.to_ascii_lowercase()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser as _;

    use super::*;

    const FLAG_CREDENTIAL: &str =
        "tvc1_00000000000000f1_1111111111111111111111111111111111111111111111111111111111111111";
    const FILE_CREDENTIAL: &str =
        "tvc1_00000000000000f2_2222222222222222222222222222222222222222222222222222222222222222";

    /// Flags for `coordinator` (plaintext to any host allowed: these tests are about merging).
    fn cli(coordinator: &str, credential: &str) -> Cli {
        Cli {
            coordinator: vec![coordinator.into()],
            credential: Some(credential.into()),
            hostname: Some("web-1".into()),
            insecure_ws: true,
            ..Cli::default()
        }
    }

    #[test]
    fn several_coordinators_from_flags_or_the_file_one_scheme() {
        let file = FileConfig {
            coordinator: Some("ws://a:5000".into()),
            coordinators: Some(vec![
                "ws://b:5000".into(),
                "ws://a:5000".into(),
                "http://c:5000".into(),
            ]),
            credential: Some(FILE_CREDENTIAL.into()),
            hostname: Some("web-1".into()),
            insecure_ws: Some(true),
            ..FileConfig::default()
        };
        let merged = AgentConfig::merge(Cli::default(), file.clone()).unwrap();
        let urls: Vec<String> = merged
            .coordinators
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            urls,
            [
                "ws://a:5000/trace/api/v1.0/agents",
                "ws://b:5000/trace/api/v1.0/agents",
                "ws://c:5000/trace/api/v1.0/agents"
            ],
            "the file's coordinator first, the others after, each once"
        );
        assert_eq!(merged.coordinator, merged.coordinators[0]);
        // Flags replace the file's list.
        let flags = Cli {
            coordinator: vec!["ws://x:1".into(), "ws://y:1".into()],
            ..cli("unused", FLAG_CREDENTIAL)
        };
        let merged = AgentConfig::merge(flags, file.clone()).unwrap();
        assert_eq!(merged.coordinators.len(), 2);
        assert_eq!(merged.coordinator.host(), Some("x"));
        // One scheme for all; plaintext rules apply to each.
        let mixed = Cli {
            coordinator: vec!["wss://x:1".into(), "ws://y:1".into()],
            ..cli("unused", FLAG_CREDENTIAL)
        };
        let error = AgentConfig::merge(mixed, FileConfig::default()).unwrap_err();
        assert!(
            error.to_string().contains("mix ws:// and wss://"),
            "{error}"
        );
        let strict = Cli {
            coordinator: vec!["ws://127.0.0.1:1".into(), "ws://10.0.0.5:1".into()],
            insecure_ws: false,
            ..cli("unused", FLAG_CREDENTIAL)
        };
        assert!(AgentConfig::merge(strict, FileConfig::default()).is_err());
    }

    #[test]
    fn plaintext_to_another_host_is_refused_unless_said_insecure() {
        let strict = |url: &str| Cli {
            insecure_ws: false,
            ..cli(url, FLAG_CREDENTIAL)
        };
        for url in [
            "ws://10.0.0.5:5000",
            "http://coordinator.example:5000",
            "ws://[fe80::1]:1",
        ] {
            let error = AgentConfig::merge(strict(url), FileConfig::default()).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("coordinator: ws://"), "{text}");
            assert!(text.contains("insecure_ws"), "{text}");
        }
        for url in [
            "ws://127.0.0.1:5000",
            "ws://127.0.0.2:5000",
            "ws://localhost:5000",
            "ws://[::1]:5000",
            "wss://10.0.0.5:5000",
        ] {
            AgentConfig::merge(strict(url), FileConfig::default()).unwrap();
        }
        AgentConfig::merge(
            cli("ws://10.0.0.5:5000", FLAG_CREDENTIAL),
            FileConfig::default(),
        )
        .unwrap();
        let file = FileConfig {
            insecure_ws: Some(true),
            ..FileConfig::default()
        };
        AgentConfig::merge(strict("ws://10.0.0.5:5000"), file).unwrap();
    }

    #[test]
    fn hub_url_forms() {
        let cases = [
            (
                "ws://127.0.0.1:5000",
                "ws://127.0.0.1:5000/trace/api/v1.0/agents",
            ),
            (
                "ws://127.0.0.1:5000/",
                "ws://127.0.0.1:5000/trace/api/v1.0/agents",
            ),
            ("http://h:5000", "ws://h:5000/trace/api/v1.0/agents"),
            ("https://h", "wss://h/trace/api/v1.0/agents"),
            ("wss://h:443/custom/hub", "wss://h:443/custom/hub"),
            (
                "ws://127.0.0.1:5000/trace/api/v1.0/agents",
                "ws://127.0.0.1:5000/trace/api/v1.0/agents",
            ),
            ("ws://[::1]:5000", "ws://[::1]:5000/trace/api/v1.0/agents"),
        ];
        for (input, expected) in cases {
            assert_eq!(hub_url(input).unwrap().to_string(), expected, "{input}");
        }
    }

    #[test]
    fn hub_url_errors_name_the_key() {
        for input in [
            "ftp://h",
            "h:5000",
            "/path",
            "ws://user:pw@h",
            "not a url",
            "",
        ] {
            let error = hub_url(input).unwrap_err().to_string();
            assert!(error.starts_with("coordinator: "), "{input}: {error}");
        }
        assert_eq!(
            hub_url("ftp://h").unwrap_err().to_string(),
            "coordinator: unsupported scheme `ftp` in `ftp://h` (use ws:// or wss://)"
        );
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            validate_hostname("Web-1.Example.org").unwrap(),
            "web-1.example.org"
        );
        assert_eq!(validate_hostname("localhost").unwrap(), "localhost");
        assert_eq!(validate_hostname("10").unwrap(), "10");
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            "a.",
            &"a".repeat(64),
            "é",
        ] {
            let error = validate_hostname(bad).unwrap_err().to_string();
            assert!(error.starts_with("hostname: "), "{bad}: {error}");
        }
    }

    #[test]
    fn tokens() {
        assert!(Token::new("s3cr3t-._~").is_ok());
        assert_eq!(
            Token::new("  ").unwrap_err().to_string(),
            "token: must not be empty"
        );
        assert_eq!(
            Token::new("a b").unwrap_err().to_string(),
            "token: must be printable ASCII without spaces"
        );
        assert_eq!(
            format!("{:?}", Token::new("s3cr3t").unwrap()),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let config =
            AgentConfig::merge(cli("ws://h:1", FLAG_CREDENTIAL), FileConfig::default()).unwrap();
        assert!(!format!("{config:?}").contains(&FLAG_CREDENTIAL[22..]));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = FileConfig {
            coordinator: Some("ws://file:1".into()),
            coordinators: None,
            token: None,
            hostname: Some("file-host".into()),
            ca_cert: None,
            analysis_programs: Some(vec!["/usr/local/bin/my-analysis-mi".into()]),
            insecure_ws: Some(true),
            relay_roots: None,
            trace_retention_secs: None,
            trace_quota_mib: None,
            trace_root: Some("/srv/traces".into()),
            credential: Some(FILE_CREDENTIAL.into()),
            coordinator_fingerprints: None,
            lttng_control: Some(tracevisor_lttng::control::ControlChoice::Cli),
            lttng_ctl_library: Some("/opt/lttng/lib/liblttng-ctl.so.0".into()),
        };
        let config = AgentConfig::merge(cli("ws://flag:2", FLAG_CREDENTIAL), file.clone()).unwrap();
        assert_eq!(
            config.lttng_control,
            tracevisor_lttng::control::ControlChoice::Cli
        );
        assert_eq!(
            config.lttng_ctl_library.as_deref(),
            Some(Path::new("/opt/lttng/lib/liblttng-ctl.so.0"))
        );
        assert_eq!(config.trace_root.as_deref(), Some(Path::new("/srv/traces")));
        assert_eq!(
            config.coordinator.to_string(),
            "ws://flag:2/trace/api/v1.0/agents"
        );
        assert_eq!(config.token.expose(), FLAG_CREDENTIAL);
        assert_eq!(
            config.analysis_programs,
            vec![PathBuf::from("/usr/local/bin/my-analysis-mi")]
        );
        let relative = FileConfig {
            analysis_programs: Some(vec!["bin/tool".into()]),
            ..file.clone()
        };
        let err = AgentConfig::merge(cli("ws://flag:2", FLAG_CREDENTIAL), relative).unwrap_err();
        assert!(err.to_string().starts_with("analysis_programs:"), "{err}");
        assert_eq!(config.hostname, "web-1");

        let config = AgentConfig::merge(Cli::default(), file).unwrap();
        assert_eq!(
            config.coordinator.to_string(),
            "ws://file:1/trace/api/v1.0/agents"
        );
        assert_eq!(config.token.expose(), FILE_CREDENTIAL);
        assert_eq!(config.hostname, "file-host");
    }

    #[test]
    fn missing_keys_are_named() {
        let only_credential = Cli {
            credential: Some(FLAG_CREDENTIAL.into()),
            ..Cli::default()
        };
        let error = AgentConfig::merge(only_credential, FileConfig::default()).unwrap_err();
        assert!(
            error.to_string().starts_with("coordinator: missing"),
            "{error}"
        );
        let only_url = Cli {
            coordinator: vec!["ws://h:1".into()],
            ..Cli::default()
        };
        let error = AgentConfig::merge(only_url.clone(), FileConfig::default()).unwrap_err();
        assert!(
            error.to_string().starts_with("credential: missing"),
            "{error}"
        );
        // A configuration written before per-agent credentials: refused with what to run.
        let legacy = FileConfig {
            token: Some("the-shared-enrollment-token".into()),
            ..FileConfig::default()
        };
        let error = AgentConfig::merge(only_url.clone(), legacy).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("credential: missing"), "{text}");
        assert!(
            text.contains("tracesd enroll --coordinator URL --token TOKEN"),
            "{text}"
        );
        assert!(!text.contains("the-shared-enrollment-token"), "{text}");
        let garbled = Cli {
            credential: Some("tvc1_short".into()),
            ..only_url
        };
        let error = AgentConfig::merge(garbled, FileConfig::default()).unwrap_err();
        assert!(
            error.to_string().starts_with("credential: not a"),
            "{error}"
        );
    }

    #[test]
    fn trace_retention_and_quota_are_read_and_bounded() {
        let file = FileConfig {
            trace_retention_secs: Some(86_400),
            trace_quota_mib: Some(512),
            ..FileConfig::default()
        };
        let config = AgentConfig::merge(cli("ws://h:1", FLAG_CREDENTIAL), file).unwrap();
        assert_eq!(config.trace_policy.retention, Duration::from_secs(86_400));
        assert_eq!(config.trace_policy.quota_bytes, 512 << 20);
        let short = FileConfig {
            trace_retention_secs: Some(60),
            ..FileConfig::default()
        };
        let error = AgentConfig::merge(cli("ws://h:1", FLAG_CREDENTIAL), short).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("trace_retention_secs: 60 is under 10800"),
            "{error}"
        );
    }

    #[test]
    fn pinned_fingerprints_are_parsed_and_named_when_invalid() {
        let file = FileConfig {
            coordinator_fingerprints: Some(vec![format!("SHA256:{}", "AB:".repeat(31) + "AB")]),
            ..FileConfig::default()
        };
        let config = AgentConfig::merge(cli("ws://h:1", FLAG_CREDENTIAL), file).unwrap();
        assert_eq!(
            config.coordinator_fingerprints,
            vec![crate::tls::Fingerprint([0xab; 32])]
        );
        let bad = FileConfig {
            coordinator_fingerprints: Some(vec!["sha256:abc".into()]),
            ..FileConfig::default()
        };
        let error = AgentConfig::merge(cli("ws://h:1", FLAG_CREDENTIAL), bad).unwrap_err();
        assert!(
            error.to_string().starts_with("coordinator_fingerprints: "),
            "{error}"
        );
    }

    #[test]
    fn default_hostname_is_the_system_one() {
        let mut cli = cli("ws://h:1", FLAG_CREDENTIAL);
        cli.hostname = None;
        let config = AgentConfig::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(
            config.hostname,
            crate::host::system_hostname().unwrap().to_ascii_lowercase()
        );
    }

    #[test]
    fn bad_ca_cert_is_named() {
        let mut cli = cli("wss://h:1", FLAG_CREDENTIAL);
        cli.ca_cert = Some("/nonexistent/ca.pem".into());
        let error = AgentConfig::merge(cli, FileConfig::default()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ca_cert: cannot read /nonexistent/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracesd.toml");
        std::fs::write(
            &path,
            "coordinator = \"https://c:5000\"\ntoken = \"t\"\nhostname = \"h\"\nca_cert = \"ca.pem\"\n",
        )
        .unwrap();
        let file = read_file(&path).unwrap();
        assert_eq!(file.ca_cert, Some(dir.path().join("ca.pem")));
        assert_eq!(file.coordinator.as_deref(), Some("https://c:5000"));

        std::fs::write(&path, "coordinator = \"ws://c\"\ntokn = \"t\"\n").unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert!(error.starts_with("config file "), "{error}");
        assert!(error.contains("unknown field `tokn`"), "{error}");

        let error = read_file(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read"), "{error}");
    }

    /// The only test that reads the process environment (clap folds `TRACESD_*` into `Cli`);
    /// it uses variables no other test reads.
    #[test]
    fn environment_is_read_and_flags_win() {
        std::env::set_var("TRACESD_COORDINATOR", "ws://from-env:1,ws://from-env:2");
        std::env::set_var("TRACESD_TOKEN", "env-token");
        let from_env = Cli::try_parse_from(["tracesd"]).unwrap();
        let with_flag =
            Cli::try_parse_from(["tracesd", "--coordinator", "ws://from-flag:2"]).unwrap();
        std::env::remove_var("TRACESD_COORDINATOR");
        std::env::remove_var("TRACESD_TOKEN");
        assert_eq!(from_env.coordinator, ["ws://from-env:1", "ws://from-env:2"]);
        assert_eq!(from_env.token.as_deref(), Some("env-token"));
        assert_eq!(with_flag.coordinator, ["ws://from-flag:2"]);
        assert_eq!(with_flag.token.as_deref(), Some("env-token"));
    }
}
