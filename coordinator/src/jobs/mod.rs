//! The job engine: resolves where a trace request runs (agent, registered client over SSH, or
//! the address over SSH), stores the job, runs it through the agent link or the SSH driver with
//! the shared lifecycle, and stores its end.
//!
//! - `request.rs`: request parsing and validation;
//! - `route.rs`: how a host is reached and what a job resolved to (its [`route::Plan`]);
//! - `single.rs`: one job, its phases and its end;
//! - `agent.rs`: jobs on agents: results, progress, lost links, acknowledgements;
//! - `fleet.rs`: one analysis on many hosts, outcomes in one record;
//! - `recovery.rs`: restart recovery, SSH session clean-up, pruning;
//! - `trace.rs`: kept traces streamed as one archive;
//! - `recorders.rs`: flight recorders kept armed on agents, and their snapshots.
//!
//! Every task the engine starts goes through its [`TaskTracker`] and every job's cancellation
//! token is a child of the coordinator's shutdown token, so [`Engine::stopped`] can wait for
//! them all.

mod agent;
pub mod cluster;
mod fleet;
mod recorders;
mod recovery;
mod request;
mod route;
mod single;
#[cfg(test)]
mod tests;
mod trace;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{rfc3339, Hub};
use crate::model::{JobRecord, JobStatus};
use crate::ssh::SshSettings;
use crate::store::{Store, StoreError};

pub use crate::model;
pub use fleet::{FLEET_RESULTS_BUDGET, MAX_RESULT_BYTES};
pub use recorders::{RecorderRequest, DEFAULT_BUFFER_MIB, MAX_BUFFER_MIB, MAX_RECORDERS_PER_HOST};
pub use request::{
    analysis_type, field_bool, FleetRequest, HostSelection, JobRequest, CAPABILITIES,
    DEFAULT_HOST_TIMEOUT, MAX_FLEET_HOSTS,
};
pub use route::Route;
pub use trace::{kept_traces, TraceDownload, Unavailable, MAX_TRACE_DOWNLOADS};

/// Job ids of fleet children: `CHILD_ID_BASE + (fleet id << 20) + index`. Children are not
/// stored on their own; their outcomes are entries of the fleet's record.
pub const CHILD_ID_BASE: u64 = 1 << 40;

fn child_id(fleet_id: u64, index: usize) -> u64 {
    CHILD_ID_BASE + (fleet_id << 20) + index as u64
}

/// The fleet and index of a child job id (for the internal API's checks).
pub fn child_of_fleet(job_id: u64) -> Option<(u64, usize)> {
    child_of(job_id)
}

/// The fleet and index of a child job id.
fn child_of(job_id: u64) -> Option<(u64, usize)> {
    let rest = job_id.checked_sub(CHILD_ID_BASE)?;
    Some((rest >> 20, (rest & 0xF_FFFF) as usize))
}

/// The live view of a job: its latest record, `None` until there is one.
pub type JobView = watch::Receiver<Option<JobRecord>>;

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A field of the request cannot be honoured (422).
    #[error("invalid {}: {}", .0.field, .0.message)]
    Invalid(crate::registry::FieldError),
    /// A limit on running jobs is reached (429, retry later); the message names it.
    #[error("{0}")]
    Busy(String),
    /// The host's agent is between two coordinators of the cluster, or the coordinator that
    /// holds it did not take the job (503, retry later).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::registry::FieldError> for SubmitError {
    fn from(e: crate::registry::FieldError) -> Self {
        SubmitError::Invalid(e)
    }
}

/// How long a client refused by a job limit should wait before trying again.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

/// Jobs running now, in total and by host, against `max_running_jobs` and `max_jobs_per_host`.
#[derive(Default)]
struct Load {
    total: usize,
    by_host: HashMap<String, usize>,
}

