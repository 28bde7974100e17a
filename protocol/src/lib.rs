//! Wire types and frame codec of the agent link: the only definition of what crosses it.
//!
//! # The link
//!
//! Each traced host runs the agent `tracesd`, which dials **out** to the coordinator's hub at
//! [`HUB_PATH`] (`ws://` on loopback, `wss://` otherwise) and keeps one WebSocket open. The
//! coordinator never connects to agents.
//!
//! - **Authentication** happens in the HTTP upgrade request: `Authorization: Bearer <token>`
//!   (the agent enrollment token). The coordinator answers `401` before the upgrade when the
//!   token is missing or wrong.
//! - **Version**: the agent also sends [`PROTOCOL_VERSION_HEADER`] with its [`PROTOCOL_VERSION`]
//!   in the upgrade request, so a coordinator may refuse a version it does not speak before
//!   the upgrade, with a plain-text reason. Every frame carries the version too (see [`Frame`]).
//! - **Frames**: one WebSocket *binary* message holds exactly one [`Frame`], encoded with
//!   [`codec::encode`] and decoded with [`codec::decode`] (postcard). Text messages are not part
//!   of the protocol. A frame larger than [`MAX_FRAME_BYTES`], truncated, with trailing bytes,
//!   of another version or otherwise malformed is a [`CodecError`]: the receiver sends
//!   [`Message::Close`] with [`CloseReason::ProtocolError`] (or
//!   [`CloseReason::UnsupportedVersion`]) and closes the link. Both sides set the WebSocket
//!   `max_message_size` and `max_frame_size` to [`MAX_FRAME_BYTES`].
//!
//! # Messages: who sends each, and when
//!
//! | message | sender | when |
//! |---|---|---|
//! | [`Message::Hello`] | agent | first frame after the upgrade, exactly once per link |
//! | [`Message::HelloAck`] | coordinator | answer to `Hello` once the agent is registered; the agent sends nothing but `Hello`, `HeartbeatAck` and `Close` before it |
//! | [`Message::Heartbeat`] | both | every heartbeat interval (from `HelloAck`), after `HelloAck` |
//! | [`Message::HeartbeatAck`] | both | at once, in answer to each `Heartbeat`, echoing its `seq` |
//! | [`Message::Close`] | both | just before the sender closes the WebSocket, saying why |
//! | [`Message::StartJob`] | coordinator | to run a trace job on the agent's host |
//! | [`Message::CancelJob`] | coordinator | to stop a job that has not finished |
//! | [`Message::JobProgress`] | agent | when a job changes status (started, trace running, analysis running) |
//! | [`Message::JobResult`] | agent | when a job ends, and again after every reconnect until acknowledged |
//! | [`Message::ResultAck`] | coordinator | once a `JobResult` is stored; the agent then forgets that result |
//! | [`Message::FetchTrace`] | coordinator | to stream a kept trace directory as a tar archive |
//! | [`Message::TraceStart`] | agent | first answer to `FetchTrace` when the trace can be sent: its size |
//! | [`Message::TraceChunk`] | agent | the archive's next bytes, within the credit the coordinator granted |
//! | [`Message::TraceCredit`] | coordinator | once it has passed on bytes of a fetch: that many more may be sent |
//! | [`Message::TraceEnd`] | agent | last frame of a fetch: complete, or why not (the trace is gone, refused, failed) |
//! | [`Message::CancelFetch`] | coordinator | to stop a fetch (its reader went away); the agent sends nothing more for it |
//! | [`Message::ArmRecorders`] | coordinator | after `HelloAck` and whenever the host's flight recorders change: the whole set this coordinator wants armed there |
//! | [`Message::RecordersArmed`] | agent | once it has applied an `ArmRecorders`: each recorder's state |
//!
//! # Heartbeats and liveness
//!
//! After `HelloAck`, each side sends `Heartbeat { seq }` every `heartbeat_interval_ms` (with
//! `seq` counting up from 0 on each link) and answers every `Heartbeat` it receives with
//! `HeartbeatAck { seq }`. *Any* frame received counts as a sign of life: a side that has
//! received nothing for [`DEAD_AFTER_INTERVALS`] intervals considers the link dead and drops
//! it. The agent then reconnects with capped exponential backoff and full jitter.
//!
//! # Jobs and exactly-once results
//!
//! The agent answers `StartJob` with `JobProgress` messages and one `JobResult`. The agent
//! keeps each result until the coordinator sends `ResultAck` for its job id, and sends it
//! again after every reconnect (after `HelloAck`) until then; a `StartJob` for a job id whose
//! result the agent still holds is answered with that result instead of running again. The
//! coordinator stores a result once per job id and acknowledges duplicates again. `Hello`
//! lists the jobs still running so the coordinator can keep waiting for them.
//!
//! # Fetching a trace, with flow control
//!
//! `FetchTrace { fetch_id, path, window }` asks for a kept trace: the agent refuses any path
//! that is not a Tracevisor trace directory (`tracevisor-*`) under its trace root or its
//! `relay_roots`. It answers `TraceStart` (or a `TraceEnd` with the error), then sends the
//! directory as a POSIX tar stream (entries relative to the directory, regular files and
//! directories only) in `TraceChunk`s of at most [`TRACE_CHUNK_BYTES`]. The agent never has
//! more than `window` bytes sent and not yet credited: the coordinator sends `TraceCredit`
//! as it passes bytes on to its reader, so a slow reader slows the agent and neither side
//! buffers more than the window, whatever the trace's size. A fetch ends with `TraceEnd`, or
//! `CancelFetch`, or with the link.
//!
//! # Flight recorders
//!
//! A flight recorder is a snapshot-mode LTTng session kept armed on a host
//! (`tracevisor-rec-<coordinator>-<recorder>-<host>`). `ArmRecorders` carries the complete set
//! of one coordinator's recorders for the host (its `owner` prefix): the agent creates and
//! starts those missing, keeps those armed (their buffers too), and destroys its other sessions
//! with that prefix, then answers `RecordersArmed`. The coordinator sends it after every
//! `HelloAck` when the host has recorders (so an agent restart or a host reboot re-arms them)
//! and when they change. A snapshot is a job whose [`JobSpec::snapshot_of`] names the armed
//! session: the agent records its buffers into the job's trace directory and analyses that.
//!
//! # Evolving the format
//!
//! postcard encodes structs as their fields in order and enums by variant index: **only ever
//! append** variants to the enums here, never reorder or remove them, and bump
//! [`PROTOCOL_VERSION`] for any other change (new struct fields included). The golden-bytes
//! tests in `codec` break when the encoding drifts.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod codec;

