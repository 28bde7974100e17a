//! The job engine: validates trace requests, resolves the host (agent, registered client over
//! SSH, or the address over SSH), persists jobs, runs them through the agent link or the SSH
//! driver with the shared lifecycle, and stores their results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value as Json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracesd::lifecycle::{self, StepError};
use tracevisor_protocol::{
    JobOutcome, JobSpec, Message, Summary as WireSummary, TraceLocator, TraceOutput,
};

use crate::config::Config;
use crate::db::{record_key, Store, StoreError};
use crate::hub::{rfc3339, AgentEvent, Hub};
use crate::profiles::{Profile, Summary};
use crate::registry::{FieldError, HostRecord, Kind, DEFAULT_CTRLPORT, DEFAULT_DATAPORT};
use crate::ssh::{SshExecutor, SshSettings, SshTarget};
use crate::validate;

/// Job statuses, as the seed's `/list` shows them.
pub const STARTED: i64 = 1;
pub const TRACE_RUNNING: i64 = 2;
pub const ANALYSIS_RUNNING: i64 = 3;
pub const COMPLETE: i64 = 4;
pub const FAILED: i64 = -1;

/// Extra time an agent gets beyond the trace duration before its job is declared lost.
const AGENT_GRACE: Duration = Duration::from_secs(15 * 60 + 60);
/// How long a reconnected agent that no longer runs a job has to send its result.
const RESTART_GRACE: Duration = Duration::from_secs(10);

/// A validated trace request.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub host: String,
    pub duration: f64,
    pub analysis_type: String,
    pub username: String,
    pub relay: Option<String>,
    pub analysis_host: Option<String>,
    pub mongohost: Option<String>,
    pub mongoport: Option<u16>,
    pub wait: bool,
}

fn field_str(
    body: &Map<String, Json>,
    field: &str,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match body.get(field) {
        None | Some(Json::Null) if required => Err(FieldError::new(field, "is required")),
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

impl JobRequest {
    /// Validates a `POST /analyses` body; errors name the field.
    pub fn parse(body: &Map<String, Json>, config: &Config) -> Result<JobRequest, FieldError> {
        let host = field_str(body, "host", true)?.unwrap_or_default();
        validate::hostname(&host).map_err(|e| FieldError::new("host", format!("{host:?} {e}")))?;
        let duration = match body.get("duration") {
            None | Some(Json::Null) => return Err(FieldError::new("duration", "is required")),
            Some(v) => v.as_f64().ok_or_else(|| {
                FieldError::new("duration", format!("must be a number of seconds, got {v}"))
            })?,
        };
        let max = config.max_duration_secs as f64;
        if !(duration > 0.0 && duration <= max) {
            return Err(FieldError::new(
                "duration",
                format!("{duration} is not in (0, {max}] seconds"),
            ));
        }
        let analysis_type = field_str(body, "type", true)?.unwrap_or_default();
        if !config.profiles.contains_key(&analysis_type) {
            let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
            return Err(FieldError::new(
                "type",
                format!(
                    "unknown analysis type {analysis_type:?}; known types: {}",
                    known.join(", ")
                ),
            ));
        }
        let username = field_str(body, "username", true)?.unwrap_or_default();
        validate::username(&username)
            .map_err(|e| FieldError::new("username", format!("{username:?} {e}")))?;
        let optional_host = |field: &str| -> Result<Option<String>, FieldError> {
            let value = field_str(body, field, false)?.filter(|s| !s.is_empty());
            if let Some(v) = &value {
                validate::hostname(v).map_err(|e| FieldError::new(field, format!("{v:?} {e}")))?;
            }
            Ok(value)
        };
        let relay = optional_host("relay")?;
        let analysis_host = optional_host("analysis")?;
        let mongohost = optional_host("mongohost")?;
        let mongoport = match body.get("mongoport") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let n = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        FieldError::new("mongoport", format!("must be a port number, got {v}"))
                    })?;
                Some(validate::port(n).map_err(|e| FieldError::new("mongoport", e))?)
            }
        };
        let wait = match body.get("wait") {
            None | Some(Json::Null) => true,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(FieldError::new(
                    "wait",
                    format!("must be a boolean, got {other}"),
                ))
            }
        };
        Ok(JobRequest {
            host,
            duration,
            analysis_type,
            username,
            relay,
            analysis_host,
            mongohost,
            mongoport,
            wait,
        })
    }
}

/// What a job resolved to before it runs.
struct Plan {
    profile: Profile,
    route: Route,
    relay: Option<HostRecord>,
    analysis_host: Option<String>,
    analysis_route: Option<Route>,
}

/// Job ids of fleet children: `CHILD_ID_BASE + (fleet id << 20) + index`. Children are not
/// stored on their own; their outcomes are entries of the fleet's record.
pub const CHILD_ID_BASE: u64 = 1 << 40;

fn child_id(fleet_id: u64, index: usize) -> u64 {
    CHILD_ID_BASE + (fleet_id << 20) + index as u64
}

/// The fleet and index of a child job id.
fn child_of(job_id: u64) -> Option<(u64, usize)> {
    let rest = job_id.checked_sub(CHILD_ID_BASE)?;
    Some((rest >> 20, (rest & 0xF_FFFF) as usize))
}

/// Which hosts a fleet job runs on.
#[derive(Debug, Clone)]
pub enum HostSelection {
    /// These hosts.
    List(Vec<String>),
    /// Every connected agent, optionally only those with the given capabilities.
    Agents { require: Vec<String> },
}

/// A validated fleet request: the same analysis on many hosts.
#[derive(Debug, Clone)]
pub struct FleetRequest {
    pub hosts: HostSelection,
    /// The request each child job is made from (its `host` is replaced).
    pub template: JobRequest,
    /// Seconds each host may take beyond the duration before its outcome is `timeout`.
    pub host_timeout: f64,
}

