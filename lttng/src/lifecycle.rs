//! The trace job lifecycle, the same code on an agent and over SSH: create the session, enable
//! events, start, wait, destroy (which stops), then analyse (LAMI commands or a userspace summary).
//!
//! Commands run through an [`Executor`]: [`LocalExecutor`] uses the [`runner`](crate::runner)
//! on this host; the coordinator's SSH driver implements the same trait over one multiplexed
//! SSH connection. Every value that reaches a command line is checked by [`validate_spec`]
//! first, and every command is an argv, never a shell string.
//!
//! A local trace goes to a directory the job creates itself ([`create_trace_dir`]): new, mode
//! 0700, in a root the tracing user owns and nobody else can write, checked on the host before
//! every job; a directory that exists in advance is never used.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{
    JobSpec, Summary, TraceLocator, TraceOutput, JOB_STATUS_ANALYSIS_RUNNING,
    JOB_STATUS_TRACE_RUNNING,
};

use crate::control::{self, Control, LttngCmd, Reply, SessionOutput};
use crate::runner::{Cmd, Output, RunError};
use tracevisor_lttng_ctl::{Context, Domain};

/// Prefix of every session Tracevisor creates: `tracevisor-<coordinator>-<job id>-<hostname>`.
pub const SESSION_PREFIX: &str = "tracevisor-";
/// Timeout of one `lttng` control command.
pub const LTTNG_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one analysis command.
pub const ANALYSIS_TIMEOUT: Duration = Duration::from_secs(900);
/// Largest babeltrace2 output read for a userspace summary.
pub const MAX_SUMMARY_INPUT: usize = 512 * 1024 * 1024;

/// Runs commands on one host.
pub trait Executor: Send + Sync {
    /// The host the commands run on, for error messages.
    fn host(&self) -> &str;
    /// Where local traces go on that host: a directory the user the commands run as owns,
    /// that nobody else can write. Each job's trace directory is made in it by
    /// [`create_trace_dir`], which checks it first.
    fn trace_root(&self) -> String;
    /// Runs `argv` (program first) with a timeout; a non-zero exit is an error.
    fn run(
        &self,
        argv: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Output, RunError>> + Send;
    /// How long kept traces stay in the trace root, and how much they may take.
    fn trace_policy(&self) -> TracePolicy {
        TracePolicy::default()
    }
    /// Runs one LTTng control step. The default runs the `lttng` CLI through
    /// [`run`](Executor::run) ([`control::via_cli`]).
    fn lttng(
        &self,
        cmd: &LttngCmd,
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, RunError>> + Send
    where
        Self: Sized,
    {
        control::via_cli(self, cmd, timeout)
    }
    /// The `major.minor` of the LTTng the control steps go to, when the trace format depends
    /// on it; the default asks `lttng --version`.
    fn lttng_release(&self) -> impl Future<Output = Option<(u32, u32)>> + Send
    where
        Self: Sized,
    {
        cli_release(self)
    }
}

/// The `major.minor` of `lttng --version` run through `exec`.
async fn cli_release(exec: &impl Executor) -> Option<(u32, u32)> {
    exec.run(argv(&["lttng", "--version"]), LTTNG_TIMEOUT)
        .await
        .ok()
        .and_then(|out| lttng_version(&out.stdout_lossy()))
}

/// How long kept traces stay in a host's trace root and how much room they may take
/// ([`prune_kept_traces`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracePolicy {
    /// Kept traces older than this are deleted (`trace_retention_secs`).
    pub retention: Duration,
    /// Beyond this many bytes in the trace root, the oldest kept traces are deleted
    /// (`trace_quota_mib`).
    pub quota_bytes: u64,
}

impl Default for TracePolicy {
    fn default() -> Self {
        TracePolicy {
            retention: Duration::from_secs(7 * 24 * 3600),
            quota_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// A kept trace is deleted only once it has been idle this long: its directory is older and
/// no file in it changed since (a trace just stopped, or being analysed, has changed within
/// minutes; one being recorded has its session listed, and is skipped for that). The
/// retention cannot be shorter.
pub const TRACE_MIN_AGE: Duration = Duration::from_secs(3 * 3600);

/// The agent's trace root when it can be created (the agent runs as root, or as a user that
/// owns `/var/lib/tracesd`, the packaged service's state directory).
pub const SYSTEM_TRACE_ROOT: &str = "/var/lib/tracesd/traces";
/// Name prefix of the private trace root made when [`SYSTEM_TRACE_ROOT`] cannot be created.
pub const PRIVATE_TRACE_ROOT_PREFIX: &str = "tracesd-traces-";

/// Runs commands on this host through the runner.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// This host's name as registered.
    pub hostname: String,
    /// Directory for local traces.
    pub trace_root: PathBuf,
    /// Retention and quota of kept traces.
    pub policy: TracePolicy,
    /// How the LTTng control steps run: the CLI, or liblttng-ctl ([`control`]).
    pub control: Control,
}

impl LocalExecutor {
    /// An executor with the default trace root: [`SYSTEM_TRACE_ROOT`], created with mode 0700
    /// when missing; when it cannot be created (an agent that is not root), a new private
    /// directory `$TMPDIR/tracesd-traces-XXXXXX` (mode 0700, a random name made for this
    /// process: never a fixed name in a world-writable directory). Whichever it is, it is
    /// checked before every job ([`create_trace_dir`]): a root that is a symbolic link, is
    /// owned by another user, or that others can write is refused, naming it.
    pub fn new(hostname: &str) -> Self {
        LocalExecutor {
            hostname: hostname.to_owned(),
            trace_root: default_trace_root(),
            policy: TracePolicy::default(),
            control: Control::Cli,
        }
    }
}

fn default_trace_root() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    let system = PathBuf::from(SYSTEM_TRACE_ROOT);
    let created = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&system);
    let error = match created {
        Ok(()) => return system,
        Err(error) => error,
    };
    let temp = std::env::temp_dir();
    match tempfile::Builder::new()
        .prefix(PRIVATE_TRACE_ROOT_PREFIX)
        .tempdir_in(&temp)
    {
        Ok(dir) => {
            let dir = dir.keep();
            tracing::warn!(
                system = SYSTEM_TRACE_ROOT,
                %error,
                trace_root = %dir.display(),
                "cannot create the system trace directory; traces go to a new private directory"
            );
            dir
        }
        Err(temp_error) => {
            tracing::error!(
                system = SYSTEM_TRACE_ROOT,
                %error,
                temp = %temp.display(),
                %temp_error,
                "cannot create a trace directory; local trace jobs will fail"
            );
            system
        }
    }
}

impl Executor for LocalExecutor {
    fn host(&self) -> &str {
        &self.hostname
    }

    fn trace_policy(&self) -> TracePolicy {
        self.policy
    }

    fn trace_root(&self) -> String {
        self.trace_root.display().to_string()
    }

