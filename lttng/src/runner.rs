//! The one way this project runs external commands (lttng, analyses, babeltrace2): argv only,
//! a timeout, kill on drop, output captured and bounded, errors that name the command.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tracevisor_lttng::runner::RunError> {
//! use std::time::Duration;
//! use tracevisor_lttng::runner::Cmd;
//!
//! let output = Cmd::new("lttng")
//!     .args(["--mi", "xml", "list"])
//!     .timeout(Duration::from_secs(5))
//!     .run()
//!     .await?;
//! println!("{}", output.stdout_lossy());
//! # Ok(())
//! # }
//! ```
//!
//! Never through a shell: arguments reach the program exactly as given, so a value can't
//! inject a command. Standard input is closed (`/dev/null`). When the timeout fires, or the
//! future is dropped, the child is killed (`kill_on_drop`); its own children are not (a
//! program that forks and keeps the pipes open is still bounded by the timeout).
//!
//! Children start from a cleared environment ([`child_env`]): a fixed [`CHILD_PATH`], a
//! C.UTF-8 locale, and only the few variables the tools read (`HOME`, `TMPDIR`, `TZ`, the
//! `LTTNG_*` and babeltrace2 ones). Nothing else of this process's environment reaches
//! lttng, babeltrace2 or an analysis, in particular no `TRACEVISOR_*` or `TRACESD_*` token.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Default timeout of a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on captured standard output (LAMI results can be large).
pub const DEFAULT_MAX_STDOUT: usize = 64 * 1024 * 1024;
/// Captured standard error is bounded to this many bytes.
pub const MAX_STDERR: usize = 1024 * 1024;
/// Errors quote at most this many characters of standard error.
pub const STDERR_IN_ERRORS: usize = 2_000;
/// `PATH` of every child, and where programs are looked up ([`find_in_path`], the
/// capabilities): fixed, so neither a relative entry nor a user-writable directory in the
/// caller's `PATH` can put another `lttng` in front of the real one.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The locale of every child: messages untranslated (some are parsed), text in UTF-8.
const CHILD_LOCALE: &str = "C.UTF-8";
/// Variables passed on to children when this process has them; none holds a secret.
const PASSED_VARIABLES: &[&str] = &["HOME", "TMPDIR", "TZ"];
/// Prefixes of variables passed on to children: the LTTng tools' own settings (`LTTNG_HOME`,
/// where the lttng client finds its configuration and a per-user session daemon) and
/// babeltrace2's.
const PASSED_PREFIXES: &[&str] = &["LTTNG_", "BABELTRACE_", "LIBBABELTRACE2_"];

/// The whole environment of a child: [`CHILD_PATH`], the C.UTF-8 locale and the variables of
/// this process that the tools read (`HOME`, `TMPDIR`, `TZ`, `LTTNG_*`, babeltrace2's).
/// Everything else, tokens included, is left out. The coordinator's SSH driver starts `ssh`
/// with it too.
pub fn child_env() -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), CHILD_PATH.into()),
        ("LANG".into(), CHILD_LOCALE.into()),
        ("LC_ALL".into(), CHILD_LOCALE.into()),
    ];
    env.extend(std::env::vars_os().filter(|(key, _)| {
        key.to_str().is_some_and(|key| {
            PASSED_VARIABLES.contains(&key) || PASSED_PREFIXES.iter().any(|p| key.starts_with(p))
        })
    }));
    env
}

/// A command to run: a program and its arguments, never a shell string.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    timeout: Duration,
    max_stdout: usize,
}

