//! Launches real `tracesd` agents against a test coordinator, speaks the agent protocol by hand for misbehaving or simulated agents, and makes test TLS certificates.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value as Json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracevisor_protocol::{
    codec, Capabilities, CloseReason, Frame, Hello, Message, CREDENTIAL_PREFIX, HUB_PATH,
    MAX_FRAME_BYTES, PROTOCOL_VERSION, PROTOCOL_VERSION_HEADER,
};

use crate::coordinator::{binary, Coordinator};

/// A running `tracesd` process with its own `--hostname`.
pub struct Agent {
    child: Child,
    /// The hostname it registers under.
    pub hostname: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `tracesd --coordinator URL --hostname NAME` with the host's credential in
    /// `TRACESD_CREDENTIAL`, enrolled with `token` ([`credential`]).
    pub fn start(coordinator: &str, token: &str, hostname: &str) -> Result<Agent> {
        Self::start_with(coordinator, token, hostname, &[])
    }

    /// Starts `tracesd` with extra flags (e.g. `--ca-cert FILE`, also used to enroll). When
    /// enrollment fails (a wrong token, an untrusted certificate), the agent starts with a
    /// credential the coordinator does not know, as a host that never enrolled would, so a
    /// test sees how it is refused.
    pub fn start_with(
        coordinator: &str,
        token: &str,
        hostname: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        let enroll_flags: Vec<&str> = extra
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                matches!(**f, "--ca-cert" | "--insecure-ws")
                    || (*i > 0 && extra[i - 1] == "--ca-cert")
            })
            .map(|(_, f)| *f)
            .collect();
        let credential = match credential(coordinator, token, hostname, &enroll_flags) {
            Ok(credential) => credential,
            Err(error) => {
                eprintln!("[harness] enrolling {hostname} failed ({error:#}); starting it with an unknown credential");
                format!("{CREDENTIAL_PREFIX}{:016x}_{:064x}", 0, 0)
            }
        };
        let mut cmd = Command::new(binary("tracesd")?);
        cmd.arg("--coordinator")
            .arg(coordinator)
            .arg("--hostname")
            .arg(hostname)
            .args(extra);
        if let Some(control) = crate::lttng_control() {
            cmd.arg("--lttng-control").arg(control);
        }
        // The credential stays out of the process list.
        Self::spawn(cmd, hostname, Some(&credential))
    }

    /// Spawns `cmd` (a `tracesd` command line) with only `credential` (if any) and the log
    /// settings from the `TRACESD_*` environment, collecting its output.
    fn spawn(mut cmd: Command, hostname: &str, credential: Option<&str>) -> Result<Agent> {
        for var in [
            "TRACESD_COORDINATOR",
            "TRACESD_HOSTNAME",
            "TRACESD_CA_CERT",
            "TRACESD_CONFIG",
            "TRACESD_TOKEN",
            "TRACESD_CREDENTIAL",
        ] {
            cmd.env_remove(var);
        }
        if let Some(credential) = credential {
            cmd.env("TRACESD_CREDENTIAL", credential);
        }
        cmd.env("TRACESD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning tracesd")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        collect_lines(stdout, format!("[tracesd {hostname}]"), logs.clone());
        collect_lines(stderr, format!("[tracesd {hostname}]"), logs.clone());
        let agent = Agent {
            child,
            hostname: hostname.to_owned(),
            logs,
        };
        agent.check_lttng_control();
        Ok(agent)
    }

    /// Under [`crate::with_lttng_control`], waits for the agent's first capability detection
    /// (made before each link, whatever the coordinator says) and checks that it drives LTTng
    /// the way the test asked: `liblttng-ctl 2.x` for `library`, `lttng CLI` for `cli`.
    fn check_lttng_control(&self) {
        let Some(control) = crate::lttng_control() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(line) = self.logs.lock().ok().and_then(|l| {
                l.iter()
                    .find(|l| l.contains("capabilities detected"))
                    .cloned()
            }) {
                let said = line
                    .split("lttng_control=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default();
                assert!(
                    is_lttng_control(control, said),
                    "{}: the test asked for {control}, the agent said: {line}",
                    self.hostname
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: no capability detection within 30 s; log:\n{}",
            self.hostname,
            self.logs()
        );
    }

    /// Starts `tracesd --config FILE` (a file `tracesd enroll` wrote) as `hostname`'s agent,
    /// nothing else given.
    pub fn start_configured(config: &Path, hostname: &str) -> Result<Agent> {
        let mut cmd = Command::new(binary("tracesd")?);
        cmd.arg("--config").arg(config);
        if let Some(control) = crate::lttng_control() {
            cmd.arg("--lttng-control").arg(control);
        }
        Self::spawn(cmd, hostname, None)
    }

    /// The log lines printed so far (ANSI colours removed).
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .map(|l| l.iter().filter(|line| line.contains(needle)).count())
            .unwrap_or_default()
    }

    /// Whether a log line satisfies `pred`.
    pub fn has_log_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.logs
            .lock()
            .map(|l| l.iter().any(|line| pred(line)))
            .unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: the TCP connection is closed by the kernel, nothing is sent.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP: the process stays, its TCP connection stays open, but it answers nothing
    /// (a hung host or a half-dead link, as the coordinator sees it).
    pub fn freeze(&self) -> Result<()> {
        signal(self.child.id(), "STOP")
    }

    /// SIGCONT after [`Agent::freeze`].
    pub fn thaw(&self) -> Result<()> {
        signal(self.child.id(), "CONT")
    }

    /// SIGTERM, then waits for the exit and returns its status code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        signal(self.child.id(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("tracesd did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// Reads lines from a child's pipe into `sink` (and echoes them for `cargo test` output).
fn collect_lines(pipe: impl Read + Send + 'static, prefix: String, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let line = strip_ansi(&line);
            eprintln!("{prefix} {line}");
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `cond` every 100 ms until it holds, or fails naming `what` after `timeout`.
pub async fn eventually(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port that was free a moment ago (for a coordinator that must restart on the
/// same address).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The hub URL of a coordinator: `ws://ADDR/trace/api/v1.0/agents` (or `wss://`).
pub fn hub_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    format!("{scheme}://{addr}{HUB_PATH}")
}

/// Credentials already issued, by coordinator URL, enrollment token and hostname: enrolling a
/// host again revokes its earlier credential, so a test's second link or agent for a hostname
/// reuses the first one's.
static CREDENTIALS: Mutex<std::collections::BTreeMap<(String, String, String), String>> =
    Mutex::new(std::collections::BTreeMap::new());

/// The credential of `hostname` on the coordinator at `coordinator` (a hub URL), obtained the
/// first time with the real `tracesd enroll` (given `flags` such as `--ca-cert FILE`), then
/// reused.
pub fn credential(
    coordinator: &str,
    token: &str,
    hostname: &str,
    flags: &[&str],
) -> Result<String> {
    if tracevisor_protocol::split_credential(token).is_some() {
        return Ok(token.to_owned());
    }
    let key = (
        coordinator.to_owned(),
        token.to_owned(),
        hostname.to_owned(),
    );
    // One enrollment at a time: two of the same host at once would revoke each other.
    static ENROLLING: Mutex<()> = Mutex::new(());
    let _turn = ENROLLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = CREDENTIALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(known.clone());
    }
    let dir = crate::temp_dir("tv-enroll-");
    let config = dir.path().join("tracesd.toml");
    let out = Command::new(binary("tracesd")?)
        .args([
            "enroll",
            "--no-enable",
            "--coordinator",
            coordinator,
            "--hostname",
            hostname,
        ])
        .args(flags)
        .arg("--config")
        .arg(&config)
        .env("TRACESD_TOKEN", token)
        .env("TRACESD_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .context("running tracesd enroll")?;
    if !out.status.success() {
        bail!(
            "tracesd enroll failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&config)?;
    let file: toml::Table = toml::from_str(&text)?;
    let credential = file
        .get("credential")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("tracesd enroll wrote no credential:\n{text}"))?
        .to_owned();
    CREDENTIALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, credential.clone());
    Ok(credential)
}

/// The enrollment token, as `tracevisor agent-token --data-dir DIR` prints it.
pub fn agent_token(data_dir: &Path) -> Result<String> {
    let out = Command::new(binary("tracevisor")?)
        .arg("agent-token")
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TRACEVISOR_AGENT_TOKEN")
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "tracevisor agent-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    if token.is_empty() {
        bail!("tracevisor agent-token printed nothing");
    }
    Ok(token)
}

/// `GET /clients` as a list.
pub async fn clients(c: &Coordinator) -> Result<Vec<Json>> {
    let (status, body) = c.get("/clients").await?;
    if !status.is_success() {
        bail!("GET /clients answered {status}: {body}");
    }
    match body {
        Json::Array(list) => Ok(list),
        other => bail!("GET /clients is not a list: {other}"),
    }
}

/// Polls `GET /clients` every 200 ms until `pred` holds for the list; returns that list.
pub async fn wait_clients(
    c: &Coordinator,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Json]) -> bool,
) -> Result<Vec<Json>> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        match clients(c).await {
            Ok(list) if pred(&list) => return Ok(list),
            Ok(list) => last = list,
            Err(e) => eprintln!("GET /clients failed while waiting for {what}: {e:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {} s waiting for {what}; last GET /clients: {}",
                timeout.as_secs(),
                Json::Array(last)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The client record of `hostname` in a `GET /clients` list.
pub fn client<'a>(list: &'a [Json], hostname: &str) -> Option<&'a Json> {
    list.iter().find(|c| c["hostname"] == hostname)
}

