//! The LTTng control steps of a trace job (create, enable events, add contexts, start, destroy,
//! list), typed, with two back ends behind [`Executor::lttng`]:
//!
//! - **the `lttng` CLI** ([`via_cli`]), one process per step through the runner (locally or
//!   over SSH): the default of every executor, and the fallback;
//! - **liblttng-ctl** ([`LibraryControl`]), the host's own library loaded at run time and
//!   driven on one thread ([`tracevisor_lttng_ctl`]): no process per step, and a `Destroy`
//!   that returns as soon as the trace is complete on disk (the session daemon finishes the
//!   destruction on its own) instead of polling in 200 ms steps. Used by [`LocalExecutor`](crate::lifecycle::LocalExecutor) when the agent
//!   chose it ([`ControlChoice`]) and only while the library's version is the running session
//!   daemon's ([`LibraryControl::usable`]); otherwise the CLI runs the step, with a log line.
//!
//! Both give the same sessions (same names, same default channel, per-UID userspace buffers,
//! same contexts) and the same errors: a library error reads as the CLI's (`Error: ` and
//! `lttng_strerror`'s text), in a [`RunError::Library`] naming the equivalent command line.
//! Flight recorder sessions are armed and snapshotted through the CLI (channels of their own,
//! snapshots); disarming one is a `Destroy`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracevisor_lttng_ctl::{Context, Ctl, CtlError, Domain, LibraryVersion};

use crate::lifecycle::Executor;
use crate::runner::{Cmd, RunError};

/// One LTTng control step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LttngCmd {
    /// `lttng create SESSION (--output DIR | --set-url URL) [FORMAT...]`.
    Create {
        session: String,
        output: SessionOutput,
        /// Trace format options the CLI needs on this version ([`crate::lifecycle::trace_format_args`]).
        format: &'static [&'static str],
    },
    /// `lttng enable-event -s SESSION -k|-u EVENT,...`.
    EnableEvents {
        session: String,
        domain: Domain,
        events: Vec<String>,
    },
    /// `lttng enable-event -s SESSION -k --syscall -a`.
    EnableSyscalls { session: String },
    /// `lttng add-context -s SESSION -u -t vpid -t procname`.
    AddContexts {
        session: String,
        domain: Domain,
        contexts: Vec<Context>,
    },
    /// `lttng start SESSION`.
    Start { session: String },
    /// `lttng destroy SESSION`: stops it, and returns once the trace is complete. The CLI also
    /// waits for the session daemon to finish destroying it; through liblttng-ctl the
    /// destruction is asked without waiting, and the daemon finishes it on its own.
    Destroy { session: String },
    /// `lttng --mi xml list`: the session names.
    ListSessions,
}

/// Where a session writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// A local directory.
    Local(String),
    /// A relay: `net://HOST:CTRL:DATA`.
    Relay(String),
}

/// What a step answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    Sessions(Vec<String>),
}

fn domain_flag(domain: Domain) -> &'static str {
    match domain {
        Domain::Kernel => "-k",
        Domain::Userspace => "-u",
    }
}

impl LttngCmd {
    /// The `lttng` arguments of this step (after `lttng --no-sessiond`).
    pub fn cli_args(&self) -> Vec<String> {
        let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            LttngCmd::Create {
                session,
                output,
                format,
            } => {
                let mut args = owned(&["create", session]);
                match output {
                    SessionOutput::Local(dir) => args.extend(owned(&["--output", dir])),
                    SessionOutput::Relay(url) => args.extend(owned(&["--set-url", url])),
                }
                args.extend(owned(format));
                args
            }
            LttngCmd::EnableEvents {
                session,
                domain,
                events,
            } => owned(&[
                "enable-event",
                "-s",
                session,
                domain_flag(*domain),
                &events.join(","),
            ]),
            LttngCmd::EnableSyscalls { session } => {
                owned(&["enable-event", "-s", session, "-k", "--syscall", "-a"])
            }
            LttngCmd::AddContexts {
                session,
                domain,
                contexts,
            } => {
                let mut args = owned(&["add-context", "-s", session, domain_flag(*domain)]);
                for context in contexts {
                    args.extend(owned(&["-t", context.name()]));
                }
                args
            }
            LttngCmd::Start { session } => owned(&["start", session]),
            LttngCmd::Destroy { session } => owned(&["destroy", session]),
            LttngCmd::ListSessions => owned(&["--mi", "xml", "list"]),
        }
    }

    /// The whole command line, for messages.
    pub fn display(&self) -> String {
        let mut line = String::from("lttng --no-sessiond");
        for arg in self.cli_args() {
            line.push(' ');
            line.push_str(&arg);
        }
        line
    }
}