/// What a finished command printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// How the process exited.
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error (at most [`MAX_STDERR`] bytes).
    pub stderr: Vec<u8>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text, trimmed (invalid UTF-8 replaced).
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Why a command did not run to a successful end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program is not installed (not found in `PATH`, or the path does not exist).
    #[error("{program}: command not found")]
    NotFound {
        /// The program as given.
        program: String,
    },
    /// The program exists but could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The command did not finish in time and was killed.
    #[error("`{command}` timed out after {}{}", seconds(*.timeout), suffix(.stderr))]
    TimedOut {
        /// The command line, for messages.
        command: String,
        /// The timeout that fired.
        timeout: Duration,
        /// What it had written to standard error (trimmed, bounded).
        stderr: String,
    },
    /// The command exited unsuccessfully.
    #[error("`{command}` {}{}", describe_status(.status), suffix(.stderr))]
    Failed {
        /// The command line, for messages.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error (trimmed, bounded).
        stderr: String,
        /// Its standard output, for callers that parse error reports (lttng --mi).
        stdout: Vec<u8>,
    },
    /// The command wrote more than the allowed output and was killed.
    #[error("`{command}` wrote more than {limit} bytes to standard output")]
    OutputTooLarge {
        /// The command line, for messages.
        command: String,
        /// The bound that was exceeded.
        limit: usize,
    },
    /// The step ran through liblttng-ctl instead of the command, and the session daemon (or
    /// the library) refused it; `stderr` is what the CLI would have printed (`Error: ...`).
    #[error("`{command}` failed through liblttng-ctl: {stderr}")]
    Library {
        /// The equivalent command line, for messages.
        command: String,
        /// The CLI's message for the error code.
        stderr: String,
    },
    /// Reading the command's output failed.
    #[error("cannot read the output of `{command}`: {source}")]
    Io {
        /// The command line, for messages.
        command: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl RunError {
    /// The command's standard error when it ran (trimmed, bounded), else `None`.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            RunError::TimedOut { stderr, .. }
            | RunError::Failed { stderr, .. }
            | RunError::Library { stderr, .. } => Some(stderr),
            _ => None,
        }
    }

    /// Whether the program was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RunError::NotFound { .. })
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited abnormally".to_owned(),
    }
}

impl Cmd {
    /// A command running `program` (a name looked up in `PATH`, or a path) with no arguments,
    /// the [`DEFAULT_TIMEOUT`] and the [`DEFAULT_MAX_STDOUT`] bound.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            timeout: DEFAULT_TIMEOUT,
            max_stdout: DEFAULT_MAX_STDOUT,
        }
    }

    /// Appends one argument, passed as is.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments, passed as is.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the command (on top of [`child_env`]).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the command in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Kills the command if it has not finished after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Kills the command if it writes more than `bytes` to standard output.
    pub fn max_stdout(mut self, bytes: usize) -> Self {
        self.max_stdout = bytes;
        self
    }

    /// The command line, for logs and messages (arguments quoted when they need it).
    pub fn display(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+{}*".contains(c));
            if plain {
                let _ = write!(line, " {arg}");
            } else {
                let _ = write!(line, " '{}'", arg.replace('\'', r"'\''"));
            }
        }
        line
    }

    /// Runs the command to its end; an unsuccessful exit is [`RunError::Failed`].
    pub async fn run(&self) -> Result<Output, RunError> {
        let output = self.output().await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(RunError::Failed {
                command: self.display(),
                status: output.status,
                stderr: bound_stderr(&output.stderr),
                stdout: output.stdout,
            })
        }
    }

    /// Runs the command to its end and returns its output whatever its exit status; only
    /// failing to run it (not found, timeout, too much output) is an error.
    pub async fn output(&self) -> Result<Output, RunError> {
        let program = self.program.to_string_lossy().into_owned();
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(child_env())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                RunError::NotFound {
                    program: program.clone(),
                }
            } else {
                RunError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        tracing::debug!(command = %self.display(), pid = child.id(), "command started");

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let max_stdout = self.max_stdout;
        // Stderr is collected into a shared buffer so it is still there when the timeout fires.
        let stderr_buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let collect = async {
            let stdout = read_streams(stdout, stderr, max_stdout, &stderr_buffer).await?;
            let status = child.wait().await.map_err(Bounded::Io)?;
            Ok::<_, Bounded>((status, stdout))
        };
        let result = tokio::time::timeout(self.timeout, collect).await;
        let stderr = std::mem::take(&mut *lock(&stderr_buffer));
        if !matches!(result, Ok(Ok(_))) {
            // Dropping the child would kill it too (kill_on_drop); say it explicitly.
            let _ = child.start_kill();
        }
        match result {
            Ok(Ok((status, stdout))) => {
                let elapsed = started.elapsed();
                tracing::debug!(command = %self.display(), %status, ?elapsed, "command finished");
                Ok(Output {
                    status,
                    stdout,
                    stderr,
                    elapsed,
                })
            }
            Ok(Err(bounded)) => Err(bounded.into_run_error(self.display(), max_stdout)),
            Err(_elapsed) => Err(RunError::TimedOut {
                command: self.display(),
                timeout: self.timeout,
                stderr: bound_stderr(&stderr),
            }),
        }
    }
}

