//! `tracesd enroll`: one command that makes a host an agent of a coordinator.
//!
//! ```text
//! tracesd enroll --coordinator wss://coordinator.example:5000 --token TOKEN [--ca-cert FILE]
//!                [--hostname NAME] [--config /etc/tracevisor/tracesd.toml]
//! ```
//!
//! In order:
//! 1. validates the values exactly as the agent will (URL, token, hostname, CA file,
//!    fingerprints);
//! 2. obtains this host's own credential: a WebSocket upgrade to the hub with the enrollment
//!    token, one `Enroll` frame for the hostname, and the coordinator's `Enrolled` answer (sent
//!    once the credential is stored; the host's earlier credential is revoked). A 401 is
//!    reported as a wrong token, a refused connection as an unreachable coordinator, a refusal
//!    of the hostname with the coordinator's reason. Nothing is written when this fails. With
//!    `wss://`, the fingerprint of the certificate the coordinator presented is pinned (or the
//!    one given with `--fingerprint` is required, which also lets a self-signed coordinator in);
//! 3. writes the agent's TOML configuration atomically (temporary file of mode 0600 in the same
//!    directory, fsync, rename, fsync of the directory): the coordinator, the credential, the
//!    hostname, the CA file and the pinned fingerprint; the enrollment token is not kept;
//! 4. checks that lttng-sessiond answers ([`tracevisor_lttng::capabilities::detect`]); a
//!    missing session daemon is a warning with the command that fixes it, not an error;
//! 5. enables and (re)starts `tracesd.service` when systemd is running and the configuration is
//!    the one the unit reads, else prints the next step. `systemctl` runs through the command
//!    runner ([`tracevisor_lttng::runner::Cmd`]): argv and a timeout, never a shell string.
//!
//! Exit codes (see [`EnrollError::exit_code`]): 0 enrolled, 1 a check or a step failed, 2 an
//! invalid value.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Error as WsError;
use tracevisor_lttng::runner::Cmd;
use tracevisor_protocol::Capabilities;

use crate::config::{AgentConfig, Cli, ConfigError, FileConfig};
use crate::link::LinkError;

/// The configuration file `tracesd.service` reads.
pub const DEFAULT_CONFIG: &str = "/etc/tracevisor/tracesd.toml";
/// The agent's systemd unit.
pub const SERVICE: &str = "tracesd.service";
/// Exists when systemd is the running init system (what `sd_booted()` checks).
pub const SYSTEMD_MARKER: &str = "/run/systemd/system";
/// Bound on each `systemctl` call.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(90);

/// Flags of `tracesd enroll`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// Coordinator URL: ws(s)://host:port or http(s)://host:port (the hub path
    /// /trace/api/v1.0/agents is added when there is no path).
    #[arg(long, value_name = "URL")]
    pub coordinator: String,
    /// Agent enrollment token, as printed by `tracevisor agent-token` on the coordinator
    /// (prefer TRACESD_TOKEN: flags are visible to other users in the process list).
    #[arg(
        long,
        env = "TRACESD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// PEM file of the CA certificates to trust for wss:// [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Name this host registers under [default: the system's hostname, read when the agent
    /// starts].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Configuration file to write (mode 0600).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Refused: enrollment obtains the host's own credential from the coordinator, so it
    /// cannot run offline (a credential baked into an image would be shared by every clone).
    #[arg(long, hide = true)]
    pub no_check: bool,
    /// SHA-256 fingerprint of the coordinator's certificate to require (`sha256:HEX`, or as
    /// `openssl x509 -noout -fingerprint -sha256` prints it); given, the certificate chain is
    /// not needed (a self-signed coordinator). Without it, the certificate presented (which
    /// must chain to --ca-cert or the system roots) is pinned.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Vec<String>,
    /// Do not enable or restart tracesd.service; only print the next step.
    #[arg(long)]
    pub no_enable: bool,
    /// Allow ws:// (plaintext) to a coordinator on another host, and write `insecure_ws = true`
    /// (the token and this root agent's commands then cross the network in clear).
    #[arg(long)]
    pub insecure_ws: bool,
}

