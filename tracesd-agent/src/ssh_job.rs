//! `tracesd ssh-job`: runs one whole trace job on this host for a coordinator that reached it
//! over SSH ([`tracevisor_lttng::remote`]), with the agent's own lifecycle and back end
//! (liblttng-ctl when it matches the session daemon). The job description comes as one JSON
//! line on standard input; closing the input cancels the job. Progress and the outcome go to
//! standard output as JSON lines; logs go to standard error.
//!
//! It runs as the SSH user, with that user's rights: it is what the coordinator would otherwise
//! do one `lttng` command at a time over the same connection.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;
use tracevisor_lttng::control::{Control, ControlChoice};
use tracevisor_lttng::lifecycle::{self, LocalExecutor, TracePolicy};
use tracevisor_lttng::remote::{self, RemoteLine};
use tracevisor_protocol::JobSpec;

/// Arguments of `tracesd ssh-job` (given by the coordinator's SSH driver).
#[derive(Debug, Clone, clap::Args)]
pub struct SshJobArgs {
    /// The name the coordinator knows this host by, in results and errors.
    #[arg(long, value_name = "NAME")]
    pub host: String,
    /// Where local traces go: created with mode 0700 and checked before the job, as the
    /// agent's trace root is.
    #[arg(long, value_name = "DIR")]
    pub trace_root: PathBuf,
    /// Kept traces older than this are deleted.
    #[arg(long, value_name = "SECS", default_value_t = 7 * 24 * 3600)]
    pub retention_secs: u64,
    /// Beyond this many MiB in the trace root, the oldest kept traces are deleted.
    #[arg(long, value_name = "MIB", default_value_t = 10 * 1024)]
    pub quota_mib: u64,
    /// How LTTng is driven: auto, library or cli.
    #[arg(long, value_name = "auto|library|cli", default_value = "auto")]
    pub lttng_control: ControlChoice,
    /// The tracesd version the coordinator is built with: another one declines the job
    /// (nothing is done; the coordinator runs it one command per step).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// Check first what the coordinator's pre-flight checks: a root lttng-sessiond, a user
    /// that may trace (root or the tracing group), and with --needs-kernel the kernel tracer.
    #[arg(long)]
    pub preflight: bool,
    /// The analysis needs kernel events: the pre-flight also checks the kernel tracer.
    #[arg(long)]
    pub needs_kernel: bool,
    /// The analysis's name, for the pre-flight's messages.
    #[arg(long, value_name = "NAME", default_value = "ust")]
    pub analysis: String,
}

/// Runs the job; the exit status is 0 whenever a result or an error line was written (the
/// job's outcome is in it), 2 when the input or arguments were unusable.
pub async fn run(args: SshJobArgs) -> u8 {
    let fail = |message: String| {
        emit(&RemoteLine::Error {
            step: "ssh-job".into(),
            host: args.host.clone(),
            message,
        });
        2
    };
    let own = env!("CARGO_PKG_VERSION");
    if let Some(expected) = args.expect_version.as_deref().filter(|v| *v != own) {
        emit(&RemoteLine::Declined {
            reason: format!("this host's tracesd is {own}, the coordinator's {expected}"),
        });
        return 0;
    }
    if !remote::host_ok(&args.host) {
        return fail(format!("invalid --host {:?}", args.host));
    }
    if !remote::analysis_ok(&args.analysis) {
        return fail(format!("invalid --analysis {:?}", args.analysis));
    }
    if !args.trace_root.is_absolute() {
        return fail(format!(
            "--trace-root {} is not an absolute path",
            args.trace_root.display()
        ));
    }
    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let read = (&mut input)
        .take(remote::MAX_SPEC_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await;
    if let Err(e) = read {
        return fail(format!("cannot read the job description: {e}"));
    }
    if line.len() > remote::MAX_SPEC_BYTES {
        return fail(format!(
            "the job description is larger than {} bytes",
            remote::MAX_SPEC_BYTES
        ));
    }
    let spec: JobSpec = match serde_json::from_slice(&line) {
        Ok(spec) => spec,
        Err(e) => return fail(format!("the job description is not valid: {e}")),
    };
    let control = match Control::open(args.lttng_control, None) {
        Ok(control) => control,
        Err(why) => return fail(why),
    };
    let executor = LocalExecutor {
        hostname: args.host.clone(),
        trace_root: args.trace_root.clone(),
        policy: TracePolicy {
            retention: Duration::from_secs(args.retention_secs).max(lifecycle::TRACE_MIN_AGE),
            quota_bytes: args.quota_mib.max(1).saturating_mul(1 << 20),
        },
        control,
    };
    if args.preflight {
        if let Err(e) = remote::preflight(&executor, args.needs_kernel, &args.analysis).await {
            emit(&e.into());
            return 0;
        }
    }
    // The coordinator closing the input (or the connection dropping) cancels the job.
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut rest = [0u8; 256];
            loop {
                match input.read(&mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            cancel.cancel();
        })
    };
    let signals = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = hup.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            cancel.cancel();
        })
    };
    let progress = |status: i8, text: &str| {
        emit(&RemoteLine::Progress {
            status,
            text: text.to_owned(),
        })
    };
    let outcome = lifecycle::run_job(&executor, &spec, progress, &cancel).await;
    emit(&match outcome {
        Ok(result) => RemoteLine::Result(result),
        Err(e) => e.into(),
    });
    // The outcome is out: the coordinator need not wait for the session daemon to finish
    // destroying the session, but this process does before it exits.
    executor.control.settle(Duration::from_secs(60)).await;
    signals.abort();
    let _ = signals.await;
    // The input watcher sits in a blocking read of standard input, which cannot be
    // interrupted: the caller exits the process right after this returns.
    watcher.abort();
    0
}

/// Writes one line to standard output and flushes it.
fn emit(line: &RemoteLine) {
    let Ok(mut text) = serde_json::to_vec(line) else {
        return;
    };
    text.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&text);
    let _ = out.flush();
}
