//! Where the coordinator's job commands land: each `StartJob` runs the trace lifecycle in its
//! own task; progress and outcomes come back through a channel the link's loop selects on;
//! results are kept until acknowledged (they outlive a link, so they are sent again after a
//! reconnect, exactly once per job id as far as the coordinator stores them).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracevisor_lttng::lifecycle::{self, LocalExecutor};

use crate::allow::Allowlist;
use crate::roots::TraceRoots;
use tracevisor_protocol::{encode, Frame, JobOutcome, JobSpec, Message};

/// Job events (progress, ends) queued towards the link before job tasks wait.
const JOB_EVENT_QUEUE: usize = 1024;

/// Results kept at most while waiting for their acknowledgement; beyond it the oldest are
/// dropped (a coordinator that never acknowledges must not grow the agent without bound).
pub const MAX_UNACKED_RESULTS: usize = 1_000;

/// A job command from the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCommand {
    /// [`Message::StartJob`].
    Start {
        /// The job.
        job_id: u64,
        /// What to do.
        spec: Box<JobSpec>,
    },
    /// [`Message::CancelJob`].
    Cancel {
        /// The job.
        job_id: u64,
    },
    /// [`Message::ResultAck`].
    ResultAck {
        /// The job whose result the coordinator stored.
        job_id: u64,
    },
}

impl JobCommand {
    /// The command carried by `message`, if it is one.
    pub fn from_message(message: Message) -> Option<Self> {
        match message {
            Message::StartJob { job_id, spec } => Some(JobCommand::Start {
                job_id,
                spec: Box::new(spec),
            }),
            Message::CancelJob { job_id } => Some(JobCommand::Cancel { job_id }),
            Message::ResultAck { job_id } => Some(JobCommand::ResultAck { job_id }),
            _ => None,
        }
    }
}

/// What a job task reports to the link loop.
#[derive(Debug)]
pub enum JobEvent {
    /// The job changed status.
    Progress {
        /// The job.
        job_id: u64,
        /// Its new status.
        status: i8,
        /// Detail.
        message: String,
    },
    /// The job ended.
    Done {
        /// The job.
        job_id: u64,
        /// How.
        outcome: JobOutcome,
    },
}