/// Whether `hostname`'s agent shows `"connected": true`.
pub fn is_connected(list: &[Json], hostname: &str) -> bool {
    client(list, hostname).is_some_and(|c| c["agent"]["connected"] == true)
}

/// Whether `hostname` has had an agent that shows `"connected": false` now.
pub fn is_disconnected(list: &[Json], hostname: &str) -> bool {
    client(list, hostname).is_some_and(|c| c["agent"]["connected"] == false)
}

/// The `Hello` of a simulated agent: the real message, with empty capabilities.
pub fn simulated_hello(hostname: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        hostname: hostname.to_owned(),
        addresses: Vec::new(),
        agent_version: "0.0.0-simulated".into(),
        capabilities: Capabilities::default(),
        running_jobs: Vec::new(),
    }
}

/// The answer to an upgrade request made by hand.
pub enum Upgrade {
    /// The coordinator upgraded the connection.
    Accepted(Box<RawLink>),
    /// It answered with an HTTP status instead.
    Refused {
        /// The HTTP status code.
        status: u16,
        /// The response body.
        body: String,
    },
}

/// How a hand-made link ended.
#[derive(Debug)]
pub enum CutOff {
    /// The coordinator sent `Message::Close` (and then closed, or not yet).
    Closed {
        /// Its reason.
        reason: CloseReason,
        /// Its message.
        message: String,
    },
    /// A WebSocket close frame without a protocol `Close` before it.
    CloseFrame(String),
    /// The connection ended (EOF, reset or a transport error).
    Ended(String),
}