fn lock(buffer: &std::sync::Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A poisoned buffer still holds valid bytes.
    buffer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn read_stderr<R: AsyncRead + Unpin>(
    reader: Option<R>,
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> Result<(), Bounded> {
    let Some(mut reader) = reader else {
        return Ok(());
    };
    let mut chunk = [0u8; 8192];
    // Past MAX_STDERR the rest is read and dropped, so the program never blocks on it.
    while let Ok(n @ 1..) = reader.read(&mut chunk).await {
        let mut buffer = lock(&buffer);
        let room = MAX_STDERR.saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..n.min(room)]);
    }
    Ok(())
}

/// Reads a child's standard output (at most `max_stdout` bytes, else
/// [`RunError::OutputTooLarge`]) and standard error (the first [`MAX_STDERR`] bytes kept, the
/// rest drained so the program never blocks) together, the way the runner does: for executors
/// whose children are not local processes (the coordinator's SSH executor).
pub async fn collect_output<O, E>(
    command: &str,
    stdout: Option<O>,
    stderr: Option<E>,
    max_stdout: usize,
) -> Result<(Vec<u8>, Vec<u8>), RunError>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let stderr_buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    match read_streams(stdout, stderr, max_stdout, &stderr_buffer).await {
        Ok(stdout) => Ok((stdout, std::mem::take(&mut *lock(&stderr_buffer)))),
        Err(bounded) => Err(bounded.into_run_error(command.to_owned(), max_stdout)),
    }
}

/// Reads standard output (at most `max_stdout` bytes) and standard error (into
/// `stderr_buffer`, so it is still there if a timeout fires) together. `try_join`: too much
/// stdout stops at once instead of waiting for stderr to end.
async fn read_streams<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    max_stdout: usize,
    stderr_buffer: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> Result<Vec<u8>, Bounded>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let (stdout, ()) = tokio::try_join!(
        read_bounded(stdout, max_stdout),
        read_stderr(stderr, stderr_buffer.clone())
    )?;
    Ok(stdout)
}

enum Bounded {
    TooLarge,
    Io(std::io::Error),
}

impl Bounded {
    fn into_run_error(self, command: String, limit: usize) -> RunError {
        match self {
            Bounded::TooLarge => RunError::OutputTooLarge { command, limit },
            Bounded::Io(source) => RunError::Io { command, source },
        }
    }
}

async fn read_bounded<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> Result<Vec<u8>, Bounded> {
    let mut buffer = Vec::new();
    if let Some(reader) = reader {
        let limit_plus_one = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        reader
            .take(limit_plus_one)
            .read_to_end(&mut buffer)
            .await
            .map_err(Bounded::Io)?;
        if buffer.len() > limit {
            return Err(Bounded::TooLarge);
        }
    }
    Ok(buffer)
}

/// Standard error as it goes into messages: text, trimmed, at most [`STDERR_IN_ERRORS`]
/// characters (the end is kept: that is where programs say what went wrong).
pub fn bound_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let count = text.chars().count();
    if count <= STDERR_IN_ERRORS {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - STDERR_IN_ERRORS).collect();
    format!("…{tail}")
}

