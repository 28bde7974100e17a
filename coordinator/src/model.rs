//! The typed job model: statuses, failure steps, stored job records and fleet entries.
//!
//! These are the types the store reads and writes, the job engine works on and the REST API
//! and the CLI show. On the wire they keep the seed's shape: statuses are the numbers 1, 2, 3,
//! 4 and -1, steps are kebab-case strings, a job has both `id` and `jobid`. Nothing else in
//! the coordinator spells a status number or a step string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

/// Where a job is in its life, as the seed's `/list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobStatus {
    /// Accepted, the session is being set up (1).
    Started,
    /// The trace is recording (2).
    TraceRunning,
    /// The analysis is running (3).
    AnalysisRunning,
    /// Done, with a result (4).
    Complete,
    /// Failed, with an error naming the step (-1).
    Failed,
}

impl JobStatus {
    /// The statuses of a job that has not ended.
    pub const RUNNING: [JobStatus; 3] = [
        JobStatus::Started,
        JobStatus::TraceRunning,
        JobStatus::AnalysisRunning,
    ];
    /// The statuses of a job that ended.
    pub const ENDED: [JobStatus; 2] = [JobStatus::Complete, JobStatus::Failed];

    /// The seed's number for this status.
    pub const fn code(self) -> i64 {
        match self {
            JobStatus::Started => 1,
            JobStatus::TraceRunning => 2,
            JobStatus::AnalysisRunning => 3,
            JobStatus::Complete => 4,
            JobStatus::Failed => -1,
        }
    }

    /// The status of a seed number.
    pub const fn from_code(code: i64) -> Option<JobStatus> {
        Some(match code {
            1 => JobStatus::Started,
            2 => JobStatus::TraceRunning,
            3 => JobStatus::AnalysisRunning,
            4 => JobStatus::Complete,
            -1 => JobStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the job has ended (complete or failed).
    pub const fn is_ended(self) -> bool {
        matches!(self, JobStatus::Complete | JobStatus::Failed)
    }

    /// The codes of `statuses`, for queries.
    pub fn codes(statuses: &[JobStatus]) -> Vec<i64> {
        statuses.iter().map(|s| s.code()).collect()
    }
}

impl Serialize for JobStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = i64::deserialize(d)?;
        JobStatus::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown job status {code}")))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// The step a job failed at. Each maps to the HTTP status of the job's answer in one place,
/// [`Step::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The job's spec was refused (by the agent's own validation).
    Validate,
    /// The host, relay or analysis host could not be resolved.
    Resolve,
    /// The job could not be handed to the agent.
    Dispatch,
    /// The host has no kernel tracer and the analysis needs kernel events.
    Kernel,
    /// An SSH pre-flight check failed (session daemon, user, tracer).
    Preflight,
    /// The host could not be reached over SSH.
    SshConnect,
    /// The host's `tracesd ssh-job` (the whole job in one SSH command) did not start or ended
    /// without an outcome.
    SshJob,
    /// A fleet host lacks a required capability.
    Capability,
    /// `lttng create`.
    Create,
    /// `lttng enable-event`.
    EnableEvent,
    /// `lttng add-context`.
    AddContext,
    /// `lttng start`.
    Start,
    /// `lttng destroy`.
    Destroy,
    /// `lttng snapshot record` of a flight recorder.
    Snapshot,
    /// `lttng list`.
    List,
    /// The recorded trace could not be found.
    LocateTrace,
    /// An analysis command failed.
    Analysis,
    /// The result is not JSON or is too large.
    Result,
    /// A user cancelled the job.
    Cancelled,
    /// A fleet host gave no outcome in time.
    Timeout,
    /// The agent's link closed and it did not come back in time, or it sent nothing.
    AgentLost,
    /// The agent restarted and lost the job.
    AgentRestart,
    /// The coordinator restarted while the job ran.
    CoordinatorRestart,
    /// The coordinator shut down while the job ran (its SSH session was destroyed).
    CoordinatorShutdown,
    /// The coordinator of the cluster that ran the job stopped heartbeating; another one
    /// adopted the job and ended it.
    CoordinatorLost,
    /// The job's end could not be stored.
    Store,
    /// Some hosts of a fleet did not complete.
    Fleet,
    /// A step this coordinator does not know (named by a newer agent); the message says more.
    #[serde(other)]
    Unknown,
}

impl Step {
    /// Every step, for tests and documentation.
    pub const ALL: [Step; 28] = [
        Step::Validate,
        Step::Resolve,
        Step::Dispatch,
        Step::Kernel,
        Step::Preflight,
        Step::SshConnect,
        Step::SshJob,
        Step::Capability,
        Step::Create,
        Step::EnableEvent,
        Step::AddContext,
        Step::Start,
        Step::Destroy,
        Step::Snapshot,
        Step::List,
        Step::LocateTrace,
        Step::Analysis,
        Step::Result,
        Step::Cancelled,
        Step::Timeout,
        Step::AgentLost,
        Step::AgentRestart,
        Step::CoordinatorRestart,
        Step::CoordinatorShutdown,
        Step::CoordinatorLost,
        Step::Store,
        Step::Fleet,
        Step::Unknown,
    ];

    /// The HTTP status of the answer of a job that failed at this step.
    pub const fn http_status(self) -> u16 {
        match self {
            Step::SshConnect
            | Step::AgentLost
            | Step::AgentRestart
            | Step::CoordinatorRestart
            | Step::CoordinatorShutdown
            | Step::CoordinatorLost
            | Step::Store => 503,
            Step::Kernel | Step::Preflight | Step::Validate | Step::Capability => 422,
            Step::Cancelled => 409,
            // Some hosts of a fleet did not complete: the body has each host's outcome.
            Step::Fleet => 207,
            Step::Timeout => 504,
            Step::Resolve
            | Step::Dispatch
            | Step::Create
            | Step::EnableEvent
            | Step::AddContext
            | Step::Start
            | Step::Destroy
            | Step::Snapshot
            | Step::List
            | Step::LocateTrace
            | Step::Analysis
            | Step::Result
            | Step::SshJob
            | Step::Unknown => 502,
        }
    }

    /// The step's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validate => "validate",
            Step::Resolve => "resolve",
            Step::Dispatch => "dispatch",
            Step::Kernel => "kernel",
            Step::Preflight => "preflight",
            Step::SshConnect => "ssh-connect",
            Step::SshJob => "ssh-job",
            Step::Capability => "capability",
            Step::Create => "create",
            Step::EnableEvent => "enable-event",
            Step::AddContext => "add-context",
            Step::Start => "start",
            Step::Destroy => "destroy",
            Step::Snapshot => "snapshot",
            Step::List => "list",
            Step::LocateTrace => "locate-trace",
            Step::Analysis => "analysis",
            Step::Result => "result",
            Step::Cancelled => "cancelled",
            Step::Timeout => "timeout",
            Step::AgentLost => "agent-lost",
            Step::AgentRestart => "agent-restart",
            Step::CoordinatorRestart => "coordinator-restart",
            Step::CoordinatorShutdown => "coordinator-shutdown",
            Step::CoordinatorLost => "coordinator-lost",
            Step::Store => "store",
            Step::Fleet => "fleet",
            Step::Unknown => "unknown",
        }
    }

