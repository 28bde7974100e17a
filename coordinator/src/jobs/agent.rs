//! Jobs on agents: the phase sent over an agent's link, and the events agents send back
//! (progress, results, links opening and closing).
//!
//! A result is acknowledged to the agent ([`Ack`]) only after the job's end is committed: the
//! agent keeps a result until acknowledged and sends it again after a reconnect, so a crash
//! between the result and its commit loses nothing. The event loop never waits on an agent's
//! link, so one slow agent cannot hold up the others' results.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{JobOutcome, JobSpec, Message};

use super::single::{PhaseResult, Stop};
use super::{child_of, lock, Engine};
use crate::hub::{AgentEvent, Hub};
use crate::model::{JobError, JobRecord, JobStatus, Step};

/// Extra time an agent gets beyond the trace duration before its job is declared lost.
const AGENT_GRACE: Duration = Duration::from_secs(15 * 60 + 60);
/// How long a reconnected agent that no longer runs a job has to send its result.
const RESTART_GRACE: Duration = Duration::from_secs(10);
/// How long a cancelled agent job may take to stop, destroy its session and report.
const CANCEL_GRACE: Duration = Duration::from_secs(120);
/// How long an acknowledgement may wait for room in the agent's queue.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent phase waiting for its result.
pub(super) struct PendingAgentJob {
    /// The agent the phase was sent to: only its results and progress count.
    pub hostname: String,
    pub progress_base: Option<JobStatus>,
    pub done: oneshot::Sender<(JobOutcome, Option<Ack>)>,
}

/// Tells an agent that a job's result is durable, so it may forget it.
pub struct Ack {
    hub: Arc<Hub>,
    hostname: String,
    job_id: u64,
}

impl Ack {
    fn new(hub: &Arc<Hub>, hostname: &str, job_id: u64) -> Ack {
        Ack {
            hub: hub.clone(),
            hostname: hostname.to_owned(),
            job_id,
        }
    }

    /// Sends the acknowledgement (a link that is gone or full only means the agent sends the
    /// result again later, and it is acknowledged then).
    pub async fn send(self) {
        let sent = tokio::time::timeout(
            ACK_TIMEOUT,
            self.hub.send(
                &self.hostname,
                Message::ResultAck {
                    job_id: self.job_id,
                },
            ),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(job_id = self.job_id, hostname = %self.hostname, "result acknowledgement not delivered; the agent will send the result again");
        }
    }
}

/// A job's end as an agent reported it, with the acknowledgement to send once it is stored.
fn delivered(hostname: &str, outcome: JobOutcome, ack: Option<Ack>) -> PhaseResult {
    match outcome {
        JobOutcome::Ok { result_json } => match serde_json::from_str::<Json>(&result_json) {
            Ok(result) => Ok((result, ack)),
            Err(e) => Err(Stop::Failed(
                JobError::new(
                    Step::Result,
                    hostname,
                    format!("host {hostname}: the agent sent a result that is not JSON: {e}"),
                ),
                ack,
            )),
        },
        JobOutcome::Err { step, message } => {
            let parsed = Step::parse(&step);
            if parsed == Step::Unknown {
                tracing::warn!(%hostname, %step, "the agent named a step this coordinator does not know");
            }
            Err(Stop::Failed(JobError::new(parsed, hostname, message), ack))
        }
    }
}

impl Engine {
    /// Runs one phase of a job on the agent of `hostname`.
    pub(super) async fn run_agent_phase(
        &self,
        job_id: u64,
        hostname: &str,
        spec: &JobSpec,
        cancel: &CancellationToken,
        progress_base: Option<JobStatus>,
    ) -> PhaseResult {
        let (done_tx, mut done_rx) = oneshot::channel();
        lock(&self.pending).insert(
            job_id,
            PendingAgentJob {
                hostname: hostname.to_owned(),
                progress_base,
                done: done_tx,
            },
        );
        if let Some(base) = progress_base {
            let _ = self.set_status(job_id, base).await;
        }
        let start = Message::StartJob {
            job_id,
            spec: spec.clone(),
        };
        if let Err(e) = self.hub.send(hostname, start).await {
            lock(&self.pending).remove(&job_id);
            return Err(JobError::new(Step::Dispatch, hostname, e.to_string()).into());
        }
        let deadline = Duration::from_millis(spec.duration_ms) + AGENT_GRACE;
        let lost = |why: String| Stop::from(JobError::new(Step::AgentLost, hostname, why));
        let ended = tokio::select! {
            d = &mut done_rx => match d {
                Ok((outcome, ack)) => delivered(hostname, outcome, ack),
                Err(_) => Err(lost(format!("host {hostname}: the agent's job was dropped"))),
            },
            _ = cancel.cancelled() => {
                if self.shutdown.is_cancelled() {
                    // The agent finishes the job and keeps its result until a coordinator
                    // acknowledges it: the next run stores it (recovery watches the job).
                    lock(&self.pending).remove(&job_id);
                    return Err(Stop::LeftToAgent);
                }
                let _ = self.hub.send(hostname, Message::CancelJob { job_id }).await;
                // The agent stops and destroys the session, then reports.
                match tokio::time::timeout(CANCEL_GRACE, done_rx).await {
                    Ok(Ok((outcome, ack))) => delivered(hostname, outcome, ack),
                    _ => Err(JobError::new(Step::Cancelled, hostname, "cancelled").into()),
                }
            }
            _ = tokio::time::sleep(deadline) => Err(lost(format!(
                "host {hostname}: no result from the agent within {} s",
                deadline.as_secs()
            ))),
        };
        lock(&self.pending).remove(&job_id);
        ended
    }