/// Default `host_timeout`: room for session set-up, flush and analysis.
pub const DEFAULT_HOST_TIMEOUT: f64 = 120.0;
/// Most hosts one fleet request may name.
pub const MAX_FLEET_HOSTS: usize = 10_000;
/// Capabilities a fleet selector may require.
pub const CAPABILITIES: [&str; 4] = [
    "kernel_tracer",
    "userspace_tracer",
    "babeltrace2",
    "sessiond_running",
];

fn capability(caps: &tracevisor_protocol::Capabilities, name: &str) -> bool {
    match name {
        "kernel_tracer" => caps.kernel_tracer,
        "userspace_tracer" => caps.userspace_tracer,
        "babeltrace2" => caps.babeltrace2,
        "sessiond_running" => caps.sessiond_running,
        _ => false,
    }
}

impl FleetRequest {
    /// Validates a `POST /analyses` body that has `hosts`.
    pub fn parse(body: &Map<String, Json>, config: &Config) -> Result<FleetRequest, FieldError> {
        let hosts = match body.get("hosts") {
            Some(Json::Array(items)) => {
                if items.is_empty() || items.len() > MAX_FLEET_HOSTS {
                    return Err(FieldError::new(
                        "hosts",
                        format!("must list 1 to {MAX_FLEET_HOSTS} hosts"),
                    ));
                }
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    let host = item.as_str().ok_or_else(|| {
                        FieldError::new("hosts", format!("must be strings, got {item}"))
                    })?;
                    validate::hostname(host)
                        .map_err(|e| FieldError::new("hosts", format!("{host:?} {e}")))?;
                    if list.iter().any(|h| h == host) {
                        return Err(FieldError::new(
                            "hosts",
                            format!("{host:?} is listed twice"),
                        ));
                    }
                    list.push(host.to_owned());
                }
                HostSelection::List(list)
            }
            Some(Json::Object(selector)) => {
                if selector.get("agents").and_then(Json::as_str) != Some("connected") {
                    return Err(FieldError::new(
                        "hosts",
                        "a selector must be {\"agents\": \"connected\", \"require\": [...]}",
                    ));
                }
                let require = match selector.get("require") {
                    None | Some(Json::Null) => Vec::new(),
                    Some(Json::Array(items)) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .filter(|c| CAPABILITIES.contains(c))
                                .map(str::to_owned)
                                .ok_or_else(|| {
                                    FieldError::new(
                                        "hosts",
                                        format!(
                                            "unknown capability {i}; known: {}",
                                            CAPABILITIES.join(", ")
                                        ),
                                    )
                                })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(FieldError::new(
                            "hosts",
                            format!("require must be a list, got {other}"),
                        ))
                    }
                };
                HostSelection::Agents { require }
            }
            other => {
                return Err(FieldError::new(
                    "hosts",
                    format!(
                        "must be a list of hosts or a selector, got {}",
                        other.unwrap_or(&Json::Null)
                    ),
                ))
            }
        };
        if body.contains_key("host") {
            return Err(FieldError::new(
                "host",
                "give either host or hosts, not both",
            ));
        }
        let mut single = body.clone();
        single.insert("host".into(), json!("fleet.invalid"));
        let template = JobRequest::parse(&single, config)?;
        let host_timeout = match body.get("host_timeout") {
            None | Some(Json::Null) => DEFAULT_HOST_TIMEOUT,
            Some(v) => v
                .as_f64()
                .filter(|t| *t > 0.0 && *t <= 24.0 * 3600.0)
                .ok_or_else(|| {
                    FieldError::new(
                        "host_timeout",
                        format!("must be seconds in (0, 86400], got {v}"),
                    )
                })?,
        };
        Ok(FleetRequest {
            hosts,
            template,
            host_timeout,
        })
    }
}

/// Counts of each outcome.
/// Largest result a job stores: the agent link's frame limit, applied to every path.
pub const MAX_RESULT_BYTES: usize = tracevisor_protocol::MAX_FRAME_BYTES;

/// Most bytes of per-host results a fleet record holds: one transaction must fit the storage
/// engine's write buffer (`db_memtable_mib`, at least 32 MiB).
pub const FLEET_RESULTS_BUDGET: usize = 24 << 20;

/// Bytes of `value` as JSON text, counted without building the text.
fn json_size(value: &Json) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Size of a fleet entry's result, measured once when the entry arrives (0 without one).
fn result_size(entry: &Json) -> usize {
    match &entry["result"] {
        Json::Null => 0,
        result => json_size(result),
    }
}

/// `entries` with the results past `budget` bytes (in host order) replaced by a note; `None`
/// when they all fit. `sizes[i]` is [`result_size`] of `entries[i]`.
fn within_results_budget(entries: &[Json], sizes: &[usize], budget: usize) -> Option<Vec<Json>> {
    if sizes.iter().sum::<usize>() <= budget {
        return None;
    }
    let mut used = 0;
    let bounded = entries
        .iter()
        .zip(sizes.iter().copied())
        .map(|(entry, size)| {
            if size == 0 || used + size <= budget {
                used += size;
                return entry.clone();
            }
            let mut entry = entry.clone();
            entry["result"] = json!({
                "omitted": format!(
                    "this host's result ({size} bytes) is not stored: a fleet record holds at most {} MiB of results; trace the host on its own to get it",
                    budget >> 20
                )
            });
            entry
        })
        .collect();
    Some(bounded)
}

fn outcome_counts(entries: &[Json]) -> Json {
    let mut counts = serde_json::Map::new();
    for key in [
        "complete", "error", "offline", "timeout", "skipped", "pending",
    ] {
        counts.insert(
            key.into(),
            json!(entries.iter().filter(|e| e["outcome"] == key).count()),
        );
    }
    Json::Object(counts)
}