/// The agent's jobs: those running and the results not yet acknowledged. Lives as long as
/// the agent, across links.
pub struct Jobs {
    executor: Arc<LocalExecutor>,
    /// The analysis programs this host runs.
    allowlist: Allowlist,
    /// Where analysis-only jobs may read traces.
    roots: TraceRoots,
    running: HashMap<u64, CancellationToken>,
    /// Outcomes by job id, in order of job id, kept until [`JobCommand::ResultAck`].
    unacked: BTreeMap<u64, JobOutcome>,
    events_tx: mpsc::Sender<JobEvent>,
    events_rx: mpsc::Receiver<JobEvent>,
    /// Coordinators whose leftover sessions were already recovered.
    recovered: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .field("unacked", &self.unacked.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Jobs {
    /// No jobs; jobs run on this host through `executor`, analysis commands only if
    /// `allowlist` allows them, and analysis-only jobs read traces only under the executor's
    /// trace root and `relay_roots` (see [`crate::roots`]).
    pub fn new(executor: LocalExecutor, allowlist: Allowlist, relay_roots: Vec<PathBuf>) -> Self {
        let (events_tx, events_rx) = mpsc::channel(JOB_EVENT_QUEUE);
        let roots = TraceRoots::new(executor.trace_root.clone(), relay_roots);
        Jobs {
            executor: Arc::new(executor),
            allowlist,
            roots,
            running: HashMap::new(),
            unacked: BTreeMap::new(),
            events_tx,
            events_rx,
            recovered: std::collections::HashSet::new(),
        }
    }

    /// The executor jobs run through (flight recorders use it too).
    pub fn executor(&self) -> Arc<LocalExecutor> {
        self.executor.clone()
    }

    /// Where analysis-only jobs and trace fetches may read traces.
    pub fn roots(&self) -> &TraceRoots {
        &self.roots
    }

    /// Once per agent process and coordinator (at the first `HelloAck`): destroys the sessions
    /// of that coordinator's jobs a previous run of this agent left behind, and records those
    /// jobs as failed; returns the `JobResult`s to send.
    pub async fn recover(&mut self, coordinator: &str) -> Vec<Message> {
        if !self.recovered.insert(coordinator.to_owned()) {
            return Vec::new();
        }
        let hostname = self.executor.hostname.clone();
        let mut results = Vec::new();
        for job_id in
            lifecycle::destroy_orphans(self.executor.as_ref(), coordinator, &hostname).await
        {
            if self.running.contains_key(&job_id) || self.unacked.contains_key(&job_id) {
                continue;
            }
            results.push(self.finish(
                job_id,
                JobOutcome::Err {
                    step: "agent-restart".to_owned(),
                    message: format!(
                        "host {hostname}: the agent restarted during the job; its session was destroyed"
                    ),
                },
            ));
        }
        results
    }

    /// The jobs still running, for [`tracevisor_protocol::Hello::running_jobs`].
    pub fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.running.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The results to send (again) after `HelloAck`.
    pub fn pending_results(&self) -> Vec<Message> {
        self.unacked
            .iter()
            .map(|(&job_id, outcome)| Message::JobResult {
                job_id,
                outcome: outcome.clone(),
            })
            .collect()
    }

    /// The next progress or outcome of a running job.
    pub async fn next_event(&mut self) -> Option<JobEvent> {
        self.events_rx.recv().await
    }

    /// Turns a job event into the message to send (storing outcomes until acknowledged).
    pub fn on_event(&mut self, event: JobEvent) -> Message {
        match event {
            JobEvent::Progress {
                job_id,
                status,
                message,
            } => Message::JobProgress {
                job_id,
                status,
                message,
            },
            JobEvent::Done { job_id, outcome } => {
                self.running.remove(&job_id);
                self.finish(job_id, outcome)
            }
        }
    }

    /// Handles a command; returns the messages to send at once.
    pub fn handle(&mut self, command: JobCommand) -> Vec<Message> {
        match command {
            JobCommand::Start { job_id, spec } => {
                if let Some(outcome) = self.unacked.get(&job_id) {
                    // A repeated start (the coordinator did not get the result): same answer.
                    tracing::info!(job_id, "job already finished, sending its result again");
                    return vec![Message::JobResult {
                        job_id,
                        outcome: outcome.clone(),
                    }];
                }
                if self.running.contains_key(&job_id) {
                    tracing::info!(job_id, "job already running");
                    return Vec::new();
                }
                if let Err(message) = lifecycle::validate_spec(&spec) {
                    tracing::warn!(job_id, %message, "refusing an invalid job");
                    let outcome = JobOutcome::Err {
                        step: "validate".to_owned(),
                        message,
                    };
                    return vec![self.finish(job_id, outcome)];
                }
                // Analysis commands run only if this host allows their programs, and by the
                // absolute path they were checked as.
                let mut spec = spec;
                if spec.run_analysis {
                    if let Err(why) = self.allowlist.apply(&mut spec.analysis_commands) {
                        tracing::warn!(job_id, why = %why, "refusing a job whose analysis program this host does not allow");
                        let outcome = JobOutcome::Err {
                            step: "validate".to_owned(),
                            message: format!("host {}: {why}", self.executor.hostname),
                        };
                        return vec![self.finish(job_id, outcome)];
                    }
                }
                // An analysis-only job reads its trace only under this agent's trace root and
                // relay roots, at the canonical paths they were checked as.
                if let Some(locator) = spec.analysis_only.as_mut() {
                    if let Err(why) = self.roots.apply(locator) {
                        tracing::warn!(job_id, why = %why, "refusing a job whose trace is outside this agent's trace and relay roots");
                        let outcome = JobOutcome::Err {
                            step: "validate".to_owned(),
                            message: format!("host {}: {why}", self.executor.hostname),
                        };
                        return vec![self.finish(job_id, outcome)];
                    }
                }
                tracing::info!(job_id, session = %spec.session_name, analysis = %spec.analysis, "job started");
                let cancel = CancellationToken::new();
                self.running.insert(job_id, cancel.clone());
                let executor = self.executor.clone();
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let progress_events = events.clone();
                    // Progress is advisory: dropped when the queue is full; the end never is.
                    let progress = move |status: i8, message: &str| {
                        let _ = progress_events.try_send(JobEvent::Progress {
                            job_id,
                            status,
                            message: message.to_owned(),
                        });
                    };
                    let outcome =
                        match lifecycle::run_job(executor.as_ref(), &spec, progress, &cancel).await
                        {
                            Ok(result) => {
                                tracing::info!(job_id, "job complete");
                                JobOutcome::Ok {
                                    result_json: result.to_string(),
                                }
                            }
                            Err(error) => {
                                tracing::warn!(job_id, %error, "job failed");
                                JobOutcome::Err {
                                    step: error.step.clone(),
                                    message: error.to_string(),
                                }
                            }
                        };
                    let _ = events.send(JobEvent::Done { job_id, outcome }).await;
                });
                Vec::new()
            }
            JobCommand::Cancel { job_id } => {
                match self.running.get(&job_id) {
                    Some(cancel) => {
                        tracing::info!(job_id, "cancelling job");
                        cancel.cancel();
                    }
                    None => tracing::debug!(job_id, "cancel for a job that is not running"),
                }
                Vec::new()
            }
            JobCommand::ResultAck { job_id } => {
                if self.unacked.remove(&job_id).is_none() {
                    tracing::debug!(job_id, "acknowledgement for an unknown result");
                }
                Vec::new()
            }
        }
    }