    /// The step named `name` (from the lifecycle or an agent); unknown names are [`Step::Unknown`].
    pub fn parse(name: &str) -> Step {
        Step::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .unwrap_or(Step::Unknown)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job (or a fleet host) failed: the step, the host and the tool's own message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub step: Step,
    /// The host the step ran on (`null` for a fleet's summary error).
    #[serde(default)]
    pub host: Option<String>,
    pub message: String,
    /// Where the trace is, when the job kept it (`keep_trace`) and failed in its analysis:
    /// the trace that made the analysis fail is what one wants to look at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_trace: Option<Box<KeptTrace>>,
}

impl JobError {
    pub fn new(step: Step, host: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            step,
            host: Some(host.into()),
            message: message.into(),
            kept_trace: None,
        }
    }
}

impl From<tracevisor_lttng::lifecycle::StepError> for JobError {
    fn from(e: tracevisor_lttng::lifecycle::StepError) -> Self {
        // The lifecycle's message already names the host and the step.
        let message = e.to_string();
        JobError {
            step: Step::parse(&e.step),
            host: Some(e.host),
            message,
            kept_trace: None,
        }
    }
}

/// How a host is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Through its agent's link.
    Agent,
    /// Over SSH.
    Ssh,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Agent => "agent",
            Via::Ssh => "ssh",
        }
    }
}

/// What kind of record a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The same analysis on many hosts, one entry per host.
    Fleet,
}

/// A session this coordinator created over SSH, so it can be destroyed if the coordinator
/// stops before the job's own `lttng destroy` ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSession {
    /// The address or DNS name connected to.
    pub address: String,
    pub port: u16,
    pub user: String,
    /// The name shown in errors.
    pub display: String,
    /// The LTTng session name.
    pub session: String,
}

/// Where a job kept its trace (`"keep_trace": true`): the host holding it, how this
/// coordinator reaches it, and the trace directory there. Written into the job's result as
/// `kept_trace` by the coordinator from its own route (never taken from what a host reported,
/// but the path, which the same host's agent checks again when asked for it); read by
/// `GET /jobs/{id}/trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptTrace {
    /// The host holding the trace (the traced host, or the relay or analysis host).
    pub host: String,
    pub via: Via,
    /// The trace directory on that host; a bare directory name (`tracevisor-...`) is in the
    /// host's trace root (the agent's, or the SSH user's).
    pub path: String,
    /// The agent's hostname, when reached through its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How it is reached over SSH, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshAccess>,
}