    fn run(
        &self,
        argv: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Output, RunError>> + Send {
        let cmd = argv.split_first().map(|(program, args)| {
            Cmd::new(program)
                .args(args)
                .timeout(timeout)
                .max_stdout(MAX_SUMMARY_INPUT)
        });
        async move {
            match cmd {
                Some(cmd) => cmd.run().await,
                None => Err(RunError::NotFound {
                    program: String::new(),
                }),
            }
        }
    }

    async fn lttng(&self, cmd: &LttngCmd, timeout: Duration) -> Result<Reply, RunError> {
        if let Control::Library(library) = &self.control {
            if library.usable().await.is_ok() {
                let done = library.run(cmd, timeout).await;
                // A session is destroyed whatever happened: through the CLI when the library
                // stopped answering.
                if done.is_err()
                    && library.ctl().is_wedged()
                    && matches!(cmd, LttngCmd::Destroy { .. })
                {
                    return control::via_cli(self, cmd, timeout).await;
                }
                return done;
            }
        }
        control::via_cli(self, cmd, timeout).await
    }

    async fn lttng_release(&self) -> Option<(u32, u32)> {
        if let Control::Library(library) = &self.control {
            if library.usable().await.is_ok() {
                // The library drives no release that needs a trace format option.
                return None;
            }
        }
        cli_release(self).await
    }
}

/// A failed job: the step, the host and the tool's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host}: {step} failed: {message}")]
pub struct StepError {
    pub step: String,
    pub host: String,
    pub message: String,
}

pub(crate) fn step_err(
    exec: &impl Executor,
    step: &str,
    message: impl std::fmt::Display,
) -> StepError {
    StepError {
        step: step.to_owned(),
        host: exec.host().to_owned(),
        message: message.to_string(),
    }
}

/// The session name of job `job_id` of coordinator `coordinator` on `hostname`.
pub fn session_name(coordinator: &str, job_id: u64, hostname: &str) -> String {
    format!("{SESSION_PREFIX}{coordinator}-{job_id}-{hostname}")
}

/// The job id of a session of `coordinator`'s jobs on this host
/// (`tracevisor-<coordinator>-<id>-<hostname>`), else `None`.
pub fn owned_job(session: &str, coordinator: &str, hostname: &str) -> Option<u64> {
    let rest = session
        .strip_prefix(SESSION_PREFIX)?
        .strip_prefix(coordinator)?
        .strip_prefix('-')?;
    let (id, host) = rest.split_once('-')?;
    (host == hostname).then(|| id.parse().ok()).flatten()
}

/// Checks every value of a spec that reaches a command line.
pub fn validate_spec(spec: &JobSpec) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 200
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !name_ok(&spec.session_name) || !spec.session_name.starts_with(SESSION_PREFIX) {
        return Err(format!("invalid session name {:?}", spec.session_name));
    }
    for event in spec.kernel_events.iter().chain(&spec.userspace_events) {
        // LTTNG_SYMBOL_NAME_LEN is 256 with the NUL: a longer name would be cut to another.
        if event.len() > 255 {
            return Err(format!("event name longer than 255 bytes: {event:?}"));
        }
        if event.is_empty()
            || event.starts_with('-')
            || !event
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*' | '.'))
        {
            return Err(format!("invalid event name {event:?}"));
        }
    }
    if let TraceOutput::Relay {
        host,
        ctrl_port,
        data_port,
    } = &spec.output
    {
        if !name_ok(host) && host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid relay host {host:?}"));
        }
        if *ctrl_port == 0 || *data_port == 0 {
            return Err("relay ports must be 1-65535".into());
        }
    }
    for argv in &spec.analysis_commands {
        let Some(program) = argv.first() else {
            return Err("empty analysis command".into());
        };
        if program.is_empty() || program.starts_with('-') {
            return Err(format!("invalid analysis program {program:?}"));
        }
        if argv.iter().any(|a| a.chars().any(char::is_control)) {
            return Err("analysis argument with a control character".into());
        }
    }
    if let Some(recorder) = &spec.snapshot_of {
        if !name_ok(recorder) || !recorder.starts_with(tracevisor_protocol::RECORDER_PREFIX) {
            return Err(format!("invalid recorder session name {recorder:?}"));
        }
        if spec.output != TraceOutput::Local || spec.analysis_only.is_some() {
            return Err("a snapshot is recorded and analysed on the host itself".into());
        }
    }
    if let Some(TraceLocator::RelaySession { roots }) = &spec.analysis_only {
        if roots
            .iter()
            .any(|r| !r.starts_with('/') || r.contains("..") || r.chars().any(char::is_control))
        {
            return Err("relay output roots must be absolute paths".into());
        }
    }
    Ok(())
}

/// Runs an `lttng` command line (`lttng --no-sessiond ARGS`) with the CLI: the steps the
/// typed [`LttngCmd`] does not cover (flight recorder sessions).
pub(crate) async fn lttng_step(
    exec: &impl Executor,
    step: &str,
    args: &[&str],
) -> Result<Output, StepError> {
    let argv = control::lttng_argv(args.iter().map(|a| (*a).to_owned()));
    exec.run(argv, LTTNG_TIMEOUT)
        .await
        .map_err(|e| lttng_error(exec, step, e))
}

/// Runs one typed control step through the executor's back end (the CLI or liblttng-ctl).
async fn control_step(exec: &impl Executor, step: &str, cmd: LttngCmd) -> Result<Reply, StepError> {
    exec.lttng(&cmd, LTTNG_TIMEOUT)
        .await
        .map_err(|e| lttng_error(exec, step, e))
}

fn lttng_error(exec: &impl Executor, step: &str, e: RunError) -> StepError {
    let mut message = e.to_string();
    // lttng dies of SIGPIPE, saying nothing, when the session daemon drops the connection
    // (as it does when a session's relay is unreachable).
    if matches!(&e, RunError::Failed { status, .. } if std::os::unix::process::ExitStatusExt::signal(status) == Some(13))
    {
        message.push_str(" (SIGPIPE: lttng-sessiond closed the connection)");
    }
    step_err(exec, step, message)
}

pub(crate) fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What is wrong with a trace root, from `stat` (`owner` uid, permission bits `mode`, `kind`
/// as `stat -c %F` names it) and the `uid` the trace commands run as; `None` when it is a
/// directory (not a symbolic link) that `uid` owns and neither its group nor others can write.
pub fn trace_root_problem(owner: u32, mode: u32, kind: &str, uid: u32) -> Option<String> {
    if kind == "symbolic link" {
        return Some("it is a symbolic link, which could point anywhere".to_owned());
    }
    if kind != "directory" {
        return Some(format!("it is a {kind}, not a directory"));
    }
    if owner != uid {
        return Some(format!(
            "it is owned by uid {owner}, not by uid {uid} that runs the trace commands"
        ));
    }
    let writable = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and everyone",
        (true, false) => "its group",
        (false, true) => "everyone",
        (false, false) => return None,
    };
    Some(format!("it is writable by {writable} (mode {mode:04o})"))
}

