//! Real LTTng components for tests: a shared root lttng-sessiond, lttng-relayd guards on free loopback ports, the `tracevisor_test` userspace program, babeltrace2 counting, and a generator of synthetic kernel traces for the lttng-analyses `-mi` commands.
//!
//! Pitfalls measured on Debian 12 (lttng-tools 2.13.9, lttng-ust 2.13.5, no lttng-modules):
//! - `lttng-sessiond --daemonize` starts fine without lttng-modules (no `--no-kernel` needed);
//!   kernel commands then fail with "Kernel tracer not available" (`lttng list -k`,
//!   `lttng enable-event -k` exit 1 / 33). It returns once the daemon is ready (~40 ms).
//!   BUT `lttng enable-event -k` (also `--syscall`) dies of SIGPIPE with an empty stderr in
//!   about 30% of runs (the daemon closes the socket while the client writes): probe the
//!   kernel tracer with `lttng list -k` (exit 1, "Kernel tracer not available", every time)
//!   and report a signal death of `lttng` as an error of its own.
//! - Userspace events reach only sessions that were STARTED when the app was already
//!   registered, or apps that register while the session is active. The liblttng-ust
//!   constructor waits for registration up to `LTTNG_UST_REGISTER_TIMEOUT` ms (default
//!   3000) before `main`; [`UstAppOptions`] sets 10000 so a loaded machine loses nothing.
//! - Per-UID buffers (the `-u` default): every session that enables `tracevisor_test:*`
//!   records the events of EVERY running instance of the program. Tests that count events
//!   must not run two instances at once ([`ust_exclusive`]) or must tell runs apart by the
//!   `tag` field ([`UstAppOptions::tag`]).
//! - `lttng stop` waits for data availability (about 200 ms here, sometimes 45 ms);
//!   `lttng destroy` waits for the flush and takes about 510 ms here even right after a
//!   stop. After `destroy` returns the trace is complete on disk, also on the relay.
//!   create, enable-event and start take 5-10 ms each.
//! - `lttng create` makes the new session the "current" one in `$HOME/.lttngrc`, which
//!   concurrent tests share: always pass the session name (`enable-event -s NAME`, `start NAME`).
//! - A relayd writes a streamed session under `OUTPUT/<sessiond hostname>/<session>-<YYYYMMDD-HHMMSS>/`
//!   (then `ust/uid/0/64-bit/` for userspace), see [`Relayd::session_dir`].
//! - A tracepoint turns on when a session enabling it STARTS (not at `enable-event`), and
//!   lttng-ust turns it on slightly before marking the session active; the program's
//!   `--wait-enabled` mode therefore waits 100 ms more ([`UstAppOptions::wait_enabled`]).
//! - `python3` may be a pyenv shim without the Debian `babeltrace` module: the kernel trace
//!   generator runs with `/usr/bin/python3` ([`crate::skip::system_python`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Default timeout of one `lttng` command.
pub const LTTNG_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Running tools

/// What an external tool printed, its exit status and how long it ran.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `program` with `args` (argv, no shell), capture its output, kill it after `timeout`.
pub fn run_tool<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
) -> Result<ToolOutput> {
    let program = program.as_ref();
    let shown = display_command(program, args);
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(ToolOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}

/// Like [`run_tool`], but a non-zero exit is an error carrying the tool's stderr; returns stdout.
pub fn run_tool_ok<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
) -> Result<String> {
    let program = program.as_ref();
    let out = run_tool(program, args, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            display_command(program, args),
            out.status,
            out.stderr.trim(),
            if out.stderr.trim().is_empty() {
                out.stdout.trim()
            } else {
                ""
            }
        );
    }
    Ok(out.stdout)
}

/// Run `lttng ARGS...` (timeout [`LTTNG_TIMEOUT`]) and return its stdout; errors carry stderr.
pub fn lttng<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    run_tool_ok("lttng", args, LTTNG_TIMEOUT)
}

