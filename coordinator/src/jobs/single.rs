//! One job on one host: stored, its phases run (recording, then the analysis where it runs
//! elsewhere), its end stored once and only then acknowledged to the agent.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;
use tracevisor_lttng::lifecycle;
use tracevisor_protocol::JobSpec;

use super::agent::Ack;
use super::fleet::json_size;
use super::route::{Plan, Route};
use super::{now, Engine, JobRequest, JobView, SubmitError, MAX_RESULT_BYTES};
use crate::model::{JobError, JobRecord, JobStatus, KeptTrace, SshAccess, Step};
use crate::profiles::Profile;
use crate::ssh::{SshExecutor, SshTarget};
use crate::store::StoreError;

/// Attempts at storing a job's end before it is reported as failed to store.
const STORE_ATTEMPTS: u32 = 3;

/// Why a job's run stopped without a result.
pub enum Stop {
    /// It failed; `ack` tells the agent once the failure is stored (when it reported it).
    Failed(JobError, Option<Ack>),
    /// The coordinator is shutting down and the job runs on an agent: the agent finishes it
    /// and delivers the result to the next run, which stores it.
    LeftToAgent,
}

impl From<JobError> for Stop {
    fn from(e: JobError) -> Self {
        Stop::Failed(e, None)
    }
}

/// A phase's (or a job's) result, with the agent's acknowledgement to send once it is stored.
pub type PhaseResult = Result<(Json, Option<Ack>), Stop>;

impl Engine {
    /// Creates a job from a validated request and starts it; returns its id and live view.
    pub async fn submit(self: &Arc<Self>, req: JobRequest) -> Result<(u64, JobView), SubmitError> {
        self.check_relay(req.relay.as_deref()).await?;
        // In a cluster, the member holding the host's agent link runs the job.
        if let Some(remote) = self.remote_agent(&req.host).await? {
            return self.submit_forwarded(req, remote).await;
        }
        let plan = self.plan(&req).await?;
        let admission = self.admit(vec![plan.route.name()])?;
        let record = JobRecord {
            host: Some(req.host.clone()),
            analysis: Some(
                plan.analysis_host
                    .clone()
                    .unwrap_or_else(|| req.host.clone()),
            ),
            via: Some(plan.route.via()),
            analysis_via: plan.analysis_route.as_ref().map(Route::via),
            phases: Some(if plan.analysis_route.is_some() { 2 } else { 1 }),
            agent: match &plan.route {
                Route::Agent { hostname } => Some(hostname.clone()),
                Route::Ssh(_) => None,
            },
            ..JobRecord::started(
                &req.analysis_type,
                &req.username,
                req.duration,
                req.relay.clone(),
                &now(),
            )
        };
        let (stored, rx, cancel) = self.store_new_job(&record).await?;
        let job_id = stored.id;
        if let Some(session) = plan.ssh_session(&self.instance, job_id) {
            // Recorded before the session exists, so a crash leaves a trail to destroy it.
            if let Err(error) = self.store.set_job_ssh_session(job_id, &session).await {
                tracing::warn!(job_id, %error, "could not record the job's SSH session");
            }
        }
        let engine = self.clone();
        self.spawn(async move {
            let ended = engine.execute(job_id, &req, &plan, &cancel).await;
            engine.finish(job_id, ended).await;
            drop(admission);
        });
        Ok((job_id, rx))
    }

