//! The `tracevisor` command line for REST users: `trace`, the registry (`clients`, `relays`,
//! `analyses-servers`), `jobs`, `job`, `cancel` and `analyses`, talking to a coordinator over
//! its REST API (`/trace/api/v1.0`).
//!
//! Every command prints readable text, or the server's JSON with `--json`, and ends with one of
//! the [exit codes](EXIT_CODES_HELP); an error is one line on stderr that says what to do.
//! Whatever came from the server is printed through [`sanitize`]: control characters and
//! escape sequences in process names, agent versions or messages show as text (`\x1b`).

pub mod client;
mod credentials;
mod fetch;
pub mod job_view;
mod jobs;
mod recorder;
mod registry;
pub mod render;
pub mod sanitize;
mod table;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use client::Client;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: any error not listed below (a server error 5xx, a bad answer, a local failure).
pub const EXIT_OTHER: u8 = 1;
/// Exit code: usage error (unknown flag, missing or malformed argument).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the coordinator cannot be reached (connection refused, DNS, TLS, timeout).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the server refused the request (a 4xx answer other than 404: invalid value,
/// duplicate, missing token, job not running).
pub const EXIT_REFUSED: u8 = 4;
/// Exit code: not found (404: unknown id).
pub const EXIT_NOT_FOUND: u8 = 5;
/// Exit code: the job failed (status -1), or a fleet job where some host did not complete.
pub const EXIT_JOB_FAILED: u8 = 6;
/// Exit code: interrupted by Ctrl-C (`trace` cancels its job first).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes (client commands):
  0    success
  1    other error (server error 5xx, unexpected answer)
  2    usage error (bad flag or argument)
  3    server unreachable (connection refused, DNS, TLS, timeout)
  4    the server refused the request (4xx other than 404: invalid value, duplicate,
       missing or wrong token, job not running)
  5    not found (404: unknown id)
  6    job failed (status -1), or a fleet job where some host did not complete
  130  interrupted (Ctrl-C; `trace` cancels its job first)