/// What [`RawLink::recv`] got.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Received {
    /// A protocol frame.
    Frame(Message),
    /// A binary message that does not decode.
    Undecodable(String),
    /// A WebSocket close frame.
    CloseFrame(String),
    /// Text, ping or pong.
    Other(String),
    /// The connection ended or failed.
    Ended(String),
    /// Nothing within the timeout.
    Timeout,
}

/// A WebSocket link to the hub driven by hand: sends whatever a test wants, good or bad.
pub struct RawLink {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

impl RawLink {
    /// Opens an upgrade to `url` with an optional bearer token and protocol-version header
    /// (the agents' limits on message and frame size).
    pub async fn upgrade(url: &str, token: Option<&str>, version: Option<&str>) -> Result<Upgrade> {
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        if let Some(version) = version {
            request
                .headers_mut()
                .insert(PROTOCOL_VERSION_HEADER, HeaderValue::from_str(version)?);
        }
        // Large enough to send an oversized message; incoming ones are bounded like an agent's.
        let config = tracesd::link::websocket_config().max_message_size(Some(4 * MAX_FRAME_BYTES));
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        match tokio::time::timeout(Duration::from_secs(60), connecting).await {
            Err(_) => bail!("upgrade to {url} timed out"),
            Ok(Ok((ws, _))) => Ok(Upgrade::Accepted(Box::new(RawLink { ws }))),
            Ok(Err(WsError::Http(response))) => Ok(Upgrade::Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Ok(Err(e)) => Err(e).with_context(|| format!("upgrade to {url}")),
        }
    }

    /// Opens a link as the agent of `hostname`: with its credential (enrolled with `token` the
    /// first time, see [`credential`]) and the current protocol version; fails if refused.
    /// Nothing is sent.
    pub async fn agent(url: &str, token: &str, hostname: &str) -> Result<RawLink> {
        let credential = Self::credential(url, token, hostname).await?;
        Self::connect(url, &credential).await
    }

    /// The credential of `hostname`, enrolled over the protocol (an `Enroll` frame on a link
    /// opened with the enrollment token) the first time, then reused (see [`credential`]).
    pub async fn credential(url: &str, token: &str, hostname: &str) -> Result<String> {
        static ENROLLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let key = (url.to_owned(), token.to_owned(), hostname.to_owned());
        let _turn = ENROLLING.lock().await;
        if let Some(known) = CREDENTIALS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(known.clone());
        }
        let credential = match Self::enroll(url, token, hostname).await? {
            Message::Enrolled { credential, .. } => credential,
            other => bail!("enrolling {hostname} failed: {other:?}"),
        };
        CREDENTIALS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, credential.clone());
        Ok(credential)
    }

