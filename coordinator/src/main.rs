//! The `tracevisor` binary: parses flags, then runs the coordinator (`serve`), prints the agent
//! token, or runs a client command of [`tracevisor::cli`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracevisor::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "tracevisor",
    version,
    about = "Control plane for LTTng tracing across a fleet of Linux hosts",
    after_help = tracevisor::cli::EXIT_CODES_HELP,
    // Help is printed as written, never wrapped to the terminal (the man page tests read it).
    term_width = 0
)]
struct Cli {
    #[command(flatten)]
    connection: tracevisor::cli::TopConnection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (REST API, agent hub, embedded database)
    Serve(ServeArgs),
    /// Print the enrollment token agents present (generated on first use)
    AgentToken(ServeArgs),
    #[command(flatten)]
    Client(tracevisor::cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Client(command) => return tracevisor::cli::run(&cli.connection, command),
        other => other,
    };
    let top = &cli.connection;
    if top.server.is_some() || top.token.is_some() || top.ca_cert.is_some() {
        eprintln!("tracevisor: --server, --token and --ca-cert before the subcommand are client flags; give the coordinator's own flags after it (`tracevisor serve --token ...`)");
        return ExitCode::from(tracevisor::cli::EXIT_USAGE);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,surrealdb=warn,surrealkv=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match command {
        Command::Serve(args) => serve(&args),
        Command::AgentToken(args) => agent_token(&args),
        Command::Client(_) => ExitCode::from(tracevisor::cli::EXIT_USAGE),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    // Every agent link is a descriptor: take the soft open-file limit up to the hard one (the
    // default connection cap is derived from it).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tracevisor: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tracevisor: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracevisor: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(stop_on_signal(shutdown.clone()));
    match runtime.block_on(tracevisor::run(listener, config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracevisor: {e}");
            ExitCode::from(1)
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    shutdown.cancel();
}

fn agent_token(args: &ServeArgs) -> ExitCode {
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tracevisor: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(token) = &config.agent_token {
        println!("{token}");
        return ExitCode::SUCCESS;
    }
    match tracevisor::secrets::load_or_create_token(
        &config.data_dir,
        tracevisor::secrets::AGENT_TOKEN_FILE,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tracevisor: {e}");
            ExitCode::from(1)
        }
    }
}