/// An `lttng` command line. `--no-sessiond`: a missing session daemon is an error naming it,
/// never a daemon silently spawned as the agent's user.
pub(crate) fn lttng_argv(args: impl IntoIterator<Item = String>) -> Vec<String> {
    ["lttng".to_owned(), "--no-sessiond".to_owned()]
        .into_iter()
        .chain(args)
        .collect()
}

/// Runs a step with the `lttng` CLI through `exec`.
pub async fn via_cli(
    exec: &impl Executor,
    cmd: &LttngCmd,
    timeout: Duration,
) -> Result<Reply, RunError> {
    let out = exec.run(lttng_argv(cmd.cli_args()), timeout).await?;
    Ok(match cmd {
        LttngCmd::ListSessions => Reply::Sessions(session_names(&out.stdout_lossy())),
        _ => Reply::Done,
    })
}

/// The session names of `lttng --mi xml list`.
pub fn session_names(xml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<session>") {
        rest = &rest[i + "<session>".len()..];
        if let Some(n) = rest.find("<name>") {
            let after = &rest[n + "<name>".len()..];
            if let Some(end) = after.find("</name>") {
                names.push(after[..end].to_owned());
            }
        }
    }
    names
}

/// How an agent drives LTTng (`lttng_control` in tracesd.toml, `--lttng-control`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlChoice {
    /// liblttng-ctl when it loads and its version is known, else the CLI (default).
    #[default]
    Auto,
    /// liblttng-ctl; the agent does not start without it.
    Library,
    /// The `lttng` CLI only.
    Cli,
}

impl std::str::FromStr for ControlChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ControlChoice::Auto),
            "library" => Ok(ControlChoice::Library),
            "cli" => Ok(ControlChoice::Cli),
            other => Err(format!(
                "unknown LTTng control {other:?}: expected auto, library or cli"
            )),
        }
    }
}

/// The back end of a local executor.
#[derive(Debug, Clone, Default)]
pub enum Control {
    /// The `lttng` CLI.
    #[default]
    Cli,
    /// liblttng-ctl, while its version matches the session daemon's.
    Library(Arc<LibraryControl>),
}