    /// Opens an enrollment link with `token`, sends `Enroll` for `hostname` and returns the
    /// answer (`Enrolled`, or the `Close` that refused it).
    pub async fn enroll(url: &str, token: &str, hostname: &str) -> Result<Message> {
        let mut link = Self::connect(url, token).await?;
        link.send(Message::Enroll {
            hostname: hostname.to_owned(),
        })
        .await?;
        link.recv_until("an answer to enroll", |m| {
            matches!(m, Message::Enrolled { .. } | Message::Close { .. })
        })
        .await
    }

    /// Opens a link with the token and the current protocol version; fails if refused.
    pub async fn connect(url: &str, token: &str) -> Result<RawLink> {
        match Self::upgrade(url, Some(token), Some(&PROTOCOL_VERSION.to_string())).await? {
            Upgrade::Accepted(link) => Ok(*link),
            Upgrade::Refused { status, body } => bail!("upgrade refused: HTTP {status}: {body}"),
        }
    }

    /// Sends one protocol message as a binary frame.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        let bytes = codec::encode(&Frame::new(message))?;
        self.send_ws(WsMessage::binary(bytes)).await
    }

    /// Sends any WebSocket message.
    pub async fn send_ws(&mut self, message: WsMessage) -> Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Receives the next message, or [`Received::Timeout`].
    pub async fn recv(&mut self, timeout: Duration) -> Received {
        match tokio::time::timeout(timeout, self.ws.next()).await {
            Err(_) => Received::Timeout,
            Ok(None) => Received::Ended("end of stream".into()),
            Ok(Some(Err(e))) => Received::Ended(e.to_string()),
            Ok(Some(Ok(WsMessage::Binary(bytes)))) => match codec::decode(&bytes) {
                Ok(frame) => Received::Frame(frame.body),
                Err(e) => Received::Undecodable(e.to_string()),
            },
            Ok(Some(Ok(WsMessage::Close(frame)))) => Received::CloseFrame(
                frame
                    .map(|f| format!("{}: {}", u16::from(f.code), f.reason))
                    .unwrap_or_default(),
            ),
            Ok(Some(Ok(other))) => Received::Other(format!("{other:?}")),
        }
    }

    /// Sends `Hello` for `hostname` and waits for `HelloAck`; returns its agent id and
    /// heartbeat interval in ms.
    pub async fn hello(&mut self, hostname: &str) -> Result<(u64, u32)> {
        self.send(Message::Hello(simulated_hello(hostname))).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Received::Frame(Message::HelloAck {
                    agent_id,
                    heartbeat_interval_ms,
                    ..
                }) => return Ok((agent_id, heartbeat_interval_ms)),
                Received::Frame(Message::Heartbeat { seq }) => {
                    self.send(Message::HeartbeatAck { seq }).await?;
                }
                Received::Other(_) => {}
                other => bail!("no hello-ack for {hostname}: {other:?}"),
            }
        }
    }

    /// Reads frames, answering heartbeats, until one matches `pred` (within the harness's
    /// patience); fails naming `what` otherwise.
    pub async fn recv_until(
        &mut self,
        what: &str,
        pred: impl Fn(&Message) -> bool,
    ) -> Result<Message> {
        let deadline = Instant::now() + crate::jobs_support::PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Received::Frame(Message::Heartbeat { seq }) => {
                    self.send(Message::HeartbeatAck { seq }).await?;
                }
                Received::Frame(m) if pred(&m) => return Ok(m),
                Received::Frame(_) | Received::Other(_) => {}
                other => bail!("no {what}: {other:?}"),
            }
        }
    }

    /// Reads until the coordinator cuts the link off (skipping heartbeats, not answering
    /// them); fails if that does not happen within `timeout`.
    pub async fn wait_cut_off(&mut self, timeout: Duration) -> Result<CutOff> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Received::Frame(Message::Close { reason, message }) => {
                    return Ok(CutOff::Closed { reason, message })
                }
                Received::Frame(
                    Message::Heartbeat { .. }
                    | Message::HeartbeatAck { .. }
                    | Message::HelloAck { .. },
                )
                | Received::Other(_) => {}
                Received::Frame(other) => bail!("unexpected {other:?} while waiting to be cut off"),
                Received::Undecodable(e) => bail!("undecodable frame from the coordinator: {e}"),
                Received::CloseFrame(detail) => return Ok(CutOff::CloseFrame(detail)),
                Received::Ended(detail) => return Ok(CutOff::Ended(detail)),
                Received::Timeout => {
                    bail!("the link was not cut off within {} s", timeout.as_secs())
                }
            }
        }
    }

    /// Behaves like a well-mannered agent for `duration` after `HelloAck`: answers heartbeats
    /// and sends its own every `interval`, the first one interval from now (as `tracesd`
    /// does); fails if the coordinator closes the link meanwhile. Returns how many heartbeats
    /// it answered.
    pub async fn keep_alive(&mut self, duration: Duration, interval: Duration) -> Result<u64> {
        let end = Instant::now() + duration;
        let mut next_beat = Instant::now() + interval;
        let mut seq = 0;
        let mut answered = 0;
        while Instant::now() < end {
            if Instant::now() >= next_beat {
                self.send(Message::Heartbeat { seq }).await?;
                seq += 1;
                next_beat += interval;
            }
            let wait = next_beat
                .min(end)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            match self.recv(wait).await {
                Received::Frame(Message::Heartbeat { seq }) => {
                    self.send(Message::HeartbeatAck { seq }).await?;
                    answered += 1;
                }
                Received::Frame(Message::HeartbeatAck { .. })
                | Received::Timeout
                | Received::Other(_) => {}
                other => bail!("link ended while it should stay: {other:?}"),
            }
        }
        Ok(answered)
    }
}

