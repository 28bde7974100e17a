//! The SSH driver: one multiplexed SSH connection per job (openssh, native mux) with the
//! coordinator's key, batch mode and a pinned-host-key policy; an [`Executor`] for the shared
//! trace lifecycle, and the pre-flight checks the original made. The `ssh` master starts from
//! the runner's cleared environment (no token of this process reaches it), and local traces go
//! to a per-user root checked on the host ([`SSH_TRACE_ROOT_PREFIX`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssh::Session;
use tracevisor_lttng::lifecycle::{Executor, StepError};
use tracevisor_lttng::runner::{child_env, Output, RunError};

/// Where the SSH path writes local traces on a host: one root per SSH user,
/// `/var/tmp/tracevisor-traces-<user>`, which the lifecycle creates with mode 0700 and refuses
/// unless it is a directory that user owns and nobody else can write
/// ([`tracevisor_lttng::lifecycle::create_trace_dir`]). `/var/tmp` is world-writable but
/// sticky: once the root is that user's, nobody else can rename or replace it; a root
/// someone else made first is refused, naming it.
pub const SSH_TRACE_ROOT_PREFIX: &str = "/var/tmp/tracevisor-traces-";

/// How a changed or unknown host key is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Trust on first use: an unknown key is pinned, a changed one refused (default).
    Tofu,
    /// Only keys already pinned in the known-hosts file are accepted.
    Strict,
}

/// Where and how to reach a host over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The name shown in errors (the `host` of the request).
    pub display: String,
    /// The address or DNS name to connect to.
    pub address: String,
    pub port: u16,
    pub user: String,
}

/// The coordinator's SSH settings.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub key_file: PathBuf,
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    /// Retention and quota of kept traces on SSH hosts.
    pub traces: tracevisor_lttng::lifecycle::TracePolicy,
    /// The `tracesd` program on the hosts ([`SshExecutor::run_job_remotely`]); `None`: never.
    pub tracesd: Option<String>,
}

/// A connected host.
pub struct SshExecutor {
    session: Arc<Session>,
    display: String,
    /// The SSH user (validated as a POSIX user name), which names the trace root.
    user: String,
    traces: tracevisor_lttng::lifecycle::TracePolicy,
}

fn io_err(command: String, message: impl std::fmt::Display) -> RunError {
    RunError::Io {
        command,
        source: std::io::Error::other(message.to_string()),
    }
}

impl SshExecutor {
    /// Opens the connection (the first pre-flight check: SSH reachable, key accepted).
    pub async fn connect(
        target: &SshTarget,
        settings: &SshSettings,
    ) -> Result<SshExecutor, StepError> {
        let fail = |message: String| StepError {
            step: "ssh-connect".into(),
            host: target.display.clone(),
            message,
        };
        let dir = launch_master(target, settings).await.map_err(fail)?;
        let session = Arc::new(Session::new_native_mux(dir));
        Ok(SshExecutor {
            session,
            display: target.display.clone(),
            user: target.user.clone(),
            traces: settings.traces,
        })
    }