/// A job's place under the limits, given back when dropped (when its task ends).
pub struct Admission {
    load: Arc<Mutex<Load>>,
    hosts: Vec<String>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut load = lock(&self.load);
        load.total = load.total.saturating_sub(self.hosts.len());
        for host in &self.hosts {
            if let Some(n) = load.by_host.get_mut(host) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    load.by_host.remove(host);
                }
            }
        }
    }
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
    pending: Mutex<HashMap<u64, agent::PendingAgentJob>>,
    /// Cancellation of running jobs, by job id.
    cancels: Mutex<HashMap<u64, CancellationToken>>,
    /// Latest view of running jobs, for waiters.
    watchers: Mutex<HashMap<u64, watch::Sender<Option<JobRecord>>>>,
    /// The coordinator's shutdown: every job's cancellation is a child of it.
    shutdown: CancellationToken,
    /// Every task the engine started.
    tasks: TaskTracker,
    /// Jobs running now, against the configured limits.
    load: Arc<Mutex<Load>>,
    /// Trace archives being streamed ([`MAX_TRACE_DOWNLOADS`]).
    downloads: Arc<tokio::sync::Semaphore>,
    /// Flight recorders and their states on the hosts.
    recorders: recorders::Recorders,
    /// This coordinator's membership of a cluster, when it is in one.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Acknowledgements of fleet hosts' results this coordinator ran for another member's
    /// fleet, sent when that member has committed them ([`cluster`]).
    held_acks: Mutex<HashMap<u64, (agent::Ack, std::time::Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

impl Engine {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        config: Arc<Config>,
        ssh: SshSettings,
        instance: String,
        shutdown: CancellationToken,
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
            shutdown,
            tasks: TaskTracker::new(),
            load: Arc::default(),
            downloads: Arc::new(tokio::sync::Semaphore::new(MAX_TRACE_DOWNLOADS)),
            recorders: recorders::Recorders::new(),
            cluster: std::sync::OnceLock::new(),
            held_acks: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for one job on each of `hosts` under `max_running_jobs` and
    /// `max_jobs_per_host`, or says which limit is reached.
    fn admit(&self, hosts: Vec<String>) -> Result<Admission, SubmitError> {
        let mut load = lock(&self.load);
        let max = self.config.max_running_jobs;
        if load.total + hosts.len() > max {
            return Err(SubmitError::Busy(format!(
                "{} jobs are running and this request needs {} more: at most {max} run at once (max_running_jobs)",
                load.total,
                hosts.len()
            )));
        }
        let per_host = self.config.max_jobs_per_host;
        if let Some(busy) = hosts
            .iter()
            .find(|h| load.by_host.get(h.as_str()).copied().unwrap_or(0) >= per_host)
        {
            return Err(SubmitError::Busy(format!(
                "host {busy} already runs {per_host} jobs: at most {per_host} run at once on one host (max_jobs_per_host)"
            )));
        }
        load.total += hosts.len();
        for host in &hosts {
            *load.by_host.entry(host.clone()).or_default() += 1;
        }
        Ok(Admission {
            load: self.load.clone(),
            hosts,
        })
    }

    /// Starts a task the engine owns: [`Engine::stopped`] waits for it.
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Waits (at most `limit`) for every task of the engine to end after shutdown; returns
    /// how many were still running when the limit passed.
    pub async fn stopped(&self, limit: Duration) -> usize {
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            return self.tasks.len();
        }
        0
    }

    /// Jobs (single or fleet) running now.
    pub fn running(&self) -> usize {
        lock(&self.cancels).len()
    }

    /// Stores a new job and registers its live view and its cancellation (a child of the
    /// coordinator's shutdown).
    async fn store_new_job(
        &self,
        job: &JobRecord,
    ) -> Result<(JobRecord, JobView, CancellationToken), StoreError> {
        let stored = match (self.cluster.get(), &job.runner) {
            // In a cluster every job names the member that runs it (this one by default).
            (Some(cluster), None) => {
                let mut job = job.clone();
                job.runner = Some(cluster.id.clone());
                self.store.create_job(&job).await?
            }
            _ => self.store.create_job(job).await?,
        };
        let (rx, cancel) = self.track(&stored);
        Ok((stored, rx, cancel))
    }

    /// Registers the live view and the cancellation (a child of the coordinator's shutdown)
    /// of a stored job that runs, or is followed, here.
    fn track(&self, job: &JobRecord) -> (JobView, CancellationToken) {
        let (tx, rx) = watch::channel(Some(job.clone()));
        lock(&self.watchers).insert(job.id, tx);
        let cancel = self.shutdown.child_token();
        lock(&self.cancels).insert(job.id, cancel.clone());
        (rx, cancel)
    }

    /// Publishes a job's latest record to its waiters.
    fn publish(&self, record: &JobRecord) {
        if let Some(tx) = lock(&self.watchers).get(&record.id) {
            let _ = tx.send(Some(record.clone()));
        }
    }

    /// Forgets a job that ended here: its cancellation, and its waiters, which get `last`.
    fn forget(&self, job_id: u64, last: Option<JobRecord>) {
        lock(&self.cancels).remove(&job_id);
        if let Some(tx) = lock(&self.watchers).remove(&job_id) {
            if last.is_some() {
                let _ = tx.send(last);
            }
        }
    }

    /// Live views of a running job (`None` when it is not running here).
    pub fn subscribe(&self, job_id: u64) -> Option<JobView> {
        lock(&self.watchers)
            .get(&job_id)
            .map(watch::Sender::subscribe)
    }

    /// Cancels a running job; `false` when it is not running here.
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
    pub async fn get(&self, job_id: u64) -> Result<Option<JobRecord>, StoreError> {
        if let Some((fleet_id, index)) = child_of(job_id) {
            let Some(fleet) = self.store.job(fleet_id).await? else {
                return Ok(None);
            };
            return Ok(fleet::child_view(&fleet, index, job_id));
        }
        self.store.job(job_id).await
    }

    /// Jobs for `/list`: running ones, or all (without their results).
    pub async fn list(
        &self,
        all: bool,
        view: crate::store::ListView,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.store.jobs(all, view).await
    }

    /// Moves a stored job forward to `status` and tells its waiters.
    async fn set_status(&self, job_id: u64, status: JobStatus) -> Result<(), StoreError> {
        if job_id >= CHILD_ID_BASE {
            return Ok(()); // fleet children live in their fleet's record
        }
        if let Some(record) = self.store.advance_job(job_id, status, &now()).await? {
            self.publish(&record);
        }
        Ok(())
    }
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