/// Why enrollment stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A value is invalid (nothing was checked or written).
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The coordinator would not issue a credential for this hostname.
    #[error("the coordinator at {url} refused to enroll this host: {message}")]
    NotEnrolled {
        /// The hub URL.
        url: String,
        /// The coordinator's reason.
        message: String,
    },
    /// The coordinator answered 401 to the upgrade.
    #[error("the coordinator at {url} refused the enrollment token (HTTP 401 Unauthorized): wrong token? Print the right one on the coordinator with `tracevisor agent-token`")]
    WrongToken {
        /// The hub URL.
        url: String,
    },
    /// No TCP connection (refused, no route, name not resolved) or no answer in time.
    #[error("cannot reach the coordinator at {url}: {reason} (is `tracevisor serve` running and listening there? check the host, the port and firewalls)")]
    Unreachable {
        /// The hub URL.
        url: String,
        /// What the system said.
        reason: String,
    },
    /// The TLS handshake failed (usually a certificate the agent does not trust).
    #[error("TLS with the coordinator at {url} failed: {reason} (pass --ca-cert with the CA certificate that signed the coordinator's certificate)")]
    Tls {
        /// The hub URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The coordinator answered the upgrade with another HTTP status.
    #[error("the coordinator at {url} refused the agent link: HTTP {status}{} (is this the coordinator's address?)", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Refused {
        /// The hub URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body (bounded).
        body: String,
    },
    /// Another failure while checking the link.
    #[error("checking the coordinator at {url} failed: {reason}")]
    Check {
        /// The hub URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The configuration file could not be written.
    #[error("cannot write {}: {source}{}", .path.display(), if .source.kind() == std::io::ErrorKind::PermissionDenied { " (run as root)" } else { "" })]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `systemctl` failed.
    #[error("the configuration is written, but {step} failed: {reason}")]
    Service {
        /// What was being done (`systemctl enable tracesd.service`).
        step: String,
        /// Why it failed.
        reason: String,
    },
}

impl EnrollError {
    /// The process exit code: 2 for an invalid value, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::Invalid(_) => 2,
            _ => 1,
        }
    }
}

/// What enrollment looks at on this machine; [`System::default`] is the real one, tests point
/// it at temporary files and fake programs.
#[derive(Debug, Clone)]
pub struct System {
    /// Exists when systemd runs ([`SYSTEMD_MARKER`]).
    pub systemd_marker: PathBuf,
    /// The `systemctl` program.
    pub systemctl: OsString,
    /// The configuration file the unit reads ([`DEFAULT_CONFIG`]); the service is enabled only
    /// when enrollment writes this file.
    pub unit_config: PathBuf,
    /// `PATH`-style list where the LTTng tools are looked for (`None`: the process's `PATH`).
    pub search_path: Option<OsString>,
    /// Bound on the coordinator check (TCP, TLS and upgrade together).
    pub connect_timeout: Duration,
}