    /// Runs the whole job with the host's `tracesd ssh-job` ([`tracevisor_lttng::remote`]): one
    /// command, so one round trip however many steps the job has, and the host's own back end
    /// (liblttng-ctl where it matches the session daemon). The spec goes as a JSON line on the
    /// command's input, which stays open; progress and the outcome come back as JSON lines.
    /// Cancelling closes the input: the host destroys the session and answers `cancelled`
    /// (waited for at most [`REMOTE_CANCEL_GRACE`]). The command is bounded on the host by
    /// `timeout` (the duration, the analysis timeout and 5 minutes).
    ///
    /// It is tried first, with the pre-flight done on the host by the same command: `Err` when
    /// the host has no such `tracesd` (not found, another version, one without `ssh-job`), and
    /// nothing was done there: the caller runs the pre-flight and the job one command per step.
    pub async fn run_job_remotely(
        &self,
        program: &str,
        spec: &tracevisor_protocol::JobSpec,
        (needs_kernel, analysis): (bool, &str),
        progress: &(impl Fn(i8, &str) + Send + Sync),
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Result<serde_json::Value, StepError>, String> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        use tracevisor_lttng::remote::{self, RemoteLine};
        let fail = |step: &str, message: String| StepError {
            step: step.into(),
            host: self.display.clone(),
            message,
        };
        if !remote::host_ok(&self.display) || !remote::analysis_ok(analysis) {
            return Err(format!(
                "host {:?} or analysis {analysis:?} cannot be given to tracesd",
                self.display
            ));
        }
        if let Err(e) = tracevisor_lttng::lifecycle::validate_spec(spec) {
            return Ok(Err(fail("validate", e)));
        }
        // Each analysis command has its own timeout on the host; they run one after another.
        let analyses = u32::try_from(spec.analysis_commands.len().max(1)).unwrap_or(u32::MAX);
        let limit = Duration::from_millis(spec.duration_ms)
            + tracevisor_lttng::lifecycle::ANALYSIS_TIMEOUT.saturating_mul(analyses)
            + Duration::from_secs(300);
        let secs = limit.as_secs().to_string();
        let retention = self.traces.retention.as_secs().to_string();
        let quota = (self.traces.quota_bytes >> 20).max(1).to_string();
        let root = self.trace_root();
        let mut cmd = self.session.command("timeout");
        cmd.args(["-k", "5", secs.as_str(), program, remote::SUBCOMMAND])
            .args(["--expect-version", env!("CARGO_PKG_VERSION")])
            .args(["--preflight", "--analysis", analysis])
            .args(needs_kernel.then_some("--needs-kernel"))
            .args([
                "--host",
                self.display.as_str(),
                "--trace-root",
                root.as_str(),
            ])
            .args([
                "--retention-secs",
                retention.as_str(),
                "--quota-mib",
                quota.as_str(),
            ])
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let started = Instant::now();
        // Starting the command and handing it the job are bounded and cancellable too: a host
        // that never opens the channel, or never reads, must not hold the job.
        let start_limit = Duration::from_secs(60);
        let spawned = tokio::select! {
            spawned = tokio::time::timeout(start_limit, cmd.spawn()) => spawned,
            _ = cancel.cancelled() => return Ok(Err(fail("cancelled", "cancelled before the job started on the host".into()))),
        };
        let mut child = match spawned {
            Ok(Ok(child)) => child,
            Ok(Err(e)) => {
                return Ok(Err(fail(
                    "ssh-job",
                    format!("cannot start {program} over ssh: {e}"),
                )))
            }
            Err(_) => {
                return Ok(Err(fail(
                    "ssh-job",
                    format!(
                        "{program} did not start over ssh within {} s",
                        start_limit.as_secs()
                    ),
                )))
            }
        };
        let (Some(mut input), Some(stdout), Some(mut stderr)) = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        ) else {
            return Ok(Err(fail(
                "ssh-job",
                "no pipes to the remote command".into(),
            )));
        };
        let mut line = match serde_json::to_vec(spec) {
            Ok(line) => line,
            Err(e) => return Ok(Err(fail("ssh-job", e.to_string()))),
        };
        line.push(b'\n');
        // A host without the program closes its input at once: that shows below as no line
        // and the shell's exit status, not as an error here.
        let sent = async {
            let _ = input.write_all(&line).await;
            let _ = input.flush().await;
        };
        tokio::select! {
            sent = tokio::time::timeout(start_limit, sent) => if sent.is_err() {
                return Ok(Err(fail("ssh-job", format!("{program} did not take the job within {} s", start_limit.as_secs()))));
            },
            _ = cancel.cancelled() => return Ok(Err(fail("cancelled", "cancelled before the job started on the host".into()))),
        }
        let mut input = Some(input);
        let mut said = Vec::new();
        // The first 64 KiB of standard error are kept; the rest is read and dropped (stdout and
        // stderr share the channel's window: an unread stderr would stall the result).
        let errors = async {
            let mut chunk = [0u8; 8192];
            loop {
                match stderr.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = (64 * 1024usize).saturating_sub(said.len());
                        said.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        };
        let mut output = tokio::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(30);
        let mut grace: Option<tokio::time::Instant> = None;
        let outcome = async move {
            let mut progressed = false;
            loop {
                let until = grace.map_or(deadline, |g| g.min(deadline));
                let room = MAX_REMOTE_LINE.saturating_sub(buf.len()) as u64;
                let mut limited = (&mut output).take(room);
                tokio::select! {
                    read = limited.read_until(b'\n', &mut buf) => {
                        match read {
                            Ok(0) | Err(_) => return (None, progressed),
                            Ok(_) if !buf.ends_with(b"\n") && buf.len() < MAX_REMOTE_LINE => continue,
                            Ok(_) => {}
                        }
                        let parsed = serde_json::from_slice::<RemoteLine>(&buf);
                        buf.clear();
                        match parsed {
                            // Progress moves a job between the running statuses only: the
                            // end is the result or error line, checked like any other.
                            Ok(RemoteLine::Progress { status, text })
                                if (tracevisor_protocol::JOB_STATUS_STARTED
                                    ..=tracevisor_protocol::JOB_STATUS_ANALYSIS_RUNNING)
                                    .contains(&status) =>
                            {
                                progressed = true;
                                progress(status, &text)
                            }
                            Ok(RemoteLine::Progress { status, .. }) => {
                                tracing::warn!(host = %self.display, status, "tracesd ssh-job reported a status that is not a running one; ignored");
                            }
                            Ok(end) => return (Some(end), progressed),
                            Err(e) => {
                                tracing::warn!(host = %self.display, error = %e, "tracesd ssh-job printed a line that is not one of its own");
                                return (None, progressed);
                            }
                        }
                    }
                    _ = cancel.cancelled(), if input.is_some() => {
                        // Closing its input cancels the remote job.
                        input = None;
                        grace = Some(tokio::time::Instant::now() + REMOTE_CANCEL_GRACE);
                    }
                    _ = tokio::time::sleep_until(until) => return (None, progressed),
                }
            }
        };
        // Standard error is read meanwhile (at most 64 KiB), but never waited for once the
        // outcome is known: a host that keeps writing must not hold the job.
        tokio::pin!(errors);
        let mut errors_read = false;
        let outcome = {
            tokio::pin!(outcome);
            loop {
                tokio::select! {
                    outcome = &mut outcome => break outcome,
                    () = &mut errors, if !errors_read => errors_read = true,
                }
            }
            // The finished future goes here, with our ends of the command's input and output:
            // a command that still writes stops on a broken pipe.
        };
        // With an outcome, the job is over for the coordinator: the command may still be
        // finishing on the host (the session daemon completing a destruction), bounded there by
        // `timeout`; dropping it closes the channel, not the command. Without one, its standard
        // error says why, and its exit is waited for briefly.
        let (outcome, progressed) = outcome;
        let mut code = None;
        if matches!(
            outcome,
            Some(RemoteLine::Result(_) | RemoteLine::Error { .. } | RemoteLine::Declined { .. })
        ) {
            tracing::debug!(host = %self.display, elapsed_ms = started.elapsed().as_millis() as u64, "tracesd ssh-job answered");
        } else {
            if !errors_read {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut errors).await;
            }
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            tracing::debug!(host = %self.display, elapsed_ms = started.elapsed().as_millis() as u64, ?status, "tracesd ssh-job ended without an outcome");
            code = match status {
                Ok(Ok(status)) => status.code(),
                // openssh reports the shell's 127 as an error of its own.
                Ok(Err(openssh::Error::Remote(e))) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(127)
                }
                _ => None,
            };
        }
        Ok(match outcome {
            Some(RemoteLine::Declined { reason }) => return Err(reason),
            // Not found (127), not executable (126), or a tracesd whose command line has no
            // `ssh-job` (2, a usage error): nothing ran on the host.
            None if !progressed
                && !cancel.is_cancelled()
                && matches!(code, Some(2 | 126 | 127)) =>
            {
                let said = String::from_utf8_lossy(&said);
                return Err(format!(
                    "{program} {}: exit status {}{}",
                    remote::SUBCOMMAND,
                    code.unwrap_or_default(),
                    said.lines()
                        .next()
                        .map(|l| format!(": {}", l.trim()))
                        .unwrap_or_default()
                ));
            }
            Some(RemoteLine::Result(result)) => Ok(result),
            Some(RemoteLine::Error { step, message, .. }) => Err(fail(&step, message)),
            Some(RemoteLine::Progress { .. }) | None if cancel.is_cancelled() => Err(fail(
                "cancelled",
                "cancelled (the host did not confirm that its session was destroyed)".into(),
            )),
            Some(RemoteLine::Progress { .. }) | None => {
                let said = String::from_utf8_lossy(&said);
                let said = said.trim();
                Err(fail(
                    "ssh-job",
                    format!(
                        "{program} {} ended without an outcome{}",
                        remote::SUBCOMMAND,
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", said.chars().take(2000).collect::<String>())
                        }
                    ),
                ))
            }
        })
    }

    /// Closes the master connection.
    pub async fn close(self) {
        close_session(self.session, &self.display).await;
    }

    /// Starts streaming the trace directory `path` as a tar archive (entries relative to it,
    /// GNU format): `du` first, so a trace that is gone is told apart from a failure, then
    /// `tar` bounded by [`TAR_TIMEOUT`] on the host. `path` must be an absolute
    /// Tracevisor trace directory (`tracevisor-*`) with no `..`; it is passed as one argument.
    pub async fn stream_tar(self, path: &str) -> Result<SshTar, (bool, String)> {
        let named = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(tracevisor_lttng::lifecycle::SESSION_PREFIX));
        if !path.starts_with('/')
            || path.split('/').any(|p| p == "..")
            || path.chars().any(char::is_control)
            || !named
        {
            return Err((false, format!("{path} is not a Tracevisor trace directory")));
        }
        let host = self.display.clone();
        let size = self
            .run(
                argv(&["du", "-s", "-b", "--", path]),
                Duration::from_secs(60),
            )
            .await;
        let bytes = match size {
            Ok(out) => out
                .stdout_lossy()
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            Err(e) => {
                let text = e.to_string();
                let gone = text.contains("No such file or directory");
                self.close().await;
                return Err((gone, format!("host {host}: {path}: {text}")));
            }
        };
        let secs = TAR_TIMEOUT.as_secs().to_string();
        let mut cmd = self.session.clone().arc_command("timeout");
        cmd.args([
            "-k",
            "5",
            secs.as_str(),
            "tar",
            "-C",
            path,
            "--format=gnu",
            "-cf",
            "-",
            ".",
        ])
        .stdin(openssh::Stdio::null())
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::null());
        let mut child = match cmd.spawn().await {
            Ok(child) => child,
            Err(e) => {
                self.close().await;
                return Err((false, format!("host {host}: cannot start tar: {e}")));
            }
        };
        let Some(stdout) = child.stdout().take() else {
            self.close().await;
            return Err((false, format!("host {host}: tar has no output")));
        };
        Ok(SshTar {
            child: Some(child),
            stdout,
            bytes,
            exec: Some(self),
        })
    }
}

