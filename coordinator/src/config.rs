//! Coordinator configuration: TOML file, then `TRACEVISOR_*` environment and flags, then validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::profiles::{self, Profile, Summary};

/// Default listen address: the seed's port on loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Default request body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default longest trace a request may ask for.
pub const DEFAULT_MAX_DURATION_SECS: u64 = 3600;
/// Default time finished jobs are kept: a week.
pub const DEFAULT_JOB_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Default interval between heartbeats on agent links.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 10;
/// Default time a connection may take to send a request's headers, and may stay idle between
/// requests.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default most jobs running at once (fleet hosts count one each).
pub const DEFAULT_MAX_RUNNING_JOBS: usize = 20_000;
/// Default most jobs running at once on one host.
pub const DEFAULT_MAX_JOBS_PER_HOST: usize = 8;
/// Default most hosts a fleet request may name that are neither connected agents nor
/// registered clients (reached over SSH by address).
pub const DEFAULT_MAX_UNREGISTERED_FLEET_HOSTS: usize = 16;
/// Descriptors kept for the database, SSH and the agent's commands when the connection cap is
/// derived from the open-file limit.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Flags of `tracevisor serve`; each also reads a `TRACEVISOR_*` environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:5000]
    #[arg(long, env = "TRACEVISOR_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the database, keys and tokens [default: a per-user data directory]
    #[arg(long, env = "TRACEVISOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, env = "TRACEVISOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: surrealkv://PATH (default, in the data dir), mem://, or ws(s)://HOST:PORT
    #[arg(long, env = "TRACEVISOR_DB")]
    pub db: Option<String>,
    /// Bearer token for the REST API (else generated into the data dir when auth is needed)
    #[arg(long, env = "TRACEVISOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Enrollment token agents present (else generated into the data dir)
    #[arg(long, env = "TRACEVISOR_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
    /// Serve without authentication on a non-loopback address (dangerous)
    #[arg(long, env = "TRACEVISOR_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// PEM certificate chain: serve https and wss
    #[arg(long, env = "TRACEVISOR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert
    #[arg(long, env = "TRACEVISOR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Do not run the built-in agent for this host
    #[arg(long, env = "TRACEVISOR_NO_LOCAL_AGENT")]
    pub no_local_agent: bool,
    /// How the built-in agent drives LTTng: auto (liblttng-ctl when it loads and matches the
    /// session daemon, else the lttng CLI), library or cli [default: auto]
    #[arg(
        long,
        env = "TRACEVISOR_LTTNG_CONTROL",
        value_name = "auto|library|cli"
    )]
    pub lttng_control: Option<tracevisor_lttng::control::ControlChoice>,
    /// Address of the internal API the other coordinators of a cluster forward requests to;
    /// turns clustering on (needs a ws:// or wss:// database shared by every member)
    #[arg(long, env = "TRACEVISOR_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// URL the other coordinators reach this one's internal API at
    /// [default: http://CLUSTER_LISTEN]
    #[arg(long, env = "TRACEVISOR_CLUSTER_URL")]
    pub cluster_url: Option<String>,
    /// File (mode 0600) holding the token the coordinators of a cluster present to each other
    #[arg(long, env = "TRACEVISOR_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// User to sign in to a SurrealDB server as (root level)
    #[arg(long, env = "TRACEVISOR_DB_USER")]
    pub db_user: Option<String>,
    /// File (mode 0600) holding that user's password (or the TRACEVISOR_DB_PASS environment
    /// variable; never a flag, which any user could read in the process list)
    #[arg(long, env = "TRACEVISOR_DB_PASS_FILE")]
    pub db_pass_file: Option<PathBuf>,
}