    /// Runs a job's phases.
    pub(super) async fn execute(
        self: &Arc<Self>,
        job_id: u64,
        req: &JobRequest,
        plan: &Plan,
        cancel: &CancellationToken,
    ) -> PhaseResult {
        let profile = &plan.profile;
        // Kernel profiles fail before any session exists on hosts without the kernel tracer.
        if profile.needs_kernel() {
            if let Route::Agent { hostname } = &plan.route {
                if let Some(caps) = self.hub.capabilities(hostname) {
                    if !caps.kernel_tracer {
                        let why = caps.kernel_tracer_error.unwrap_or_else(|| {
                            "kernel tracer not available (lttng-modules not loaded)".into()
                        });
                        return Err(JobError::new(
                            Step::Kernel,
                            &req.host,
                            format!(
                                "host {}: {why}; analysis {} needs kernel events",
                                req.host, profile.analysis
                            ),
                        )
                        .into());
                    }
                }
            }
        }
        let spec = plan.trace_spec(&self.instance, job_id, req);
        let phase = self
            .run_phase(job_id, &plan.route, &spec, profile, cancel, None)
            .await;
        let (mut traced, ack) = match phase {
            // A local trace the job keeps stays where the job wrote it even when its analysis
            // fails: say where, so it can be fetched and looked at.
            Err(Stop::Failed(mut error, ack))
                if req.keep_trace
                    && plan.analysis_route.is_none()
                    && plan.relay.is_none()
                    && error.step == Step::Analysis =>
            {
                error.kept_trace =
                    Some(Box::new(kept_trace(&plan.route, spec.session_name.clone())));
                return Err(Stop::Failed(error, ack));
            }
            other => other?,
        };
        let Some(analysis_route) = &plan.analysis_route else {
            note_kept_trace(&mut traced, &plan.route);
            return Ok((traced, ack));
        };
        // The recording phase's result is not the job's end: nothing of it needs storing.
        if let Some(ack) = ack {
            ack.send().await;
        }
        let analysis_spec = plan.analysis_spec(&spec, &self.config.relay_output_dirs);
        let (mut result, ack) = self
            .run_phase(
                job_id,
                analysis_route,
                &analysis_spec,
                profile,
                cancel,
                Some(JobStatus::AnalysisRunning),
            )
            .await?;
        result["recorded_on"] = json!(plan.route.name());
        note_kept_trace(&mut result, analysis_route);
        Ok((result, ack))
    }

    async fn run_phase(
        self: &Arc<Self>,
        job_id: u64,
        route: &Route,
        spec: &JobSpec,
        profile: &Profile,
        cancel: &CancellationToken,
        progress_base: Option<JobStatus>,
    ) -> PhaseResult {
        match route {
            Route::Agent { hostname } => {
                self.run_agent_phase(job_id, hostname, spec, cancel, progress_base)
                    .await
            }
            Route::Ssh(target) => Ok((
                self.run_ssh_phase(job_id, target, spec, profile, cancel, progress_base)
                    .await?,
                None,
            )),
        }
    }

    /// Runs a phase over SSH. Cancellation, including the coordinator's shutdown, stops and
    /// destroys the session before this returns.
    async fn run_ssh_phase(
        self: &Arc<Self>,
        job_id: u64,
        target: &SshTarget,
        spec: &JobSpec,
        profile: &Profile,
        cancel: &CancellationToken,
        progress_base: Option<JobStatus>,
    ) -> Result<Json, JobError> {
        let exec = SshExecutor::connect(target, &self.ssh).await?;
        let result = async {
            let engine = self.clone();
            let progress = move |status: i8, _: &str| {
                let Some(status) = JobStatus::from_code(i64::from(status)) else {
                    return;
                };
                let status = progress_base.map_or(status, |b| status.max(b));
                let writer = engine.clone();
                engine.spawn(async move {
                    let _ = writer.set_status(job_id, status).await;
                });
            };
            // First the host's own tracesd: the pre-flight and every step in one command.
            if let (None, Some(program)) = (&spec.analysis_only, &self.ssh.tracesd) {
                let kind = (profile.needs_kernel(), profile.analysis.as_str());
                match exec
                    .run_job_remotely(program, spec, kind, &progress, cancel)
                    .await
                {
                    Ok(outcome) => {
                        tracing::info!(job_id, host = %target.display, program, "the host's tracesd ran the whole job: one command over ssh");
                        return outcome;
                    }
                    Err(why) => {
                        tracing::info!(job_id, host = %target.display, %why, "no usable tracesd on the host: the job runs one command per step")
                    }
                }
            }
            if spec.analysis_only.is_none() {
                tracevisor_lttng::remote::preflight(
                    &exec,
                    profile.needs_kernel(),
                    &profile.analysis,
                )
                .await?;
            }
            lifecycle::run_job(&exec, spec, &progress, cancel).await
        }
        .await;
        exec.close().await;
        result.map_err(|e| {
            let mut e = JobError::from(e);
            if e.step == Step::Cancelled && self.shutdown.is_cancelled() {
                e.step = Step::CoordinatorShutdown;
                e.message = format!(
                    "host {}: the coordinator shut down during the job; its session was destroyed",
                    target.display
                );
            }
            e
        })
    }