/// How long a cancelled remote job may take to destroy its session and say so.
pub const REMOTE_CANCEL_GRACE: Duration = Duration::from_secs(60);
/// Largest line `tracesd ssh-job` may print (a result, bounded like an analysis's output).
const MAX_REMOTE_LINE: usize = tracevisor_lttng::runner::DEFAULT_MAX_STDOUT + (1 << 20);

/// Whether `program` may be configured as the hosts' `tracesd` (`ssh_tracesd`): an absolute
/// path or a bare program name, with no character a remote shell would read.
pub fn remote_program_ok(program: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    };
    match program.strip_prefix('/') {
        Some(path) => path.split('/').all(|part| plain(part) && part != ".."),
        None => plain(program),
    }
}

/// How long `tar` of one trace may run on a host.
pub const TAR_TIMEOUT: Duration = Duration::from_secs(3600);

async fn close_session(session: Arc<Session>, host: &str) {
    match Arc::try_unwrap(session) {
        Ok(session) => {
            if let Err(error) = session.close().await {
                tracing::debug!(%host, %error, "closing the ssh connection");
            }
        }
        // Still used by a command: the last owner's drop shuts the master down.
        Err(_) => tracing::debug!(%host, "ssh connection still in use; closed when released"),
    }
}

/// A trace's tar stream over SSH ([`SshExecutor::stream_tar`]). Dropping it closes the SSH
/// channel (the remote `tar` then ends on a broken pipe, or at its timeout) and the connection.
pub struct SshTar {
    child: Option<openssh::Child<Arc<Session>>>,
    stdout: openssh::ChildStdout,
    /// The size of the trace's files (`du -b`).
    pub bytes: u64,
    exec: Option<SshExecutor>,
}