pub use codec::{decode, encode, CodecError, MAX_FRAME_BYTES};

/// The version of this protocol, carried in every [`Frame`] and in [`Message::Hello`].
///
/// History: 1, the first; 2, `JobSpec::keep_trace` (a struct field changes the encoding) and
/// the enrollment messages (`Enroll`, `Enrolled`); 3, the trace fetch messages (`FetchTrace`,
/// `TraceStart`, `TraceChunk`, `TraceCredit`, `TraceEnd`, `CancelFetch`), the flight recorder
/// messages (`ArmRecorders`, `RecordersArmed`) and `JobSpec::snapshot_of`; 4,
/// `Capabilities::lttng_control`.
pub const PROTOCOL_VERSION: u16 = 4;

/// Path of the coordinator's agent hub (the WebSocket endpoint agents dial).
pub const HUB_PATH: &str = "/trace/api/v1.0/agents";

/// Whether `host` (a name or an address, without a port; IPv6 with or without brackets) names
/// this machine's loopback: `localhost`, `*.localhost` or a loopback address. The agent allows
/// plaintext `ws://` only to such a hub; the coordinator serves unauthenticated requests only
/// for such a `Host` and lets only its own host's agent claim such a name.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a per-agent credential starts: `tvc1_<id>_<secret>`, the id being 16 hex digits
/// (shown in listings and logs) and the secret 64 (only its SHA-256 is stored). The shared
/// enrollment token never has this prefix.
pub const CREDENTIAL_PREFIX: &str = "tvc1_";