/// `stat -c '%u %a %F'` output: owner uid, permission bits, file type.
fn parse_stat(text: &str) -> Option<(u32, u32, String)> {
    let (owner, rest) = text.trim().split_once(' ')?;
    let (mode, kind) = rest.split_once(' ')?;
    Some((
        owner.parse().ok()?,
        u32::from_str_radix(mode, 8).ok()?,
        kind.to_owned(),
    ))
}

/// Creates the trace directory of `session` in the executor's trace root, the same way on
/// this host and over SSH (argv commands through the [`Executor`]), and returns its path:
///
/// 1. the root is created if missing (`mkdir -m 0700 -p`), then checked with `stat` against
///    `id -u` ([`trace_root_problem`]): a symbolic link, another user's directory, or one its
///    group or others can write is refused, naming the path and what is wrong;
/// 2. `ROOT/SESSION` is created with mode 0700 by a plain `mkdir`, which fails if anything
///    exists there: a directory someone made in advance to read or swap the trace is never
///    used, the job fails at step `create` saying so.
///
/// Since the root is the tracing user's and nobody else can write it, nobody else can replace
/// the job's directory afterwards either.
pub async fn create_trace_dir(exec: &impl Executor, session: &str) -> Result<String, StepError> {
    let fail = |message: String| step_err(exec, "create", message);
    let root = exec.trace_root();
    let root = match root.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    if !root.starts_with('/')
        || root.split('/').any(|part| part == "..")
        || root.chars().any(char::is_control)
    {
        return Err(fail(format!(
            "the trace root {root:?} is not an absolute path"
        )));
    }
    let (made, uid) = tokio::join!(
        exec.run(argv(&["mkdir", "-m", "0700", "-p", root]), LTTNG_TIMEOUT),
        exec.run(argv(&["id", "-u"]), LTTNG_TIMEOUT),
    );
    let uid: u32 = uid
        .map_err(|e| {
            fail(format!(
                "cannot tell which user runs the trace commands: {e}"
            ))
        })?
        .stdout_lossy()
        .trim()
        .parse()
        .map_err(|_| fail("`id -u` did not print a user id".to_owned()))?;
    let stat = exec
        .run(argv(&["stat", "-c", "%u %a %F", root]), LTTNG_TIMEOUT)
        .await;
    let refuse = |problem: String| {
        fail(format!(
            "refusing the trace root {root}: {problem}; it must be a directory owned by uid {uid} that no one else can write (remove it, or fix its owner and mode)"
        ))
    };
    match (stat, made) {
        (Ok(out), made) => {
            let text = out.stdout_lossy();
            let Some((owner, mode, kind)) = parse_stat(&text) else {
                return Err(fail(format!(
                    "cannot read the trace root {root}: unexpected `stat` output {:?}",
                    text.trim()
                )));
            };
            if let Some(problem) = trace_root_problem(owner, mode, &kind, uid) {
                return Err(refuse(problem));
            }
            if let Err(e) = made {
                return Err(fail(format!("cannot create the trace root {root}: {e}")));
            }
        }
        (Err(e), Ok(_)) => return Err(fail(format!("cannot read the trace root {root}: {e}"))),
        (Err(_), Err(e)) => return Err(fail(format!("cannot create the trace root {root}: {e}"))),
    }
    let dir = format!("{}/{session}", root.trim_end_matches('/'));
    match exec
        .run(argv(&["mkdir", "-m", "0700", &dir]), LTTNG_TIMEOUT)
        .await
    {
        Ok(_) => Ok(dir),
        Err(e) => {
            let existing = exec
                .run(argv(&["stat", "-c", "%u %a %F", &dir]), LTTNG_TIMEOUT)
                .await
                .ok()
                .and_then(|out| parse_stat(&out.stdout_lossy()));
            Err(fail(match existing {
                Some((owner, mode, kind)) => format!(
                    "the trace directory {dir} already exists ({kind} owned by uid {owner}, mode {mode:04o}); refusing to use it: a job's trace directory is created by the job, mode 0700"
                ),
                None => format!("cannot create the trace directory {dir}: {e}"),
            }))
        }
    }
}

/// Adds where the trace was going to a failed recording step, so an unreachable relay is named.
fn with_output(mut error: StepError, output: &TraceOutput) -> StepError {
    if let TraceOutput::Relay {
        host,
        ctrl_port,
        data_port,
    } = output
    {
        error.message.push_str(&format!(
            "; the trace streams to lttng-relayd at {}:{ctrl_port} (data {data_port}): is it running and reachable from this host?",
            bracket(host)
        ));
    }
    error
}

/// Runs a whole job and returns its result JSON. `progress` is told each status change.
pub async fn run_job(
    exec: &impl Executor,
    spec: &JobSpec,
    progress: impl Fn(i8, &str) + Send + Sync,
    cancel: &CancellationToken,
) -> Result<Json, StepError> {
    validate_spec(spec).map_err(|e| step_err(exec, "validate", e))?;
    if let Some(locator) = &spec.analysis_only {
        progress(JOB_STATUS_ANALYSIS_RUNNING, "analysing the trace");
        let trace = locate(exec, spec, locator).await?;
        let analysed = analyse(exec, spec, &trace).await;
        // A trace at a path the job was given is not this job's to delete; a relay session
        // directory found for this job's session is.
        let ours = matches!(locator, TraceLocator::RelaySession { .. });
        return settle_trace(exec, spec, &trace, ours, analysed).await;
    }
    if let Some(recorder) = &spec.snapshot_of {
        let trace = snapshot(exec, spec, &progress, recorder).await?;
        progress(JOB_STATUS_ANALYSIS_RUNNING, "analysing the snapshot");
        let analysed = match analyse(exec, spec, &trace).await {
            Err(e) => Err(with_disk_state(exec, e, &trace).await),
            ok => ok,
        };
        return settle_trace(exec, spec, &trace, true, analysed).await;
    }
    let trace = record(exec, spec, &progress, cancel).await?;
    if !spec.run_analysis {
        // Another host analyses it (on the relay): that job settles it.
        return Ok(json!({ "kind": "trace", "trace": trace, "host": exec.host() }));
    }
    progress(JOB_STATUS_ANALYSIS_RUNNING, "analysing the trace");
    let ours = matches!(spec.output, TraceOutput::Local);
    let analysed = match analyse(exec, spec, &trace).await {
        Err(e) if ours => Err(with_disk_state(exec, e, &trace).await),
        other => other,
    };
    settle_trace(exec, spec, &trace, ours, analysed).await
}