impl SshTar {
    /// The next bytes of the archive, `None` at its end; `idle` bounds the wait for each.
    pub async fn next_chunk(
        &mut self,
        max: usize,
        idle: Duration,
    ) -> Result<Option<Vec<u8>>, String> {
        use tokio::io::AsyncReadExt as _;
        let host = self
            .exec
            .as_ref()
            .map(|e| e.display.clone())
            .unwrap_or_default();
        let mut buf = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            let read = tokio::time::timeout(idle, self.stdout.read(&mut buf[filled..]))
                .await
                .map_err(|_| format!("host {host}: tar sent nothing for {} s", idle.as_secs()))?
                .map_err(|e| format!("host {host}: reading tar's output: {e}"))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled > 0 {
            buf.truncate(filled);
            return Ok(Some(buf));
        }
        let Some(child) = self.child.take() else {
            return Ok(None);
        };
        let status = tokio::time::timeout(idle, child.wait())
            .await
            .map_err(|_| format!("host {host}: tar did not exit"))?
            .map_err(|e| format!("host {host}: tar: {e}"))?;
        if let Some(exec) = self.exec.take() {
            exec.close().await;
        }
        if status.success() {
            Ok(None)
        } else {
            Err(format!("host {host}: tar of the trace failed ({status})"))
        }
    }
}