/// The id and secret of a per-agent credential, or `None` when `bearer` is not shaped as one.
pub fn split_credential(bearer: &str) -> Option<(&str, &str)> {
    let (id, secret) = bearer.strip_prefix(CREDENTIAL_PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Request header in which the agent states its [`PROTOCOL_VERSION`] during the upgrade.
pub const PROTOCOL_VERSION_HEADER: &str = "x-tracevisor-protocol";

/// A side that has received nothing for this many heartbeat intervals considers the link dead.
pub const DEAD_AFTER_INTERVALS: u32 = 3;

/// Job status: the job was accepted and is being set up (as in the REST API's `/list`).
pub const JOB_STATUS_STARTED: i8 = 1;
/// Job status: the trace is being recorded.
pub const JOB_STATUS_TRACE_RUNNING: i8 = 2;
/// Job status: the analysis runs on the recorded trace.
pub const JOB_STATUS_ANALYSIS_RUNNING: i8 = 3;

/// The envelope of every frame: the protocol version, then one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Protocol version of the sender; always [`PROTOCOL_VERSION`] for frames built here.
    pub version: u16,
    /// The message.
    pub body: Message,
}

impl Frame {
    /// A frame of the current [`PROTOCOL_VERSION`] holding `body`.
    pub fn new(body: Message) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

impl From<Message> for Frame {
    fn from(body: Message) -> Self {
        Self::new(body)
    }
}

/// Everything that can cross the link. Only ever append variants (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → coordinator, first frame of every link: who the agent is and what it can do.
    Hello(Hello),
    /// Coordinator → agent, answer to [`Message::Hello`].
    HelloAck {
        /// The coordinator's id for this agent's host (its client record id).
        agent_id: u64,
        /// How often each side sends [`Message::Heartbeat`], in milliseconds.
        heartbeat_interval_ms: u32,
        /// The coordinator's instance id: part of the names of the sessions it has the agent
        /// create (`tracevisor-<instance>-<job>-<host>`), so after a restart the agent destroys
        /// only the sessions of this coordinator's jobs.
        coordinator_id: String,
    },
    /// Both ways, every heartbeat interval.
    Heartbeat {
        /// Counts up from 0 on each link.
        seq: u64,
    },
    /// Both ways, in answer to a [`Message::Heartbeat`].
    HeartbeatAck {
        /// The `seq` of the heartbeat answered.
        seq: u64,
    },
    /// Both ways, just before the sender closes the link.
    Close {
        /// Why the link is closed.
        reason: CloseReason,
        /// Human-readable detail, for logs.
        message: String,
    },
    /// Coordinator → agent: run a trace job.
    StartJob {
        /// The coordinator's job id, unique across the fleet.
        job_id: u64,
        /// What to trace and analyse.
        spec: JobSpec,
    },
    /// Coordinator → agent: stop a job that has not finished; the agent still sends its result.
    CancelJob {
        /// The job to cancel.
        job_id: u64,
    },
    /// Coordinator → agent: the result of this job is stored; the agent may forget it.
    ResultAck {
        /// The job whose result was stored.
        job_id: u64,
    },
    /// Agent → coordinator: a job changed status.
    JobProgress {
        /// The job.
        job_id: u64,
        /// [`JOB_STATUS_STARTED`], [`JOB_STATUS_TRACE_RUNNING`] or [`JOB_STATUS_ANALYSIS_RUNNING`].
        status: i8,
        /// Human-readable detail.
        message: String,
    },
    /// Agent → coordinator: a job ended. Sent again after each reconnect until acknowledged.
    JobResult {
        /// The job.
        job_id: u64,
        /// Its result or the step that failed.
        outcome: JobOutcome,
    },
    /// Agent → coordinator, first and only frame of an enrollment link (one authenticated
    /// with the enrollment token, by `tracesd enroll`): asks for this host's own credential.
    Enroll {
        /// The name the host registers under.
        hostname: String,
    },
    /// Coordinator → agent, answer to [`Message::Enroll`], sent once the credential is stored;
    /// the coordinator then closes the link.
    Enrolled {
        /// The hostname the credential is bound to.
        hostname: String,
        /// The host's credential ([`CREDENTIAL_PREFIX`]`<id>_<secret>`): links authenticate
        /// with it as `Authorization: Bearer <credential>`.
        credential: String,
    },
    /// Coordinator → agent: send the trace directory at `path` as a tar stream (see the
    /// crate docs). Added in version 3.
    FetchTrace {
        /// Chosen by the coordinator, unique on the link.
        fetch_id: u64,
        /// The trace directory, as the job's result gave it.
        path: String,
        /// Bytes the agent may send before the first [`Message::TraceCredit`].
        window: u32,
    },
    /// Agent → coordinator: the trace is there and is being sent.
    TraceStart {
        fetch_id: u64,
        /// The size of its files, in bytes (the archive adds headers).
        bytes: u64,
        /// How many files it holds.
        files: u32,
    },
    /// Agent → coordinator: the next bytes of the tar stream, at most [`TRACE_CHUNK_BYTES`].
    TraceChunk {
        fetch_id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Coordinator → agent: `bytes` more may be sent for this fetch.
    TraceCredit { fetch_id: u64, bytes: u32 },
    /// Agent → coordinator: the last frame of a fetch; `error` is `None` when the whole
    /// archive was sent.
    TraceEnd {
        fetch_id: u64,
        error: Option<FetchError>,
    },
    /// Coordinator → agent: stop sending this fetch.
    CancelFetch { fetch_id: u64 },
    /// Coordinator → agent: the flight recorders this coordinator wants armed on the host (see
    /// the crate docs). Added in version 3.
    ArmRecorders {
        /// Prefix of this coordinator's recorder sessions (`tracevisor-rec-<coordinator>-`):
        /// the agent's sessions with it that are not in `recorders` are destroyed.
        owner: String,
        recorders: Vec<RecorderSpec>,
    },
    /// Agent → coordinator: the state of each recorder of the last `ArmRecorders`.
    RecordersArmed { states: Vec<RecorderState> },
}

/// Prefix of every flight recorder session.
pub const RECORDER_PREFIX: &str = "tracevisor-rec-";

/// A flight recorder to keep armed on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderSpec {
    /// The snapshot-mode session (starts with [`RECORDER_PREFIX`] and the `owner`).
    pub session_name: String,
    /// Kernel events to record (empty: no kernel channel).
    pub kernel_events: Vec<String>,
    /// Whether to record all system calls.
    pub syscalls: bool,
    /// Userspace events to record (empty: no userspace channel).
    pub userspace_events: Vec<String>,
    /// Ring buffer size of each channel, per CPU, in bytes.
    pub buffer_bytes: u64,
}

/// One recorder's state on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderState {
    pub session_name: String,
    /// `None`: armed (recording into its ring buffer); else why it is not.
    pub error: Option<String>,
}