    /// Stores the end of a job (once), then acknowledges the agent's result, then wakes the
    /// job's waiters. A job left to its agent at shutdown is not ended here.
    pub(super) async fn finish(&self, job_id: u64, ended: PhaseResult) {
        let (result, ack) = match ended {
            Err(Stop::LeftToAgent) => {
                tracing::info!(job_id, "coordinator shutting down: the agent finishes the job and delivers its result to the next run");
                self.forget(job_id, None);
                return;
            }
            Ok((result, ack)) => (within_result_limit(result), ack),
            Err(Stop::Failed(e, ack)) => (Err(e), ack),
        };
        match &result {
            Ok(_) => tracing::info!(job_id, "job complete"),
            Err(e) => {
                tracing::warn!(job_id, step = %e.step, host = ?e.host, message = %e.message, "job failed")
            }
        }
        match self.store_end(job_id, result.as_ref()).await {
            Ok(record) => {
                if let Some(ack) = ack {
                    ack.send().await;
                }
                let record = match record {
                    Some(r) => {
                        crate::metrics::job_ended(&r);
                        Some(r)
                    }
                    // Already ended (a duplicate): show what is stored.
                    None => self.store.job(job_id).await.ok().flatten(),
                };
                self.forget(job_id, record);
            }
            Err(error) => {
                // Not acknowledged: the agent keeps its result and sends it again after its
                // next reconnect, when it is stored.
                tracing::error!(job_id, %error, "cannot store the job's end");
                let shown = self.store.job(job_id).await.ok().flatten().map(|mut r| {
                    r.status = JobStatus::Failed;
                    r.error = Some(JobError::new(
                        Step::Store,
                        "",
                        format!("the job's end could not be stored: {error}"),
                    ));
                    r
                });
                self.forget(job_id, shown);
            }
        }
    }

    /// Writes a job's end, retrying a failed write.
    async fn store_end(
        &self,
        job_id: u64,
        result: Result<&Json, &JobError>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.store.finish_job(job_id, result, &now()).await {
                Err(error) if attempt < STORE_ATTEMPTS => {
                    tracing::warn!(job_id, attempt, %error, "storing the job's end failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Writes where a kept trace is (`kept_trace`) into a job's final result, from the route of
/// the phase that analysed it and the path its host gave; removes any `kept_trace` a host put
/// there itself.
fn note_kept_trace(result: &mut Json, route: &Route) {
    let Some(object) = result.as_object_mut() else {
        return;
    };
    object.remove("kept_trace");
    let kept = object.get("trace_kept") == Some(&Json::Bool(true));
    let Some(path) = object.get("trace_path").and_then(Json::as_str) else {
        return;
    };
    if !kept {
        return;
    }
    if let Ok(home) = serde_json::to_value(kept_trace(route, path.to_owned())) {
        object.insert("kept_trace".into(), home);
    }
}

/// Where a trace at `path` on the host of `route` is, and how this coordinator reaches it.
fn kept_trace(route: &Route, path: String) -> KeptTrace {
    KeptTrace {
        host: route.name(),
        via: route.via(),
        path,
        agent: match route {
            Route::Agent { hostname } => Some(hostname.clone()),
            Route::Ssh(_) => None,
        },
        ssh: match route {
            Route::Agent { .. } => None,
            Route::Ssh(t) => Some(SshAccess {
                address: t.address.clone(),
                port: t.port,
                user: t.user.clone(),
            }),
        },
    }
}

/// Results are bounded like on the agent link (its frame limit), whichever path made them:
/// an SSH host's analysis could print any amount.
fn within_result_limit(result: Json) -> Result<Json, JobError> {
    let size = json_size(&result);
    if size <= MAX_RESULT_BYTES {
        return Ok(result);
    }
    Err(JobError::new(
        Step::Result,
        result["host"].as_str().unwrap_or_default(),
        format!(
            "the result is {size} bytes; results are limited to {} MiB",
            MAX_RESULT_BYTES >> 20
        ),
    ))
}