/// A certificate authority made at test time.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<TestCa> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.pem)?;
        Ok(())
    }

    /// Issues a server certificate for `127.0.0.1` and `localhost`; writes `cert.pem` and
    /// `key.pem` into `dir` and returns their paths.
    pub fn server_cert(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// Whether `said`, a host's `lttng_control` capability, is the back end `control` names:
/// `liblttng-ctl 2.x` for `library`, exactly `lttng CLI` (no fallback reason) for `cli`.
fn is_lttng_control(control: &str, said: &str) -> bool {
    match control {
        "library" => said.starts_with("liblttng-ctl 2."),
        _ => said == "lttng CLI",
    }
}

/// When the test runs under [`crate::with_lttng_control`], checks that `hostname`'s agent says
/// (in its capabilities, `GET /clients`) it drives LTTng through that back end: `liblttng-ctl
/// 2.x` for `library`, `lttng CLI` for `cli`. A library that loaded but fell back to the CLI
/// (a version mismatch) fails the check.
pub async fn assert_lttng_control(c: &Coordinator, hostname: &str) {
    let Some(control) = crate::lttng_control() else {
        return;
    };
    let list = wait_clients(
        c,
        &format!("{hostname} connected"),
        Duration::from_secs(30),
        |l| is_connected(l, hostname),
    )
    .await
    .expect("agent connected");
    let said = client(&list, hostname).expect("listed")["agent"]["capabilities"]["lttng_control"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        is_lttng_control(control, &said),
        "{hostname} drives LTTng through {said:?}, the test asked for {control}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m connected"),
            "2025  INFO connected"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