/// The largest [`Message::TraceChunk`] payload.
pub const TRACE_CHUNK_BYTES: usize = 1024 * 1024;

/// Why a trace cannot be (or was not completely) sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchError {
    /// The trace is not there (any more): deleted after its retention, beyond the quota, or
    /// by hand. Otherwise the fetch was refused or failed.
    pub gone: bool,
    /// What happened, for the user.
    pub message: String,
}

impl Message {
    /// A short name of the message kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAck { .. } => "hello-ack",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat-ack",
            Message::Close { .. } => "close",
            Message::StartJob { .. } => "start-job",
            Message::CancelJob { .. } => "cancel-job",
            Message::ResultAck { .. } => "result-ack",
            Message::JobProgress { .. } => "job-progress",
            Message::JobResult { .. } => "job-result",
            Message::Enroll { .. } => "enroll",
            Message::Enrolled { .. } => "enrolled",
            Message::FetchTrace { .. } => "fetch-trace",
            Message::TraceStart { .. } => "trace-start",
            Message::TraceChunk { .. } => "trace-chunk",
            Message::TraceCredit { .. } => "trace-credit",
            Message::TraceEnd { .. } => "trace-end",
            Message::CancelFetch { .. } => "cancel-fetch",
            Message::ArmRecorders { .. } => "arm-recorders",
            Message::RecordersArmed { .. } => "recorders-armed",
        }
    }
}

/// The first frame of every link, sent by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the agent speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// The host's name (a DNS name), the key under which the coordinator registers it.
    pub hostname: String,
    /// The host's non-loopback IP addresses.
    pub addresses: Vec<IpAddr>,
    /// The agent's version (its crate version, e.g. `0.1.0`).
    pub agent_version: String,
    /// What the host can trace and analyse, detected when the link opens.
    pub capabilities: Capabilities,
    /// Jobs the agent is still running (after a reconnect); empty on a fresh start.
    pub running_jobs: Vec<u64>,
}

/// What a host can trace and analyse, as detected by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The `lttng` command's version (e.g. `2.13.9`), `None` when `lttng` is not installed.
    pub lttng_version: Option<String>,
    /// Whether an `lttng-sessiond` answered.
    pub sessiond_running: bool,
    /// Whether kernel tracing is available (needs lttng-modules).
    pub kernel_tracer: bool,
    /// Why kernel tracing is not available, when it is not.
    pub kernel_tracer_error: Option<String>,
    /// Whether userspace tracing (lttng-ust) is available.
    pub userspace_tracer: bool,
    /// Why userspace tracing is not available, when it is not.
    pub userspace_tracer_error: Option<String>,
    /// Whether `babeltrace2` is in the agent's `PATH`.
    pub babeltrace2: bool,
    /// The LAMI analysis commands (`lttng-*-mi`, e.g. `lttng-cputop-mi`) in the agent's `PATH`,
    /// sorted.
    pub analyses: Vec<String>,
    /// How the agent drives LTTng now: `liblttng-ctl 2.13`, or `lttng CLI` with the reason the
    /// library is not used in parentheses.
    pub lttng_control: Option<String>,
}