impl Default for System {
    fn default() -> Self {
        Self {
            systemd_marker: PathBuf::from(SYSTEMD_MARKER),
            systemctl: OsString::from("systemctl"),
            unit_config: PathBuf::from(DEFAULT_CONFIG),
            search_path: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What enrollment did, for callers and tests (everything is also printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The file written.
    pub config: PathBuf,
    /// The hostname the agent registers under.
    pub hostname: String,
    /// Whether the coordinator was checked (false with `--no-check`).
    pub coordinator_checked: bool,
    /// Whether lttng-sessiond answered.
    pub sessiond_running: bool,
    /// Whether `tracesd.service` was enabled and (re)started.
    pub service_enabled: bool,
}

/// Runs the enrollment, printing progress and the next step to `out`.
pub async fn enroll(
    args: &EnrollArgs,
    system: &System,
    out: &mut dyn std::io::Write,
) -> Result<Enrolled, EnrollError> {
    let mut config = validate(args)?;
    config.link.connect_timeout = system.connect_timeout;
    let url = config.coordinator.to_string();
    let hostname = config.hostname.clone();
    say(
        out,
        &format!("Enrolling this host as `{hostname}` with the coordinator at {url}"),
    );

    let (credential, fingerprint) = obtain_credential(&config).await?;
    say(
        out,
        "coordinator: enrollment token accepted, this host's own credential issued",
    );
    if let Some(fingerprint) = &fingerprint {
        say(
            out,
            &format!("coordinator: certificate {fingerprint} pinned"),
        );
    }
    let coordinator_checked = true;

    let ca_cert = match &config.ca_cert {
        Some(path) => Some(
            std::path::absolute(path).map_err(|error| ConfigError::Invalid {
                key: "ca_cert",
                message: format!("`{}`: {error}", path.display()),
            })?,
        ),
        None => None,
    };
    let mut text = render_config(
        args.coordinator.trim(),
        &credential,
        &hostname,
        ca_cert.as_deref(),
        fingerprint.as_ref(),
    )?;
    if args.insecure_ws {
        text.push_str("# Plaintext ws:// to another host, allowed at enrollment (--insecure-ws).\ninsecure_ws = true\n");
    }
    text.push_str(&kept_settings(&args.config));
    write_private_file(&args.config, text.as_bytes()).map_err(|source| EnrollError::Write {
        path: args.config.clone(),
        source,
    })?;
    say(
        out,
        &format!("config: wrote {} (mode 0600)", args.config.display()),
    );

    let capabilities = match &system.search_path {
        Some(path) => {
            tracevisor_lttng::capabilities::detect_in(path, Path::new("/sys/module/lttng_tracer"))
                .await
        }
        None => tracevisor_lttng::capabilities::detect().await,
    };
    let sessiond_running = capabilities.sessiond_running;
    for line in lttng_report(&capabilities) {
        say(out, &line);
    }

    let systemd = system.systemd_marker.exists();
    let is_unit_config = same_file_path(&args.config, &system.unit_config);
    let service_enabled = if systemd && is_unit_config && !args.no_enable {
        enable_service(system).await?;
        say(
            out,
            &format!("service: {SERVICE} enabled and (re)started (see `systemctl status tracesd` and `journalctl -u tracesd`)"),
        );
        true
    } else {
        say(
            out,
            &next_step(systemd, is_unit_config, &args.config, sessiond_running),
        );
        false
    };
    Ok(Enrolled {
        config: args.config.clone(),
        hostname,
        coordinator_checked,
        sessiond_running,
        service_enabled,
    })
}

fn say(out: &mut dyn std::io::Write, line: &str) {
    // Progress output only: a closed stdout must not stop the enrollment.
    let _ = writeln!(out, "{line}");
}

/// Validates the flags exactly as the agent validates its configuration.
pub fn validate(args: &EnrollArgs) -> Result<AgentConfig, ConfigError> {
    if args.config.as_os_str().is_empty() || args.config.file_name().is_none() {
        return Err(ConfigError::Invalid {
            key: "config",
            message: format!("`{}` is not a file path", args.config.display()),
        });
    }
    if args.no_check {
        return Err(ConfigError::Invalid {
            key: "no_check",
            message: "enrollment obtains this host's own credential from the coordinator, so it cannot run offline; run `tracesd enroll` on the host's first boot (a credential baked into an image would be shared by every clone)".into(),
        });
    }
    let cli = Cli {
        coordinator: vec![args.coordinator.clone()],
        token: Some(args.token.clone()),
        hostname: args.hostname.clone(),
        ca_cert: args.ca_cert.clone(),
        insecure_ws: args.insecure_ws,
        ..Cli::default()
    };
    let file = FileConfig {
        coordinator_fingerprints: Some(args.fingerprint.clone()),
        ..FileConfig::default()
    };
    let config = AgentConfig::for_enrollment(cli, file)?;
    if !config.coordinator_fingerprints.is_empty() && !config.is_secure() {
        return Err(ConfigError::Invalid {
            key: "fingerprint",
            message: "pins a wss:// coordinator's certificate; this coordinator URL is plaintext"
                .into(),
        });
    }
    Ok(config)
}

/// Bound on the wait for the coordinator's answer to `Enroll`.
const ENROLL_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Dials the hub with the enrollment token and asks for this host's credential; returns it,
/// with the fingerprint of the coordinator's certificate (with `wss://`) to pin.
pub async fn obtain_credential(
    config: &AgentConfig,
) -> Result<(String, Option<crate::tls::Fingerprint>), EnrollError> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tracevisor_protocol::{codec, Frame, Message};

    let url = config.coordinator.to_string();
    let seen = crate::tls::Seen::default();
    let tls = match (&config.tls, config.is_secure()) {
        (Some(tls), _) => Some(tls.clone()),
        (None, true) => Some(
            crate::tls::client_config_pinned(
                config.ca_cert.as_deref(),
                &config.coordinator_fingerprints,
                Some(seen.clone()),
            )
            .map_err(|error| EnrollError::Tls {
                url: url.clone(),
                reason: error.to_string(),
            })?,
        ),
        (None, false) => None,
    };
    let check = |reason: String| EnrollError::Check {
        url: url.clone(),
        reason,
    };
    let mut ws = crate::link::connect(config, tls)
        .await
        .map_err(|error| classify(&url, error))?;
    let ask = Message::Enroll {
        hostname: config.hostname.clone(),
    };
    let bytes = codec::encode(&Frame::new(ask)).map_err(|e| check(e.to_string()))?;
    ws.send(WsMessage::Binary(bytes.into()))
        .await
        .map_err(|e| check(format!("sending the enrollment request: {e}")))?;
    let answer = tokio::time::timeout(ENROLL_ANSWER_TIMEOUT, async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(WsMessage::Binary(bytes)) => {
                    return codec::decode(&bytes)
                        .map(|f| f.body)
                        .map_err(|e| check(format!("undecodable answer: {e}")))
                }
                Ok(WsMessage::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => return Err(check(format!("link lost: {e}"))),
            }
        }
        Err(check(
            "the coordinator closed the link without an answer".into(),
        ))
    })
    .await
    .map_err(|_| {
        check(format!(
            "no answer within {} s",
            ENROLL_ANSWER_TIMEOUT.as_secs()
        ))
    })??;
    let _ = tokio::time::timeout(config.link.close_timeout, ws.close(None)).await;
    match answer {
        Message::Enrolled {
            hostname,
            credential,
        } if hostname == config.hostname
            && tracevisor_protocol::split_credential(&credential).is_some() =>
        {
            let fingerprint = *seen.lock().unwrap_or_else(|p| p.into_inner());
            Ok((credential, fingerprint))
        }
        Message::Close { message, .. } => Err(EnrollError::NotEnrolled { url, message }),
        other => Err(check(format!(
            "unexpected answer to the enrollment request: {}",
            other.kind()
        ))),
    }
}