/// Bound on deleting one trace directory.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// Once the analysis is done (whether it succeeded or not): deletes the trace unless the job
/// keeps it or it is not the job's own (`ours`), and says so in the result
/// (`"trace_kept"`, and where a kept trace is: `"trace_path"`). A deletion that fails is
/// logged and noted in the result (`"trace_delete_error"`); it does not fail the job, whose
/// result is complete.
async fn settle_trace(
    exec: &impl Executor,
    spec: &JobSpec,
    trace: &str,
    ours: bool,
    analysed: Result<Json, StepError>,
) -> Result<Json, StepError> {
    let keep = spec.keep_trace || !ours;
    let deleted = if keep {
        Ok(())
    } else {
        delete_trace(exec, trace).await
    };
    if let Err(why) = &deleted {
        tracing::warn!(host = %exec.host(), %trace, %why, "could not delete a trace after its analysis");
    }
    analysed.map(|mut result| {
        if let Some(object) = result.as_object_mut() {
            object.insert("trace_kept".into(), json!(keep));
            if keep {
                object.insert("trace_path".into(), json!(trace));
            }
            if let Err(why) = deleted {
                object.insert("trace_delete_error".into(), json!(why));
            }
        }
        result
    })
}

/// Deletes the kept traces of the trace root that are older than the retention, then, while
/// the root holds more than the quota, the oldest others. A trace is never deleted while it
/// may still be in use: its session is listed by the session daemon (tracing), or a file in it
/// changed within [`TRACE_MIN_AGE`] (just stopped, being analysed). Each deletion is logged; a
/// failure is logged and does not fail the job that triggered the pass. Ages are judged by the
/// host's own clock (`find -mmin`), sizes by `du`.
pub async fn prune_kept_traces(exec: &impl Executor) {
    let policy = exec.trace_policy();
    let root = exec.trace_root();
    let minutes = |d: Duration| (d.as_secs() / 60).max(1).to_string();
    let listing = argv(&[
        "find",
        &root,
        "-mindepth",
        "1",
        "-maxdepth",
        "1",
        "-type",
        "d",
        "-name",
        &format!("{SESSION_PREFIX}*"),
        "-mmin",
        &format!("+{}", minutes(TRACE_MIN_AGE)),
        "-printf",
        "%T@ %p\n",
    ]);
    let Ok(out) = exec.run(listing, LTTNG_TIMEOUT).await else {
        return;
    };
    let mut candidates: Vec<(f64, String)> = out
        .stdout_lossy()
        .lines()
        .filter_map(|l| {
            let (time, path) = l.split_once(' ')?;
            Some((time.parse().ok()?, path.to_owned()))
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sessions that exist: their traces are being written.
    let live = list_sessions(exec).await.unwrap_or_default();
    // The trace directories in which something changed recently, in one command (one round
    // trip over SSH, whatever the number of kept traces): the first component of every path
    // changed within TRACE_MIN_AGE below the root.
    let recent = argv(&[
        "find",
        &root,
        "-mindepth",
        "2",
        "-mmin",
        &format!("-{}", minutes(TRACE_MIN_AGE)),
        "-printf",
        "%P\n",
    ]);
    let Ok(recent) = exec.run(recent, LTTNG_TIMEOUT).await else {
        return;
    };
    let recent = recent.stdout_lossy();
    let recent: std::collections::HashSet<&str> = recent
        .lines()
        .filter_map(|path| path.split('/').next())
        .collect();
    let mut idle = Vec::new();
    for (time, trace) in candidates {
        let name = trace.rsplit('/').next().unwrap_or_default().to_owned();
        if live.contains(&name) || recent.contains(name.as_str()) {
            continue;
        }
        idle.push((time, trace));
    }
    let now = exec
        .run(argv(&["date", "+%s"]), LTTNG_TIMEOUT)
        .await
        .ok()
        .and_then(|o| o.stdout_lossy().trim().parse::<f64>().ok());
    let retention = policy.retention.max(TRACE_MIN_AGE).as_secs_f64();
    let mut kept = Vec::new();
    for (time, trace) in idle {
        if now.is_some_and(|now| now - time > retention) {
            match delete_trace(exec, &trace).await {
                Ok(()) => {
                    tracing::info!(host = %exec.host(), %trace, retention_secs = retention, "deleted a kept trace past its retention (trace_retention_secs)")
                }
                Err(why) => {
                    tracing::warn!(host = %exec.host(), %trace, %why, "could not delete a kept trace past its retention")
                }
            }
        } else {
            kept.push(trace);
        }
    }
    let size = |path: String| async move {
        let out = exec
            .run(
                argv(&["du", "-s", "-B1", "--one-file-system", &path]),
                LTTNG_TIMEOUT,
            )
            .await
            .ok()?;
        out.stdout_lossy()
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    };
    let Some(mut total) = size(root.clone()).await else {
        return;
    };
    // Oldest first.
    for trace in kept {
        if total <= policy.quota_bytes {
            break;
        }
        let bytes = size(trace.clone()).await.unwrap_or(0);
        match delete_trace(exec, &trace).await {
            Ok(()) => {
                total = total.saturating_sub(bytes);
                tracing::info!(host = %exec.host(), %trace, bytes, quota_bytes = policy.quota_bytes, "deleted the oldest kept trace: the trace root is over its quota (trace_quota_mib)");
            }
            Err(why) => {
                tracing::warn!(host = %exec.host(), %trace, %why, "could not delete a kept trace over the quota")
            }
        }
    }
}

/// Deletes a trace directory: an absolute path naming a `tracevisor-*` session directory, on
/// one file system, never following a symbolic link out of it (`rm -r` does not).
pub async fn delete_trace(exec: &impl Executor, trace: &str) -> Result<(), String> {
    let path = std::path::Path::new(trace);
    let named_for_a_session = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(SESSION_PREFIX));
    if !path.is_absolute() || trace.contains("..") || !named_for_a_session {
        return Err(format!(
            "{trace} is not a trace directory of a job; not deleted"
        ));
    }
    exec.run(
        argv(&["rm", "-r", "-f", "--one-file-system", "--", trace]),
        DELETE_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Records the trace; returns where it is (a path on this host, or `net://...` for a relay).
async fn record(
    exec: &impl Executor,
    spec: &JobSpec,
    progress: &(impl Fn(i8, &str) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<String, StepError> {
    let name = spec.session_name.as_str();
    let output = async {
        match &spec.output {
            TraceOutput::Local => {
                let dir = local_trace_dir(exec, name).await?;
                Ok((dir.clone(), SessionOutput::Local(dir)))
            }
            TraceOutput::Relay {
                host,
                ctrl_port,
                data_port,
            } => {
                let url = format!("net://{}:{ctrl_port}:{data_port}", bracket(host));
                Ok((url.clone(), SessionOutput::Relay(url)))
            }
        }
    };
    // The trace format depends on the version (asked at the same time: no extra round trip
    // over SSH for a local trace).
    let version = exec.lttng_release();
    let (output, version) = tokio::join!(output, version);
    let (location, output) = output?;
    let create = LttngCmd::Create {
        session: name.to_owned(),
        output,
        format: trace_format_args(version),
    };
    if let Err(e) = control_step(exec, "create", create).await {
        if matches!(spec.output, TraceOutput::Local) {
            // The directory is still empty: leave nothing behind (rmdir removes only that).
            let _ = exec
                .run(argv(&["rmdir", location.as_str()]), LTTNG_TIMEOUT)
                .await;
        }
        return Err(with_output(e, &spec.output));
    }
    let result = traced(exec, spec, progress, cancel).await.map_err(|e| {
        if e.step == "cancelled" {
            e
        } else {
            with_output(e, &spec.output)
        }
    });
    // Whatever happened, the session is destroyed. `lttng destroy` stops it first and waits
    // until the trace is complete (lttng-destroy(1)), so no separate `stop`: one command fewer,
    // which over SSH is one round trip fewer.
    let destroyed = control_step(
        exec,
        "destroy",
        LttngCmd::Destroy {
            session: name.to_owned(),
        },
    )
    .await;
    match result.and(destroyed.map(|_| ())) {
        Ok(()) => Ok(location),
        Err(e) if e.step != "cancelled" && matches!(spec.output, TraceOutput::Local) => {
            Err(with_disk_state(exec, e, &location).await)
        }
        Err(e) => Err(e),
    }
}

/// The job's new local trace directory ([`create_trace_dir`]), once kept traces past their
/// retention or beyond the quota are deleted and the disk has room
/// ([`MIN_FREE_BYTES`]).
async fn local_trace_dir(exec: &impl Executor, name: &str) -> Result<String, StepError> {
    // Made by us, new, mode 0700 in a checked root; lttng writes into it.
    let dir = create_trace_dir(exec, name).await?;
    // Room for it: kept traces past their retention, or beyond the quota, go first.
    prune_kept_traces(exec).await;
    if let Some(free) = free_bytes(exec, &dir).await {
        if free < MIN_FREE_BYTES {
            let _ = exec
                .run(argv(&["rmdir", dir.as_str()]), LTTNG_TIMEOUT)
                .await;
            return Err(step_err(
                exec,
                "create",
                format!(
                    "the disk holding the trace root {} has {} MiB free, under the {} MiB a job needs to record: free room there, lower trace_quota_mib, or move trace_root to a larger disk",
                    exec.trace_root(),
                    free >> 20,
                    MIN_FREE_BYTES >> 20
                ),
            ));
        }
    }
    Ok(dir)
}

/// Records a snapshot of the armed flight recorder session `recorder` into the job's new trace
/// directory (`DIR/snapshot-0-<date>-<n>/`, which the analyses read as one trace).
async fn snapshot(
    exec: &impl Executor,
    spec: &JobSpec,
    progress: &(impl Fn(i8, &str) + Send + Sync),
    recorder: &str,
) -> Result<String, StepError> {
    let dir = local_trace_dir(exec, &spec.session_name).await?;
    progress(JOB_STATUS_TRACE_RUNNING, "recording a snapshot");
    let recorded = lttng_step(
        exec,
        "snapshot",
        &["snapshot", "record", "-s", recorder, dir.as_str()],
    )
    .await;
    match recorded {
        Ok(_) => Ok(dir),
        Err(mut e) => {
            if !list_sessions(exec)
                .await
                .is_ok_and(|s| s.iter().any(|n| n == recorder))
            {
                e.message.push_str(&format!(
                    "; the flight recorder session {recorder} is not armed on this host"
                ));
            }
            let e = with_disk_state(exec, e, &dir).await;
            let _ = delete_trace(exec, &dir).await;
            Err(e)
        }
    }
}

/// Below this much free space on the disk of the trace root, a job does not start recording
/// there: a trace that fills the disk loses events, and other programs on the host suffer.
pub const MIN_FREE_BYTES: u64 = 64 << 20;
/// Free space under which a failed job is said to have met a full disk.
const FULL_BYTES: u64 = 1 << 20;

/// Free bytes on the file system holding `path` (`df -P -k`), `None` when unknown.
pub async fn free_bytes(exec: &impl Executor, path: &str) -> Option<u64> {
    let out = exec
        .run(argv(&["df", "-P", "-k", "--", path]), LTTNG_TIMEOUT)
        .await
        .ok()?;
    let kib: u64 = out
        .stdout_lossy()
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Adds to a failed local job's error that the disk of its trace filled up, when it did.
async fn with_disk_state(exec: &impl Executor, mut error: StepError, trace: &str) -> StepError {
    if let Some(free) = free_bytes(exec, trace).await {
        if free < FULL_BYTES {
            error.message.push_str(&format!(
                "; the disk holding {trace} is full ({} KiB free): the trace could not be written whole (other traces there are not touched)",
                free >> 10
            ));
        }
    }
    error
}

/// The `major.minor` of `lttng --version`'s output ("lttng (LTTng Trace Control) 2.13.9 -
/// Nordicité").
pub fn lttng_version(text: &str) -> Option<(u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let mut parts = word.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })
}

/// The `lttng create` options of the trace format. LTTng 2.15 and later write CTF 2 by
/// default, which babeltrace2 2.0 (Debian's) and the lttng-analyses built on it cannot read,
/// nor older Trace Compass releases: sessions are created in CTF 1.8 there. Earlier versions
/// write CTF 1.8 only and know no such option. An unknown version gets no option.
pub fn trace_format_args(version: Option<(u32, u32)>) -> &'static [&'static str] {
    match version {
        Some(v) if v >= (2, 15) => &["--trace-format=ctf-1.8"],
        _ => &[],
    }
}

async fn traced(
    exec: &impl Executor,
    spec: &JobSpec,
    progress: &(impl Fn(i8, &str) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let session = || spec.session_name.clone();
    if !spec.kernel_events.is_empty() {
        let events = LttngCmd::EnableEvents {
            session: session(),
            domain: Domain::Kernel,
            events: spec.kernel_events.clone(),
        };
        control_step(exec, "enable-event", events).await?;
    }
    if spec.syscalls {
        let syscalls = LttngCmd::EnableSyscalls { session: session() };
        control_step(exec, "enable-event", syscalls).await?;
    }
    if !spec.userspace_events.is_empty() {
        let events = LttngCmd::EnableEvents {
            session: session(),
            domain: Domain::Userspace,
            events: spec.userspace_events.clone(),
        };
        control_step(exec, "enable-event", events).await?;
        let contexts = LttngCmd::AddContexts {
            session: session(),
            domain: Domain::Userspace,
            contexts: vec![Context::Vpid, Context::Procname],
        };
        control_step(exec, "add-context", contexts).await?;
    }
    control_step(exec, "start", LttngCmd::Start { session: session() }).await?;
    progress(JOB_STATUS_TRACE_RUNNING, "tracing");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(spec.duration_ms)) => Ok(()),
        _ = cancel.cancelled() => Err(step_err(exec, "cancelled", "cancelled")),
    }
}

/// Finds the trace directory a relay wrote for this session.
async fn locate(
    exec: &impl Executor,
    spec: &JobSpec,
    locator: &TraceLocator,
) -> Result<String, StepError> {
    match locator {
        TraceLocator::Path(path) => Ok(path.clone()),
        TraceLocator::RelaySession { roots } => {
            let pattern = format!("{}-*", spec.session_name);
            for root in roots {
                // The relay groups traces as ROOT/<traced host>/<session>-<date>.
                let argv: Vec<String> = [
                    "find",
                    root,
                    "-mindepth",
                    "2",
                    "-maxdepth",
                    "2",
                    "-type",
                    "d",
                    "-name",
                    &pattern,
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                if let Ok(out) = exec.run(argv, LTTNG_TIMEOUT).await {
                    if let Some(found) = out
                        .stdout_lossy()
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                    {
                        return Ok(found.to_owned());
                    }
                }
            }
            Err(step_err(
                exec,
                "locate-trace",
                format!(
                    "no trace of session {} under {}",
                    spec.session_name,
                    roots.join(", ")
                ),
            ))
        }
    }
}

/// Runs the analysis on a recorded trace.
async fn analyse(exec: &impl Executor, spec: &JobSpec, trace: &str) -> Result<Json, StepError> {
    match spec.summary {
        Summary::Ust => {
            let argv = vec![
                "babeltrace2".to_owned(),
                "--clock-seconds".to_owned(),
                "--no-delta".to_owned(),
                trace.to_owned(),
            ];
            let mut summary = match exec.run(argv, ANALYSIS_TIMEOUT).await {
                Ok(out) => summarize_text(&out.stdout_lossy()),
                // LTTng writes no userspace trace when no instrumented application ran.
                Err(e) if e.stderr().is_some_and(|s| s.contains("No trace was found")) => {
                    let mut empty = summarize_text("");
                    empty["note"] = json!("no userspace events were recorded (no instrumented application emitted enabled events during the trace)");
                    empty
                }
                Err(e) => return Err(step_err(exec, "analysis", e)),
            };
            summary["trace"] = json!(trace);
            summary["host"] = json!(exec.host());
            Ok(summary)
        }
        Summary::Lami => {
            let mut analyses = Vec::new();
            for template in &spec.analysis_commands {
                let argv: Vec<String> = template
                    .iter()
                    .map(|a| {
                        if a == "{trace}" {
                            trace.to_owned()
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                let out = exec
                    .run(argv, ANALYSIS_TIMEOUT)
                    .await
                    .map_err(|e| step_err(exec, "analysis", e))?;
                let lami: Json = serde_json::from_slice(&out.stdout).map_err(|e| {
                    step_err(
                        exec,
                        "analysis",
                        format!("{} did not print JSON: {e}", template[0]),
                    )
                })?;
                analyses.push(json!({ "command": template[0], "result": lami }));
            }
            Ok(json!({ "kind": "lami", "trace": trace, "host": exec.host(), "analyses": analyses }))
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Summarises babeltrace2 text output (`--clock-seconds --no-delta`): events per name and per
/// process, the time range and the total.
pub fn summarize_text(text: &str) -> Json {
    let mut per_event: BTreeMap<String, u64> = BTreeMap::new();
    // By process id; within a process, events per thread name (procname is the thread's name).
    let mut per_process: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut first, mut last): (Option<String>, Option<String>) = (None, None);
    let mut total = 0u64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((stamp, rest)) = rest.split_once(']') else {
            continue;
        };
        let Some(name) = rest
            .split_whitespace()
            .find(|t| t.ends_with(':'))
            .map(|t| t.trim_end_matches(':'))
        else {
            continue;
        };
        total += 1;
        *per_event.entry(name.to_owned()).or_default() += 1;
        let procname = field(rest, "procname = \"")
            .map(|v| v.split('"').next().unwrap_or_default().to_owned());
        let vpid = field(rest, "vpid = ").and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit() && c != '-')
                .next()?
                .parse()
                .ok()
        });
        if procname.is_some() || vpid.is_some() {
            *per_process
                .entry(vpid.unwrap_or(-1))
                .or_default()
                .entry(procname.unwrap_or_default())
                .or_default() += 1;
        }
        if first.is_none() {
            first = Some(stamp.to_owned());
        }
        last = Some(stamp.to_owned());
    }
    let processes: Vec<Json> = per_process
        .into_iter()
        .map(|(vpid, threads)| {
            let events: u64 = threads.values().sum();
            // The process is named after its busiest thread (usually the main one).
            let procname = threads
                .iter()
                .max_by_key(|(name, n)| (**n, std::cmp::Reverse((*name).clone())))
                .map(|(name, _)| name.clone())
                .unwrap_or_default();
            json!({ "vpid": vpid, "procname": procname, "events": events, "threads": threads })
        })
        .collect();
    json!({
        "kind": "ust",
        "total": total,
        "events": per_event,
        "processes": processes,
        "begin": first,
        "end": last,
    })
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.find(key).map(|i| &text[i + key.len()..])
}

/// Lists the sessions of the root session daemon (`lttng --mi xml list`).
pub async fn list_sessions(exec: &impl Executor) -> Result<Vec<String>, StepError> {
    match control_step(exec, "list", LttngCmd::ListSessions).await? {
        Reply::Sessions(names) => Ok(names),
        Reply::Done => Ok(Vec::new()),
    }
}

/// Destroys the session `name` if it exists; `Ok(false)` when there was none.
pub async fn destroy_session(exec: &impl Executor, name: &str) -> Result<bool, StepError> {
    if !list_sessions(exec).await?.iter().any(|s| s == name) {
        return Ok(false);
    }
    let destroy = LttngCmd::Destroy {
        session: name.to_owned(),
    };
    control_step(exec, "destroy", destroy).await?;
    Ok(true)
}

/// Destroys the sessions of `coordinator`'s jobs on this host that no job runs any more (after
/// an agent restart); returns the job ids they belonged to.
pub async fn destroy_orphans(exec: &impl Executor, coordinator: &str, hostname: &str) -> Vec<u64> {
    let Ok(sessions) = list_sessions(exec).await else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for session in sessions {
        if let Some(job) = owned_job(&session, coordinator, hostname) {
            let destroy = LttngCmd::Destroy {
                session: session.clone(),
            };
            match exec.lttng(&destroy, LTTNG_TIMEOUT).await {
                Ok(_) => {
                    tracing::warn!(%session, job, "destroyed a session left by a previous run")
                }
                Err(error) => {
                    tracing::error!(%session, %error, "cannot destroy a leftover session")
                }
            }
            jobs.push(job);
        }
    }
    jobs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn session_names_round_trip() {
        let name = session_name("c0ffee00", 42, "web-1.example");
        assert_eq!(name, "tracevisor-c0ffee00-42-web-1.example");
        assert_eq!(owned_job(&name, "c0ffee00", "web-1.example"), Some(42));
        assert_eq!(owned_job(&name, "c0ffee00", "web-1"), None);
        assert_eq!(
            owned_job(&name, "deadbeef", "web-1.example"),
            None,
            "another coordinator's job"
        );
        assert_eq!(
            owned_job("tracevisor-c0ffee00-x-web", "c0ffee00", "web"),
            None
        );
        assert_eq!(owned_job("other-c0ffee00-1-web", "c0ffee00", "web"), None);
    }

    // Trace directories: the checks run for real through the local executor (mkdir, stat
    // and id as the agent runs them); only the owner check needs root to set up.

    #[tokio::test]
    async fn only_a_jobs_own_trace_directory_is_deleted_and_links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep-me"), "x").expect("write");
        let trace = dir.path().join("tracevisor-0c0ffee0-7-h");
        std::fs::create_dir_all(trace.join("ust/uid/0/64-bit")).expect("mkdir");
        std::fs::write(trace.join("ust/uid/0/64-bit/metadata"), "m").expect("write");
        std::os::unix::fs::symlink(&outside, trace.join("link-out")).expect("symlink");
        let exec = executor(dir.path());
        delete_trace(&exec, trace.to_str().expect("utf-8"))
            .await
            .expect("deleted");
        assert!(!trace.exists());
        assert!(
            outside.join("keep-me").exists(),
            "a link inside is not followed"
        );
        for refused in [
            "/etc",
            "relative/tracevisor-1",
            "/tmp/../etc/tracevisor-x",
            outside.to_str().expect("utf-8"),
        ] {
            let error = delete_trace(&exec, refused).await.expect_err(refused);
            assert!(error.contains("not deleted"), "{error}");
        }
        assert!(outside.exists());
    }

    /// A `tracevisor-*` directory in `root` holding `bytes`, last modified `age` ago.
    fn aged_trace(root: &Path, name: &str, bytes: usize, age: &str) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("data"), vec![7u8; bytes]).expect("write");
        let touched = std::process::Command::new("touch")
            .args(["-d", age])
            .arg(dir.join("data"))
            .arg(&dir)
            .status()
            .expect("touch");
        assert!(touched.success());
        dir
    }

    #[tokio::test]
    async fn kept_traces_go_after_their_retention_and_the_oldest_beyond_the_quota() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mib = 1 << 20;
        let expired = aged_trace(root, "tracevisor-a-1-h", mib, "9 days ago");
        let oldest = aged_trace(root, "tracevisor-a-2-h", mib, "5 days ago");
        let older = aged_trace(root, "tracevisor-a-3-h", mib, "4 days ago");
        let recent = aged_trace(root, "tracevisor-a-4-h", mib, "2 days ago");
        // Young enough to be a running job's: never deleted for the quota.
        let running = aged_trace(root, "tracevisor-a-5-h", 3 * mib, "10 minutes ago");
        let other = aged_trace(root, "not-a-trace", mib, "30 days ago");
        let mut exec = executor(root);
        exec.policy = TracePolicy {
            retention: Duration::from_secs(7 * 24 * 3600),
            quota_bytes: 6 * mib as u64,
        };
        prune_kept_traces(&exec).await;
        assert!(!expired.exists(), "past its retention");
        // 8 MiB left (3 traces of 1 MiB, the running one's 3, and the other directory) for a
        // quota of 6: the two oldest kept traces go.
        assert!(
            !oldest.exists() && !older.exists(),
            "oldest first, down to the quota"
        );
        assert!(recent.exists(), "the quota is met without it");
        assert!(running.exists(), "younger than TRACE_MIN_AGE");
        assert!(other.exists(), "not a trace of a job");
        // Under the quota and within the retention: nothing more goes.
        prune_kept_traces(&exec).await;
        assert!(recent.exists() && running.exists());
        // An old directory with a file written just now (a trace being analysed) stays, even
        // past its retention.
        let busy = aged_trace(root, "tracevisor-a-6-h", mib, "30 days ago");
        std::fs::write(busy.join("data"), b"fresh").expect("write");
        prune_kept_traces(&exec).await;
        assert!(busy.exists(), "a file in it changed within TRACE_MIN_AGE");
    }

    fn executor(root: &Path) -> LocalExecutor {
        LocalExecutor {
            hostname: "h".into(),
            trace_root: root.to_path_buf(),
            policy: TracePolicy::default(),
            control: Default::default(),
        }
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn local_spec(session: &str) -> JobSpec {
        JobSpec {
            session_name: session.into(),
            analysis: "ust".into(),
            kernel_events: vec![],
            syscalls: false,
            userspace_events: vec!["*".into()],
            duration_ms: 1,
            output: TraceOutput::Local,
            analysis_commands: vec![],
            run_analysis: false,
            summary: Summary::Ust,
            analysis_only: None,
            keep_trace: false,
            snapshot_of: None,
        }
    }

    const SESSION: &str = "tracevisor-c0ffee00-7-h";

    #[test]
    fn the_trace_format_is_ctf_1_8_from_lttng_2_15() {
        assert_eq!(
            lttng_version("lttng (LTTng Trace Control) 2.13.9 - Nordicité"),
            Some((2, 13))
        );
        assert_eq!(
            lttng_version("lttng (LTTng Trace Control) 2.15.0-rc1 - Péché Mortel"),
            Some((2, 15))
        );
        assert_eq!(lttng_version("no version here"), None);
        assert!(trace_format_args(Some((2, 13))).is_empty());
        assert!(trace_format_args(None).is_empty());
        assert_eq!(trace_format_args(Some((2, 15))), ["--trace-format=ctf-1.8"]);
        assert_eq!(trace_format_args(Some((3, 0))), ["--trace-format=ctf-1.8"]);
    }

    /// Answers `lttng --version` as LTTng 2.15 would (2.15 is not installed here) and records
    /// the other commands, which succeed without output.
    struct Lttng215 {
        commands: std::sync::Mutex<Vec<Vec<String>>>,
    }

    impl Executor for Lttng215 {
        fn host(&self) -> &str {
            "h"
        }
        fn trace_root(&self) -> String {
            "/nonexistent".into()
        }
        async fn run(&self, argv: Vec<String>, _: Duration) -> Result<Output, RunError> {
            use std::os::unix::process::ExitStatusExt as _;
            let stdout = if argv == ["lttng", "--version"] {
                b"lttng (LTTng Trace Control) 2.15.0 - Peche Mortel\n".to_vec()
            } else {
                self.commands.lock().unwrap().push(argv);
                Vec::new()
            };
            Ok(Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout,
                stderr: Vec::new(),
                elapsed: Duration::ZERO,
            })
        }
    }

    #[tokio::test]
    async fn sessions_on_lttng_2_15_are_created_in_ctf_1_8() {
        let exec = Lttng215 {
            commands: std::sync::Mutex::new(Vec::new()),
        };
        let spec = JobSpec {
            session_name: "tracevisor-c0ffee00-1-h".into(),
            analysis: "ust".into(),
            kernel_events: Vec::new(),
            syscalls: false,
            userspace_events: vec!["*".into()],
            duration_ms: 1,
            output: TraceOutput::Relay {
                host: "127.0.0.1".into(),
                ctrl_port: 5342,
                data_port: 5343,
            },
            analysis_commands: Vec::new(),
            run_analysis: false,
            summary: Summary::Ust,
            analysis_only: None,
            keep_trace: false,
            snapshot_of: None,
        };
        record(&exec, &spec, &|_, _| {}, &CancellationToken::new())
            .await
            .expect("recorded");
        let commands = exec.commands.lock().unwrap();
        assert_eq!(
            commands[0],
            [
                "lttng",
                "--no-sessiond",
                "create",
                "tracevisor-c0ffee00-1-h",
                "--set-url",
                "net://127.0.0.1:5342:5343",
                "--trace-format=ctf-1.8"
            ]
        );
    }

    #[tokio::test]
    async fn trace_dirs_are_created_private_in_a_private_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("traces");
        let exec = executor(&root);
        let dir = create_trace_dir(&exec, SESSION).await.expect("created");
        assert_eq!(dir, format!("{}/{SESSION}", root.display()));
        assert_eq!(mode_of(&root), 0o700, "the root is created 0700");
        assert_eq!(
            mode_of(Path::new(&dir)),
            0o700,
            "the job's directory is 0700"
        );
        // A root that exists, is ours and 0755 (an older agent made it so) is fine.
        chmod(&root, 0o755);
        create_trace_dir(&exec, "tracevisor-c0ffee00-8-h")
            .await
            .expect("a 0755 root of ours is accepted");
        // The same session twice: its directory exists now, the second is refused.
        let again = create_trace_dir(&exec, SESSION).await.unwrap_err();
        assert_eq!(again.step, "create");
        assert!(again.message.contains("already exists"), "{again}");
    }

    #[tokio::test]
    async fn a_pre_created_world_writable_trace_dir_is_not_used() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("traces");
        let exec = executor(&root);
        create_trace_dir(&exec, "tracevisor-c0ffee00-1-h")
            .await
            .expect("root created");
        // An attacker's directory, made before the job, open to everyone, with a planted file.
        let planted = root.join(SESSION);
        std::fs::create_dir(&planted).expect("mkdir");
        chmod(&planted, 0o777);
        std::fs::write(planted.join("metadata"), b"forged").expect("plant");
        let error = run_job(
            &exec,
            &local_spec(SESSION),
            |_, _| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(error.step, "create", "{error}");
        assert_eq!(error.host, "h");
        assert!(
            error.message.contains(&planted.display().to_string())
                && error.message.contains("already exists")
                && error.message.contains("mode 0777"),
            "{error}"
        );
        // Untouched, and not removed by the failed job either.
        assert_eq!(
            std::fs::read(planted.join("metadata")).expect("read"),
            b"forged"
        );
    }

    #[tokio::test]
    async fn a_group_or_world_writable_root_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("traces");
        std::fs::create_dir(&root).expect("mkdir");
        chmod(&root, 0o1777);
        let exec = executor(&root);
        let error = create_trace_dir(&exec, SESSION).await.unwrap_err();
        assert_eq!(error.step, "create");
        assert!(
            error
                .message
                .starts_with(&format!("refusing the trace root {}: ", root.display()))
                && error
                    .message
                    .contains("writable by its group and everyone (mode 1777)"),
            "{error}"
        );
        assert!(!root.join(SESSION).exists(), "nothing created in it");
        chmod(&root, 0o770);
        let error = create_trace_dir(&exec, SESSION).await.unwrap_err();
        assert!(
            error.message.contains("writable by its group (mode 0770)"),
            "{error}"
        );
        // /tmp itself (world-writable, sticky) is no trace root either.
        let error = create_trace_dir(&executor(Path::new("/tmp")), SESSION)
            .await
            .unwrap_err();
        assert!(
            error.message.contains("refusing the trace root /tmp: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_symlinked_root_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        chmod(&target, 0o700);
        let root = tmp.path().join("traces");
        std::os::unix::fs::symlink(&target, &root).expect("symlink");
        let error = create_trace_dir(&executor(&root), SESSION)
            .await
            .unwrap_err();
        assert_eq!(error.step, "create");
        assert!(
            error.message.contains(&root.display().to_string())
                && error.message.contains("symbolic link"),
            "{error}"
        );
        assert!(
            !target.join(SESSION).exists(),
            "nothing created where it points"
        );
        // A dangling link (mkdir -p fails on it) is named the same way.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).expect("symlink");
        let error = create_trace_dir(&executor(&dangling), SESSION)
            .await
            .unwrap_err();
        assert!(error.message.contains("symbolic link"), "{error}");
    }

    #[tokio::test]
    async fn a_root_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("traces");
        std::fs::create_dir(&root).expect("mkdir");
        chmod(&root, 0o700);
        if std::fs::metadata(&root).expect("stat").uid() != 0 {
            eprintln!("skipped: giving a directory to another user (chown 65534) needs root");
            return;
        }
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).expect("chown");
        let error = create_trace_dir(&executor(&root), SESSION)
            .await
            .unwrap_err();
        assert_eq!(error.step, "create");
        assert!(
            error.message.contains(&root.display().to_string())
                && error
                    .message
                    .contains("owned by uid 65534, not by uid 0 that runs the trace commands"),
            "{error}"
        );
    }

    #[test]
    fn root_problems_and_stat_output() {
        assert_eq!(trace_root_problem(0, 0o700, "directory", 0), None);
        assert_eq!(trace_root_problem(5, 0o755, "directory", 5), None);
        assert!(trace_root_problem(5, 0o700, "directory", 0)
            .is_some_and(|p| p.contains("owned by uid 5")));
        assert!(trace_root_problem(0, 0o702, "directory", 0)
            .is_some_and(|p| p.contains("writable by everyone (mode 0702)")));
        assert!(trace_root_problem(0, 0o777, "symbolic link", 0)
            .is_some_and(|p| p.contains("symbolic link")));
        assert!(trace_root_problem(0, 0o600, "regular file", 0)
            .is_some_and(|p| p.contains("regular file, not a directory")));
        assert_eq!(
            parse_stat("0 1777 directory\n"),
            Some((0, 0o1777, "directory".to_owned()))
        );
        assert_eq!(
            parse_stat("65534 777 symbolic link"),
            Some((65534, 0o777, "symbolic link".to_owned()))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn summary_counts_events_and_processes() {
        let text = "\
[1732520463.000000001] vm tracevisor_test:tick: { cpu_id = 0 }, { vpid = 1234, procname = \"app\" }, { n = 0 }
[1732520463.000000002] vm tracevisor_test:tick: { cpu_id = 1 }, { vpid = 1234, procname = \"app\" }, { n = 1 }
[1732520463.500000000] vm tracevisor_test:done: { cpu_id = 1 }, { vpid = 99, procname = \"other\" }, { }
garbage line
";
        let s = summarize_text(text);
        assert_eq!(s["total"], 3);
        assert_eq!(s["events"]["tracevisor_test:tick"], 2);
        assert_eq!(s["events"]["tracevisor_test:done"], 1);
        assert_eq!(
            s["processes"],
            json!([
                {"procname": "other", "vpid": 99, "events": 1, "threads": {"other": 1}},
                {"procname": "app", "vpid": 1234, "events": 2, "threads": {"app": 2}},
            ])
        );
        assert_eq!(s["begin"], "1732520463.000000001");
        assert_eq!(s["end"], "1732520463.500000000");
    }
}