Client commands reach the coordinator at --server (env TRACEVISOR_SERVER, default
http://127.0.0.1:5000) with --token (env TRACEVISOR_TOKEN) when it needs one.";

/// Default coordinator URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:5000";

/// Where the coordinator is and how to talk to it. Given before the subcommand
/// (`tracevisor --server URL jobs`); [`Connection`] takes them after it too.
#[derive(Args, Debug, Clone, Default)]
pub struct TopConnection {
    /// Coordinator URL for the client commands [env: TRACEVISOR_SERVER] [default: http://127.0.0.1:5000]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// REST API bearer token for the client commands [env: TRACEVISOR_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// PEM CA certificate that signed the coordinator's https certificate
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// The connection flags after a client subcommand (`tracevisor jobs --server URL`).
#[derive(Args, Debug, Clone, Default)]
pub struct Connection {
    /// Coordinator URL [env: TRACEVISOR_SERVER] [default: http://127.0.0.1:5000]
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// REST API bearer token [env: TRACEVISOR_TOKEN]
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signed the coordinator's https certificate
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print the server's JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

/// Resolved connection settings: flags after the subcommand, then before it, then the
/// environment, then the default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
}

impl Settings {
    pub fn resolve(top: &TopConnection, sub: &Connection) -> Settings {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Settings {
            server: sub
                .server
                .clone()
                .or_else(|| top.server.clone())
                .or_else(|| env("TRACEVISOR_SERVER"))
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            token: sub
                .token
                .clone()
                .or_else(|| top.token.clone())
                .or_else(|| env("TRACEVISOR_TOKEN")),
            ca_cert: sub.ca_cert.clone().or_else(|| top.ca_cert.clone()),
        }
    }
}

/// The client subcommands (flattened into the binary's command list next to `serve`).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace one host (a job) or several (a fleet job), follow its progress and print the result
    #[command(after_help = TRACE_HELP)]
    Trace(trace::TraceArgs),
    /// Registered clients: the traced hosts (agent state, SSH port and user)
    Clients(registry::RegistryArgs<registry::SshFields>),
    /// Registered relays (lttng-relayd: ports and output directory)
    Relays(registry::RegistryArgs<registry::RelayFields>),
    /// Registered analyses servers
    AnalysesServers(registry::RegistryArgs<registry::SshFields>),
    /// List running jobs (all jobs with --all)
    Jobs(jobs::JobsArgs),
    /// Show one job: its status, error or result
    Job(jobs::JobArgs),
    /// Cancel a running job (its session is stopped and destroyed)
    Cancel(jobs::CancelArgs),
    /// List the analysis types and what each one records and runs
    Analyses(jobs::AnalysesArgs),
    /// Whether the coordinator's database answers, and its agents, links, jobs and memory
    Status(jobs::StatusArgs),
    /// Agents' own credentials (issued by `tracesd enroll`): list, or revoke one host's
    Credentials(credentials::CredentialsArgs),
    /// Download a job's kept trace (`trace --keep`) and unpack it, for Trace Compass or babeltrace2
    #[command(after_help = fetch::FETCH_HELP)]
    Fetch(fetch::FetchArgs),
    /// Flight recorders across the fleet: start (arm on hosts), list, snapshot (on every host at once), stop
    Recorder(recorder::RecorderArgs),
}

const TRACE_HELP: &str = "\
Examples:
  tracevisor trace localhost --type ust --duration 5
  tracevisor trace web1 web2 web3 --type io --duration 2 --host-timeout 60
  tracevisor trace --connected --require kernel_tracer --type cpu --duration 10 --json

With several hosts (or --connected) the coordinator runs a fleet job: one child job per host,
started together; each host gets its own outcome (complete, error, offline, timeout, skipped).
Progress goes to stderr (a bar on a terminal, status lines otherwise); the result to stdout.
Ctrl-C cancels the job. Exit code 6 when the job failed or some host did not complete.";

/// A failure of a client command: its exit code and one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: sanitize::line(&one_line(&message.into())).into_owned(),
        }
    }

    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(EXIT_OTHER, message)
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(EXIT_USAGE, message)
    }

    /// Adds what to do to a not-found error.
    pub fn if_not_found(mut self, hint: &str) -> CliError {
        if self.code == EXIT_NOT_FOUND {
            self.message = format!("{}; {hint}", self.message);
        }
        self
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Collapses a (possibly multi-line) message into one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs a client subcommand and returns its exit code; errors are printed on stderr.
pub fn run(top: &TopConnection, command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracevisor: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let code = runtime.block_on(dispatch(top, command));
    ExitCode::from(code)
}

async fn dispatch(top: &TopConnection, command: Command) -> u8 {
    let result = match command {
        Command::Trace(args) => trace::run(top, args).await,
        Command::Clients(args) => registry::run(top, registry::Kind::Clients, args).await,
        Command::Relays(args) => registry::run(top, registry::Kind::Relays, args).await,
        Command::AnalysesServers(args) => {
            registry::run(top, registry::Kind::AnalysesServers, args).await
        }
        Command::Jobs(args) => jobs::list(top, args).await,
        Command::Job(args) => jobs::show(top, args).await,
        Command::Cancel(args) => jobs::cancel(top, args).await,
        Command::Analyses(args) => jobs::analyses(top, args).await,
        Command::Status(args) => jobs::status(top, args).await,
        Command::Credentials(args) => credentials::run(top, args).await,
        Command::Fetch(args) => fetch::run(top, args).await,
        Command::Recorder(args) => recorder::run(top, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracevisor: {}", sanitize::line(&e.message));
            e.code
        }
    }
}

/// Prints JSON for scripts (pretty, one document; control characters escaped, see
/// [`sanitize::json`]).
fn print_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    println!("{}", sanitize::json(&text));
}

/// Prints text the CLI built around server values on stdout (see [`sanitize::block`]).
fn print_text(text: &str) {
    print!("{}", sanitize::block(text));
}