/// Maps a link error to what the user should hear.
fn classify(url: &str, error: LinkError) -> EnrollError {
    let url = url.to_owned();
    match error {
        LinkError::Rejected { status: 401, .. } => EnrollError::WrongToken { url },
        LinkError::Rejected { status, body } => EnrollError::Refused { url, status, body },
        LinkError::ConnectTimeout { timeout, .. } => EnrollError::Unreachable {
            url,
            reason: format!("no answer within {} s", timeout.as_secs_f64()),
        },
        LinkError::Tls(error) => EnrollError::Tls {
            url,
            reason: error.to_string(),
        },
        LinkError::Connect { source, .. } => match source {
            WsError::Io(io) => {
                if let Some(tls) = io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return EnrollError::Tls {
                        url,
                        reason: tls.to_string(),
                    };
                }
                let reason = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    _ => io.to_string(),
                };
                EnrollError::Unreachable { url, reason }
            }
            WsError::Tls(tls) => EnrollError::Tls {
                url,
                reason: tls.to_string(),
            },
            WsError::Url(problem) => EnrollError::Unreachable {
                url,
                reason: problem.to_string(),
            },
            other => EnrollError::Check {
                url,
                reason: other.to_string(),
            },
        },
        other => EnrollError::Check {
            url,
            reason: other.to_string(),
        },
    }
}

/// The agent's TOML configuration file, with every value quoted by the TOML serializer. The
/// hostname is always written: the credential is bound to it.
pub fn render_config(
    coordinator: &str,
    credential: &str,
    hostname: &str,
    ca_cert: Option<&Path>,
    fingerprint: Option<&crate::tls::Fingerprint>,
) -> Result<String, ConfigError> {
    let quote = |value: &str| toml::Value::String(value.to_owned()).to_string();
    let mut text = String::from(
        "# tracesd agent configuration, written by `tracesd enroll`.\n\
         # It holds this host's own credential: keep it mode 0600, owned by root.\n\
         # Keys: coordinator, coordinators, credential, hostname, ca_cert, coordinator_fingerprints,\n\
         # analysis_programs, relay_roots, insecure_ws, trace_root, trace_retention_secs,\n\
         # trace_quota_mib, lttng_control, lttng_ctl_library.\n",
    );
    text.push_str(&format!("coordinator = {}\n", quote(coordinator)));
    text.push_str(&format!("credential = {}\n", quote(credential)));
    text.push_str(&format!("hostname = {}\n", quote(hostname)));
    if let Some(fingerprint) = fingerprint {
        text.push_str(&format!(
            "coordinator_fingerprints = [{}]\n",
            quote(&fingerprint.to_string())
        ));
    }
    if let Some(path) = ca_cert {
        let path = path.to_str().ok_or_else(|| ConfigError::Invalid {
            key: "ca_cert",
            message: format!("`{}` is not valid UTF-8", path.display()),
        })?;
        text.push_str(&format!("ca_cert = {}\n", quote(path)));
    }
    Ok(text)
}

/// The host's own settings in an existing configuration file (`coordinators`,
/// `analysis_programs`, `relay_roots`, `trace_root`, `trace_retention_secs`, `trace_quota_mib`,
/// `lttng_control`, `lttng_ctl_library`), as TOML lines to
/// write again: enrolling again must not drop them.
fn kept_settings(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let Ok(table) = toml::from_str::<toml::Table>(&text) else {
        return String::new();
    };
    let mut kept = String::new();
    for key in [
        "coordinators",
        "analysis_programs",
        "relay_roots",
        "trace_root",
        "trace_retention_secs",
        "trace_quota_mib",
        "lttng_control",
        "lttng_ctl_library",
    ] {
        if let Some(
            value @ (toml::Value::Array(_) | toml::Value::String(_) | toml::Value::Integer(_)),
        ) = table.get(key)
        {
            kept.push_str(&format!("{key} = {value}\n"));
        }
    }
    if kept.is_empty() {
        kept
    } else {
        format!("# Kept from the previous configuration.\n{kept}")
    }
}

