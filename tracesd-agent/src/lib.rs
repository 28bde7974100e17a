//! The tracesd agent: keeps one outbound link to the coordinator, reports what this host can
//! trace, and runs LTTng and the analyses for it.
//!
//! Code map:
//! - [`config`]: flags, `TRACESD_*` variables and the TOML file, validated.
//! - [`allow`]: the analysis programs this host runs, whatever a coordinator asks.
//! - [`roots`]: the directories analysis-only jobs read traces in, whatever a coordinator asks.
//! - [`enroll`]: `tracesd enroll`, which writes that file, checks the coordinator and LTTng,
//!   and enables the service.
//! - [`link`]: dial out, hello, heartbeats, reconnect with backoff ([`link::run`] is the entry
//!   point); [`link::drive`] runs one link over any WebSocket stream.
//! - [`jobs`]: where job commands from the coordinator land; they run the trace lifecycle of
//!   [`tracevisor_lttng`] (which also holds the command runner and the capability detection,
//!   shared with the coordinator's SSH path).
//! - [`tls`]: the rustls client configuration.
//! - [`host`]: hostname and addresses.
//!
//! Architecture invariant: the agent never listens on a port; it only dials out.

pub mod allow;
pub mod config;
pub mod enroll;
pub mod fetch;
pub mod host;
pub mod jobs;
pub mod link;
pub mod recorders;
pub mod roots;
pub mod ssh_job;
pub mod tls;

pub use config::{AgentConfig, Cli, LinkSettings, Token};
pub use link::{run, LinkError};