impl Control {
    /// Opens the back end `choice` asks for. `library` is the path of liblttng-ctl, else the
    /// soname. With [`ControlChoice::Library`], a library that does not load or whose version
    /// is not supported is an error; with [`ControlChoice::Auto`], it is a log line and the
    /// CLI.
    pub fn open(
        choice: ControlChoice,
        library: Option<&std::path::Path>,
    ) -> Result<Control, String> {
        if choice == ControlChoice::Cli {
            tracing::info!("LTTng is driven through the lttng CLI (lttng_control = \"cli\")");
            return Ok(Control::Cli);
        }
        let path = library.map(|p| p.display().to_string());
        let opened = Ctl::open(path.as_deref()).and_then(|ctl| {
            if ctl.is_supported() {
                Ok(ctl)
            } else {
                Err(format!(
                    "{}: liblttng-ctl version {} is not one this agent drives ({}.{} to {}.{})",
                    ctl.path(),
                    ctl.version(),
                    tracevisor_lttng_ctl::OLDEST_SUPPORTED.0,
                    tracevisor_lttng_ctl::OLDEST_SUPPORTED.1,
                    tracevisor_lttng_ctl::NEWEST_SUPPORTED.0,
                    tracevisor_lttng_ctl::NEWEST_SUPPORTED.1,
                ))
            }
        });
        match (opened, choice) {
            (Ok(ctl), _) => {
                tracing::info!(library = %ctl.path(), version = %ctl.version(), "LTTng is driven through liblttng-ctl (while its version is the session daemon's)");
                Ok(Control::Library(Arc::new(LibraryControl::new(ctl))))
            }
            (Err(why), ControlChoice::Library) => Err(format!(
                "lttng_control = \"library\" but liblttng-ctl cannot be used: {why}"
            )),
            (Err(why), _) => {
                tracing::warn!(%why, "liblttng-ctl cannot be used; LTTng is driven through the lttng CLI");
                Ok(Control::Cli)
            }
        }
    }

    /// Waits (at most `timeout`) until the library's queue is empty (the destructions asked
    /// in the background are sent): before a process that drove the library exits.
    pub async fn settle(&self, timeout: Duration) {
        if let Control::Library(library) = self {
            if !library.ctl.settle(timeout).await {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    "sessions still being destroyed at exit; they are destroyed as leftovers at the next start"
                );
            }
        }
    }

    /// What jobs use now, for the capabilities: `liblttng-ctl 2.13` or `lttng CLI (why)`.
    pub async fn describe(&self) -> String {
        match self {
            Control::Cli => "lttng CLI".to_owned(),
            Control::Library(library) => match library.usable().await {
                Ok(()) => format!("liblttng-ctl {}", library.ctl.version()),
                Err(why) => format!("lttng CLI ({why})"),
            },
        }
    }
}

/// liblttng-ctl, and what is known of the session daemon it would talk to.
#[derive(Debug)]
pub struct LibraryControl {
    ctl: Ctl,
    /// The session daemon last checked: its pid and whether the library may drive it.
    checked: tokio::sync::Mutex<Option<(u32, Result<(), String>)>>,
    /// Where the session daemons the library would talk to write their pid, in its order.
    pid_files: Vec<PathBuf>,
}

/// How long `lttng-sessiond --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

impl LibraryControl {
    pub fn new(ctl: Ctl) -> Self {
        LibraryControl {
            ctl,
            checked: tokio::sync::Mutex::new(None),
            pid_files: sessiond_pid_files(),
        }
    }

    /// The library.
    pub fn ctl(&self) -> &Ctl {
        &self.ctl
    }

    /// `Ok` when the library may drive the session daemon: it has not hung, and the running
    /// daemon (found by its pid file, its version asked of its own executable,
    /// `/proc/PID/exe --version`) is the library's `major.minor`. With no daemon running the
    /// library is used: it reports the missing daemon as the CLI would. The answer is kept
    /// while the same daemon runs; a mismatch is logged once per daemon.
    pub async fn usable(&self) -> Result<(), String> {
        if self.ctl.is_wedged() {
            return Err("an earlier liblttng-ctl call hung".to_owned());
        }
        let Some(pid) = self.pid_files.iter().find_map(|file| read_pid(file)) else {
            // No daemon to check: used only when none answers at all (the library then says
            // so as the CLI would); a daemon whose pid file cannot be read is not driven
            // through the library, since its version cannot be told.
            return match self.ctl.session_daemon_alive(VERSION_TIMEOUT).await {
                Ok(false) => Ok(()),
                Ok(true) => Err(
                    "a session daemon answers but no readable pid file names it: its version cannot be checked"
                        .to_owned(),
                ),
                Err(e) => Err(e.to_string()),
            };
        };
        let mut checked = self.checked.lock().await;
        if let Some((known, answer)) = &*checked {
            if *known == pid {
                return answer.clone();
            }
        }
        let exe = format!("/proc/{pid}/exe");
        let daemon = Cmd::new(&exe)
            .arg("--version")
            .timeout(VERSION_TIMEOUT)
            .run()
            .await
            .ok()
            .and_then(|out| crate::lifecycle::lttng_version(&out.stdout_lossy()));
        let answer = match (daemon, self.ctl.version()) {
            (Some(daemon), LibraryVersion::Known(major, minor)) if daemon == (major, minor) => {
                Ok(())
            }
            (Some((major, minor)), library) => Err(format!(
                "liblttng-ctl {library} does not match lttng-sessiond {major}.{minor} (pid {pid})"
            )),
            (None, library) => Err(format!(
                "cannot tell the version of lttng-sessiond (pid {pid}) to match liblttng-ctl {library}"
            )),
        };
        if let Err(why) = &answer {
            tracing::warn!(%why, library = %self.ctl.path(), "liblttng-ctl is not used with this session daemon: LTTng is driven through the lttng CLI");
        } else {
            tracing::debug!(pid, version = %self.ctl.version(), "liblttng-ctl matches the session daemon");
        }
        *checked = Some((pid, answer.clone()));
        answer
    }