/// Replaces `path` atomically with a file of mode 0600 holding `contents`: a temporary file in
/// the same directory (created 0600, so the secret is never readable by others), fsync,
/// rename, fsync of the directory. The directory is created (0755) when missing.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
    };
    let mut file = match open() {
        Ok(file) => file,
        // A leftover of an interrupted run with the same process id.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&temp)?;
            open()?
        }
        Err(error) => return Err(error),
    };
    let written = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    std::fs::File::open(&dir)?.sync_all()
}

/// What the capabilities say about LTTng on this host, one line each.
pub fn lttng_report(capabilities: &Capabilities) -> Vec<String> {
    let mut lines = Vec::new();
    match &capabilities.lttng_version {
        None if !capabilities.sessiond_running => {
            lines.push(
                "warning: lttng is not installed: install it (apt install lttng-tools) before tracing"
                    .to_owned(),
            );
            return lines;
        }
        _ => {}
    }
    if capabilities.sessiond_running {
        lines.push(format!(
            "lttng-sessiond: running (LTTng {})",
            capabilities
                .lttng_version
                .as_deref()
                .unwrap_or("unknown version")
        ));
        lines.push(format!(
            "userspace tracer: {}",
            availability(
                capabilities.userspace_tracer,
                &capabilities.userspace_tracer_error
            )
        ));
        lines.push(format!(
            "kernel tracer: {}",
            availability(
                capabilities.kernel_tracer,
                &capabilities.kernel_tracer_error
            )
        ));
    } else {
        lines.push(
            "warning: lttng-sessiond is not running (or this user is neither root nor in the `tracing` group): \
             start it with `systemctl enable --now lttng-sessiond` before tracing"
                .to_owned(),
        );
    }
    if !capabilities.babeltrace2 {
        lines.push(
            "warning: babeltrace2 is not installed: userspace summaries need it (apt install babeltrace2)"
                .to_owned(),
        );
    }
    if capabilities.analyses.is_empty() {
        lines.push(
            "note: no lttng-*-mi analyses installed: kernel analyses run elsewhere or need python3-lttnganalyses"
                .to_owned(),
        );
    }
    lines
}

fn availability(available: bool, error: &Option<String>) -> String {
    match (available, error) {
        (true, _) => "available".to_owned(),
        (false, Some(error)) => error.clone(),
        (false, None) => "not available".to_owned(),
    }
}