/// An SSH address, port and user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAccess {
    pub address: String,
    pub port: u16,
    pub user: String,
}

/// A flight recorder: a snapshot-mode session kept armed on each of its hosts (agents), for
/// snapshots taken on all of them at once (`POST /recorders/{id}/snapshots`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecorderRecord {
    #[serde(default)]
    pub id: u64,
    /// The analysis type whose events it records and whose analysis its snapshots run.
    #[serde(rename = "type")]
    pub analysis_type: String,
    /// The agents' hostnames.
    pub hosts: Vec<String>,
    /// Ring buffer of each channel, per CPU, in MiB.
    pub buffer_mib: u64,
    /// RFC 3339.
    pub created: String,
    /// Each host's state, as last reported (not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<RecorderHostState>,
}

/// A recorder's state on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecorderHostState {
    pub host: String,
    /// `armed`, `pending` (asked, no answer yet), `offline` (its agent is not connected; armed
    /// when it connects), or `error`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339: when this state was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// A fleet host's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Complete,
    Error,
    Offline,
    Timeout,
    Skipped,
    Pending,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Complete,
        Outcome::Error,
        Outcome::Offline,
        Outcome::Timeout,
        Outcome::Skipped,
        Outcome::Pending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Error => "error",
            Outcome::Offline => "offline",
            Outcome::Timeout => "timeout",
            Outcome::Skipped => "skipped",
            Outcome::Pending => "pending",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host of a fleet job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub host: String,
    pub outcome: Outcome,
    /// The child job's id, once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobid: Option<u64>,
    /// The child's status once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The SSH session this host's child created, until the child ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_session: Option<SshSession>,
}

impl FleetEntry {
    /// A host that has not run yet.
    pub fn pending(host: &str) -> FleetEntry {
        FleetEntry {
            host: host.to_owned(),
            outcome: Outcome::Pending,
            jobid: None,
            status: None,
            via: None,
            result: None,
            error: None,
            ssh_session: None,
        }
    }

    /// A host that ended without running (offline, skipped) or failed.
    pub fn failed(host: &str, outcome: Outcome, error: JobError) -> FleetEntry {
        FleetEntry {
            outcome,
            status: (outcome != Outcome::Offline && outcome != Outcome::Skipped)
                .then_some(JobStatus::Failed),
            error: Some(error),
            ..FleetEntry::pending(host)
        }
    }
}

/// How many fleet hosts have each outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    #[serde(default)]
    pub complete: usize,
    #[serde(default)]
    pub error: usize,
    #[serde(default)]
    pub offline: usize,
    #[serde(default)]
    pub timeout: usize,
    #[serde(default)]
    pub skipped: usize,
    #[serde(default)]
    pub pending: usize,
}

impl OutcomeCounts {
    pub fn of(entries: &[FleetEntry]) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for entry in entries {
            *match entry.outcome {
                Outcome::Complete => &mut counts.complete,
                Outcome::Error => &mut counts.error,
                Outcome::Offline => &mut counts.offline,
                Outcome::Timeout => &mut counts.timeout,
                Outcome::Skipped => &mut counts.skipped,
                Outcome::Pending => &mut counts.pending,
            } += 1;
        }
        counts
    }
}

/// A job as stored and as `GET /jobs/{id}` shows it: a single job, or a fleet (`kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id (`jobid` is the seed's name for it; both are shown).
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub jobid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    /// The traced host (`null` for a fleet).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(rename = "type")]
    pub analysis_type: String,
    pub username: String,
    pub duration: f64,
    #[serde(default)]
    pub relay: Option<String>,
    /// Where the analysis ran (single jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    #[serde(default)]
    pub analysis_via: Option<Via>,
    /// 1, or 2 when the analysis runs on another host than the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<u8>,
    /// The agent the job was sent to (single jobs through an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Seconds each fleet host may take beyond the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_timeout: Option<f64>,
    pub status: JobStatus,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339: when the trace started recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_started: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Json>,
    #[serde(default)]
    pub error: Option<JobError>,
    /// A fleet's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<FleetEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<OutcomeCounts>,
    /// The SSH session a single job created, until it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_session: Option<SshSession>,
    /// A fleet child's fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// In a cluster: the coordinator (member id) that runs the job, or ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
}