/// Starts the master connection (`ssh -M -f -N` on a control socket in a fresh private
/// directory) and returns that directory, for [`Session::new_native_mux`]. The same options as
/// openssh's `SessionBuilder`, but `ssh` starts from the runner's cleared environment
/// ([`child_env`]) instead of inheriting this process's, so no `TRACEVISOR_*` token reaches it
/// (nor a `ProxyCommand` or `LocalCommand` it runs, nor a `SendEnv` pattern). Commands then go
/// over the control socket (native mux): no other local process is started.
async fn launch_master(
    target: &SshTarget,
    settings: &SshSettings,
) -> Result<tempfile::TempDir, String> {
    // Unix socket paths are limited to 108 bytes: keep the control directory short. The
    // directory is created with mode 0700 under a random name.
    let control = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix(".ssh-connection")
        .tempdir_in(&control)
        .map_err(|e| {
            format!(
                "cannot create the ssh control directory in {}: {e}",
                control.display()
            )
        })?;
    let log = dir.path().join("log");
    let mut known_hosts = std::ffi::OsString::from("UserKnownHostsFile=");
    known_hosts.push(&settings.known_hosts);
    let mut ssh = tokio::process::Command::new("ssh");
    ssh.env_clear()
        .envs(child_env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .arg("-E")
        .arg(&log)
        .arg("-S")
        .arg(dir.path().join("master"))
        .args(["-M", "-f", "-N"])
        .args(["-o", "ControlPersist=yes", "-o", "BatchMode=yes", "-o"])
        .arg(match settings.policy {
            HostKeyPolicy::Tofu => "StrictHostKeyChecking=accept-new",
            HostKeyPolicy::Strict => "StrictHostKeyChecking=yes",
        })
        .arg("-o")
        .arg(format!(
            "ConnectTimeout={}",
            settings.connect_timeout.as_secs().max(1)
        ))
        .args(["-o", "ServerAliveInterval=15"])
        .arg("-p")
        .arg(target.port.to_string())
        .arg("-l")
        .arg(&target.user)
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(&settings.key_file)
        .arg("-o")
        .arg(known_hosts)
        .arg("--")
        .arg(&target.address);
    let reach = format!("{}@{}:{}", target.user, target.address, target.port);
    let mut child = ssh
        .spawn()
        .map_err(|e| format!("cannot reach {reach} over ssh: cannot run ssh: {e}"))?;
    // `ssh -f` exits once authenticated, leaving the master in the background. Bounded here
    // too: `ConnectTimeout` covers the TCP connection, not a host that stalls after it.
    let limit = settings.connect_timeout + Duration::from_secs(60);
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("cannot reach {reach} over ssh: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot reach {reach} over ssh: no answer in {} s",
                limit.as_secs()
            ))
        }
    };
    if status.success() {
        return Ok(dir);
    }
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let said = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let said = said.as_str();
    if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || said.contains("Host key verification failed")
    {
        Err(format!(
            "ssh host key of {}:{} does not match the key pinned in {} (host key changed?); refusing to connect",
            target.address,
            target.port,
            settings.known_hosts.display()
        ))
    } else if said.is_empty() {
        Err(format!("cannot reach {reach} over ssh: ssh {status}"))
    } else {
        Err(format!("cannot reach {reach} over ssh: {said}"))
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Executor for SshExecutor {
    fn host(&self) -> &str {
        &self.display
    }

    fn trace_policy(&self) -> tracevisor_lttng::lifecycle::TracePolicy {
        self.traces
    }

    fn trace_root(&self) -> String {
        format!("{SSH_TRACE_ROOT_PREFIX}{}", self.user)
    }

    async fn run(&self, argv: Vec<String>, timeout: Duration) -> Result<Output, RunError> {
        let command = argv.join(" ");
        let Some((program, args)) = argv.split_first() else {
            return Err(RunError::NotFound {
                program: String::new(),
            });
        };
        // The remote process is bounded by `timeout` on the host itself: dropping the local
        // future would not stop it.
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = self.session.command("timeout");
        cmd.args(["-k", "5", secs.as_str(), program.as_str()])
            .args(args);
        let started = Instant::now();
        // Output is read as it comes and bounded like the local runner's: an analysis that
        // prints without end fails with `OutputTooLarge` instead of filling memory.
        let collect = async {
            let mut child = cmd
                .stdin(openssh::Stdio::null())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await
                .map_err(|e| io_err(command.clone(), format!("ssh: {e}")))?;
            let (stdout, stderr) = tracevisor_lttng::runner::collect_output(
                &command,
                child.stdout().take(),
                child.stderr().take(),
                tracevisor_lttng::runner::DEFAULT_MAX_STDOUT,
            )
            .await?;
            let status = child
                .wait()
                .await
                .map_err(|e| io_err(command.clone(), format!("ssh: {e}")))?;
            Ok::<_, RunError>(std::process::Output {
                status,
                stdout,
                stderr,
            })
        };
        let output = match tokio::time::timeout(timeout + Duration::from_secs(15), collect).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(RunError::TimedOut {
                    command,
                    timeout,
                    stderr: String::new(),
                })
            }
        };
        tracing::debug!(host = %self.display, %command, elapsed_ms = started.elapsed().as_millis() as u64, "ssh command");
        let stderr = String::from_utf8_lossy(&output.stderr)
            .trim()
            .chars()
            .take(2000)
            .collect::<String>();
        match output.status.code() {
            Some(0) => Ok(Output {
                status: output.status,
                stdout: output.stdout,
                stderr: output.stderr,
                elapsed: started.elapsed(),
            }),
            Some(124) => Err(RunError::TimedOut {
                command,
                timeout,
                stderr,
            }),
            Some(127) => Err(RunError::NotFound {
                program: program.clone(),
            }),
            _ => Err(RunError::Failed {
                command,
                status: output.status,
                stderr,
                stdout: output.stdout,
            }),
        }
    }
}

/// The known-hosts file in the data directory.
pub fn known_hosts(data_dir: &Path) -> PathBuf {
    data_dir.join("ssh/known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_programs() {
        assert!(remote_program_ok("tracesd"));
        assert!(remote_program_ok("/usr/bin/tracesd"));
        assert!(!remote_program_ok("tracesd; rm -rf /"));
        assert!(!remote_program_ok("/usr/../bin/tracesd"));
        assert!(!remote_program_ok("-oProxyCommand"));
        assert!(!remote_program_ok(""));
        assert!(!remote_program_ok("$(id)"));
    }
}