fn read_in_background<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn display_command<S: AsRef<OsStr>>(program: &OsStr, args: &[S]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(AsRef::as_ref))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Send SIGTERM (through `kill`, argv only), wait up to `grace`, then SIGKILL; always reaps.
pub fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A name unique to this process and call, e.g. `tvtest-4242-3`, for sessions and files.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` distinct TCP ports free on 127.0.0.1 right now (bound together while picked, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot bind a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing accepts connections on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

// ---------------------------------------------------------------------------------------
// Session daemon and sessions

/// Make sure a root lttng-sessiond runs: if `lttng list` fails, start `lttng-sessiond
/// --daemonize` and wait until `lttng list` works. Checked at every call (about 5 ms),
/// started by one thread at a time; the daemon is left running, shared by every test and
/// test binary (so never stop it in a test: others may be tracing).
pub fn ensure_sessiond() -> Result<()> {
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    start_sessiond_if_needed()
}

fn sessiond_answers() -> bool {
    run_tool("lttng", &["list"], Duration::from_secs(10)).is_ok_and(|o| o.status.success())
}

fn start_sessiond_if_needed() -> Result<()> {
    if sessiond_answers() {
        return Ok(());
    }
    // A concurrent test binary may be starting one too: the loser's daemon exits because
    // of the lock file, and both then see the winner answer.
    let out = run_tool("lttng-sessiond", &["--daemonize"], Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if sessiond_answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "lttng-sessiond --daemonize exited with {} but `lttng list` still fails: {}",
        out.status,
        out.stderr.trim()
    )
}

/// One recording session as `lttng --mi xml list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub name: String,
    /// Local output directory or network URL (empty for snapshot sessions without output).
    pub path: String,
    /// Whether the session is started (`[active]`).
    pub active: bool,
}

/// The sessions of the root session daemon.
pub fn list_sessions() -> Result<Vec<SessionInfo>> {
    let xml = lttng(&["--mi", "xml", "list"])?;
    Ok(xml
        .split("<session>")
        .skip(1)
        .map(|chunk| SessionInfo {
            name: xml_text(chunk, "name"),
            path: xml_text(chunk, "path"),
            active: xml_text(chunk, "enabled") == "true",
        })
        .collect())
}