    /// Consumes agent events (progress, results, hellos, closes) until shutdown.
    pub fn spawn_event_loop(self: &Arc<Self>, mut events: mpsc::Receiver<AgentEvent>) {
        let engine = self.clone();
        self.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = engine.shutdown.cancelled() => return,
                    event = events.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                };
                engine.on_agent_event(event).await;
            }
        });
    }

    /// Handles one agent event. Never waits on an agent's link: sends are spawned.
    async fn on_agent_event(self: &Arc<Self>, event: AgentEvent) {
        match event.message {
            Message::JobProgress {
                job_id,
                status,
                message,
            } => {
                let base = match lock(&self.pending).get(&job_id) {
                    Some(p) if p.hostname == event.hostname => p.progress_base,
                    _ => return,
                };
                // Progress moves a job between its running statuses only; an analysis-only
                // phase reports 3 from the start, and statuses never go back.
                let Some(status) = JobStatus::from_code(i64::from(status))
                    .filter(|s| JobStatus::RUNNING.contains(s))
                else {
                    tracing::warn!(job_id, hostname = %event.hostname, status, "ignoring progress with a status that is not a running one");
                    return;
                };
                let status = base.map_or(status, |b| status.max(b));
                tracing::debug!(job_id, %status, %message, "job progress");
                let _ = self.set_status(job_id, status).await;
            }
            Message::JobResult { job_id, outcome } => {
                let ack = Ack::new(&self.hub, &event.hostname, job_id);
                let pending = {
                    let mut pending = lock(&self.pending);
                    match pending.get(&job_id) {
                        Some(p) if p.hostname != event.hostname => {
                            tracing::warn!(job_id, from = %event.hostname, sent_to = %p.hostname, "ignoring a result from a host the job was not sent to");
                            return;
                        }
                        Some(_) => pending.remove(&job_id),
                        None => None,
                    }
                };
                let orphan = match pending {
                    Some(p) => p.done.send((outcome, Some(ack))).err(),
                    None => Some((outcome, Some(ack))),
                };
                if let Some((outcome, Some(ack))) = orphan {
                    let engine = self.clone();
                    let hostname = event.hostname.clone();
                    self.spawn(async move {
                        engine.orphan_result(job_id, &hostname, outcome, ack).await;
                    });
                }
            }
            Message::RecordersArmed { states } => {
                self.recorders_armed(&event.hostname, states);
            }
            Message::Close { reason, message } => {
                self.recorders_on_close(&event.hostname);
                // The host's link is gone: its jobs keep running on the agent, and a reconnect
                // within the grace delivers their results; past it they are failed.
                let grace =
                    self.config.heartbeat_interval * tracevisor_protocol::DEAD_AFTER_INTERVALS;
                let why = format!("{reason}: {message}");
                for job_id in self.pending_on(&event.hostname, |_| true) {
                    let engine = self.clone();
                    let hostname = event.hostname.clone();
                    let why = why.clone();
                    self.spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(grace) => {}
                            _ = engine.shutdown.cancelled() => return,
                        }
                        if engine.hub.find(&hostname).is_some() {
                            return; // back in time; the Hello handling covers a lost job
                        }
                        if engine.agent_held_elsewhere(&hostname).await {
                            // It reconnected to another member of the cluster, which stores
                            // its result: wait for the stored end.
                            engine.await_stored_end(job_id).await;
                            return;
                        }
                        engine.fail_pending(job_id, Step::AgentLost, format!(
                            "host {hostname}: the agent's link closed during the job ({why}) and it did not reconnect within {} s",
                            grace.as_secs()
                        ));
                    });
                }
            }
            Message::Hello(hello) => {
                self.recorders_on_hello(&hello.hostname);
                let lost = self.pending_on(&hello.hostname, |id| !hello.running_jobs.contains(&id));
                for job_id in lost {
                    let engine = self.clone();
                    let hostname = hello.hostname.clone();
                    self.spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(RESTART_GRACE) => {}
                            _ = engine.shutdown.cancelled() => return,
                        }
                        engine.fail_pending(job_id, Step::AgentRestart, format!(
                            "host {hostname}: the agent reconnected without this job (it restarted); the job is lost"
                        ));
                    });
                }
            }
            _ => {}
        }
    }

    /// Whether another live member of the cluster holds the link of `hostname`'s agent.
    async fn agent_held_elsewhere(&self, hostname: &str) -> bool {
        let Some(cluster) = self.cluster() else {
            return false;
        };
        match self.store.agent_locations(hostname, None).await {
            Ok(found) => found.iter().any(|l| {
                l.owner
                    .as_deref()
                    .is_some_and(|o| o != cluster.id && cluster.is_live(o))
            }),
            Err(_) => false,
        }
    }

    /// Waits (until the phase's own deadline or shutdown) for the end another member stores
    /// for a pending job, then ends the phase here with it.
    async fn await_stored_end(&self, job_id: u64) {
        if child_of(job_id).is_some() {
            // A fleet child is never stored on its own: its fleet's host limit ends it.
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shutdown.cancelled() => return,
            }
            if !lock(&self.pending).contains_key(&job_id) {
                return; // ended here after all (a result, or its deadline)
            }
            if let Ok(Some(job)) = self.store.job(job_id).await {
                if job.status.is_ended() {
                    // The phase's task reads the stored end (`finish` finds it ended).
                    lock(&self.pending).remove(&job_id);
                    return;
                }
            }
        }
    }

    /// The pending jobs on `hostname` whose id passes `keep`.
    fn pending_on(&self, hostname: &str, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        lock(&self.pending)
            .iter()
            .filter(|(id, p)| p.hostname == hostname && keep(**id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ends a pending agent phase with an error of the coordinator's own.
    fn fail_pending(&self, job_id: u64, step: Step, message: String) {
        let pending = lock(&self.pending).remove(&job_id);
        if let Some(p) = pending {
            // Nothing to acknowledge: the agent sent no result.
            let _ = p.done.send((
                JobOutcome::Err {
                    step: step.as_str().to_owned(),
                    message,
                },
                None,
            ));
        }
    }

    /// A result no task waits for: a duplicate, a fleet host's late result, a job of an
    /// earlier run, or an unknown id. Acknowledged once nothing more needs storing.
    async fn orphan_result(&self, job_id: u64, hostname: &str, outcome: JobOutcome, ack: Ack) {
        if child_of(job_id).is_some() {
            tracing::debug!(job_id, %hostname, "late result of a fleet host ignored (its fleet ended)");
            return ack.send().await;
        }
        let job = match self.store.job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                tracing::debug!(job_id, %hostname, "result of an unknown job acknowledged and ignored");
                return ack.send().await;
            }
            Err(error) => {
                // Not acknowledged: the agent sends it again after its next reconnect.
                tracing::warn!(job_id, %error, "cannot read the job of an agent's result");
                return;
            }
        };
        if job.status.is_ended() {
            tracing::debug!(job_id, "duplicate result ignored");
            return ack.send().await;
        }
        if sent_to(&job) != Some(hostname) {
            tracing::warn!(job_id, from = %hostname, "ignoring a result from a host the job was not sent to");
            return;
        }
        let ended = if job.phases == Some(1) {
            tracing::info!(job_id, %hostname, "result of a job started before the coordinator restarted");
            delivered(hostname, outcome, Some(ack))
        } else {
            Err(Stop::Failed(
                JobError::new(
                    Step::CoordinatorRestart,
                    hostname,
                    "coordinator restarted between the trace and the analysis",
                ),
                Some(ack),
            ))
        };
        self.finish(job_id, ended).await;
    }

    /// Waits, after a restart, for the result of a single-phase agent job of the previous run:
    /// the agent delivers it after reconnecting; an agent that comes back without the job, or
    /// not before the job's deadline, fails it.
    pub(super) fn watch_agent_job(self: &Arc<Self>, job: &JobRecord) {
        let Some(hostname) = sent_to(job).map(str::to_owned) else {
            return;
        };
        let job_id = job.id;
        let (done_tx, done_rx) = oneshot::channel();
        lock(&self.pending).insert(
            job_id,
            PendingAgentJob {
                hostname: hostname.clone(),
                progress_base: None,
                done: done_tx,
            },
        );
        let deadline = Duration::from_secs_f64(job.duration.max(0.0)) + AGENT_GRACE;
        let engine = self.clone();
        self.spawn(async move {
            let ended = tokio::select! {
                d = done_rx => match d {
                    Ok((outcome, ack)) => delivered(&hostname, outcome, ack),
                    Err(_) => return,
                },
                _ = tokio::time::sleep(deadline) => {
                    lock(&engine.pending).remove(&job_id);
                    Err(JobError::new(Step::AgentLost, &hostname, format!(
                        "host {hostname}: the coordinator restarted during the job and the agent delivered no result within {} s",
                        deadline.as_secs()
                    )).into())
                }
                _ = engine.shutdown.cancelled() => {
                    lock(&engine.pending).remove(&job_id);
                    return;
                }
            };
            engine.finish(job_id, ended).await;
        });
    }
}

/// The agent a stored job was sent to (rows written before `agent` existed: the host).
fn sent_to(job: &JobRecord) -> Option<&str> {
    job.agent.as_deref().or(job.host.as_deref())
}