    /// Stores the outcome of a finished job until it is acknowledged and returns the
    /// `JobResult` to send. An outcome too large for one frame becomes an error outcome.
    pub fn finish(&mut self, job_id: u64, outcome: JobOutcome) -> Message {
        let outcome = fit_in_frame(job_id, outcome);
        while self.unacked.len() >= MAX_UNACKED_RESULTS {
            if let Some((dropped, _)) = self.unacked.pop_first() {
                tracing::warn!(job_id = dropped, "dropping an unacknowledged result");
            }
        }
        self.unacked.insert(job_id, outcome.clone());
        Message::JobResult { job_id, outcome }
    }
}

/// `outcome`, or an error outcome at step `result` when its `JobResult` frame would exceed
/// [`MAX_FRAME_BYTES`](tracevisor_protocol::MAX_FRAME_BYTES).
fn fit_in_frame(job_id: u64, outcome: JobOutcome) -> JobOutcome {
    let frame = Frame::new(Message::JobResult {
        job_id,
        outcome: outcome.clone(),
    });
    match encode(&frame) {
        Ok(_) => outcome,
        Err(error) => JobOutcome::Err {
            step: "result".to_owned(),
            message: format!("the result cannot be sent: {error}"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracevisor_protocol::{TraceLocator, TraceOutput, MAX_FRAME_BYTES};

    use super::*;

    fn jobs() -> Jobs {
        Jobs::new(
            LocalExecutor {
                hostname: "h".into(),
                trace_root: std::env::temp_dir(),
                policy: Default::default(),
                control: Default::default(),
            },
            Allowlist::discover(&[]),
            vec![],
        )
    }

    fn spec(session: &str) -> Box<JobSpec> {
        Box::new(JobSpec {
            session_name: session.into(),
            analysis: "ust".into(),
            kernel_events: vec![],
            syscalls: false,
            userspace_events: vec!["*".into()],
            duration_ms: 1,
            output: TraceOutput::Local,
            analysis_commands: vec![],
            run_analysis: false,
            summary: tracevisor_protocol::Summary::Ust,
            analysis_only: None,
            keep_trace: false,
            snapshot_of: None,
        })
    }

    #[tokio::test]
    async fn invalid_spec_is_refused_and_kept_until_acknowledged() {
        let mut jobs = jobs();
        let replies = jobs.handle(JobCommand::Start {
            job_id: 7,
            spec: spec("bad name;rm"),
        });
        let [Message::JobResult {
            job_id: 7,
            outcome: JobOutcome::Err { step, .. },
        }] = replies.as_slice()
        else {
            panic!("{replies:?}");
        };
        assert_eq!(step, "validate");
        assert_eq!(jobs.pending_results(), replies);
        // A repeated start gets the same result, not a second run.
        assert_eq!(
            jobs.handle(JobCommand::Start {
                job_id: 7,
                spec: spec("bad name;rm")
            }),
            replies
        );
        assert!(jobs.handle(JobCommand::ResultAck { job_id: 7 }).is_empty());
        assert!(jobs.pending_results().is_empty());
        assert!(jobs.running().is_empty());
    }

    /// The job's answer to `spec`, which must be refused at once.
    fn refusal(jobs: &mut Jobs, job_id: u64, spec: Box<JobSpec>) -> (String, String) {
        let replies = jobs.handle(JobCommand::Start { job_id, spec });
        match replies.as_slice() {
            [Message::JobResult {
                job_id: id,
                outcome: JobOutcome::Err { step, message },
            }] if *id == job_id => (step.clone(), message.clone()),
            _ => panic!("expected the job refused: {replies:?}"),
        }
    }

    #[tokio::test]
    async fn an_analysis_of_a_trace_outside_the_trace_and_relay_roots_is_refused() {
        let mut jobs = jobs();
        let hostile = |locator| {
            Box::new(JobSpec {
                analysis_only: Some(locator),
                run_analysis: true,
                ..*spec("tracevisor-deadbeef-7-h")
            })
        };
        let (step, message) = refusal(&mut jobs, 7, hostile(TraceLocator::Path("/etc".into())));
        assert_eq!(step, "validate");
        assert!(
            message.starts_with("host h: trace path /etc is outside this agent's trace root "),
            "{message}"
        );
        assert!(
            message.contains("set relay_roots in tracesd.toml"),
            "{message}"
        );
        let (step, message) = refusal(
            &mut jobs,
            8,
            hostile(TraceLocator::RelaySession {
                roots: vec!["/root".into()],
            }),
        );
        assert_eq!(step, "validate");
        assert!(
            message.starts_with("host h: relay root /root is outside"),
            "{message}"
        );
        assert!(jobs.running().is_empty());
    }

    #[tokio::test]
    async fn an_analysis_under_a_relay_root_runs_on_its_canonical_path() {
        let relay = tempfile::tempdir().unwrap();
        let trace = relay.path().join("web-1").join("tracevisor-deadbeef-9-h-x");
        std::fs::create_dir_all(&trace).unwrap();
        let mut jobs = Jobs::new(
            LocalExecutor {
                hostname: "h".into(),
                trace_root: std::env::temp_dir().join("tracesd-no-such-trace-root"),
                policy: Default::default(),
                control: Default::default(),
            },
            Allowlist::discover(&[]),
            vec![relay.path().to_owned()],
        );
        // No analysis command: the job's result is only the trace it read.
        let spec = Box::new(JobSpec {
            analysis_only: Some(TraceLocator::Path(format!(
                "{}/./web-1/tracevisor-deadbeef-9-h-x/",
                relay.path().display()
            ))),
            run_analysis: true,
            summary: tracevisor_protocol::Summary::Lami,
            ..*spec("tracevisor-deadbeef-9-h")
        });
        assert!(jobs
            .handle(JobCommand::Start { job_id: 9, spec })
            .is_empty());
        let outcome = loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), jobs.next_event())
                .await
                .unwrap()
                .unwrap();
            if let JobEvent::Done { outcome, .. } = event {
                break outcome;
            }
        };
        let JobOutcome::Ok { result_json } = outcome else {
            panic!("{outcome:?}");
        };
        let canonical = trace.canonicalize().unwrap();
        assert!(
            result_json.contains(&format!("\"trace\":\"{}\"", canonical.display())),
            "{result_json}"
        );
    }

    #[test]
    fn cancel_and_unknown_ack_send_nothing() {
        let mut jobs = jobs();
        assert!(jobs.handle(JobCommand::Cancel { job_id: 1 }).is_empty());
        assert!(jobs.handle(JobCommand::ResultAck { job_id: 1 }).is_empty());
    }

    #[test]
    fn oversized_result_becomes_an_error() {
        let mut jobs = jobs();
        let message = jobs.finish(
            1,
            JobOutcome::Ok {
                result_json: "x".repeat(MAX_FRAME_BYTES),
            },
        );
        let Message::JobResult {
            outcome: JobOutcome::Err { step, message },
            ..
        } = message
        else {
            panic!("expected an error outcome: {message:?}");
        };
        assert_eq!(step, "result");
        assert!(message.contains("exceeds the limit"), "{message}");
    }

    #[test]
    fn unacknowledged_results_are_bounded() {
        let mut jobs = jobs();
        for job_id in 0..(MAX_UNACKED_RESULTS as u64 + 5) {
            jobs.finish(
                job_id,
                JobOutcome::Ok {
                    result_json: "{}".into(),
                },
            );
        }
        let pending = jobs.pending_results();
        assert_eq!(pending.len(), MAX_UNACKED_RESULTS);
        assert!(matches!(pending[0], Message::JobResult { job_id: 5, .. }));
    }

    #[test]
    fn messages_map_to_commands() {
        assert_eq!(
            JobCommand::from_message(Message::CancelJob { job_id: 3 }),
            Some(JobCommand::Cancel { job_id: 3 })
        );
        assert!(JobCommand::from_message(Message::Heartbeat { seq: 1 }).is_none());
    }
}