    /// Runs a step through the library.
    pub async fn run(&self, cmd: &LttngCmd, timeout: Duration) -> Result<Reply, RunError> {
        let ctl = &self.ctl;
        let done = match cmd {
            LttngCmd::Create {
                session, output, ..
            } => {
                let url = match output {
                    SessionOutput::Local(dir) => format!("file://{dir}"),
                    SessionOutput::Relay(url) => url.clone(),
                };
                ctl.create(session, &url, timeout).await
            }
            LttngCmd::EnableEvents {
                session,
                domain,
                events,
            } => {
                ctl.enable_events(session, *domain, events.clone(), timeout)
                    .await
            }
            LttngCmd::EnableSyscalls { session } => ctl.enable_all_syscalls(session, timeout).await,
            LttngCmd::AddContexts {
                session,
                domain,
                contexts,
            } => {
                ctl.add_contexts(session, *domain, contexts.clone(), timeout)
                    .await
            }
            LttngCmd::Start { session } => ctl.start(session, timeout).await,
            // Stopped, and complete on disk, then destroyed without waiting for the daemon's
            // last 0.7 s: the caller reads the trace at once. The session is destroyed whether
            // the stop worked or not (as `lttng destroy` does); the stop's error is reported.
            LttngCmd::Destroy { session } => {
                let stopped = ctl.stop(session, timeout).await;
                let destroyed = ctl.destroy_in_background(session, timeout).await;
                stopped.and(destroyed)
            }
            LttngCmd::ListSessions => {
                return ctl
                    .list_sessions(timeout)
                    .await
                    .map(Reply::Sessions)
                    .map_err(|e| library_error(cmd, e))
            }
        };
        done.map(|()| Reply::Done)
            .map_err(|e| library_error(cmd, e))
    }
}

fn library_error(cmd: &LttngCmd, error: CtlError) -> RunError {
    match error {
        CtlError::TimedOut(timeout) => RunError::TimedOut {
            command: format!("{} (liblttng-ctl)", cmd.display()),
            timeout,
            stderr: error.to_string(),
        },
        other => RunError::Library {
            command: cmd.display(),
            stderr: other.to_string(),
        },
    }
}