/// Finds `program` in [`CHILD_PATH`] as the command runner would (an executable regular file).
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(CHILD_PATH)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_stdout_and_stderr() {
        let output = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .run()
            .await
            .unwrap();
        assert_eq!(output.stdout_lossy(), "out\n");
        assert_eq!(output.stderr_lossy(), "err");
        assert!(output.status.success());
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let output = Cmd::new("echo")
            .args(["$(id)", "; rm -rf /", "a b"])
            .run()
            .await
            .unwrap();
        assert_eq!(output.stdout_lossy(), "$(id) ; rm -rf / a b\n");
    }

    #[tokio::test]
    async fn stdin_is_closed() {
        // `cat` would wait forever on an open stdin.
        let output = Cmd::new("cat")
            .timeout(Duration::from_secs(5))
            .run()
            .await
            .unwrap();
        assert!(output.stdout.is_empty());
    }

    #[tokio::test]
    async fn env_and_current_dir_apply() {
        let output = Cmd::new("sh")
            .args(["-c", "echo $TRACESD_TEST_VAR; pwd"])
            .env("TRACESD_TEST_VAR", "hello")
            .current_dir("/")
            .run()
            .await
            .unwrap();
        assert_eq!(output.stdout_lossy(), "hello\n/\n");
    }

    #[tokio::test]
    async fn children_start_from_a_clean_environment_without_tokens() {
        // Names only this test uses, set once: tokens of the coordinator and the agent, and
        // an LTTng setting the tools need.
        std::env::set_var("TRACEVISOR_RUNNER_TEST_TOKEN", "secret-coordinator-token");
        std::env::set_var("TRACESD_RUNNER_TEST_TOKEN", "secret-agent-token");
        std::env::set_var("LTTNG_RUNNER_TEST_HOME", "/var/lib/tracesd");
        let output = Cmd::new("env").run().await.unwrap();
        let env = output.stdout_lossy();
        let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("TRACEVISOR_") || n.starts_with("TRACESD_")),
            "{env}"
        );
        assert!(!env.contains("secret"), "{env}");
        assert!(
            env.lines().any(|l| l == format!("PATH={CHILD_PATH}")),
            "{env}"
        );
        assert!(env.lines().any(|l| l == "LC_ALL=C.UTF-8"), "{env}");
        assert!(
            env.lines()
                .any(|l| l == "LTTNG_RUNNER_TEST_HOME=/var/lib/tracesd"),
            "{env}"
        );
        // Nothing else of this process's environment: only the allowlist.
        for name in names {
            assert!(
                ["PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "TZ"].contains(&name)
                    || name.starts_with("LTTNG_")
                    || name.starts_with("BABELTRACE_")
                    || name.starts_with("LIBBABELTRACE2_"),
                "{name} reached the child: {env}"
            );
        }
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let error = Cmd::new("tracesd-no-such-program").run().await.unwrap_err();
        assert!(error.is_not_found());
        assert_eq!(
            error.to_string(),
            "tracesd-no-such-program: command not found"
        );
    }

    #[tokio::test]
    async fn failure_names_command_status_and_stderr() {
        let error = Cmd::new("sh")
            .args([
                "-c",
                "echo '  first line' >&2; echo 'Error: it broke  ' >&2; exit 3",
            ])
            .run()
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("`sh -c "), "{message}");
        assert!(
            message.ends_with("exited with status 3: first line\nError: it broke"),
            "{message}"
        );
        assert!(matches!(error, RunError::Failed { .. }));
    }

    #[tokio::test]
    async fn output_returns_unsuccessful_exits() {
        let output = Cmd::new("sh")
            .args(["-c", "echo report; exit 1"])
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(output.stdout_lossy(), "report\n");
    }

    #[tokio::test]
    async fn timeout_kills_and_keeps_stderr() {
        let started = Instant::now();
        let error = Cmd::new("sh")
            .args(["-c", "echo waiting >&2; exec sleep 30"])
            .timeout(Duration::from_millis(300))
            .run()
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(error, RunError::TimedOut { .. }), "{error}");
        assert_eq!(error.stderr(), Some("waiting"));
        assert!(error.to_string().contains("timed out after 0.3 s: waiting"));
    }

    #[tokio::test]
    async fn signal_is_described() {
        let error = Cmd::new("sh")
            .args(["-c", "kill -9 $$"])
            .run()
            .await
            .unwrap_err();
        assert!(
            error.to_string().ends_with("was killed by signal 9"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn stdout_is_bounded() {
        let error = Cmd::new("head")
            .args(["-c", "100000", "/dev/zero"])
            .max_stdout(1000)
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(error, RunError::OutputTooLarge { limit: 1000, .. }),
            "{error}"
        );
    }

    #[test]
    fn long_stderr_keeps_its_end() {
        let stderr = format!("{}the reason", "x".repeat(10_000));
        let bounded = bound_stderr(stderr.as_bytes());
        assert_eq!(bounded.chars().count(), STDERR_IN_ERRORS + 1);
        assert!(bounded.ends_with("the reason"));
    }

    #[test]
    fn display_quotes_what_needs_it() {
        let cmd = Cmd::new("lttng").args(["enable-event", "-k", "sched_switch", "a b", "it's"]);
        assert_eq!(
            cmd.display(),
            r"lttng enable-event -k sched_switch 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn finds_programs_in_path() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("tracesd-no-such-program").is_none());
    }
}
