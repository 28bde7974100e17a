//! The `tracesd` binary: parses flags, sets up logging, and runs the agent's link until
//! SIGINT or SIGTERM; `tracesd enroll ...` enrolls the host instead.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// `tracesd [FLAGS]` runs the agent (the flags of [`tracesd::Cli`]); `tracesd enroll ...`
/// enrolls this host. The two do not mix: agent flags before `enroll` are an error.
#[derive(clap::Parser)]
#[command(
    name = "tracesd",
    version,
    about = "Tracevisor agent: keeps an outbound link to the coordinator and runs LTTng on this host",
    args_conflicts_with_subcommands = true,
    // Help is printed as written, never wrapped to the terminal (the man page tests read it).
    term_width = 0
)]
struct Invocation {
    #[command(flatten)]
    agent: tracesd::Cli,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Enroll this host: check the coordinator and the token, write the agent configuration
    /// (mode 0600), check lttng-sessiond, and enable tracesd.service when systemd runs.
    Enroll(tracesd::enroll::EnrollArgs),
    /// Run one trace job for a coordinator that reached this host over SSH: the job as a JSON
    /// line on standard input, progress and outcome as JSON lines on standard output.
    #[command(name = "ssh-job")]
    SshJob(tracesd::ssh_job::SshJobArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let invocation = Invocation::parse();
    // Enrollment prints its own progress on standard output; its logs are for problems only
    // and go to standard error. The agent logs as it always did.
    // Colours only on a terminal (not in the journal).
    let (default_level, writer, ansi) = match invocation.command {
        Some(Command::Enroll(_)) | Some(Command::SshJob(_)) => (
            "warn",
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
        None => (
            "info",
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TRACESD_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    let cli = match invocation.command {
        Some(Command::Enroll(args)) => return enroll(&args).await,
        Some(Command::SshJob(args)) => {
            let code = tracesd::ssh_job::run(args).await;
            // Standard input may still be read by a blocking thread, which would hold the
            // runtime's shutdown: the outcome is written and flushed, so exit now.
            std::process::exit(i32::from(code));
        }
        None => invocation.agent,
    };
    let config = match tracesd::AgentConfig::load(cli) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match tracesd::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!("cannot watch SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// `tracesd enroll`: progress on standard output, the error on standard error.
async fn enroll(args: &tracesd::enroll::EnrollArgs) -> ExitCode {
    let system = tracesd::enroll::System::default();
    match tracesd::enroll::enroll(args, &system, &mut std::io::stdout()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tracesd enroll: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn plain_invocation_runs_the_agent() {
        let parsed = Invocation::try_parse_from([
            "tracesd",
            "--coordinator",
            "ws://c:5000",
            "--hostname",
            "web-1",
            "--config",
            "/etc/tracevisor/tracesd.toml",
        ])
        .unwrap();
        assert!(parsed.command.is_none());
        assert_eq!(parsed.agent.coordinator, ["ws://c:5000"]);
        assert_eq!(parsed.agent.hostname.as_deref(), Some("web-1"));
        assert!(Invocation::try_parse_from(["tracesd"])
            .unwrap()
            .command
            .is_none());
    }

    #[test]
    fn enroll_subcommand() {
        let parsed = Invocation::try_parse_from([
            "tracesd",
            "enroll",
            "--coordinator",
            "wss://c:5000",
            "--token",
            "t0k3n",
        ])
        .unwrap();
        let Some(Command::Enroll(args)) = parsed.command else {
            panic!("not enroll");
        };
        assert_eq!(args.coordinator, "wss://c:5000");
        assert_eq!(args.token, "t0k3n");
        assert_eq!(
            args.config,
            std::path::PathBuf::from(tracesd::enroll::DEFAULT_CONFIG)
        );
        assert!(!args.no_check && !args.no_enable);
        // Agent flags and the subcommand do not mix.
        assert!(Invocation::try_parse_from([
            "tracesd",
            "--hostname",
            "h",
            "enroll",
            "--coordinator",
            "ws://c",
            "--token",
            "t"
        ])
        .is_err());
        // The coordinator is required.
        assert!(Invocation::try_parse_from(["tracesd", "enroll", "--token", "t"]).is_err());
    }
}