/// How a host is reached.
#[derive(Debug, Clone)]
pub enum Route {
    Agent { hostname: String },
    Ssh(SshTarget),
}

impl Route {
    fn via(&self) -> &'static str {
        match self {
            Route::Agent { .. } => "agent",
            Route::Ssh(_) => "ssh",
        }
    }

    fn name(&self) -> String {
        match self {
            Route::Agent { hostname } => hostname.clone(),
            Route::Ssh(t) => t.display.clone(),
        }
    }
}

/// An error of a job run, with the HTTP status its synchronous answer carries.
#[derive(Debug, Clone)]
pub struct JobError {
    pub step: String,
    pub host: String,
    pub message: String,
}

impl From<StepError> for JobError {
    fn from(e: StepError) -> Self {
        // The lifecycle's message already names the host and the step.
        let message = e.to_string();
        JobError {
            step: e.step,
            host: e.host,
            message,
        }
    }
}

/// HTTP status of a failed job's answer, by the step that failed.
pub fn status_for_step(step: &str) -> u16 {
    match step {
        "ssh-connect" | "agent-lost" | "agent-restart" | "coordinator-restart" => 503,
        "kernel" | "preflight" | "validate" => 422,
        "cancelled" => 409,
        // Some hosts of a fleet did not complete: the body has each host's outcome.
        "fleet" => 207,
        "timeout" => 504,
        _ => 502,
    }
}

struct PendingAgentJob {
    hostname: String,
    progress_base: Option<i64>,
    done: oneshot::Sender<JobOutcome>,
}