/// Why a link is closed, carried by [`Message::Close`]. Only ever append variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CloseReason {
    /// The sender is shutting down.
    Shutdown,
    /// A newer link for the same hostname replaced this one (coordinator → agent).
    Replaced,
    /// The sender received a frame it could not decode or did not expect.
    ProtocolError,
    /// The sender does not speak the peer's protocol version.
    UnsupportedVersion,
    /// The agent is not (or no longer) allowed to connect (coordinator → agent).
    Unauthorized,
    /// The sender received nothing for [`DEAD_AFTER_INTERVALS`] heartbeat intervals.
    HeartbeatTimeout,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::Replaced => "replaced",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::UnsupportedVersion => "unsupported version",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
        })
    }
}

/// What a trace job does, sent with [`Message::StartJob`]. The agent validates it again
/// before running anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The LTTng session name (the coordinator names sessions so an agent can find and
    /// destroy the ones it owns after a crash).
    pub session_name: String,
    /// The analysis type name as in the REST API (e.g. `cputop`), for logs and results.
    pub analysis: String,
    /// Kernel events to enable (empty: no kernel channel).
    pub kernel_events: Vec<String>,
    /// Whether to enable all system calls in the kernel domain.
    pub syscalls: bool,
    /// Userspace (lttng-ust) events to enable (empty: no userspace channel).
    pub userspace_events: Vec<String>,
    /// How long to record, in milliseconds.
    pub duration_ms: u64,
    /// Where the trace is written.
    pub output: TraceOutput,
    /// Analysis commands as argv templates, run one after the other on the trace; the
    /// argument `{trace}` (or any argument containing it) is replaced by the trace path.
    pub analysis_commands: Vec<Vec<String>>,
    /// Whether the agent runs the analysis itself (false when another host analyses the
    /// trace, e.g. on the relay).
    pub run_analysis: bool,
    /// How the result is produced from the trace.
    pub summary: Summary,
    /// When set, nothing is traced: the agent finds the trace recorded by another host's job
    /// (on a relay, or at a path) and only analyses it.
    pub analysis_only: Option<TraceLocator>,
    /// Keep the trace once analysed. When false, the trace this job recorded locally, or the
    /// relay session directory it analysed, is deleted as soon as the analysis is done
    /// (a trace named by [`TraceLocator::Path`] is never deleted). Added in version 2.
    pub keep_trace: bool,
    /// When set, nothing new is traced: the agent records a snapshot of this armed flight
    /// recorder session into the job's trace directory and analyses it (`duration_ms` and
    /// `output` are not used). Added in version 3.
    pub snapshot_of: Option<String>,
}

/// How a job's result is produced. Only ever append variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Summary {
    /// Run `analysis_commands`; each prints LAMI 1.0 JSON.
    Lami,
    /// Summarise a userspace trace with babeltrace2: events per name and per process.
    Ust,
}

/// Where an analysis-only job finds its trace. Only ever append variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceLocator {
    /// A trace directory on the analysing host.
    Path(String),
    /// The directory an `lttng-relayd` wrote for the job's session, searched as
    /// `ROOT/<traced host>/<session name>-<date>` under each root (the relayd `--output`).
    RelaySession {
        /// The relay's output directories to search.
        roots: Vec<String>,
    },
}

/// Where a trace is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceOutput {
    /// On the traced host, in a directory the agent chooses.
    Local,
    /// Streamed to an `lttng-relayd` (`net://host:ctrl_port:data_port`).
    Relay {
        /// The relay's hostname or IP address.
        host: String,
        /// Its control port (LTTng's default is 5342).
        ctrl_port: u16,
        /// Its data port (LTTng's default is 5343).
        data_port: u16,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// The job completed; `result_json` is the analysis output (LAMI JSON for kernel analyses,
    /// an event summary for userspace traces) as one JSON document.
    Ok {
        /// The result, as JSON text.
        result_json: String,
    },
    /// The job failed at `step` (e.g. `create`, `enable-event`, `start`, `analysis`).
    Err {
        /// The step that failed.
        step: String,
        /// Why, including the failing command's stderr where there is one.
        message: String,
    },
}
