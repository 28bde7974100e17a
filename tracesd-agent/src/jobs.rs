//! Where the coordinator's job commands land: starts, cancels and result acknowledgements,
//! and the results kept until acknowledged (they outlive a link, so they are sent again after
//! a reconnect, exactly once per job id as far as the coordinator stores them).
//!
//! Trace jobs are not run by this version: `StartJob` is answered with a `JobResult` error at
//! the `start` step. The trace-job work plugs in here: [`Jobs::handle`] starts a task per job,
//! the task reports `JobProgress` and its outcome through a channel the link's loop selects
//! on, and [`Jobs::finish`] stores the outcome like the refusal below.

use std::collections::BTreeMap;

use tracevisor_protocol::{encode, Frame, JobOutcome, JobSpec, Message};

/// The message a job refusal carries until trace jobs are implemented.
pub const NOT_SUPPORTED: &str = "trace jobs not supported by this agent version";

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

/// The agent's jobs: those running and the results not yet acknowledged. Lives as long as
/// the agent, across links.
#[derive(Debug, Default)]
pub struct Jobs {
    /// Outcomes by job id, in order of job id, kept until [`JobCommand::ResultAck`].
    unacked: BTreeMap<u64, JobOutcome>,
}

impl Jobs {
    /// No jobs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The jobs still running, for [`tracevisor_protocol::Hello::running_jobs`].
    pub fn running(&self) -> Vec<u64> {
        Vec::new()
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
                tracing::warn!(
                    job_id,
                    session = %spec.session_name,
                    analysis = %spec.analysis,
                    "refusing trace job: {NOT_SUPPORTED}"
                );
                let outcome = JobOutcome::Err {
                    step: "start".to_owned(),
                    message: NOT_SUPPORTED.to_owned(),
                };
                vec![self.finish(job_id, outcome)]
            }
            JobCommand::Cancel { job_id } => {
                tracing::debug!(job_id, "cancel for a job that is not running");
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
    use tracevisor_protocol::{TraceOutput, MAX_FRAME_BYTES};

    use super::*;

    fn spec() -> Box<JobSpec> {
        Box::new(JobSpec {
            session_name: "s".into(),
            analysis: "cputop".into(),
            kernel_events: vec![],
            syscalls: false,
            userspace_events: vec![],
            duration_ms: 1,
            output: TraceOutput::Local,
            analysis_commands: vec![],
            run_analysis: false,
        })
    }

    fn refusal(job_id: u64) -> Message {
        Message::JobResult {
            job_id,
            outcome: JobOutcome::Err {
                step: "start".into(),
                message: NOT_SUPPORTED.into(),
            },
        }
    }

    #[test]
    fn start_is_refused_and_kept_until_acknowledged() {
        let mut jobs = Jobs::new();
        let replies = jobs.handle(JobCommand::Start {
            job_id: 7,
            spec: spec(),
        });
        assert_eq!(replies, vec![refusal(7)]);
        assert_eq!(jobs.pending_results(), vec![refusal(7)]);
        // A repeated start gets the same result, not a second run.
        assert_eq!(
            jobs.handle(JobCommand::Start {
                job_id: 7,
                spec: spec()
            }),
            vec![refusal(7)]
        );
        assert!(jobs.handle(JobCommand::ResultAck { job_id: 7 }).is_empty());
        assert!(jobs.pending_results().is_empty());
        assert!(jobs.running().is_empty());
    }

    #[test]
    fn cancel_and_unknown_ack_send_nothing() {
        let mut jobs = Jobs::new();
        assert!(jobs.handle(JobCommand::Cancel { job_id: 1 }).is_empty());
        assert!(jobs.handle(JobCommand::ResultAck { job_id: 1 }).is_empty());
    }

    #[test]
    fn oversized_result_becomes_an_error() {
        let mut jobs = Jobs::new();
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
        let mut jobs = Jobs::new();
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