fn xml_text(chunk: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    chunk
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(text, _)| {
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .unwrap_or_default()
}

/// Wait until a session whose name starts with `prefix` is active; returns its name.
pub fn wait_for_active_session(prefix: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = list_sessions()?
            .into_iter()
            .find(|s| s.active && s.name.starts_with(prefix))
        {
            return Ok(s.name);
        }
        if Instant::now() > deadline {
            bail!("no active session named {prefix}* after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Destroys the named session on drop unless [`SessionGuard::disarm`]ed (cleanup after a failed test).
#[derive(Debug)]
pub struct SessionGuard {
    name: Option<String>,
}

impl SessionGuard {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
        }
    }

    /// The session is gone (destroyed by the test itself): do nothing on drop.
    pub fn disarm(&mut self) {
        self.name = None;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = run_tool("lttng", &["destroy", "--no-wait", &name], LTTNG_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Relay daemon

/// A real `lttng-relayd` on free 127.0.0.1 ports writing into a temp dir; killed on drop.
#[derive(Debug)]
pub struct Relayd {
    child: Child,
    ctrl_port: u16,
    data_port: u16,
    live_port: u16,
    output: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relayd {
    /// Start a relay daemon (retrying with other ports if one was taken meanwhile).
    pub fn start() -> Result<Relayd> {
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start() {
                Ok(relayd) => return Ok(relayd),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("lttng-relayd did not start")))
    }

    fn try_start() -> Result<Relayd> {
        let dir = tempfile::Builder::new().prefix("tv-relayd-").tempdir()?;
        let output = dir.path().join("output");
        let log = dir.path().join("relayd.log");
        let ports = free_ports(3)?;
        let (ctrl_port, data_port, live_port) = (ports[0], ports[1], ports[2]);
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new("lttng-relayd")
            .arg(format!("--control-port=tcp://127.0.0.1:{ctrl_port}"))
            .arg(format!("--data-port=tcp://127.0.0.1:{data_port}"))
            .arg(format!("--live-port=tcp://127.0.0.1:{live_port}"))
            .arg(format!("--output={}", output.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("cannot start lttng-relayd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pending = vec![ctrl_port, data_port, live_port];
        while !pending.is_empty() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "lttng-relayd exited at start ({status}): {}",
                    tail(&log, 2000)
                );
            }
            if Instant::now() > deadline {
                terminate(&mut child, Duration::from_secs(1));
                bail!(
                    "lttng-relayd does not listen on {pending:?}: {}",
                    tail(&log, 2000)
                );
            }
            pending.retain(|&port| {
                TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_err()
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(Relayd {
            child,
            ctrl_port,
            data_port,
            live_port,
            output,
            log,
            _dir: dir,
        })
    }

    pub fn ctrl_port(&self) -> u16 {
        self.ctrl_port
    }

    pub fn data_port(&self) -> u16 {
        self.data_port
    }

    pub fn live_port(&self) -> u16 {
        self.live_port
    }

    /// The relay's `--output` directory (created by the relay on the first session).
    pub fn output_dir(&self) -> &Path {
        &self.output
    }

    /// `net://127.0.0.1:CTRL:DATA`, for `lttng create NAME --set-url URL`.
    pub fn url(&self) -> String {
        format!("net://127.0.0.1:{}:{}", self.ctrl_port, self.data_port)
    }

    /// The relay's own log (stdout and stderr).
    pub fn log(&self) -> String {
        tail(&self.log, 64 * 1024)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the relay wrote `session`: `OUTPUT/<hostname>/<session>-<YYYYMMDD-HHMMSS>`.
    pub fn session_dir(&self, session: &str) -> Option<PathBuf> {
        let prefix = format!("{session}-");
        std::fs::read_dir(&self.output)
            .ok()?
            .flatten()
            .filter(|host| host.path().is_dir())
            .flat_map(|host| {
                std::fs::read_dir(host.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|entry| entry.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(|stamp| {
                        stamp.len() == 15 && stamp.chars().all(|c| c.is_ascii_digit() || c == '-')
                    })
            })
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------------------
// The userspace test program

const UST_TP_H: &str = include_str!("../fixtures/ust-app/tracevisor_test_tp.h");
const UST_TP_C: &str = include_str!("../fixtures/ust-app/tp.c");
const UST_MAIN_C: &str = include_str!("../fixtures/ust-app/main.c");

/// Event names the test program emits.
pub const UST_TICK_EVENT: &str = "tracevisor_test:tick";
pub const UST_DONE_EVENT: &str = "tracevisor_test:done";
/// The pattern to enable them all: `lttng enable-event -u 'tracevisor_test:*'`.
pub const UST_EVENT_PATTERN: &str = "tracevisor_test:*";

/// Compile the `tracevisor_test` program (tests/fixtures/ust-app) with gcc once per process
/// and source version, into the system temp dir; returns the binary's path.
pub fn build_ust_app() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| compile_ust_app().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn compile_ust_app() -> Result<PathBuf> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (UST_TP_H, UST_TP_C, UST_MAIN_C).hash(&mut hasher);
    let dir = std::env::temp_dir().join(format!("tracevisor-ust-app-{:016x}", hasher.finish()));
    let binary = dir.join("ust-app");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir)?;
    // Build in a private directory, then rename: concurrent test processes never see half a binary.
    let work = tempfile::Builder::new().prefix("build-").tempdir_in(&dir)?;
    for (name, text) in [
        ("tracevisor_test_tp.h", UST_TP_H),
        ("tp.c", UST_TP_C),
        ("main.c", UST_MAIN_C),
    ] {
        std::fs::write(work.path().join(name), text)?;
    }
    let out = work.path().join("ust-app");
    let (main_c, tp_c) = (work.path().join("main.c"), work.path().join("tp.c"));
    let args: [&OsStr; 11] = [
        "-O2".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-I".as_ref(),
        work.path().as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        main_c.as_os_str(),
        tp_c.as_os_str(),
        "-llttng-ust".as_ref(),
        "-ldl".as_ref(),
    ];
    run_tool_ok("gcc", &args, Duration::from_secs(120))
        .context("cannot build the lttng-ust test program (needs gcc and liblttng-ust-dev)")?;
    std::fs::rename(&out, &binary)?;
    Ok(binary)
}

/// How to run the test program; see tests/fixtures/ust-app/main.c.
#[derive(Debug, Clone)]
pub struct UstAppOptions {
    /// Ticks to emit; 0 means until killed (then it exits cleanly and reports the count).
    pub count: u64,
    /// Pause between ticks.
    pub interval: Duration,
    /// Value of every event's `tag` field.
    pub tag: u64,
    /// Emit nothing before this file exists.
    pub wait_file: Option<PathBuf>,
    /// Emit nothing before a session enabling `tracevisor_test:tick` is started (plus `settle`).
    pub wait_enabled: bool,
    /// Extra wait after `wait_enabled` sees the tracepoint enabled (see main.c).
    pub settle: Duration,
    /// Emit the final `tracevisor_test:done` event.
    pub emit_done: bool,
    /// `LTTNG_UST_REGISTER_TIMEOUT` in ms (-1 = forever).
    pub register_timeout_ms: i64,
}

impl UstAppOptions {
    /// `count` ticks at once, then `done`; 10 s registration timeout.
    pub fn new(count: u64) -> Self {
        Self {
            count,
            interval: Duration::ZERO,
            tag: 0,
            wait_file: None,
            wait_enabled: false,
            settle: Duration::from_millis(100),
            emit_done: true,
            register_timeout_ms: 10_000,
        }
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    pub fn wait_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.wait_file = Some(path.into());
        self
    }

    pub fn wait_enabled(mut self) -> Self {
        self.wait_enabled = true;
        self
    }

    pub fn without_done(mut self) -> Self {
        self.emit_done = false;
        self
    }
}

/// A running test program; killed on drop.
#[derive(Debug)]
pub struct UstApp {
    child: Child,
    stdout: BufReader<ChildStdout>,
    ready_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Start the test program (built by [`build_ust_app`]).
pub fn spawn_ust_app(options: &UstAppOptions) -> Result<UstApp> {
    let binary = build_ust_app()?;
    let dir = tempfile::Builder::new().prefix("tv-ust-app-").tempdir()?;
    let ready_file = dir.path().join("ready");
    let mut cmd = Command::new(&binary);
    cmd.arg(options.count.to_string())
        .arg("--interval-ms")
        .arg(options.interval.as_millis().to_string())
        .arg("--tag")
        .arg(options.tag.to_string())
        .arg("--settle-ms")
        .arg(options.settle.as_millis().to_string())
        .arg("--ready-file")
        .arg(&ready_file)
        .env(
            "LTTNG_UST_REGISTER_TIMEOUT",
            options.register_timeout_ms.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(wait_file) = &options.wait_file {
        cmd.arg("--wait-file").arg(wait_file);
    }
    if options.wait_enabled {
        cmd.arg("--wait-enabled");
    }
    if !options.emit_done {
        cmd.arg("--no-done");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    Ok(UstApp {
        child,
        stdout,
        ready_file,
        _dir: dir,
    })
}

/// Run the test program to completion: `count` ticks (and `done`); returns the count it reports.
pub fn run_ust_app(count: u64) -> Result<u64> {
    spawn_ust_app(&UstAppOptions::new(count))?.wait(Duration::from_secs(60))
}

impl UstApp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the program reached `main` (so liblttng-ust registration is over).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.ready_file.exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("ust test program exited before it was ready ({status})");
            }
            if Instant::now() > deadline {
                bail!("ust test program not ready after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Ask a running program to stop (SIGTERM) and return how many ticks it emitted.
    pub fn stop(mut self, timeout: Duration) -> Result<u64> {
        run_tool_ok(
            "kill",
            &["-TERM", &self.child.id().to_string()],
            Duration::from_secs(5),
        )?;
        self.wait_inner(timeout)
    }

    /// Wait for the program to finish; returns the number of ticks it reports ("emitted N").
    pub fn wait(mut self, timeout: Duration) -> Result<u64> {
        self.wait_inner(timeout)
    }

    fn wait_inner(&mut self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("ust test program still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        self.stdout.read_to_string(&mut out)?;
        if !status.success() {
            bail!("ust test program failed ({status}): {out}");
        }
        out.lines()
            .find_map(|l| l.strip_prefix("emitted "))
            .context("ust test program did not report `emitted N`")?
            .trim()
            .parse()
            .context("bad `emitted` count")
    }
}

impl Drop for UstApp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Serialises userspace tests that count `tracevisor_test` events within this process
/// (per-UID buffers: every session records every instance's events). Poisoning is ignored.
pub fn ust_exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Reading traces with babeltrace2

/// One event line of `babeltrace2 --no-delta TRACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// `tracevisor_test:tick`, `sched_switch`, ...
    pub name: String,
    /// The whole line (timestamp, hostname, name, context and payload fields).
    pub line: String,
}

impl TraceEvent {
    /// Value text of field `name` in the line (`tag = 7` gives `Some("7")`).
    pub fn field(&self, name: &str) -> Option<&str> {
        let needle = format!(" {name} = ");
        let start = self.line.find(&needle)? + needle.len();
        let rest = &self.line[start..];
        let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim_matches('"'))
    }
}

/// All events of the trace(s) under `trace` as babeltrace2 prints them.
pub fn babeltrace2_events(trace: &Path) -> Result<Vec<TraceEvent>> {
    let out = run_tool_ok(
        "babeltrace2",
        &["--no-delta".as_ref(), trace.as_os_str()],
        Duration::from_secs(120),
    )?;
    out.lines()
        .filter(|l| l.starts_with('['))
        .map(|line| {
            let name = line
                .split_whitespace()
                .skip(1)
                .find_map(|tok| tok.strip_suffix(':'))
                .with_context(|| format!("no event name in babeltrace2 line {line:?}"))?;
            Ok(TraceEvent {
                name: name.to_string(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Number of events per event name in the trace(s) under `trace`.
pub fn babeltrace2_counts(trace: &Path) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for event in babeltrace2_events(trace)? {
        *counts.entry(event.name).or_insert(0) += 1;
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------
// Synthetic kernel traces for lttng-analyses

// What lttng-analyses 0.6.1 (python3-lttnganalyses) needs from a kernel trace, found by
// reading /usr/lib/python3/dist-packages/lttnganalyses and running the -mi commands:
// - a directory whose name ends in "kernel" whose metadata has env tracer_major, tracer_minor
//   and tracer_patchlevel (else the tracer version stays None and sched_wakeup handling fails);
// - the babeltrace 1.x CLI must read the whole trace (its lost-events check runs `babeltrace
//   PATH` through a shell);
// - `cpu_id` readable on every event (LTTng puts it in the packet context; the generator,
//   whose Python writer cannot extend the packet context, puts it in each payload);
// - all streams covering the whole range (the default intersect mode reads only the range
//   where every stream has data);
// - a sched_switch at the start of each CPU (a CPU counts as busy from the first event until
//   its first sched_switch);
// - events and fields: sched_switch (prev_comm, prev_tid, prev_prio, prev_state, next_comm,
//   next_tid, next_prio), syscall_entry_<name> / syscall_exit_<name> (read/write: fd, count;
//   exit: ret; openat: filename), block_rq_issue (dev, sector, nr_sector, tid, rwbs, comm),
//   block_rq_complete (dev, sector, nr_sector, rwbs), lttng_statedump_process_state (tid, pid,
//   name, prio), lttng_statedump_file_descriptor (pid, fd, flags, filename),
//   lttng_statedump_block_device (dev, diskname). File descriptors known from the state dump
//   count as "unknown" I/O, those opened by openat as "disk".
// A kernel analysis of a userspace-only trace prints `{"results": []}` and exits 0.
const GEN_KERNEL_TRACE_PY: &str = include_str!("../fixtures/gen_kernel_trace.py");

/// A kernel trace to generate; see tests/fixtures/gen_kernel_trace.py for the semantics.
/// All times are nanoseconds from the start of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTraceSpec {
    pub duration_ns: u64,
    pub cpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_s: Option<u64>,
    #[serde(default)]
    pub processes: Vec<KProcess>,
    #[serde(default)]
    pub files: Vec<KFile>,
    #[serde(default)]
    pub disks: Vec<KDisk>,
    #[serde(default)]
    pub runs: Vec<KRun>,
    #[serde(default)]
    pub syscalls: Vec<KSyscall>,
    #[serde(default)]
    pub block_requests: Vec<KBlockRequest>,
}

/// A process known from the state dump at t=0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KProcess {
    pub tid: i64,
    pub pid: i64,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prio: Option<i64>,
}

/// A file descriptor open at t=0 (state dump; lttng-analyses types it "unknown").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KFile {
    pub pid: i64,
    pub fd: i64,
    pub filename: String,
}

/// A block device known from the state dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KDisk {
    /// Kernel dev_t (major << 20 | minor): 8388608 is 8:0, sda.
    pub dev: u64,
    pub diskname: String,
}

/// `tid` runs on `cpu` during [start_ns, end_ns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KRun {
    pub cpu: u32,
    pub tid: i64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A system call (read, write, pread64, pwrite64, openat, close, fsync) inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KSyscall {
    pub cpu: u32,
    pub tid: i64,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ret: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<i64>,
}

/// A block request of `nr_sector` 512-byte sectors issued by `tid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KBlockRequest {
    pub cpu: u32,
    pub tid: i64,
    pub dev: u64,
    pub sector: u64,
    pub nr_sector: u64,
    pub write: bool,
    pub issue_ns: u64,
    pub complete_ns: u64,
}

/// Expected results of [`KernelTraceSpec::reference`], as the lttng-analyses `-mi`
/// commands print them (checked by tests/tests/harness_smoke.rs).
pub mod reference {
    /// Trace length and analysed time range: 1 s.
    pub const DURATION_NS: u64 = 1_000_000_000;
    /// `worker` (tid 1234) runs on CPU 0 for 600 ms: cputop per-process usage 0.6.
    pub const WORKER_TID: i64 = 1234;
    pub const WORKER_COMM: &str = "worker";
    pub const WORKER_CPU_RATIO: f64 = 0.6;
    /// `logger` (tid 1300) runs on CPU 1 for 200 ms: 0.2.
    pub const LOGGER_TID: i64 = 1300;
    pub const LOGGER_COMM: &str = "logger";
    pub const LOGGER_CPU_RATIO: f64 = 0.2;
    /// Per-CPU usage (CPU 0, CPU 1) and total (their mean).
    pub const CPU_RATIOS: [f64; 2] = [0.6, 0.2];
    pub const TOTAL_CPU_RATIO: f64 = 0.4;
    /// iousagetop: worker reads 2 x 4096 bytes from fd 3 (/data/input.bin, state dump fd,
    /// counted as "unknown" type) and writes 1000 bytes to fd 5 (/data/out.bin, opened by
    /// openat, counted as "disk"); logger writes 512 bytes to fd 4 (/var/log/app.log).
    pub const WORKER_READ_BYTES: u64 = 8192;
    pub const WORKER_WRITE_BYTES: u64 = 1000;
    pub const LOGGER_WRITE_BYTES: u64 = 512;
    pub const INPUT_FILE: &str = "/data/input.bin";
    pub const OUTPUT_FILE: &str = "/data/out.bin";
    pub const LOG_FILE: &str = "/var/log/app.log";
    /// One block read of 8 sectors (4096 bytes) on sda taking 500 us.
    pub const DISK: &str = "sda";
    pub const BLOCK_READ_BYTES: u64 = 4096;
    pub const DISK_SECTORS: u64 = 8;
    pub const DISK_LATENCY_NS: u64 = 500_000;
    /// iolatencystats "Read": 2 calls, 1 ms and 3 ms: min 1 ms, avg 2 ms, max 3 ms.
    pub const READ_LATENCIES_NS: [u64; 2] = [1_000_000, 3_000_000];
    /// "Write": 2 calls (worker 2 ms, logger 3 ms); "Open": 1 call, 10 us.
    pub const WRITE_LATENCIES_NS: [u64; 2] = [2_000_000, 3_000_000];
    pub const OPEN_LATENCY_NS: u64 = 10_000;
}

impl KernelTraceSpec {
    /// A 1 s, 2-CPU trace with known figures, listed in [`mod@reference`]; identical to
    /// `gen_kernel_trace.py --example`.
    pub fn reference() -> Self {
        use reference::*;
        let ms = |n: u64| n * 1_000_000;
        let syscall = |cpu, tid, name: &str, start_ns, end_ns, ret| KSyscall {
            cpu,
            tid,
            name: name.to_string(),
            start_ns,
            end_ns,
            ret,
            fd: None,
            count: None,
            filename: None,
            pos: None,
        };
        KernelTraceSpec {
            duration_ns: DURATION_NS,
            cpus: 2,
            hostname: Some("tracevisor-gen".to_string()),
            clock_offset_s: None,
            processes: vec![
                KProcess {
                    tid: WORKER_TID,
                    pid: WORKER_TID,
                    comm: WORKER_COMM.to_string(),
                    prio: Some(20),
                },
                KProcess {
                    tid: LOGGER_TID,
                    pid: LOGGER_TID,
                    comm: LOGGER_COMM.to_string(),
                    prio: Some(20),
                },
            ],
            files: vec![
                KFile {
                    pid: WORKER_TID,
                    fd: 3,
                    filename: INPUT_FILE.to_string(),
                },
                KFile {
                    pid: LOGGER_TID,
                    fd: 4,
                    filename: LOG_FILE.to_string(),
                },
            ],
            disks: vec![KDisk {
                dev: 8 << 20,
                diskname: DISK.to_string(),
            }],
            runs: vec![
                KRun {
                    cpu: 0,
                    tid: WORKER_TID,
                    start_ns: 0,
                    end_ns: ms(600),
                },
                KRun {
                    cpu: 1,
                    tid: LOGGER_TID,
                    start_ns: ms(100),
                    end_ns: ms(300),
                },
            ],
            syscalls: vec![
                KSyscall {
                    fd: Some(3),
                    count: Some(4096),
                    ..syscall(0, WORKER_TID, "read", ms(100), ms(101), 4096)
                },
                KSyscall {
                    fd: Some(3),
                    count: Some(4096),
                    ..syscall(0, WORKER_TID, "read", ms(200), ms(203), 4096)
                },
                KSyscall {
                    filename: Some(OUTPUT_FILE.to_string()),
                    ..syscall(
                        0,
                        WORKER_TID,
                        "openat",
                        ms(300),
                        ms(300) + OPEN_LATENCY_NS,
                        5,
                    )
                },
                KSyscall {
                    fd: Some(5),
                    count: Some(WORKER_WRITE_BYTES),
                    ..syscall(0, WORKER_TID, "write", ms(310), ms(312), 1000)
                },
                KSyscall {
                    fd: Some(5),
                    ..syscall(0, WORKER_TID, "close", ms(320), ms(320) + 5_000, 0)
                },
                KSyscall {
                    fd: Some(4),
                    count: Some(LOGGER_WRITE_BYTES),
                    ..syscall(1, LOGGER_TID, "write", ms(150), ms(153), 512)
                },
            ],
            block_requests: vec![KBlockRequest {
                cpu: 0,
                tid: WORKER_TID,
                dev: 8 << 20,
                sector: 2048,
                nr_sector: DISK_SECTORS,
                write: false,
                issue_ns: ms(100) + 200_000,
                complete_ns: ms(100) + 200_000 + DISK_LATENCY_NS,
            }],
        }
    }
}

/// Write `spec` as a CTF kernel trace under `dir` (in `dir/trace/kernel`) with
/// tests/fixtures/gen_kernel_trace.py run by `/usr/bin/python3`; returns `dir/trace`, the
/// path to give to `lttng-*-mi`.
pub fn gen_kernel_trace(dir: &Path, spec: &KernelTraceSpec) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join("gen_kernel_trace.py");
    std::fs::write(&script, GEN_KERNEL_TRACE_PY)?;
    let spec_path = dir.join("kernel-trace-spec.json");
    let mut f = std::fs::File::create(&spec_path)?;
    f.write_all(serde_json::to_string_pretty(spec)?.as_bytes())?;
    drop(f);
    let trace = dir.join("trace");
    run_tool_ok(
        crate::skip::system_python(),
        &[script.as_os_str(), spec_path.as_os_str(), trace.as_os_str()],
        Duration::from_secs(60),
    )
    .context("gen_kernel_trace.py failed")?;
    if !trace.join("kernel").join("metadata").is_file() {
        bail!(
            "gen_kernel_trace.py wrote no {}/kernel/metadata",
            trace.display()
        );
    }
    Ok(trace)
}

/// The spec printed by `gen_kernel_trace.py --example`.
pub fn gen_kernel_trace_example() -> Result<KernelTraceSpec> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("gen_kernel_trace.py");
    std::fs::write(&script, GEN_KERNEL_TRACE_PY)?;
    let out = run_tool_ok(
        crate::skip::system_python(),
        &[script.as_os_str(), "--example".as_ref()],
        Duration::from_secs(30),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// Run an lttng-analyses machine-interface command (`lttng-cputop-mi`, ...) on `trace`
/// and parse its LAMI JSON; an `{"error-message": ...}` answer (exit status 255) is an error.
/// A kernel analysis of a trace without kernel events is NOT an error: `{"results": []}`.
pub fn run_analysis_mi(command: &str, trace: &Path) -> Result<serde_json::Value> {
    let out = run_tool(command, &[trace.as_os_str()], Duration::from_secs(300))?;
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).with_context(|| {
        format!(
            "{command} printed no JSON ({}): {} {}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        )
    })?;
    // LAMI 1.0 errors: {"error-message": "Error: Failed to open /x", "error-code": ...}
    if let Some(err) = doc.get("error-message").or_else(|| doc.get("error")) {
        bail!(
            "{command} {}: {}",
            trace.display(),
            err.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string())
        );
    }
    if !out.status.success() {
        bail!("{command} failed ({}): {}", out.status, out.stderr.trim());
    }
    Ok(doc)
}

/// The result tables of a LAMI document whose class is `class`, or that inherit it (tables
/// with a subtitle have `"class": {"inherit": "per-process-top", "title": "... [read]"}`).
pub fn lami_tables<'a>(doc: &'a serde_json::Value, class: &str) -> Vec<&'a serde_json::Value> {
    doc.get("results")
        .and_then(|r| r.as_array())
        .map(|tables| {
            tables
                .iter()
                .filter(|t| {
                    let c = &t["class"];
                    c.as_str() == Some(class) || c["inherit"].as_str() == Some(class)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The table of class `class` whose title ends with `[suffix]` (`"read"`, `"written"`).
pub fn lami_table<'a>(
    doc: &'a serde_json::Value,
    class: &str,
    suffix: Option<&str>,
) -> Option<&'a serde_json::Value> {
    lami_tables(doc, class).into_iter().find(|t| match suffix {
        None => true,
        Some(s) => t["class"]["title"]
            .as_str()
            .is_some_and(|title| title.ends_with(&format!("[{s}]"))),
    })
}

/// The `value` of a LAMI cell (`{"class": "ratio", "value": 0.6}` gives 0.6).
pub fn lami_number(cell: &serde_json::Value) -> Option<f64> {
    cell.get("value").and_then(|v| v.as_f64())
}

/// The first row of `table` whose first cell is a process with this tid.
pub fn lami_process_row(table: &serde_json::Value, tid: i64) -> Option<&Vec<serde_json::Value>> {
    table["data"].as_array()?.iter().find_map(|row| {
        let row = row.as_array()?;
        (row.first()?.get("tid")?.as_i64()? == tid).then_some(row)
    })
}