/// Whether two paths name the same file (compared after making them absolute; no symlink
/// resolution, the file may not exist yet).
fn same_file_path(a: &Path, b: &Path) -> bool {
    match (std::path::absolute(a), std::path::absolute(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `systemctl enable tracesd.service`, then `systemctl restart tracesd.service` (a restart,
/// not `enable --now`, so a re-enrollment's new token takes effect on a running agent).
async fn enable_service(system: &System) -> Result<(), EnrollError> {
    for verb in ["enable", "restart"] {
        let command = Cmd::new(&system.systemctl)
            .args([verb, SERVICE])
            .timeout(SYSTEMCTL_TIMEOUT);
        command.run().await.map_err(|error| EnrollError::Service {
            step: command.display(),
            reason: error.to_string(),
        })?;
    }
    Ok(())
}

/// The line that tells the user what to do next.
pub fn next_step(
    systemd: bool,
    is_unit_config: bool,
    config: &Path,
    sessiond_running: bool,
) -> String {
    let sessiond = if sessiond_running {
        ""
    } else {
        "systemctl enable --now lttng-sessiond && "
    };
    if !is_unit_config {
        format!(
            "next step: run the agent with `tracesd --config {}` (tracesd.service reads {DEFAULT_CONFIG})",
            config.display()
        )
    } else if systemd {
        format!("next step: {sessiond}systemctl enable --now tracesd")
    } else {
        format!(
            "next step: systemd is not running here: {sessiond}systemctl enable --now tracesd on a systemd host, \
             or run `tracesd --config {}` as root (or as a member of the `tracing` group)",
            config.display()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
// tungstenite's upgrade callback returns `Result<Response, ErrorResponse>` by design.
#[allow(clippy::result_large_err)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::StatusCode;

    use super::*;

    const TOKEN: &str = "enroll-test-token-0123456789";

    fn args(coordinator: &str, config: &Path) -> EnrollArgs {
        EnrollArgs {
            coordinator: coordinator.to_owned(),
            token: TOKEN.to_owned(),
            ca_cert: None,
            hostname: Some("Web-1".to_owned()),
            config: config.to_owned(),
            no_check: false,
            no_enable: false,
            insecure_ws: false,
            fingerprint: Vec::new(),
        }
    }

    /// The credential the fake hub issues.
    const CREDENTIAL: &str =
        "tvc1_0123456789abcdef_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A system without LTTng tools, without systemd, whose unit reads `unit_config`.
    fn system(dir: &Path, unit_config: &Path) -> System {
        System {
            systemd_marker: dir.join("no-systemd-here"),
            systemctl: dir.join("systemctl").into_os_string(),
            unit_config: unit_config.to_owned(),
            search_path: Some(dir.join("empty-bin").into_os_string()),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A hub on 127.0.0.1 that upgrades connections carrying TOKEN and answers 401 to the
    /// others, for `connections` connections; returns the port and the paths it saw.
    async fn hub(connections: usize) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut paths = Vec::new();
            for _ in 0..connections {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                let record = seen.clone();
                let callback = move |request: &Request, response: Response| {
                    *record.lock().unwrap() = request.uri().path().to_owned();
                    let ok = request
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                    if ok {
                        Ok(response)
                    } else {
                        let mut response =
                            ErrorResponse::new(Some("invalid agent token".to_owned()));
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                        Err(response)
                    }
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    use futures_util::{SinkExt as _, StreamExt as _};
                    use tracevisor_protocol::{codec, Frame, Message};
                    // One Enroll, answered with the credential; then the agent closes.
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() {
                            break;
                        }
                        let body = codec::decode(&message.into_data()).unwrap().body;
                        let Message::Enroll { hostname } = body else {
                            panic!("unexpected {body:?}");
                        };
                        let answer = Message::Enrolled {
                            hostname,
                            credential: CREDENTIAL.into(),
                        };
                        let bytes = codec::encode(&Frame::new(answer)).unwrap();
                        ws.send(tokio_tungstenite::tungstenite::Message::binary(bytes))
                            .await
                            .unwrap();
                    }
                }
                paths.push(seen.lock().unwrap().clone());
            }
            paths
        });
        (port, task)
    }

    async fn run(args: &EnrollArgs, system: &System) -> (Result<Enrolled, EnrollError>, String) {
        let mut out = Vec::new();
        let result = enroll(args, system, &mut out).await;
        (result, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn writes_a_private_config_the_agent_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (port, hub) = hub(1).await;
        let path = dir.path().join("etc/tracevisor/tracesd.toml");
        let args = args(&format!("http://127.0.0.1:{port}"), &path);
        let (result, out) = run(&args, &system(dir.path(), &path)).await;
        let enrolled = result.unwrap();
        assert_eq!(
            hub.await.unwrap(),
            vec!["/trace/api/v1.0/agents".to_owned()]
        );
        assert_eq!(
            enrolled,
            Enrolled {
                config: path.clone(),
                hostname: "web-1".into(),
                coordinator_checked: true,
                sessiond_running: false,
                service_enabled: false,
            }
        );
        assert!(out.contains("enrollment token accepted"), "{out}");
        assert!(out.contains("own credential issued"), "{out}");
        assert!(out.contains("lttng is not installed"), "{out}");
        assert!(
            out.contains("next step: systemd is not running here"),
            "{out}"
        );
        assert!(!out.contains(TOKEN), "the token is never printed: {out}");

        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        let loaded = AgentConfig::load(Cli {
            config: Some(path.clone()),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(
            loaded.coordinator.to_string(),
            format!("ws://127.0.0.1:{port}/trace/api/v1.0/agents")
        );
        assert_eq!(loaded.token.expose(), CREDENTIAL);
        assert_eq!(loaded.hostname, "web-1");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(TOKEN),
            "the enrollment token is not kept: {text}"
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("tracesd.toml")]);
    }

    #[tokio::test]
    async fn wrong_token_is_named_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (port, hub) = hub(1).await;
        let path = dir.path().join("tracesd.toml");
        std::fs::write(&path, "coordinator = \"ws://old:1\"\ntoken = \"old\"\n").unwrap();
        let mut args = args(&format!("ws://127.0.0.1:{port}"), &path);
        args.token = "not-the-token".into();
        let (result, _) = run(&args, &system(dir.path(), &path)).await;
        hub.await.unwrap();
        let error = result.unwrap_err();
        assert!(matches!(error, EnrollError::WrongToken { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 1);
        let message = error.to_string();
        assert!(
            message.contains("refused the enrollment token (HTTP 401"),
            "{message}"
        );
        assert!(message.contains("tracevisor agent-token"), "{message}");
        assert!(!message.contains("not-the-token"), "{message}");
        // The previous enrollment is left as it was.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "coordinator = \"ws://old:1\"\ntoken = \"old\"\n"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let path = dir.path().join("tracesd.toml");
        let args = args(&format!("ws://127.0.0.1:{port}"), &path);
        let (result, _) = run(&args, &system(dir.path(), &path)).await;
        let error = result.unwrap_err();
        assert!(
            matches!(&error, EnrollError::Unreachable { reason, .. } if reason == "connection refused"),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .starts_with("cannot reach the coordinator at ws://127.0.0.1:"));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn other_statuses_are_reported_with_their_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let callback = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                let mut response = ErrorResponse::new(Some("no such route".to_owned()));
                *response.status_mut() = StatusCode::NOT_FOUND;
                Err(response)
            };
            let _ = tokio_tungstenite::accept_hdr_async(stream, callback).await;
        });
        let config = AgentConfig::new(&format!("ws://127.0.0.1:{port}/wrong"), TOKEN, "h").unwrap();
        let error = obtain_credential(&config).await.unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(&error, EnrollError::Refused { status: 404, body, .. } if body == "no such route"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn untrusted_certificate_is_a_tls_error() {
        // A TLS server whose self-signed certificate is not in the given CA file.
        use rcgen::{CertificateParams, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other_key = KeyPair::generate().unwrap();
        let other = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&other_key)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(stream).await;
        });

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, other.pem()).unwrap();
        let path = dir.path().join("tracesd.toml");
        let mut args = args(&format!("wss://localhost:{port}"), &path);
        args.ca_cert = Some(ca);
        let (result, _) = run(&args, &system(dir.path(), &path)).await;
        server.await.unwrap();
        let error = result.unwrap_err();
        assert!(matches!(error, EnrollError::Tls { .. }), "{error:?}");
        assert!(error.to_string().contains("--ca-cert"), "{error}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn invalid_values_exit_2_before_any_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracesd.toml");
        let cases: Vec<(EnrollArgs, &str)> = vec![
            (args("ftp://h", &path), "coordinator: "),
            (
                EnrollArgs {
                    token: "a b".into(),
                    ..args("ws://127.0.0.1:1", &path)
                },
                "token: ",
            ),
            (
                EnrollArgs {
                    hostname: Some("bad_name".into()),
                    ..args("ws://127.0.0.1:1", &path)
                },
                "hostname: ",
            ),
            (
                EnrollArgs {
                    ca_cert: Some(dir.path().join("missing.pem")),
                    ..args("wss://127.0.0.1:1", &path)
                },
                "ca_cert: ",
            ),
            (args("ws://127.0.0.1:1", Path::new("/")), "config: "),
            (
                EnrollArgs {
                    fingerprint: vec![format!("sha256:{}", "ab".repeat(32))],
                    ..args("ws://127.0.0.1:1", &path)
                },
                "fingerprint: ",
            ),
        ];
        for (args, prefix) in cases {
            let (result, _) = run(&args, &system(dir.path(), &path)).await;
            let error = result.unwrap_err();
            assert_eq!(error.exit_code(), 2, "{error}");
            assert!(error.to_string().starts_with(prefix), "{error}");
        }
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn no_check_is_refused_and_the_system_hostname_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracesd.toml");
        let mut offline = args("wss://coordinator.invalid:5000", &path);
        offline.no_check = true;
        let (result, _) = run(&offline, &system(dir.path(), &path)).await;
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("cannot run offline"), "{error}");
        assert!(!path.exists());
        // Without --hostname, the system's hostname is enrolled and written: the credential is
        // bound to it.
        let (port, hub) = hub(1).await;
        let mut args = args(&format!("ws://127.0.0.1:{port}"), &path);
        args.hostname = None;
        let (result, out) = run(&args, &system(dir.path(), &path)).await;
        hub.await.unwrap();
        let enrolled = result.unwrap();
        let file = crate::config::read_file(&path).unwrap();
        assert_eq!(
            file.hostname.as_deref(),
            Some(enrolled.hostname.as_str()),
            "{out}"
        );
        assert_eq!(file.credential.as_deref(), Some(CREDENTIAL));
    }

    #[tokio::test]
    async fn enables_the_service_through_systemctl_when_systemd_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (port, hub) = hub(1).await;
        let path = dir.path().join("tracesd.toml");
        let mut system = system(dir.path(), &path);
        std::fs::create_dir(&system.systemd_marker).unwrap();
        // A fake systemctl that records its arguments.
        let log = dir.path().join("systemctl.log");
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        system.systemctl = fake.into_os_string();
        let (result, out) = run(&args(&format!("ws://127.0.0.1:{port}"), &path), &system).await;
        hub.await.unwrap();
        assert!(result.unwrap().service_enabled, "{out}");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "enable tracesd.service\nrestart tracesd.service\n"
        );
        assert!(
            out.contains("tracesd.service enabled and (re)started"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_failing_systemctl_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracesd.toml");
        let mut system = system(dir.path(), &path);
        std::fs::create_dir(&system.systemd_marker).unwrap();
        system.systemctl = OsString::from("false");
        let (port, hub) = hub(1).await;
        let args = args(&format!("ws://127.0.0.1:{port}"), &path);
        let (result, _) = run(&args, &system).await;
        hub.await.unwrap();
        let error = result.unwrap_err();
        assert!(
            error.to_string().starts_with(
                "the configuration is written, but false enable tracesd.service failed"
            ),
            "{error}"
        );
        assert!(path.exists());
    }

    #[tokio::test]
    async fn no_enable_and_other_paths_only_print_the_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let unit_config = dir.path().join("unit.toml");
        let mut system = system(dir.path(), &unit_config);
        std::fs::create_dir(&system.systemd_marker).unwrap();
        system.systemctl = OsString::from("false"); // would fail if called
        let other = dir.path().join("other.toml");
        let (port, hub) = hub(2).await;
        let mut args = args(&format!("ws://127.0.0.1:{port}"), &other);
        let (result, out) = run(&args, &system).await;
        assert!(!result.unwrap().service_enabled);
        assert!(
            out.contains(&format!(
                "next step: run the agent with `tracesd --config {}`",
                other.display()
            )),
            "{out}"
        );
        args.config = unit_config;
        args.no_enable = true;
        let (result, out) = run(&args, &system).await;
        hub.await.unwrap();
        assert!(!result.unwrap().service_enabled);
        assert!(
            out.contains("next step: systemctl enable --now lttng-sessiond && systemctl enable --now tracesd"),
            "{out}"
        );
    }

    #[test]
    fn config_values_are_quoted() {
        let fingerprint = crate::tls::Fingerprint([0xab; 32]);
        let text = render_config(
            "ws://h:1",
            "cred\"ential\\",
            "web-1",
            Some(Path::new("/etc/a \"b\".pem")),
            Some(&fingerprint),
        )
        .unwrap();
        let parsed: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed.credential.as_deref(), Some("cred\"ential\\"));
        assert_eq!(parsed.token, None);
        assert_eq!(
            parsed.coordinator_fingerprints,
            Some(vec![fingerprint.to_string()])
        );
        assert_eq!(parsed.ca_cert, Some(PathBuf::from("/etc/a \"b\".pem")));
        assert_eq!(parsed.hostname.as_deref(), Some("web-1"));
    }

    #[tokio::test]
    async fn enrolling_again_keeps_the_hosts_own_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracesd.toml");
        std::fs::write(
            &path,
            "coordinator = \"ws://old:1\"\ntoken = \"old\"\nrelay_roots = [\"/var/lib/lttng-relayd\"]\nanalysis_programs = [\"/usr/local/bin/x-mi\"]\ncoordinators = [\"ws://127.0.0.1:2\"]\n",
        )
        .unwrap();
        let (port, hub) = hub(1).await;
        let args = args(&format!("ws://127.0.0.1:{port}"), &path);
        let (result, out) = run(&args, &system(dir.path(), &path)).await;
        hub.await.unwrap();
        result.unwrap();
        let file = crate::config::read_file(&path).unwrap();
        assert_eq!(
            file.relay_roots,
            Some(vec![PathBuf::from("/var/lib/lttng-relayd")]),
            "{out}"
        );
        assert_eq!(
            file.analysis_programs,
            Some(vec![PathBuf::from("/usr/local/bin/x-mi")])
        );
        assert_eq!(
            file.coordinators,
            Some(vec!["ws://127.0.0.1:2".to_owned()]),
            "the other coordinators are kept"
        );
        assert_eq!(file.token, None, "the old shared token is dropped");
        assert_eq!(file.credential.as_deref(), Some(CREDENTIAL));
    }

    #[test]
    fn rewriting_replaces_the_file_and_keeps_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A stale temporary file of an interrupted run is replaced.
        let stale = dir
            .path()
            .join(format!(".secret.toml.tmp-{}", std::process::id()));
        std::fs::write(&stale, "stale").unwrap();
        write_private_file(&path, b"newer").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer");
        assert!(!stale.exists());
    }

    #[test]
    fn lttng_reports() {
        let running = Capabilities {
            lttng_version: Some("2.13.9".into()),
            sessiond_running: true,
            userspace_tracer: true,
            kernel_tracer_error: Some(
                "kernel tracer not available (lttng-modules not loaded)".into(),
            ),
            babeltrace2: true,
            analyses: vec!["lttng-cputop-mi".into()],
            ..Capabilities::default()
        };
        assert_eq!(
            lttng_report(&running),
            vec![
                "lttng-sessiond: running (LTTng 2.13.9)",
                "userspace tracer: available",
                "kernel tracer: kernel tracer not available (lttng-modules not loaded)",
            ]
        );
        let stopped = Capabilities {
            lttng_version: Some("2.13.9".into()),
            babeltrace2: true,
            analyses: vec!["lttng-cputop-mi".into()],
            ..Capabilities::default()
        };
        let report = lttng_report(&stopped);
        assert_eq!(report.len(), 1);
        assert!(report[0].starts_with("warning: lttng-sessiond is not running"));
        assert!(report[0].contains("systemctl enable --now lttng-sessiond"));
    }
}