impl JobRecord {
    /// A job that has just started (status 1) at `now` (RFC 3339); the rest is set by the kind
    /// of job with struct update syntax.
    pub fn started(
        analysis_type: &str,
        username: &str,
        duration: f64,
        relay: Option<String>,
        now: &str,
    ) -> JobRecord {
        JobRecord {
            id: 0,
            jobid: 0,
            kind: None,
            host: None,
            analysis_type: analysis_type.to_owned(),
            username: username.to_owned(),
            duration,
            relay,
            analysis: None,
            via: None,
            analysis_via: None,
            phases: None,
            agent: None,
            host_timeout: None,
            status: JobStatus::Started,
            created: now.to_owned(),
            started: now.to_owned(),
            trace_started: None,
            finished: None,
            result: None,
            error: None,
            hosts: None,
            outcomes: None,
            ssh_session: None,
            parent: None,
            runner: None,
        }
    }

    /// Whether this is a fleet record.
    pub fn is_fleet(&self) -> bool {
        self.kind == Some(JobKind::Fleet)
    }

    /// The HTTP status of this job's answer: 200 complete, 202 running, else by its step.
    pub fn http_status(&self) -> u16 {
        match self.status {
            JobStatus::Complete => 200,
            JobStatus::Failed => self.error.as_ref().map_or(502, |e| e.step.http_status()),
            _ => 202,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_seeds_numbers_on_the_wire() {
        for (status, code) in [
            (JobStatus::Started, 1),
            (JobStatus::TraceRunning, 2),
            (JobStatus::AnalysisRunning, 3),
            (JobStatus::Complete, 4),
            (JobStatus::Failed, -1),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), code);
            assert_eq!(
                serde_json::from_value::<JobStatus>(code.into()).unwrap(),
                status
            );
        }
        assert!(serde_json::from_value::<JobStatus>(100.into()).is_err());
        assert!(serde_json::from_value::<JobStatus>(0.into()).is_err());
    }

    #[test]
    fn every_step_round_trips_and_maps_to_one_http_status() {
        for step in Step::ALL {
            let wire = serde_json::to_value(step).unwrap();
            assert_eq!(wire, step.as_str());
            assert_eq!(Step::parse(step.as_str()), step);
            assert_eq!(serde_json::from_value::<Step>(wire).unwrap(), step);
        }
        assert_eq!(Step::parse("no-such-step"), Step::Unknown);
        assert_eq!(
            serde_json::from_value::<Step>("from-a-newer-agent".into()).unwrap(),
            Step::Unknown
        );
        assert_eq!(Step::SshConnect.http_status(), 503);
        assert_eq!(Step::Kernel.http_status(), 422);
        assert_eq!(Step::Cancelled.http_status(), 409);
        assert_eq!(Step::Fleet.http_status(), 207);
        assert_eq!(Step::Timeout.http_status(), 504);
        assert_eq!(Step::Analysis.http_status(), 502);
        assert_eq!(Step::CoordinatorShutdown.http_status(), 503);
    }

    #[test]
    fn a_job_record_reads_back_what_it_writes() {
        let job = JobRecord {
            id: 7,
            jobid: 7,
            kind: None,
            host: Some("web-1".into()),
            analysis_type: "cpu".into(),
            username: "root".into(),
            duration: 1.5,
            relay: None,
            analysis: Some("web-1".into()),
            via: Some(Via::Ssh),
            analysis_via: None,
            phases: Some(1),
            agent: None,
            host_timeout: None,
            status: JobStatus::Failed,
            created: "2026-01-01T00:00:00Z".into(),
            started: "2026-01-01T00:00:00Z".into(),
            trace_started: None,
            finished: Some("2026-01-01T00:00:01Z".into()),
            result: None,
            error: Some(JobError::new(Step::SshConnect, "web-1", "refused")),
            hosts: None,
            outcomes: None,
            ssh_session: None,
            parent: None,
            runner: None,
        };
        let wire = serde_json::to_value(&job).unwrap();
        assert_eq!(wire["status"], -1);
        assert_eq!(wire["error"]["step"], "ssh-connect");
        assert_eq!(wire["jobid"], 7);
        assert_eq!(wire["via"], "ssh");
        assert!(wire.get("kind").is_none());
        assert_eq!(serde_json::from_value::<JobRecord>(wire).unwrap(), job);
        assert_eq!(job.http_status(), 503);
    }

    #[test]
    fn outcome_counts_count_each_outcome() {
        let entries = vec![
            FleetEntry::pending("a"),
            FleetEntry::failed(
                "b",
                Outcome::Offline,
                JobError::new(Step::Dispatch, "b", "offline"),
            ),
            FleetEntry {
                outcome: Outcome::Complete,
                ..FleetEntry::pending("c")
            },
        ];
        let counts = OutcomeCounts::of(&entries);
        assert_eq!((counts.pending, counts.offline, counts.complete), (1, 1, 1));
        assert_eq!(
            serde_json::to_value(&counts).unwrap(),
            serde_json::json!({"complete":1,"error":0,"offline":1,"timeout":0,"skipped":0,"pending":1})
        );
    }
}