/// The configuration file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    db: Option<String>,
    token: Option<String>,
    agent_token: Option<String>,
    insecure_no_auth: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    local_agent: Option<bool>,
    local_agent_hostname: Option<String>,
    lttng_control: Option<tracevisor_lttng::control::ControlChoice>,
    cors_allow_origins: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_duration_secs: Option<u64>,
    heartbeat_interval_secs: Option<u64>,
    relay_output_dirs: Option<Vec<String>>,
    trace_retention_secs: Option<u64>,
    trace_quota_mib: Option<u64>,
    ssh_host_key_policy: Option<crate::ssh::HostKeyPolicy>,
    ssh_connect_timeout_secs: Option<u64>,
    ssh_tracesd: Option<String>,
    max_agent_links: Option<usize>,
    agent_takeover: Option<crate::hub::TakeoverPolicy>,
    max_concurrent_requests: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_running_jobs: Option<usize>,
    max_jobs_per_host: Option<usize>,
    max_unregistered_fleet_hosts: Option<usize>,
    allow_unregistered_relays: Option<bool>,
    db_memtable_mib: Option<u64>,
    db_block_cache_mib: Option<u64>,
    job_retention_secs: Option<u64>,
    cluster_listen: Option<String>,
    cluster_url: Option<String>,
    cluster_token_file: Option<PathBuf>,
    db_user: Option<String>,
    db_pass_file: Option<PathBuf>,
    #[serde(default)]
    analyses: BTreeMap<String, FileProfile>,
}

/// A profile in the configuration file; a missing key keeps the built-in value when it overrides one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProfile {
    description: Option<String>,
    kernel_events: Option<Vec<String>>,
    syscalls: Option<bool>,
    userspace_events: Option<Vec<String>>,
    commands: Option<Vec<Vec<String>>>,
    summary: Option<Summary>,
}