/// The job engine.
pub struct Engine {
    store: Store,
    hub: Arc<Hub>,
    config: Arc<Config>,
    ssh: SshSettings,
    /// The registry's instance id, part of session names.
    instance: String,
    /// Agent phases waiting for their result, by job id.
    pending: Mutex<HashMap<u64, PendingAgentJob>>,
    /// Cancellation of running jobs, by job id.
    cancels: Mutex<HashMap<u64, CancellationToken>>,
    /// Latest view of running jobs, for waiters.
    watchers: Mutex<HashMap<u64, watch::Sender<Option<Json>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        config: Arc<Config>,
        ssh: SshSettings,
        instance: String,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            hub,
            config,
            ssh,
            instance,
            pending: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        })
    }

    /// Jobs (single or fleet) running now.
    pub fn running(&self) -> usize {
        lock(&self.cancels).len()
    }

    /// Deletes finished jobs past their retention now and then, until `shutdown`. A retention of
    /// zero keeps every job.
    pub fn spawn_pruner(self: &Arc<Self>, retention: Duration, shutdown: CancellationToken) {
        if retention.is_zero() {
            return;
        }
        let engine = self.clone();
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
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
        let cutoff = OffsetDateTime::now_utc() - retention;
        let rows = self
            .store
            .query(
                "DELETE job WHERE status IN [4, -1] AND finished != NONE AND <datetime> finished < <datetime> $cutoff RETURN VALUE id",
                json!({ "cutoff": rfc3339(cutoff) }),
            )
            .await?;
        Ok(rows.len())
    }

    /// Marks the SSH jobs a previous coordinator process was running as failed.
    pub async fn recover(&self) -> Result<(), StoreError> {
        let rows = self
            .store
            .query(
                "UPDATE job SET status = -1, finished = $now, error = { step: 'coordinator-restart', host: host, message: 'coordinator restarted' } WHERE status IN [1, 2, 3] AND via = 'ssh' RETURN AFTER",
                json!({ "now": rfc3339(OffsetDateTime::now_utc()) }),
            )
            .await?;
        if !rows.is_empty() {
            tracing::warn!(
                jobs = rows.len(),
                "marked SSH jobs of the previous run failed (coordinator restarted)"
            );
        }
        Ok(())
    }

    /// Consumes agent events (progress, results, hellos) for the engine's life.
    pub fn spawn_event_loop(self: &Arc<Self>, mut events: mpsc::UnboundedReceiver<AgentEvent>) {
        let engine = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                engine.on_agent_event(event).await;
            }
        });
    }

    async fn on_agent_event(self: &Arc<Self>, event: AgentEvent) {
        match event.message {
            Message::JobProgress {
                job_id,
                status,
                message,
            } => {
                let base = lock(&self.pending).get(&job_id).map(|p| p.progress_base);
                let Some(base) = base else { return };
                // An analysis-only phase reports 3 from the start; keep statuses monotonic.
                let status = i64::from(status).max(base.unwrap_or(0));
                tracing::debug!(job_id, status, %message, "job progress");
                let _ = self.set_status(job_id, status).await;
            }
            Message::JobResult { job_id, outcome } => {
                let pending = lock(&self.pending).remove(&job_id);
                match pending {
                    Some(p) => {
                        let _ = p.done.send(outcome);
                    }
                    None => self.orphan_result(job_id, &event.hostname, outcome).await,
                }
                // Stored (or already stored): the agent may forget it.
                let _ = self
                    .hub
                    .send(&event.hostname, Message::ResultAck { job_id })
                    .await;
            }
            Message::Close { reason, message } => {
                // The host's link is gone: its jobs keep running on the agent, and a reconnect
                // within the grace delivers their results; past it they are failed.
                let grace =
                    self.config.heartbeat_interval * tracevisor_protocol::DEAD_AFTER_INTERVALS;
                let jobs: Vec<u64> = lock(&self.pending)
                    .iter()
                    .filter(|(_, p)| p.hostname == event.hostname)
                    .map(|(id, _)| *id)
                    .collect();
                for job_id in jobs {
                    let engine = self.clone();
                    let hostname = event.hostname.clone();
                    let why = format!("{reason}: {message}");
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if engine.hub.find(&hostname).is_some() {
                            return; // back in time; the Hello handling covers a lost job
                        }
                        let pending = lock(&engine.pending).remove(&job_id);
                        if let Some(p) = pending {
                            let _ = p.done.send(JobOutcome::Err {
                                step: "agent-lost".into(),
                                message: format!(
                                    "host {hostname}: the agent's link closed during the job ({why}) and it did not reconnect within {} s",
                                    grace.as_secs()
                                ),
                            });
                        }
                    });
                }
            }
            Message::Hello(hello) => {
                let lost: Vec<u64> = lock(&self.pending)
                    .iter()
                    .filter(|(id, p)| {
                        p.hostname == hello.hostname && !hello.running_jobs.contains(id)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for job_id in lost {
                    let engine = self.clone();
                    let hostname = hello.hostname.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RESTART_GRACE).await;
                        let pending = lock(&engine.pending).remove(&job_id);
                        if let Some(p) = pending {
                            let _ = p.done.send(JobOutcome::Err {
                                step: "agent-restart".into(),
                                message: format!("host {hostname}: the agent reconnected without this job (it restarted); the job is lost"),
                            });
                        }
                    });
                }
            }
            _ => {}
        }
    }

    /// A result for a job no task waits for (the coordinator restarted): store it if the job
    /// is still open and was a single-phase agent job.
    async fn orphan_result(&self, job_id: u64, hostname: &str, outcome: JobOutcome) {
        let Ok(Some(job)) = self.get(job_id).await else {
            return;
        };
        let status = job["status"].as_i64().unwrap_or(FAILED);
        if status == COMPLETE || status == FAILED {
            tracing::debug!(job_id, "duplicate result ignored");
            return;
        }
        if job["phases"].as_i64() == Some(1) {
            tracing::info!(job_id, %hostname, "result of a job started before the coordinator restarted");
            let _ = self.finish(job_id, outcome_to_result(outcome)).await;
        } else {
            let error = JobError {
                step: "coordinator-restart".into(),
                host: hostname.to_owned(),
                message: "coordinator restarted between the trace and the analysis".into(),
            };
            let _ = self.finish(job_id, Err(error)).await;
        }
    }

    /// Resolves how to reach `host`: a connected agent, a registered client, or the address.
    pub async fn route(&self, host: &str, username: &str) -> Result<Route, StoreError> {
        if let Some(hostname) = self.hub.find(host) {
            return Ok(Route::Agent { hostname });
        }
        let clients = self.store.list(Kind::Clients).await?;
        if let Some(c) = clients.iter().find(|c| {
            c.hostname == host || c.ipv4.as_deref() == Some(host) || c.ipv6.as_deref() == Some(host)
        }) {
            return Ok(Route::Ssh(SshTarget {
                display: host.to_owned(),
                address: c.address(),
                port: c.sshport.unwrap_or(22),
                user: c.sshuser.clone().unwrap_or_else(|| "root".into()),
            }));
        }
        Ok(Route::Ssh(SshTarget {
            display: host.to_owned(),
            address: host.to_owned(),
            port: 22,
            user: username.to_owned(),
        }))
    }

    /// Resolves a host that is only reached to analyse (analyses servers count as clients).
    async fn analysis_route(&self, host: &str, username: &str) -> Result<Route, StoreError> {
        if self.hub.find(host).is_none() {
            if let Some(server) = self
                .store
                .find_by_hostname(Kind::AnalysesServers, host)
                .await?
            {
                return Ok(Route::Ssh(SshTarget {
                    display: host.to_owned(),
                    address: server.address(),
                    port: server.sshport.unwrap_or(22),
                    user: server.sshuser.clone().unwrap_or_else(|| "root".into()),
                }));
            }
        }
        self.route(host, username).await
    }

    /// Stores a new job (its id from the job sequence) and registers its live view and its
    /// cancellation.
    async fn store_new_job(
        &self,
        job: Json,
    ) -> Result<(u64, watch::Receiver<Option<Json>>, CancellationToken), StoreError> {
        let rows = self
            .store
            .query(
                "CREATE type::record('job', sequence::nextval('job_id')) CONTENT $job RETURN AFTER",
                json!({ "job": job }),
            )
            .await?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Db("job create returned nothing".into()))?;
        let job_id = record_key(&row["id"])?;
        let (tx, rx) = watch::channel(Some(job_view(row)));
        lock(&self.watchers).insert(job_id, tx);
        let cancel = CancellationToken::new();
        lock(&self.cancels).insert(job_id, cancel.clone());
        Ok((job_id, rx, cancel))
    }

    /// Resolves everything a job needs before it runs: profile, route, relay, analysis host.
    async fn plan(&self, req: &JobRequest) -> Result<Plan, StoreError> {
        let profile = self.config.profiles[&req.analysis_type].clone();
        let route = self.route(&req.host, &req.username).await?;
        // The relay: registered (ports from the registry) or an address with default ports.
        let relay = match &req.relay {
            None => None,
            Some(name) => Some(
                match self.store.find_by_hostname(Kind::Relays, name).await? {
                    Some(r) => r,
                    None => {
                        let mut r = HostRecord::new(Kind::Relays, name.clone(), None, None);
                        r.ctrlport = Some(DEFAULT_CTRLPORT);
                        r.dataport = Some(DEFAULT_DATAPORT);
                        r
                    }
                },
            ),
        };
        // Where the analysis runs: the analysis host, else the relay, else the traced host.
        let analysis_host = req
            .analysis_host
            .clone()
            .or_else(|| relay.as_ref().map(|r| r.hostname.clone()));
        let analysis_route = match &analysis_host {
            Some(h) if relay.is_some() => Some(self.analysis_route(h, &req.username).await?),
            _ => None,
        };
        Ok(Plan {
            profile,
            route,
            relay,
            analysis_host,
            analysis_route,
        })
    }

    /// Creates a job from a validated request and starts it; returns its id and live views.
    pub async fn submit(
        self: &Arc<Self>,
        req: JobRequest,
    ) -> Result<(u64, watch::Receiver<Option<Json>>), StoreError> {
        let Plan {
            profile,
            route,
            relay,
            analysis_host,
            analysis_route,
        } = self.plan(&req).await?;
        let now = rfc3339(OffsetDateTime::now_utc());
        let job = json!({
            "host": req.host,
            "type": req.analysis_type,
            "username": req.username,
            "duration": req.duration,
            "relay": req.relay,
            "analysis": analysis_host.clone().unwrap_or_else(|| req.host.clone()),
            "via": route.via(),
            "analysis_via": analysis_route.as_ref().map(Route::via),
            "phases": if analysis_route.is_some() { 2 } else { 1 },
            "status": STARTED,
            "created": now,
            "started": now,
        });
        let (job_id, rx, cancel) = self.store_new_job(job).await?;
        let engine = self.clone();
        tokio::spawn(async move {
            let result = engine
                .execute(
                    job_id,
                    &req,
                    &profile,
                    &route,
                    relay.as_ref(),
                    analysis_route.as_ref(),
                    &cancel,
                )
                .await;
            let _ = engine.finish(job_id, result).await;
        });
        Ok((job_id, rx))
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        self: &Arc<Self>,
        job_id: u64,
        req: &JobRequest,
        profile: &Profile,
        route: &Route,
        relay: Option<&HostRecord>,
        analysis_route: Option<&Route>,
        cancel: &CancellationToken,
    ) -> Result<Json, JobError> {
        // Kernel profiles fail before any session exists on hosts without the kernel tracer.
        if profile.needs_kernel() {
            if let Route::Agent { hostname } = route {
                if let Some(caps) = self.hub.capabilities(hostname) {
                    if !caps.kernel_tracer {
                        let why = caps.kernel_tracer_error.unwrap_or_else(|| {
                            "kernel tracer not available (lttng-modules not loaded)".into()
                        });
                        return Err(JobError {
                            step: "kernel".into(),
                            host: req.host.clone(),
                            message: format!(
                                "host {}: {why}; analysis {} needs kernel events",
                                req.host, profile.analysis
                            ),
                        });
                    }
                }
            }
        }
        let session = lifecycle::session_name(&self.instance, job_id, &sanitize(&route.name()));
        let commands: Vec<Vec<String>> = profile
            .commands
            .iter()
            .map(|argv| {
                argv.iter()
                    .map(|a| match a.as_str() {
                        "{mongohost}" => {
                            req.mongohost.clone().unwrap_or_else(|| "localhost".into())
                        }
                        "{mongoport}" => req.mongoport.unwrap_or(27017).to_string(),
                        _ => a.clone(),
                    })
                    .collect()
            })
            .collect();
        let output = match relay {
            Some(r) => TraceOutput::Relay {
                host: r.address(),
                ctrl_port: r.ctrlport.unwrap_or(DEFAULT_CTRLPORT),
                data_port: r.dataport.unwrap_or(DEFAULT_DATAPORT),
            },
            None => TraceOutput::Local,
        };
        let spec = JobSpec {
            session_name: session,
            analysis: profile.analysis.clone(),
            kernel_events: profile.kernel_events.clone(),
            syscalls: profile.syscalls,
            userspace_events: profile.userspace_events.clone(),
            duration_ms: (req.duration * 1000.0).round() as u64,
            output,
            analysis_commands: commands,
            run_analysis: analysis_route.is_none(),
            summary: match profile.summary {
                Summary::Lami => WireSummary::Lami,
                Summary::Ust => WireSummary::Ust,
            },
            analysis_only: None,
        };
        let traced = self
            .run_phase(job_id, route, &spec, profile, cancel, None)
            .await?;
        let Some(analysis_route) = analysis_route else {
            return Ok(traced);
        };
        let roots = relay
            .and_then(|r| r.output_dir.clone())
            .map(|d| vec![d])
            .unwrap_or_else(|| self.config.relay_output_dirs.clone());
        let analysis_spec = JobSpec {
            analysis_only: Some(TraceLocator::RelaySession { roots }),
            run_analysis: true,
            ..spec
        };
        let mut result = self
            .run_phase(
                job_id,
                analysis_route,
                &analysis_spec,
                profile,
                cancel,
                Some(ANALYSIS_RUNNING),
            )
            .await?;
        result["recorded_on"] = json!(route.name());
        Ok(result)
    }

    async fn run_phase(
        self: &Arc<Self>,
        job_id: u64,
        route: &Route,
        spec: &JobSpec,
        profile: &Profile,
        cancel: &CancellationToken,
        progress_base: Option<i64>,
    ) -> Result<Json, JobError> {
        match route {
            Route::Agent { hostname } => {
                let (done_tx, done_rx) = oneshot::channel();
                lock(&self.pending).insert(
                    job_id,
                    PendingAgentJob {
                        hostname: hostname.clone(),
                        progress_base,
                        done: done_tx,
                    },
                );
                if let Some(base) = progress_base {
                    let _ = self.set_status(job_id, base).await;
                }
                if let Err(e) = self
                    .hub
                    .send(
                        hostname,
                        Message::StartJob {
                            job_id,
                            spec: spec.clone(),
                        },
                    )
                    .await
                {
                    lock(&self.pending).remove(&job_id);
                    return Err(JobError {
                        step: "dispatch".into(),
                        host: hostname.clone(),
                        message: e.to_string(),
                    });
                }
                let deadline = Duration::from_millis(spec.duration_ms) + AGENT_GRACE;
                let mut done_rx = done_rx;
                let outcome = tokio::select! {
                    outcome = &mut done_rx => outcome.ok(),
                    _ = cancel.cancelled() => {
                        let _ = self.hub.send(hostname, Message::CancelJob { job_id }).await;
                        // The agent stops and destroys the session, then reports.
                        tokio::time::timeout(Duration::from_secs(120), done_rx).await.ok().and_then(Result::ok)
                            .or(Some(JobOutcome::Err { step: "cancelled".into(), message: "cancelled".into() }))
                    }
                    _ = tokio::time::sleep(deadline) => None,
                };
                lock(&self.pending).remove(&job_id);
                match outcome {
                    Some(JobOutcome::Ok { result_json }) => serde_json::from_str(&result_json)
                        .map_err(|e| JobError {
                            step: "result".into(),
                            host: hostname.clone(),
                            message: format!(
                                "host {hostname}: the agent sent a result that is not JSON: {e}"
                            ),
                        }),
                    Some(JobOutcome::Err { step, message }) => Err(JobError {
                        step,
                        host: hostname.clone(),
                        message,
                    }),
                    None => Err(JobError {
                        step: "agent-lost".into(),
                        host: hostname.clone(),
                        message: format!(
                            "host {hostname}: no result from the agent within {} s",
                            deadline.as_secs()
                        ),
                    }),
                }
            }
            Route::Ssh(target) => {
                let exec = SshExecutor::connect(target, &self.ssh).await?;
                let result = async {
                    if spec.analysis_only.is_none() {
                        exec.preflight(profile.needs_kernel(), &profile.analysis)
                            .await?;
                    }
                    let engine = self.clone();
                    let progress = move |status: i8, _: &str| {
                        let engine = engine.clone();
                        let status = i64::from(status).max(progress_base.unwrap_or(0));
                        tokio::spawn(async move {
                            let _ = engine.set_status(job_id, status).await;
                        });
                    };
                    lifecycle::run_job(&exec, spec, progress, cancel).await
                }
                .await;
                exec.close().await;
                Ok(result?)
            }
        }
    }

    async fn set_status(&self, job_id: u64, status: i64) -> Result<(), StoreError> {
        if job_id >= CHILD_ID_BASE {
            return Ok(()); // fleet children live in their fleet's record
        }
        let rows = self
            .store
            .query(
                "UPDATE type::record('job', $id) SET status = $status, trace_started = IF $status = 2 THEN $now ELSE trace_started END WHERE status IN [1, 2, 3] AND status < $status RETURN AFTER",
                json!({ "id": job_id, "status": status, "now": rfc3339(OffsetDateTime::now_utc()) }),
            )
            .await?;
        if let Some(row) = rows.into_iter().next() {
            if let Some(tx) = lock(&self.watchers).get(&job_id) {
                let _ = tx.send(Some(job_view(row)));
            }
        }
        Ok(())
    }

    /// Stores the end of a job (once) and wakes its waiters.
    async fn finish(&self, job_id: u64, result: Result<Json, JobError>) -> Result<(), StoreError> {
        let now = rfc3339(OffsetDateTime::now_utc());
        // Results are bounded like on the agent link (its frame limit), whichever path made
        // them: an SSH host's analysis could print any amount.
        let result = result.and_then(|r| {
            let size = json_size(&r);
            if size <= MAX_RESULT_BYTES {
                return Ok(r);
            }
            Err(JobError {
                step: "result".into(),
                host: r["host"].as_str().unwrap_or_default().to_owned(),
                message: format!(
                    "the result is {size} bytes; results are limited to {} MiB",
                    MAX_RESULT_BYTES >> 20
                ),
            })
        });
        let (status, result, error) = match result {
            Ok(r) => (COMPLETE, r, Json::Null),
            Err(e) => {
                tracing::warn!(job_id, step = %e.step, host = %e.host, message = %e.message, "job failed");
                (
                    FAILED,
                    Json::Null,
                    json!({ "step": e.step, "host": e.host, "message": e.message }),
                )
            }
        };
        if status == COMPLETE {
            tracing::info!(job_id, "job complete");
        }
        let rows = self
            .store
            .query(
                "UPDATE type::record('job', $id) SET status = $status, finished = $now, result = $result, error = $error WHERE status IN [1, 2, 3] RETURN AFTER",
                json!({ "id": job_id, "status": status, "now": now, "result": result, "error": error }),
            )
            .await;
        lock(&self.cancels).remove(&job_id);
        let tx = lock(&self.watchers).remove(&job_id);
        let view = match rows {
            Ok(rows) => rows.into_iter().next().map(job_view),
            Err(e) => {
                tracing::error!(job_id, error = %e, "cannot store the job's end");
                None
            }
        };
        if let Some(tx) = tx {
            let view = match view {
                Some(v) => Some(v),
                None => self.get(job_id).await.ok().flatten(),
            };
            let _ = tx.send(view);
        }
        Ok(())
    }

    /// Live views of a running job (`None` when it is not running here).
    pub fn subscribe(&self, job_id: u64) -> Option<watch::Receiver<Option<Json>>> {
        lock(&self.watchers)
            .get(&job_id)
            .map(watch::Sender::subscribe)
    }

    /// Creates a fleet job: one child job per host, all started together; returns the fleet.
    pub async fn submit_fleet(
        self: &Arc<Self>,
        req: FleetRequest,
    ) -> Result<(u64, watch::Receiver<Option<Json>>), StoreError> {
        let profile = self.config.profiles[&req.template.analysis_type].clone();
        let statuses = self.hub.statuses();
        let hosts: Vec<String> = match &req.hosts {
            HostSelection::List(hosts) => hosts.clone(),
            HostSelection::Agents { .. } => {
                let mut names = self.hub.hostnames();
                names.sort();
                names
            }
        };
        let required: Vec<String> = match &req.hosts {
            HostSelection::Agents { require } => require.clone(),
            HostSelection::List(_) => Vec::new(),
        };
        // Outcomes known before anything runs: offline agents and missing capabilities.
        let mut entries: Vec<Json> = Vec::with_capacity(hosts.len());
        let mut to_run: Vec<(usize, String)> = Vec::new();
        for (index, host) in hosts.iter().enumerate() {
            let agent = self.hub.find(host);
            let known_agent = statuses.get(host.as_str());
            let skip_reason = agent.as_ref().and_then(|name| {
                let caps = self.hub.capabilities(name)?;
                let mut missing: Vec<String> = required
                    .iter()
                    .filter(|r| !capability(&caps, r))
                    .cloned()
                    .collect();
                if profile.needs_kernel()
                    && !caps.kernel_tracer
                    && !missing.iter().any(|m| m == "kernel_tracer")
                {
                    missing.push("kernel_tracer".into());
                }
                (!missing.is_empty()).then(|| format!("missing capability: {}", missing.join(", ")))
            });
            let entry = if agent.is_none() && known_agent.is_some_and(|a| !a.connected) {
                json!({ "host": host, "outcome": "offline", "error": { "step": "dispatch", "host": host,
                    "message": format!("host {host}: its agent is not connected (last seen {})", known_agent.map(|a| a.last_seen.as_str()).unwrap_or("never")) } })
            } else if let Some(reason) = skip_reason {
                json!({ "host": host, "outcome": "skipped", "error": { "step": "capability", "host": host, "message": format!("host {host}: {reason}") } })
            } else {
                to_run.push((index, host.clone()));
                json!({ "host": host, "outcome": "pending" })
            };
            entries.push(entry);
        }
        let now = rfc3339(OffsetDateTime::now_utc());
        let fleet = json!({
            "kind": "fleet",
            "host": Json::Null,
            "type": req.template.analysis_type,
            "username": req.template.username,
            "duration": req.template.duration,
            "host_timeout": req.host_timeout,
            "relay": req.template.relay,
            "status": STARTED,
            "created": now,
            "started": now,
            "hosts": entries,
            "outcomes": outcome_counts(&entries),
        });
        let (fleet_id, rx, cancel) = self.store_new_job(fleet).await?;
        let engine = self.clone();
        tokio::spawn(async move {
            engine
                .run_fleet(fleet_id, req, entries, to_run, cancel)
                .await;
        });
        Ok((fleet_id, rx))
    }

    async fn run_fleet(
        self: Arc<Self>,
        fleet_id: u64,
        req: FleetRequest,
        mut entries: Vec<Json>,
        to_run: Vec<(usize, String)>,
        cancel: CancellationToken,
    ) {
        let limit = Duration::from_secs_f64(req.template.duration + req.host_timeout);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Json)>();
        // Every child starts at once, so the traces cover the same window.
        for (index, host) in to_run {
            let job_id = child_id(fleet_id, index);
            entries[index]["jobid"] = json!(job_id);
            let mut child = req.template.clone();
            child.host = host.clone();
            let engine = self.clone();
            let done = done_tx.clone();
            let cancel = cancel.child_token();
            tokio::spawn(async move {
                let run = async {
                    let plan = engine.plan(&child).await.map_err(|e| JobError {
                        step: "resolve".into(),
                        host: host.clone(),
                        message: e.to_string(),
                    })?;
                    let result = engine
                        .execute(
                            job_id,
                            &child,
                            &plan.profile,
                            &plan.route,
                            plan.relay.as_ref(),
                            plan.analysis_route.as_ref(),
                            &cancel,
                        )
                        .await?;
                    Ok::<(Json, &str), JobError>((result, plan.route.via()))
                };
                let entry = match tokio::time::timeout(limit, run).await {
                    Ok(Ok((result, via))) => {
                        json!({ "host": host, "jobid": job_id, "outcome": "complete", "status": COMPLETE, "via": via, "result": result })
                    }
                    Ok(Err(e)) => {
                        json!({ "host": host, "jobid": job_id, "outcome": "error", "status": FAILED,
                            "error": { "step": e.step, "host": e.host, "message": e.message } })
                    }
                    Err(_) => {
                        // Stop the agent's session too.
                        let pending = lock(&engine.pending).remove(&job_id);
                        if let Some(p) = pending {
                            let _ = engine
                                .hub
                                .send(&p.hostname, Message::CancelJob { job_id })
                                .await;
                        }
                        json!({ "host": host, "jobid": job_id, "outcome": "timeout", "status": FAILED, "error": { "step": "timeout", "host": host,
                            "message": format!("host {host}: no outcome within the duration plus host_timeout ({:.0} s)", limit.as_secs_f64()) } })
                    }
                };
                let _ = done.send((index, entry));
            });
        }
        drop(done_tx);
        let mut sizes = vec![0; entries.len()];
        let _ = self
            .set_fleet(fleet_id, TRACE_RUNNING, &entries, &sizes, None)
            .await;
        // Outcomes are written in batches: a 10,000-host fleet must not rewrite its record
        // 10,000 times.
        let mut dirty = false;
        let mut flush = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                next = done_rx.recv() => match next {
                    Some((index, entry)) => {
                        sizes[index] = result_size(&entry);
                        entries[index] = entry;
                        dirty = true;
                    }
                    None => break,
                },
                _ = flush.tick(), if dirty => {
                    let _ = self.set_fleet(fleet_id, TRACE_RUNNING, &entries, &sizes, None).await;
                    dirty = false;
                }
            }
        }
        let failed: Vec<String> = entries
            .iter()
            .filter(|e| e["outcome"] != "complete")
            .map(|e| {
                format!(
                    "{} ({})",
                    e["host"].as_str().unwrap_or("?"),
                    e["outcome"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let (status, error) = if failed.is_empty() {
            (COMPLETE, Json::Null)
        } else {
            let shown: Vec<&String> = failed.iter().take(20).collect();
            let more = failed.len().saturating_sub(shown.len());
            (
                FAILED,
                json!({ "step": "fleet", "host": Json::Null,
                "message": format!("{} of {} hosts did not complete: {}{}", failed.len(), entries.len(),
                    shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }) }),
            )
        };
        if let Err(error) = self
            .set_fleet(fleet_id, status, &entries, &sizes, Some(error))
            .await
        {
            tracing::error!(job_id = fleet_id, %error, "could not store the end of a fleet job");
        }
        lock(&self.cancels).remove(&fleet_id);
        lock(&self.watchers).remove(&fleet_id);
    }

    /// Writes a fleet's per-host outcomes (and its end), and wakes its watchers. Results beyond
    /// [`FLEET_RESULTS_BUDGET`] are left out of the record (each replaced by a note), so the
    /// write always fits the storage engine's write buffer.
    async fn set_fleet(
        &self,
        fleet_id: u64,
        status: i64,
        entries: &[Json],
        sizes: &[usize],
        error: Option<Json>,
    ) -> Result<(), StoreError> {
        let bounded = within_results_budget(entries, sizes, FLEET_RESULTS_BUDGET);
        let entries: &[Json] = bounded.as_deref().unwrap_or(entries);
        let finished = error.is_some();
        let rows = self
            .store
            .query(
                "UPDATE type::record('job', $id) SET status = $status, hosts = $hosts, outcomes = $outcomes, error = $error, finished = $finished RETURN AFTER",
                json!({
                    "id": fleet_id,
                    "status": status,
                    "hosts": entries,
                    "outcomes": outcome_counts(entries),
                    "error": error.unwrap_or(Json::Null),
                    "finished": if finished { json!(rfc3339(OffsetDateTime::now_utc())) } else { Json::Null },
                }),
            )
            .await?;
        if let Some(row) = rows.into_iter().next() {
            if let Some(tx) = lock(&self.watchers).get(&fleet_id) {
                let _ = tx.send(Some(job_view(row)));
            }
        }
        Ok(())
    }

    /// Cancels a running job; `Ok(false)` when it is not running.
    pub fn cancel(&self, job_id: u64) -> bool {
        match lock(&self.cancels).get(&job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// One job (a fleet child is its entry in the fleet's record, with `parent`).
    pub async fn get(&self, job_id: u64) -> Result<Option<Json>, StoreError> {
        if let Some((fleet_id, index)) = child_of(job_id) {
            let Some(fleet) = Box::pin(self.get(fleet_id)).await? else {
                return Ok(None);
            };
            return Ok(fleet["hosts"]
                .get(index)
                .filter(|e| e["jobid"] == json!(job_id))
                .map(|e| {
                    let mut child = e.clone();
                    child["parent"] = json!(fleet_id);
                    child["type"] = fleet["type"].clone();
                    child["duration"] = fleet["duration"].clone();
                    child["status"] = match e["outcome"].as_str() {
                        Some("complete") => json!(COMPLETE),
                        Some("pending") => fleet["status"].clone(),
                        _ => json!(FAILED),
                    };
                    child
                }));
        }
        let rows = self
            .store
            .query(
                "SELECT * FROM type::record('job', $id)",
                json!({ "id": job_id }),
            )
            .await?;
        Ok(rows.into_iter().next().map(job_view))
    }

    /// Jobs for `/list`: running ones, or all (without their results).
    pub async fn list(&self, all: bool) -> Result<Vec<Json>, StoreError> {
        let sql = if all {
            "SELECT * OMIT result FROM job ORDER BY id"
        } else {
            "SELECT * OMIT result FROM job WHERE status IN [1, 2, 3] ORDER BY id"
        };
        let rows = self.store.query(sql, json!({})).await?;
        Ok(rows.into_iter().map(job_view).collect())
    }
}

fn outcome_to_result(outcome: JobOutcome) -> Result<Json, JobError> {
    match outcome {
        JobOutcome::Ok { result_json } => {
            serde_json::from_str(&result_json).map_err(|e| JobError {
                step: "result".into(),
                host: String::new(),
                message: format!("result is not JSON: {e}"),
            })
        }
        JobOutcome::Err { step, message } => Err(JobError {
            step,
            host: String::new(),
            message,
        }),
    }
}

/// A stored job as the API shows it: `jobid` (the seed's name) and `id`.
pub fn job_view(mut row: Json) -> Json {
    if let Ok(id) = record_key(&row["id"]) {
        row["id"] = json!(id);
        row["jobid"] = json!(id);
    }
    row
}

/// A hostname usable inside a session name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fleet_results_past_the_budget_are_left_out_in_host_order() {
        let entry = |host: &str, bytes: usize| json!({"host": host, "outcome": "complete", "result": {"blob": "x".repeat(bytes)}});
        let failed = json!({"host": "f", "outcome": "error", "result": null});
        let entries = vec![
            entry("a", 400),
            failed.clone(),
            entry("b", 400),
            entry("c", 100),
        ];
        let sizes: Vec<usize> = entries.iter().map(result_size).collect();
        assert_eq!(
            sizes[0],
            serde_json::to_vec(&entries[0]["result"]).unwrap().len()
        );
        assert!(
            within_results_budget(&entries, &sizes, 10_000).is_none(),
            "all fit"
        );
        let bounded = within_results_budget(&entries, &sizes, 600).unwrap();
        assert_eq!(bounded[0], entries[0]);
        assert_eq!(bounded[1], failed);
        let note = bounded[2]["result"]["omitted"].as_str().unwrap();
        assert!(note.contains("bytes) is not stored"), "{note}");
        assert_eq!(bounded[2]["outcome"], "complete", "the outcome stays");
        assert_eq!(
            bounded[3], entries[3],
            "a later result that still fits is kept"
        );
    }
}