/// The pid files of the session daemons liblttng-ctl would talk to, in its order: the root
/// daemon's for root and for members of the `tracing` group, then (not root) the user's own
/// (`$LTTNG_HOME` or `$HOME`, `.lttng/`). A user that is not root cannot read the root
/// daemon's executable: its version is then unknown and the steps use the CLI.
fn sessiond_pid_files() -> Vec<PathBuf> {
    let global = PathBuf::from("/var/run/lttng/lttng-sessiond.pid");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // "Uid: real effective saved fs".
    if field("Uid:").get(1).is_some_and(|euid| euid == "0") {
        return vec![global];
    }
    let tracing_gid = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut parts = l.split(':');
            (parts.next() == Some("tracing")).then(|| parts.nth(1).map(str::to_owned))?
        });
    let in_tracing = tracing_gid.is_some_and(|gid| field("Groups:").contains(&gid));
    let home = std::env::var_os("LTTNG_HOME")
        .or_else(|| std::env::var_os("HOME"))
        .map(|home| PathBuf::from(home).join(".lttng/lttng-sessiond.pid"));
    let mut files = Vec::new();
    if in_tracing {
        files.push(global.clone());
    }
    files.extend(home);
    if !in_tracing {
        files.push(global);
    }
    files
}

/// The pid in a session daemon's pid file, when that process is alive, is a session daemon,
/// runs as the pid file's owner, and its executable belongs to root or that owner and nobody
/// else can write it: a stale file's pid may have been reused by another program, which must
/// not be run (its name alone is not proof: any process can set it).
fn read_pid(file: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(file).ok()?.uid();
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "lttng-sessiond" {
        return None;
    }
    if std::fs::metadata(format!("/proc/{pid}")).ok()?.uid() != owner {
        return None;
    }
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let trusted = (exe.uid() == 0 || exe.uid() == owner) && exe.mode() & 0o022 == 0;
    trusted.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_arguments_are_the_ones_the_lifecycle_always_used() {
        let create = LttngCmd::Create {
            session: "tracevisor-c-1-h".into(),
            output: SessionOutput::Local("/t/tracevisor-c-1-h".into()),
            format: &[],
        };
        assert_eq!(
            create.display(),
            "lttng --no-sessiond create tracevisor-c-1-h --output /t/tracevisor-c-1-h"
        );
        let relay = LttngCmd::Create {
            session: "s".into(),
            output: SessionOutput::Relay("net://r:5342:5343".into()),
            format: &["--trace-format=ctf-1.8"],
        };
        assert_eq!(
            relay.cli_args(),
            [
                "create",
                "s",
                "--set-url",
                "net://r:5342:5343",
                "--trace-format=ctf-1.8"
            ]
        );
        let events = LttngCmd::EnableEvents {
            session: "s".into(),
            domain: Domain::Userspace,
            events: vec!["a".into(), "b:*".into()],
        };
        assert_eq!(
            events.cli_args(),
            ["enable-event", "-s", "s", "-u", "a,b:*"]
        );
        let contexts = LttngCmd::AddContexts {
            session: "s".into(),
            domain: Domain::Userspace,
            contexts: vec![Context::Vpid, Context::Procname],
        };
        assert_eq!(
            contexts.cli_args(),
            [
                "add-context",
                "-s",
                "s",
                "-u",
                "-t",
                "vpid",
                "-t",
                "procname"
            ]
        );
        assert_eq!(
            LttngCmd::EnableSyscalls {
                session: "s".into()
            }
            .cli_args(),
            ["enable-event", "-s", "s", "-k", "--syscall", "-a"]
        );
        assert_eq!(LttngCmd::ListSessions.cli_args(), ["--mi", "xml", "list"]);
    }

    #[test]
    fn session_names_from_mi() {
        let xml = "<command><output><sessions><session><name>a</name><path>/x</path></session><session><name>tracevisor-b</name></session></sessions></output></command>";
        assert_eq!(session_names(xml), ["a", "tracevisor-b"]);
        assert!(session_names("").is_empty());
    }

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<ControlChoice>(), Ok(ControlChoice::Auto));
        assert_eq!(
            "library".parse::<ControlChoice>(),
            Ok(ControlChoice::Library)
        );
        assert_eq!("cli".parse::<ControlChoice>(), Ok(ControlChoice::Cli));
        assert!("lib"
            .parse::<ControlChoice>()
            .unwrap_err()
            .contains("auto, library or cli"));
    }
}