/// Where a TLS certificate and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// This coordinator as a member of a cluster (`cluster_listen`).
#[derive(Clone)]
pub struct ClusterSettings {
    /// Where the internal API listens.
    pub listen: SocketAddr,
    /// Where the other members reach it.
    pub url: String,
    /// The token members present to each other (from `cluster_token_file`).
    pub token: String,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("listen", &self.listen)
            .field("url", &self.url)
            .field("token", &"<hidden>")
            .finish()
    }
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub db: String,
    pub token: Option<String>,
    pub agent_token: Option<String>,
    pub insecure_no_auth: bool,
    pub tls: Option<TlsFiles>,
    pub local_agent: bool,
    /// Hostname the built-in agent registers under (the seed's examples use `localhost`).
    pub local_agent_hostname: String,
    /// How the built-in agent drives LTTng (`lttng_control`, `--lttng-control`).
    pub lttng_control: tracevisor_lttng::control::ControlChoice,
    pub cors_allow_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_duration_secs: u64,
    pub heartbeat_interval: Duration,
    pub profiles: BTreeMap<String, Profile>,
    /// Where relays write traces, searched by analyses when a relay record has no `output_dir`.
    pub relay_output_dirs: Vec<String>,
    /// Retention and quota of kept traces, on SSH hosts and the built-in agent's host.
    pub traces: tracevisor_lttng::lifecycle::TracePolicy,
    /// How SSH host keys are checked.
    pub ssh_host_key_policy: crate::ssh::HostKeyPolicy,
    /// The `tracesd` program on SSH hosts that runs a whole job in one round trip
    /// (`ssh_tracesd`; empty: never, every step is its own command).
    pub ssh_tracesd: Option<String>,
    /// SSH connection timeout.
    pub ssh_connect_timeout: Duration,
    /// Most agent links served at once.
    pub max_agent_links: usize,
    /// Whether an agent may take over a hostname registered from another address.
    pub agent_takeover: crate::hub::TakeoverPolicy,
    /// Most REST requests handled at once (more wait their turn). A request waiting for its
    /// job to end does not hold one; agent links never do.
    pub max_concurrent_requests: usize,
    /// Time a connection has to send a request's headers, and may stay idle between requests.
    pub header_read_timeout: Duration,
    /// Most connections (REST and agent links) open at once; more are closed at once.
    pub max_connections: usize,
    /// Most jobs running at once (fleet hosts count one each); more are refused with 429.
    pub max_running_jobs: usize,
    /// Most jobs running at once on one host; more are refused with 429.
    pub max_jobs_per_host: usize,
    /// Most hosts of a fleet request that are neither connected agents nor registered clients.
    pub max_unregistered_fleet_hosts: usize,
    /// Whether a request may stream a trace to a relay that is not registered.
    pub allow_unregistered_relays: bool,
    /// Memory bounds of the embedded storage engine.
    pub storage: crate::store::StorageLimits,
    /// How long finished jobs (and their results) are kept; zero keeps them forever.
    pub job_retention: Duration,
    /// Membership of a cluster of coordinators sharing one database server.
    pub cluster: Option<ClusterSettings>,
    /// How to sign in to a database server.
    pub db_credentials: Option<crate::store::DbCredentials>,
}

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Defaults for a data directory, as a test or an embedding program would start from.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db: default_db(&data_dir),
            data_dir,
            token: None,
            agent_token: None,
            insecure_no_auth: false,
            tls: None,
            local_agent: false,
            local_agent_hostname: "localhost".into(),
            lttng_control: Default::default(),
            cors_allow_origins: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_duration_secs: DEFAULT_MAX_DURATION_SECS,
            heartbeat_interval: Duration::from_secs(DEFAULT_HEARTBEAT_SECS),
            profiles: profiles::builtin(),
            relay_output_dirs: vec!["/var/lib/lttng-relayd".into(), "/root/lttng-traces".into()],
            traces: tracevisor_lttng::lifecycle::TracePolicy::default(),
            ssh_host_key_policy: crate::ssh::HostKeyPolicy::Tofu,
            ssh_tracesd: Some("tracesd".into()),
            ssh_connect_timeout: Duration::from_secs(10),
            max_agent_links: 100_000,
            agent_takeover: crate::hub::TakeoverPolicy::PinAddress,
            max_concurrent_requests: 4096,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            max_connections: default_max_connections(),
            max_running_jobs: DEFAULT_MAX_RUNNING_JOBS,
            max_jobs_per_host: DEFAULT_MAX_JOBS_PER_HOST,
            max_unregistered_fleet_hosts: DEFAULT_MAX_UNREGISTERED_FLEET_HOSTS,
            allow_unregistered_relays: false,
            storage: crate::store::StorageLimits::default(),
            job_retention: Duration::from_secs(DEFAULT_JOB_RETENTION_SECS),
            cluster: None,
            db_credentials: None,
        }
    }

    /// Resolves flags and environment (already merged by clap) over the file over defaults.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("config file {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    err(format!(
                        "config file {}: {}",
                        path.display(),
                        e.to_string().trim()
                    ))
                })?
            }
            None => FileConfig::default(),
        };
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            err(format!(
                "listen: {listen_text:?} is not an address:port such as 127.0.0.1:5000"
            ))
        })?;
        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let mut config = Config::for_data_dir(data_dir);
        config.listen = listen;
        if let Some(db) = args.db.clone().or(file.db) {
            config.db = db;
        }
        config.token = args.token.clone().or(file.token);
        config.agent_token = args.agent_token.clone().or(file.agent_token);
        config.insecure_no_auth = args.insecure_no_auth || file.insecure_no_auth.unwrap_or(false);
        config.local_agent = !args.no_local_agent && file.local_agent.unwrap_or(true);
        config.tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    "tls_key: missing (tls_cert is set; give both or neither)",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "tls_cert: missing (tls_key is set; give both or neither)",
                ))
            }
        };
        if let Some(name) = file.local_agent_hostname {
            config.local_agent_hostname = name;
        }
        config.lttng_control = args
            .lttng_control
            .or(file.lttng_control)
            .unwrap_or_default();
        if let Some(origins) = file.cors_allow_origins {
            config.cors_allow_origins = origins;
        }
        if let Some(v) = file.max_body_bytes {
            config.max_body_bytes = v;
        }
        if let Some(v) = file.max_duration_secs {
            config.max_duration_secs = v;
        }
        if let Some(v) = file.heartbeat_interval_secs {
            config.heartbeat_interval = Duration::from_secs(v);
        }
        if let Some(v) = file.relay_output_dirs {
            config.relay_output_dirs = v;
        }
        if let Some(v) = file.trace_retention_secs {
            config.traces.retention = Duration::from_secs(v);
        }
        if let Some(v) = file.trace_quota_mib {
            config.traces.quota_bytes = v.saturating_mul(1 << 20);
        }
        if let Some(v) = file.ssh_host_key_policy {
            config.ssh_host_key_policy = v;
        }
        if let Some(program) = file.ssh_tracesd {
            config.ssh_tracesd = (!program.is_empty()).then_some(program);
        }
        if let Some(v) = file.ssh_connect_timeout_secs {
            config.ssh_connect_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.max_agent_links {
            config.max_agent_links = v;
        }
        if let Some(v) = file.agent_takeover {
            config.agent_takeover = v;
        }
        if let Some(v) = file.max_concurrent_requests {
            config.max_concurrent_requests = v;
        }
        if let Some(v) = file.header_read_timeout_secs {
            config.header_read_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.max_connections {
            config.max_connections = v;
        }
        if let Some(v) = file.max_running_jobs {
            config.max_running_jobs = v;
        }
        if let Some(v) = file.max_jobs_per_host {
            config.max_jobs_per_host = v;
        }
        if let Some(v) = file.max_unregistered_fleet_hosts {
            config.max_unregistered_fleet_hosts = v;
        }
        if let Some(v) = file.allow_unregistered_relays {
            config.allow_unregistered_relays = v;
        }
        if let Some(v) = file.db_memtable_mib {
            config.storage.memtable_bytes = v.saturating_mul(1 << 20);
        }
        if let Some(v) = file.db_block_cache_mib {
            config.storage.block_cache_bytes = v.saturating_mul(1 << 20);
        }
        if let Some(v) = file.job_retention_secs {
            config.job_retention = Duration::from_secs(v);
        }
        config.cluster = match args.cluster_listen.clone().or(file.cluster_listen) {
            None => None,
            Some(text) => {
                let listen = text.parse::<SocketAddr>().map_err(|_| {
                    err(format!(
                        "cluster_listen: {text:?} is not an address:port such as 10.0.0.5:5001"
                    ))
                })?;
                let file_path = args
                    .cluster_token_file
                    .clone()
                    .or(file.cluster_token_file)
                    .ok_or_else(|| {
                        err("cluster_token_file: missing (cluster_listen is set: the members authenticate each other with this token)")
                    })?;
                let token = crate::secrets::read_private_file(&file_path)
                    .map_err(|e| err(format!("cluster_token_file: {e}")))?;
                let url = args.cluster_url.clone().or(file.cluster_url);
                if url.is_none() && listen.ip().is_unspecified() {
                    return Err(err(format!(
                        "cluster_url: missing (cluster_listen {listen} listens on every address: give the address the other members reach this one at)"
                    )));
                }
                let url = url.unwrap_or_else(|| {
                    // The internal API is served like the REST API: TLS when it is set.
                    let scheme = if config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{listen}")
                });
                Some(ClusterSettings { listen, url, token })
            }
        };
        config.db_credentials = match args.db_user.clone().or(file.db_user) {
            None => None,
            Some(user) => {
                let pass = match args.db_pass_file.clone().or(file.db_pass_file) {
                    Some(path) => crate::secrets::read_private_file(&path)
                        .map_err(|e| err(format!("db_pass_file: {e}")))?,
                    None => std::env::var("TRACEVISOR_DB_PASS").map_err(|_| {
                        err("db_pass_file: missing (db_user is set: give the password in a 0600 file, or in TRACEVISOR_DB_PASS)")
                    })?,
                };
                Some(crate::store::DbCredentials { user, pass })
            }
        };
        for (name, fp) in file.analyses {
            let base = config.profiles.get(&name).cloned();
            let profile = Profile {
                analysis: name.clone(),
                description: fp
                    .description
                    .or_else(|| base.as_ref().map(|b| b.description.clone()))
                    .unwrap_or_else(|| format!("{name} (from configuration)")),
                kernel_events: fp
                    .kernel_events
                    .or_else(|| base.as_ref().map(|b| b.kernel_events.clone()))
                    .unwrap_or_default(),
                syscalls: fp
                    .syscalls
                    .or(base.as_ref().map(|b| b.syscalls))
                    .unwrap_or(false),
                userspace_events: fp
                    .userspace_events
                    .or_else(|| base.as_ref().map(|b| b.userspace_events.clone()))
                    .unwrap_or_default(),
                commands: fp
                    .commands
                    .or_else(|| base.as_ref().map(|b| b.commands.clone()))
                    .unwrap_or_default(),
                summary: fp
                    .summary
                    .or(base.as_ref().map(|b| b.summary))
                    .unwrap_or(Summary::Lami),
            };
            config.profiles.insert(name, profile);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self.db.split("://").next().unwrap_or_default();
        if !matches!(scheme, "surrealkv" | "mem" | "memory" | "ws" | "wss")
            || !self.db.contains("://")
        {
            return Err(err(format!(
                "db: {:?} is not a supported database URL (surrealkv://PATH, mem://, ws://HOST:PORT, wss://HOST:PORT)",
                self.db
            )));
        }
        // The memtable must hold the largest transaction: a job result of up to one 16 MiB frame.
        for (key, bytes, range) in [
            ("db_memtable_mib", self.storage.memtable_bytes, 32..=4096),
            (
                "db_block_cache_mib",
                self.storage.block_cache_bytes,
                8..=65536,
            ),
        ] {
            let mib = bytes >> 20;
            if bytes % (1 << 20) != 0 || !range.contains(&mib) {
                return Err(err(format!(
                    "{key}: {mib} is outside {}..={} (MiB)",
                    range.start(),
                    range.end()
                )));
            }
        }
        // Zero keeps jobs forever; beyond a century is surely a mistake (and would overflow dates).
        if self.job_retention > Duration::from_secs(100 * 365 * 24 * 3600) {
            return Err(err(format!(
                "job_retention_secs: {} is more than a century (0 keeps jobs forever)",
                self.job_retention.as_secs()
            )));
        }
        for (key, token) in [("token", &self.token), ("agent_token", &self.agent_token)] {
            if let Some(t) = token {
                if t.len() < 16 || t.len() > 512 || !t.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(err(format!(
                        "{key}: must be 16 to 512 printable ASCII characters without spaces"
                    )));
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls_cert", &tls.cert), ("tls_key", &tls.key)] {
                if !path.is_file() {
                    return Err(err(format!(
                        "{key}: {} is not a readable file",
                        path.display()
                    )));
                }
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(err(format!(
                "max_body_bytes: {} is outside 1024..=16777216",
                self.max_body_bytes
            )));
        }
        if !(1..=7 * 24 * 3600).contains(&self.max_duration_secs) {
            return Err(err(format!(
                "max_duration_secs: {} is outside 1..=604800",
                self.max_duration_secs
            )));
        }
        let hb = self.heartbeat_interval.as_secs();
        if !(1..=300).contains(&hb) {
            return Err(err(format!(
                "heartbeat_interval_secs: {hb} is outside 1..=300"
            )));
        }
        crate::validate::dns_name(&self.local_agent_hostname).map_err(|e| {
            err(format!(
                "local_agent_hostname: {:?} {e}",
                self.local_agent_hostname
            ))
        })?;
        for origin in &self.cors_allow_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(err(format!(
                    "cors_allow_origins: {origin:?} is neither \"*\" nor an http(s):// origin"
                )));
            }
        }
        for dir in &self.relay_output_dirs {
            crate::validate::abs_path(dir)
                .map_err(|e| err(format!("relay_output_dirs: {dir:?} {e}")))?;
        }
        let min_age = tracevisor_lttng::lifecycle::TRACE_MIN_AGE.as_secs();
        if self.traces.retention.as_secs() < min_age {
            return Err(err(format!(
                "trace_retention_secs: {} is under {min_age} (a younger trace may be a running job's)",
                self.traces.retention.as_secs()
            )));
        }
        if self.traces.quota_bytes == 0 {
            return Err(err("trace_quota_mib: must be at least 1".to_owned()));
        }
        if let Some(program) = &self.ssh_tracesd {
            if !crate::ssh::remote_program_ok(program) {
                return Err(err(format!(
                    "ssh_tracesd: {program:?} is neither an absolute path nor a program name (letters, digits, . _ + -)"
                )));
            }
        }
        let ssh_timeout = self.ssh_connect_timeout.as_secs();
        if !(1..=300).contains(&ssh_timeout) {
            return Err(err(format!(
                "ssh_connect_timeout_secs: {ssh_timeout} is outside 1..=300"
            )));
        }
        if !(1..=1_000_000).contains(&self.max_agent_links) {
            return Err(err(format!(
                "max_agent_links: {} is outside 1..=1000000",
                self.max_agent_links
            )));
        }
        if !(1..=100_000).contains(&self.max_concurrent_requests) {
            return Err(err(format!(
                "max_concurrent_requests: {} is outside 1..=100000",
                self.max_concurrent_requests
            )));
        }
        let header = self.header_read_timeout.as_secs();
        if !(1..=300).contains(&header) {
            return Err(err(format!(
                "header_read_timeout_secs: {header} is outside 1..=300"
            )));
        }
        for (key, value, range) in [
            ("max_connections", self.max_connections, 16..=1_100_000),
            ("max_running_jobs", self.max_running_jobs, 1..=1_000_000),
            ("max_jobs_per_host", self.max_jobs_per_host, 1..=1_000),
            (
                "max_unregistered_fleet_hosts",
                self.max_unregistered_fleet_hosts,
                0..=crate::jobs::MAX_FLEET_HOSTS,
            ),
        ] {
            if !range.contains(&value) {
                return Err(err(format!(
                    "{key}: {value} is outside {}..={}",
                    range.start(),
                    range.end()
                )));
            }
        }
        for (name, profile) in &self.profiles {
            profile.validate(&format!("analyses.{name}")).map_err(err)?;
        }
        if let Some(cluster) = &self.cluster {
            if !matches!(scheme, "ws" | "wss") {
                return Err(err(format!(
                    "cluster_listen: a cluster's members share one database server; db {:?} is this process's own (give ws://HOST:PORT or wss://HOST:PORT)",
                    self.db
                )));
            }
            if !(cluster.url.starts_with("http://") || cluster.url.starts_with("https://"))
                || cluster.url.contains(char::is_whitespace)
            {
                return Err(err(format!(
                    "cluster_url: {:?} is not an http(s):// URL",
                    cluster.url
                )));
            }
            let t = &cluster.token;
            if t.len() < 32 || t.len() > 512 || !t.chars().all(|c| c.is_ascii_graphic()) {
                return Err(err(
                    "cluster_token_file: the token must be 32 to 512 printable ASCII characters without spaces",
                ));
            }
            if self.local_agent && tracevisor_protocol::is_loopback_host(&self.local_agent_hostname)
            {
                return Err(err(format!(
                    "local_agent_hostname: {:?} would be every member's host; in a cluster give each coordinator's built-in agent its host's own name, or set local_agent = false (--no-local-agent)",
                    self.local_agent_hostname
                )));
            }
        }
        if let Some(c) = &self.db_credentials {
            if c.user.is_empty() || c.pass.is_empty() {
                return Err(err("db_user: the user and its password must not be empty"));
            }
        }
        Ok(())
    }

    /// Whether the listen address is loopback-only.
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

/// Default connection cap: the open-file limit less what the database, SSH and commands need.
fn default_max_connections() -> usize {
    let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let usable = soft
        .saturating_sub(RESERVED_DESCRIPTORS)
        .clamp(16, 1_000_000);
    usize::try_from(usable).unwrap_or(1_000_000)
}

/// The embedded database in the data directory.
pub fn default_db(data_dir: &Path) -> String {
    format!("surrealkv://{}", data_dir.join("db").display())
}

/// `$XDG_DATA_HOME/tracevisor`, else `~/.local/share/tracevisor`.
fn default_data_dir() -> Result<PathBuf, ConfigError> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("tracevisor"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/tracevisor")),
        None => Err(err(
            "data_dir: not set and neither XDG_DATA_HOME nor HOME is set",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("tv-config-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs {
            config: Some(path),
            data_dir: Some(dir),
            ..ServeArgs::default()
        };
        Config::load(&args)
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("max_body_bytes = 1", "max_body_bytes"),
            ("heartbeat_interval_secs = 0", "heartbeat_interval_secs"),
            ("db = \"rocksdb://x\"", "db"),
            ("token = \"short\"", "token"),
            ("db_memtable_mib = 8", "db_memtable_mib"),
            ("db_block_cache_mib = 0", "db_block_cache_mib"),
            ("job_retention_secs = 99999999999", "job_retention_secs"),
            ("bogus = 1", "bogus"),
            ("tls_cert = \"/nonexistent\"", "tls_key"),
            (
                "[analyses.x]\nkernel_events = [\"a;b\"]\ncommands=[[\"c\"]]",
                "analyses.x",
            ),
        ];
        for (text, key) in cases {
            let e = load_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn profiles_override_and_add() {
        let c = load_toml(
            "[analyses.io]\ncommands = [[\"my-io\", \"{trace}\", \"{mongohost}\", \"{mongoport}\"]]\n\
             [analyses.net]\nkernel_events = [\"net_dev_xmit\"]\ncommands = [[\"net-mi\", \"{trace}\"]]\n",
        )
        .unwrap();
        assert_eq!(c.profiles["io"].commands[0][0], "my-io");
        assert!(
            c.profiles["io"].syscalls,
            "unset keys keep the built-in value"
        );
        assert_eq!(c.profiles["net"].kernel_events, ["net_dev_xmit"]);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn a_cluster_needs_a_shared_database_a_private_token_and_named_local_agents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tv-config-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("cluster-token");
        std::fs::write(&token, format!("{}\n", "t".repeat(40))).unwrap();
        let with = |extra: &str| {
            format!(
                "cluster_listen = \"127.0.0.1:5001\"\ncluster_token_file = \"{}\"\n{extra}",
                token.display()
            )
        };
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = load_toml(&with("db = \"ws://db:8000\"\nlocal_agent = false\n")).unwrap_err();
        assert!(
            open.0.contains("cluster_token_file") && open.0.contains("chmod 600"),
            "{open}"
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let own_db = load_toml(&with("local_agent = false\n")).unwrap_err();
        assert!(own_db.0.starts_with("cluster_listen"), "{own_db}");
        let localhost = load_toml(&with("db = \"ws://db:8000\"\n")).unwrap_err();
        assert!(
            localhost.0.starts_with("local_agent_hostname"),
            "{localhost}"
        );
        let c = load_toml(&with(
            "db = \"ws://db:8000\"\nlocal_agent_hostname = \"coord-1\"\n",
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.url, "http://127.0.0.1:5001");
        assert_eq!(cluster.token, "t".repeat(40));
        assert!(
            !format!("{cluster:?}").contains("tttt"),
            "the token is not printed"
        );
        let missing = load_toml("db_user = \"tv\"\ndb_pass_file = \"/nonexistent\"\n").unwrap_err();
        assert!(missing.0.starts_with("db_pass_file"), "{missing}");
    }

    #[test]
    fn storage_limits_in_mib() {
        let c = load_toml("db_memtable_mib = 48\ndb_block_cache_mib = 16\n").unwrap();
        assert_eq!(c.storage.memtable_bytes, 48 << 20);
        assert_eq!(c.storage.block_cache_bytes, 16 << 20);
        let d = load_toml("").unwrap();
        assert_eq!(d.storage, crate::store::StorageLimits::default());
    }
}
