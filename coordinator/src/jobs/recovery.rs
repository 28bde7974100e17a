//! What a coordinator does with the jobs of its previous run, the SSH sessions they left on
//! their hosts, and jobs past their retention.
//!
//! After a restart nothing stays running forever: SSH jobs fail (`coordinator-restart`) and
//! their sessions are destroyed on their hosts; fleets end with an outcome for every host;
//! two-phase agent jobs fail; single-phase agent jobs wait for the result their agent keeps
//! and delivers after reconnecting, and fail if it does not come.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tracevisor_lttng::lifecycle;

use super::fleet::fleet_end;
use super::{now, Engine};
use crate::hub::rfc3339;
use crate::model::{FleetEntry, JobError, JobRecord, Outcome, SshSession, Step, Via};
use crate::ssh::{SshExecutor, SshTarget};
use crate::store::{FleetUpdate, StoreError};

impl Engine {
    /// Ends or resumes the jobs a previous run of the coordinator left unfinished.
    /// In a cluster, only those of members that are not alive (this run has a new id), which
    /// it adopts first: the other members' jobs are theirs.
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.cluster().is_some() {
            self.adopt().await?;
            return Ok(());
        }
        let jobs = self.store.unfinished_jobs().await?;
        self.recover_jobs(jobs, false).await
    }

    /// Ends or resumes unfinished jobs of a previous run, or (`adopted`) of a member of the
    /// cluster that stopped heartbeating.
    pub(super) async fn recover_jobs(
        self: &Arc<Self>,
        jobs: Vec<JobRecord>,
        adopted: bool,
    ) -> Result<(), StoreError> {
        let (mut failed, mut fleets, mut watched) = (0, 0, 0);
        let (step, who) = if adopted {
            (
                Step::CoordinatorLost,
                "the coordinator of the cluster running the job stopped heartbeating",
            )
        } else {
            (Step::CoordinatorRestart, "coordinator restarted")
        };
        for job in jobs {
            if job.is_fleet() {
                self.recover_fleet(job, step, who).await?;
                fleets += 1;
            } else if job.via == Some(Via::Agent) && job.phases == Some(1) {
                self.watch_agent_job(&job);
                watched += 1;
            } else {
                let host = job.host.clone().unwrap_or_default();
                let message = match job.via {
                    Some(Via::Ssh) => who.to_owned(),
                    _ => format!("{who} between the trace and the analysis"),
                };
                let error = JobError::new(step, host, message);
                self.store.finish_job(job.id, Err(&error), &now()).await?;
                if let Some(session) = job.ssh_session {
                    self.spawn_destroy(session);
                }
                failed += 1;
            }
        }
        if failed + fleets + watched > 0 {
            tracing::warn!(
                failed,
                fleets,
                agent_jobs_awaited = watched,
                adopted,
                "recovered unfinished jobs (of the previous run, or adopted from a stopped member of the cluster)"
            );
        }
        Ok(())
    }

    /// Ends a fleet of the previous run: hosts without an outcome get one, their SSH
    /// sessions are destroyed.
    async fn recover_fleet(
        &self,
        fleet: JobRecord,
        step: Step,
        who: &str,
    ) -> Result<(), StoreError> {
        let mut entries = fleet.hosts.unwrap_or_default();
        for entry in &mut entries {
            if let Some(session) = entry.ssh_session.take() {
                self.spawn_destroy(session);
            }
            if entry.outcome == Outcome::Pending {
                *entry = FleetEntry {
                    jobid: entry.jobid,
                    ..FleetEntry::failed(
                        &entry.host,
                        Outcome::Error,
                        JobError::new(
                            step,
                            &entry.host,
                            format!(
                                "host {}: {who} during the fleet; this host's outcome was lost",
                                entry.host
                            ),
                        ),
                    )
                };
            }
        }
        let (status, error) = fleet_end(&entries);
        let finished = now();
        self.store
            .update_fleet(
                fleet.id,
                FleetUpdate {
                    status,
                    hosts: &entries,
                    error: error.as_ref(),
                    finished: Some(&finished),
                },
            )
            .await?;
        Ok(())
    }

    /// Destroys, in the background, a session a job of an earlier run created over SSH.
    fn spawn_destroy(&self, session: SshSession) {
        let settings = self.ssh.clone();
        self.spawn(async move {
            let target = SshTarget {
                display: session.display.clone(),
                address: session.address.clone(),
                port: session.port,
                user: session.user.clone(),
            };
            let exec = match SshExecutor::connect(&target, &settings).await {
                Ok(exec) => exec,
                Err(error) => {
                    tracing::warn!(host = %session.display, session = %session.session, %error, "cannot reach the host to destroy a session left by the previous run");
                    return;
                }
            };
            match lifecycle::destroy_session(&exec, &session.session).await {
                Ok(true) => {
                    tracing::info!(host = %session.display, session = %session.session, "destroyed a session left by the previous run")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(host = %session.display, session = %session.session, %error, "could not destroy a session left by the previous run")
                }
            }
            exec.close().await;
        });
    }

    /// Deletes finished jobs past their retention now and then, until shutdown. A retention of
    /// zero keeps every job.
    pub fn spawn_pruner(self: &Arc<Self>, retention: Duration) {
        if retention.is_zero() {
            return;
        }
        let engine = self.clone();
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = engine.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match engine.prune(retention).await {
                    Ok(0) => {}
                    Ok(jobs) => tracing::info!(jobs, "deleted finished jobs past their retention"),
                    Err(error) => tracing::warn!(%error, "could not delete old jobs"),
                }
            }
        });
    }

    /// Deletes the jobs that finished more than `retention` ago; returns how many.
    pub async fn prune(&self, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = rfc3339(OffsetDateTime::now_utc() - retention);
        self.store.prune_jobs(&cutoff).await
    }
}
