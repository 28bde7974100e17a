//! Jobs in a cluster of coordinators: a job for a host whose agent link another member holds
//! is stored here, then forwarded to that member (its internal API), which checks the link's
//! epoch and runs it; this coordinator follows the stored job for its waiters. A fleet sends
//! each member its share of hosts and receives their outcomes as they come. Jobs of a member
//! that stopped heartbeating are adopted by a live one, which ends or resumes them as after a
//! restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::agent::Ack;
use super::route::Route;
use super::{lock, now, Engine, JobRequest, JobView, SubmitError};
use crate::cluster::{Cluster, ForwardError, DEAD_AFTER, HEARTBEAT};
use crate::hub::Eviction;
use crate::model::{FleetEntry, JobError, JobRecord, Outcome, Step, Via};
use crate::store::{AgentLocation, StoreError};

/// How often a job that runs on another member is read back for its waiters here.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How long a held acknowledgement waits for its fleet's commit before it is dropped (the
/// agent then sends its result again, and it is acknowledged as a late one).
const HELD_ACK_LIFETIME: Duration = Duration::from_secs(600);
/// Evictions sent to other members at once.
const EVICTIONS_AT_ONCE: usize = 16;
/// How often revocations recorded by the other members are read.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(5);

/// A host's agent link held by another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAgent {
    pub hostname: String,
    pub member: String,
    pub epoch: u64,
}

/// What a member asks of the member holding a host's agent: run job `job_id`, which the
/// sender stored as its own (`runner` = the sender) until the receiver accepts it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedJob {
    /// The sender's member id.
    pub from: String,
    /// The request's body, validated again by the receiver.
    pub request: serde_json::Map<String, Json>,
    /// The agent's hostname and the epoch of the link the sender saw.
    pub hostname: String,
    pub epoch: u64,
    #[serde(default)]
    pub snapshot_of: Option<u64>,
}

/// One host of a fleet share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareChild {
    pub index: usize,
    pub job_id: u64,
    pub host: String,
    pub hostname: String,
    pub epoch: u64,
}

/// A fleet's share of hosts whose agents another member holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct FleetShare {
    /// The fleet's request for one host (the host is each child's).
    pub request: serde_json::Map<String, Json>,
    /// Seconds each host may take (the fleet's duration plus its host timeout).
    pub limit_secs: f64,
    pub children: Vec<ShareChild>,
    #[serde(default)]
    pub snapshot_of: Option<u64>,
}

/// One line of a share's answer: a host's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShareLine {
    pub index: usize,
    pub entry: FleetEntry,
}

/// Why a forwarded job was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ForwardRefusal {
    /// The link is not (or no longer) here at that epoch: the sender must look again (409).
    #[error("{0}")]
    Stale(String),
    #[error("job {0} does not exist")]
    NoSuchJob(u64),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

impl Engine {
    /// Makes this engine a member of `cluster`.
    pub fn join_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// This coordinator's cluster membership.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Where the agent for `host` is when another live member holds its link; refused (503)
    /// while a dead member still holds it (its agent is on its way to another member).
    pub(super) async fn remote_agent(
        &self,
        host: &str,
    ) -> Result<Option<RemoteAgent>, SubmitError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(None);
        };
        if self.hub.find(host).is_some() {
            return Ok(None);
        }
        let peer = host
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| ip.to_string());
        let mut found = self.store.agent_locations(host, peer.as_deref()).await?;
        if found.is_empty() {
            // A registered client's address reaches its agent.
            let clients = self.store.list(crate::registry::Kind::Clients).await?;
            if let Some(client) = clients.iter().find(|c| c.answers_to(host)) {
                found = self.store.agent_locations(&client.hostname, None).await?;
            }
        }
        // Its own name first; an address must name exactly one agent (as `Hub::find`).
        let by_name: Vec<&AgentLocation> = found.iter().filter(|l| l.hostname == host).collect();
        let location = match (by_name.as_slice(), found.as_slice()) {
            ([one], _) => *one,
            ([], [one]) => one,
            _ => return Ok(None),
        };
        Ok(match &location.owner {
            Some(owner) if *owner == cluster.id => None,
            Some(owner) if cluster.is_live(owner) => Some(RemoteAgent {
                hostname: location.hostname.clone(),
                member: owner.clone(),
                epoch: location.epoch,
            }),
            Some(owner) => {
                return Err(SubmitError::Unavailable(format!(
                    "host {host}: its agent's link was on coordinator {owner}, which stopped answering; the agent is reconnecting to another coordinator of the cluster, retry in a few seconds"
                )))
            }
            None => None,
        })
    }

    /// Stores a job for a host whose agent another member holds, forwards it there and
    /// follows it for the waiters here.
    pub(super) async fn submit_forwarded(
        self: &Arc<Self>,
        req: JobRequest,
        remote: RemoteAgent,
    ) -> Result<(u64, JobView), SubmitError> {
        let Some(cluster) = self.cluster.get().cloned() else {
            return Err(SubmitError::Unavailable("not in a cluster".into()));
        };
        let record = JobRecord {
            host: Some(req.host.clone()),
            analysis: Some(
                req.analysis_host
                    .clone()
                    .or_else(|| req.relay.clone())
                    .unwrap_or_else(|| req.host.clone()),
            ),
            via: Some(Via::Agent),
            phases: Some(if req.relay.is_some() { 2 } else { 1 }),
            agent: Some(remote.hostname.clone()),
            // Ours until the member holding the agent accepts it (`Store::accept_job`): a job
            // this member never handed over is adopted with this member's other jobs.
            runner: Some(cluster.id.clone()),
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
        let forward = ForwardedJob {
            from: cluster.id.clone(),
            request: req.to_body(),
            hostname: remote.hostname.clone(),
            epoch: remote.epoch,
            snapshot_of: req.snapshot_of,
        };
        let body = serde_json::to_value(&forward).unwrap_or(Json::Null);
        let sent = cluster
            .post(&remote.member, &format!("/jobs/{job_id}/run"), &body, None)
            .await;
        crate::metrics::forwarded("job", sent.is_ok());
        if let Err(error) = sent {
            tracing::warn!(job_id, member = %remote.member, %error, "could not hand the job to the coordinator holding the host's agent");
            let why = format!(
                "host {}: its agent's link is on coordinator {}, which did not take the job: {error}",
                req.host, remote.member
            );
            let failed = JobError::new(Step::Dispatch, &req.host, why.clone());
            // The other member may have taken it before the answer was lost: then it is
            // followed like any forwarded job, never failed under it.
            match self
                .store
                .fail_unaccepted_job(job_id, &failed, &now())
                .await
            {
                Ok(None) => {
                    tracing::info!(job_id, member = %remote.member, "the job was accepted although its hand-over failed; following it");
                    self.follow(job_id, cancel);
                    return Ok((job_id, rx));
                }
                Ok(Some(end)) => self.forget(job_id, Some(end)),
                Err(store_error) => {
                    tracing::warn!(job_id, %store_error, "could not record the failed hand-over; following the job");
                    self.follow(job_id, cancel);
                    return Ok((job_id, rx));
                }
            }
            return Err(match error {
                ForwardError::Refused {
                    status: 429,
                    message,
                    ..
                } => SubmitError::Busy(message),
                _ => SubmitError::Unavailable(format!("{why} (job {job_id})")),
            });
        }
        tracing::info!(job_id, host = %req.host, member = %remote.member, "job forwarded to the coordinator holding the host's agent");
        self.follow(job_id, cancel);
        Ok((job_id, rx))
    }

    /// Follows a job another member runs: its stored record is published to the waiters here
    /// until it ends; cancelling it here asks its runner to cancel it.
    fn follow(self: &Arc<Self>, job_id: u64, cancel: CancellationToken) {
        let engine = self.clone();
        self.spawn(async move {
            let mut last: Option<JobRecord> = None;
            let mut cancel_sent = false;
            loop {
                tokio::select! {
                    _ = engine.shutdown.cancelled() => {
                        engine.forget(job_id, None);
                        return;
                    }
                    _ = cancel.cancelled(), if !cancel_sent => {
                        if engine.shutdown.is_cancelled() {
                            // Shutdown, not a user's cancellation: the runner goes on.
                            engine.forget(job_id, None);
                            return;
                        }
                        cancel_sent = true;
                        engine.cancel_remote(job_id).await;
                        continue;
                    }
                    _ = tokio::time::sleep(engine.follow_every(job_id)) => {}
                }
                match engine.store.job(job_id).await {
                    Ok(Some(job)) => {
                        let ended = job.status.is_ended();
                        if last.as_ref() != Some(&job) {
                            engine.publish(&job);
                            last = Some(job.clone());
                        }
                        if ended {
                            engine.forget(job_id, Some(job));
                            return;
                        }
                    }
                    Ok(None) => {
                        engine.forget(job_id, last);
                        return;
                    }
                    Err(error) => tracing::debug!(job_id, %error, "cannot read a followed job"),
                }
            }
        });
    }

    /// How often a followed job is read: often while someone waits for it here, else now and
    /// then (only to forget it once it ended).
    fn follow_every(&self, job_id: u64) -> Duration {
        let waiting = lock(&self.watchers)
            .get(&job_id)
            .is_some_and(|tx| tx.receiver_count() > 0);
        if waiting {
            FOLLOW_EVERY
        } else {
            Duration::from_secs(5)
        }
    }

    /// Asks the member running job `job_id` to cancel it; whether it took the request.
    pub async fn cancel_remote(&self, job_id: u64) -> bool {
        let Some(cluster) = self.cluster.get() else {
            return false;
        };
        let runner = match self.store.job_runner(job_id).await {
            Ok(Some(runner)) if runner != cluster.id => runner,
            _ => return false,
        };
        let sent = cluster
            .post(&runner, &format!("/jobs/{job_id}/cancel"), &json!({}), None)
            .await;
        crate::metrics::forwarded("cancel", sent.is_ok());
        match sent {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(job_id, member = %runner, %error, "could not forward a cancellation");
                false
            }
        }
    }

    /// Runs job `job_id`, stored by another member for the agent link held here at `epoch`.
    /// Idempotent: a job already running here, or ended, is not started again (`Ok(false)`).
    pub async fn accept_forwarded(
        self: &Arc<Self>,
        job_id: u64,
        req: JobRequest,
        from: &str,
        hostname: &str,
        epoch: u64,
    ) -> Result<bool, ForwardRefusal> {
        let me = self.cluster.get().map(|c| c.id.clone()).unwrap_or_default();
        match self.hub.epoch(hostname) {
            Some(held) if held == epoch => {}
            Some(held) => {
                return Err(ForwardRefusal::Stale(format!(
                "the link of {hostname} here is at epoch {held}, not {epoch}: it registered again"
            )))
            }
            None => {
                return Err(ForwardRefusal::Stale(format!(
                    "no agent link of {hostname} here"
                )))
            }
        }
        if lock(&self.cancels).contains_key(&job_id) {
            return Ok(false);
        }
        let plan = self.plan(&req).await.map_err(SubmitError::from)?;
        if !matches!(&plan.route, Route::Agent { hostname: h } if h == hostname) {
            return Err(ForwardRefusal::Stale(format!(
                "{} no longer routes to the agent link of {hostname} here",
                req.host
            )));
        }
        let admission = self.admit(vec![plan.route.name()])?;
        // Taken once, in the store: a repeated or concurrent request finds it taken.
        let Some(job) = self
            .store
            .accept_job(job_id, from, &me)
            .await
            .map_err(SubmitError::from)?
        else {
            let job = self
                .store
                .job(job_id)
                .await
                .map_err(SubmitError::from)?
                .ok_or(ForwardRefusal::NoSuchJob(job_id))?;
            if job.status.is_ended() || job.runner.as_deref() == Some(me.as_str()) {
                return Ok(false);
            }
            return Err(ForwardRefusal::Stale(format!(
                "job {job_id} is run by {}, not offered by {from}",
                job.runner.as_deref().unwrap_or("no coordinator")
            )));
        };
        let (_view, cancel) = self.track(&job);
        let engine = self.clone();
        self.spawn(async move {
            let ended = engine.execute(job_id, &req, &plan, &cancel).await;
            engine.finish(job_id, ended).await;
            drop(admission);
        });
        tracing::info!(job_id, %hostname, "running a job forwarded by another coordinator of the cluster");
        Ok(true)
    }

    /// Runs a share of another member's fleet here: every child at once, each outcome sent as
    /// a line as it comes. The agents' results are acknowledged when that member says their
    /// entries are committed ([`Engine::release_acks`]). Closing the returned receiver (the
    /// member went away) cancels the children.
    pub fn run_share(
        self: &Arc<Self>,
        share: FleetShare,
        template: JobRequest,
    ) -> mpsc::Receiver<ShareLine> {
        let (tx, rx) = mpsc::channel(share.children.len().max(1));
        let limit = Duration::from_secs_f64(share.limit_secs.clamp(1.0, 30.0 * 24.0 * 3600.0));
        let cancel = self.shutdown.child_token();
        let hosts: Vec<String> = share.children.iter().map(|c| c.hostname.clone()).collect();
        let admission = match self.admit(hosts) {
            Ok(admission) => Some(Arc::new(admission)),
            Err(error) => {
                for child in &share.children {
                    let entry = FleetEntry {
                        jobid: Some(child.job_id),
                        ..FleetEntry::failed(
                            &child.host,
                            Outcome::Error,
                            JobError::new(
                                Step::Dispatch,
                                &child.host,
                                format!("host {}: {error}", child.host),
                            ),
                        )
                    };
                    let _ = tx.try_send(ShareLine {
                        index: child.index,
                        entry,
                    });
                }
                None
            }
        };
        let Some(admission) = admission else {
            return rx;
        };
        {
            // The member that asked stopped reading: the children stop.
            let (tx, cancel) = (tx.clone(), cancel.clone());
            self.spawn(async move {
                tokio::select! {
                    _ = tx.closed() => cancel.cancel(),
                    _ = cancel.cancelled() => {}
                }
            });
        }
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(share.children.len()));
        for child in share.children {
            let engine = self.clone();
            let tx = tx.clone();
            let mut req = template.clone();
            req.host = child.host.clone();
            req.snapshot_of = share.snapshot_of;
            let cancel_all = cancel.clone();
            let cancel = cancel.child_token();
            let admission = admission.clone();
            let remaining = remaining.clone();
            self.spawn(async move {
                let moved = engine.hub.epoch(&child.hostname) != Some(child.epoch);
                let (entry, ack) = if moved {
                    let why = format!(
                        "host {}: its agent's link is no longer on the coordinator the fleet sent it to; run the fleet again",
                        child.host
                    );
                    (
                        FleetEntry {
                            jobid: Some(child.job_id),
                            ..FleetEntry::failed(&child.host, Outcome::Error, JobError::new(Step::Dispatch, &child.host, why))
                        },
                        None,
                    )
                } else {
                    engine.run_child(child.job_id, &child.host, &req, limit, &cancel, super::fleet::ChildOrigin::Share(&child.hostname)).await
                };
                if let Some(ack) = ack {
                    lock(&engine.held_acks).insert(child.job_id, (ack, Instant::now()));
                }
                let _ = tx.send(ShareLine { index: child.index, entry }).await;
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    // The last child: the watcher above ends too.
                    cancel_all.cancel();
                }
                drop(admission);
            });
        }
        rx
    }

    /// Sends the acknowledgements held for these fleet hosts' results (their fleet's member
    /// committed them).
    pub fn release_acks(&self, job_ids: &[u64]) -> usize {
        let acks: Vec<Ack> = {
            let mut held = lock(&self.held_acks);
            job_ids
                .iter()
                .filter_map(|id| held.remove(id))
                .map(|(ack, _)| ack)
                .collect()
        };
        let n = acks.len();
        self.send_acks(acks);
        n
    }

    /// Asks each member to acknowledge the results of its hosts that this fleet committed.
    pub(super) fn ack_remote(&self, acks: HashMap<String, Vec<u64>>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        for (member, job_ids) in acks {
            let cluster = cluster.clone();
            self.spawn(async move {
                let sent = cluster
                    .post(&member, "/acks", &json!({ "job_ids": job_ids }), None)
                    .await;
                crate::metrics::forwarded("acks", sent.is_ok());
                if let Err(error) = sent {
                    tracing::debug!(%member, %error, "could not pass fleet acknowledgements on; the agents send their results again");
                }
            });
        }
    }

    /// Runs a fleet's share on `member` and turns each line into the fleet's child events;
    /// every child gets exactly one outcome (an error for those the member never answered).
    pub(super) fn spawn_share(
        self: &Arc<Self>,
        member: String,
        share: FleetShare,
        fleet_id: u64,
        limit: Duration,
        events: mpsc::Sender<super::fleet::ChildEvent>,
        cancel: CancellationToken,
    ) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        self.spawn(async move {
            let mut waiting: HashMap<usize, ShareChild> =
                share.children.iter().map(|c| (c.index, c.clone())).collect();
            let body = serde_json::to_value(&share).unwrap_or(Json::Null);
            let answer = async {
                let response = cluster
                    .post(&member, &format!("/fleets/{fleet_id}/share"), &body, Some(limit + Duration::from_secs(60)))
                    .await?;
                read_lines(response, |line: ShareLine| {
                    if waiting.remove(&line.index).is_some() {
                        let events = events.clone();
                        let member = member.clone();
                        Some(async move {
                            let _ = events
                                .send(super::fleet::ChildEvent::Remote(line.index, line.entry, member))
                                .await;
                        })
                    } else {
                        None
                    }
                })
                .await
            };
            let outcome = tokio::select! {
                outcome = answer => outcome,
                _ = cancel.cancelled() => Err(ForwardError::Unreachable { member: member.clone(), message: "the fleet was cancelled".into() }),
            };
            crate::metrics::forwarded("fleet-share", outcome.is_ok());
            let why = match outcome {
                Ok(()) => "it ended its answer without this host's outcome".to_owned(),
                Err(error) => error.to_string(),
            };
            for (index, child) in waiting {
                let entry = FleetEntry {
                    jobid: Some(child.job_id),
                    ..FleetEntry::failed(
                        &child.host,
                        Outcome::Error,
                        JobError::new(
                            if cancel.is_cancelled() { Step::Cancelled } else { Step::Dispatch },
                            &child.host,
                            format!("host {}: the coordinator holding its agent ({member}) gave no outcome: {why}", child.host),
                        ),
                    )
                };
                let _ = events.send(super::fleet::ChildEvent::Done(index, entry, None)).await;
            }
        });
    }

    /// The connected agents the cluster's other live members hold, by hostname.
    pub(super) async fn remote_agents(&self) -> Result<HashMap<String, AgentLocation>, StoreError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(HashMap::new());
        };
        Ok(self
            .store
            .held_agents()
            .await?
            .into_iter()
            .filter(|l| {
                l.owner
                    .as_deref()
                    .is_some_and(|o| o != cluster.id && cluster.is_live(o))
            })
            .map(|l| (l.hostname.clone(), l))
            .collect())
    }

    /// The agent status of every host that ever had an agent, by hostname: in a cluster, the
    /// links the other live members hold show as connected (from the registry's rows).
    pub async fn agent_statuses(
        &self,
    ) -> Result<HashMap<String, crate::hub::AgentStatus>, StoreError> {
        let mut statuses = self.hub.statuses();
        let Some(cluster) = self.cluster.get() else {
            return Ok(statuses);
        };
        for row in self.store.agent_rows().await? {
            let owner = row.owner.filter(|o| *o != cluster.id && cluster.is_live(o));
            let local = statuses.get(&row.hostname).is_some_and(|s| s.connected);
            if local {
                continue;
            }
            statuses.insert(
                row.hostname.clone(),
                crate::hub::AgentStatus {
                    connected: owner.is_some(),
                    version: row.version,
                    connected_since: row.connected_since,
                    last_seen: row.last_seen,
                    capabilities: row.capabilities,
                    coordinator: owner,
                },
            );
        }
        Ok(statuses)
    }

    /// The cluster's duties, until shutdown, each in its own task of the engine: the heartbeat
    /// (nothing else may delay it, or this member would look dead), the adoption of dead
    /// members' jobs and links, other members' revocations, and evictions of older links
    /// (at most [`EVICTIONS_AT_ONCE`] in flight).
    pub fn spawn_cluster_duties(self: &Arc<Self>, mut evictions: mpsc::Receiver<Eviction>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        // Members seen gone by the heartbeat, for the duties below.
        let (gone_tx, mut gone_rx) = tokio::sync::watch::channel(0u64);
        {
            let (engine, cluster) = (self.clone(), cluster.clone());
            self.spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_beat = Instant::now();
                loop {
                    tokio::select! {
                        _ = engine.shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    match cluster.beat(engine.hub.connected() as u64).await {
                        Ok(gone) => {
                            last_beat = Instant::now();
                            if !gone.is_empty() {
                                gone_tx.send_modify(|n| *n += 1);
                            }
                        }
                        Err(error) if last_beat.elapsed() > DEAD_AFTER => {
                            tracing::error!(%error, seconds = last_beat.elapsed().as_secs(), "this coordinator cannot write its heartbeat: the others will judge it dead and adopt its jobs");
                        }
                        Err(error) => tracing::warn!(%error, "cannot write this coordinator's heartbeat"),
                    }
                }
            });
        }
        {
            let engine = self.clone();
            let cluster = cluster.clone();
            self.spawn(async move {
                let permits = Arc::new(tokio::sync::Semaphore::new(EVICTIONS_AT_ONCE));
                loop {
                    let eviction = tokio::select! {
                        _ = engine.shutdown.cancelled() => return,
                        e = evictions.recv() => match e { Some(e) => e, None => return },
                    };
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let cluster = cluster.clone();
                    engine.spawn(async move {
                        let body =
                            json!({ "hostname": eviction.hostname, "epoch": eviction.epoch });
                        let sent = cluster
                            .post(&eviction.member, "/agents/evict", &body, None)
                            .await;
                        crate::metrics::forwarded("evict", sent.is_ok());
                        drop(permit);
                    });
                }
            });
        }
        let engine = self.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut revocations_read = Instant::now();
            // Revocations are stamped with the revoking member's clock: read with a minute of
            // margin, so members' clocks may differ by that much.
            let margin = time::Duration::seconds(60);
            let mut revoked_since = crate::hub::rfc3339(time::OffsetDateTime::now_utc() - margin);
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = engine.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                ticks += 1;
                let someone_gone = gone_rx.has_changed().unwrap_or(false);
                if someone_gone {
                    gone_rx.borrow_and_update();
                }
                if let Err(error) = engine.adopt().await {
                    tracing::warn!(%error, "cannot adopt the jobs of stopped coordinators");
                }
                // Links of dead members: cleared when one is seen gone, and every 30 s for
                // those a member never saw alive.
                if someone_gone || ticks % 15 == 1 {
                    match engine.store.release_dead_owners(DEAD_AFTER.as_millis() as i64).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(agents = n, "released the agent links of stopped coordinators"),
                        Err(error) => tracing::warn!(%error, "cannot release the links of stopped coordinators"),
                    }
                }
                if revocations_read.elapsed() >= REVOCATIONS_EVERY {
                    let started = crate::hub::rfc3339(time::OffsetDateTime::now_utc() - margin);
                    match engine.hub.refresh_revoked(&revoked_since).await {
                        Ok(_) => {
                            revoked_since = started;
                            revocations_read = Instant::now();
                        }
                        Err(error) => tracing::warn!(%error, "cannot read the cluster's revocations"),
                    }
                }
                lock(&engine.held_acks).retain(|_, (_, at)| at.elapsed() < HELD_ACK_LIFETIME);
                if ticks % 900 == 1 {
                    cluster.forget_old_members().await;
                }
            }
        });
    }

    /// Takes the running jobs of members that stopped heartbeating and ends or resumes them as
    /// a restart would (`recovery.rs`).
    pub(super) async fn adopt(self: &Arc<Self>) -> Result<usize, StoreError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(0);
        };
        let jobs = self
            .store
            .adopt_jobs(&cluster.id, DEAD_AFTER.as_millis() as i64)
            .await?;
        let n = jobs.len();
        if n > 0 {
            tracing::warn!(
                jobs = n,
                "adopted the running jobs of a coordinator that stopped heartbeating"
            );
            self.recover_jobs(jobs, true).await?;
        }
        Ok(n)
    }
}

/// Reads a share's answer line by line (JSON each, bounded to the frame limit) and hands each
/// to `each`, awaiting what it returns.
async fn read_lines<F, Fut>(response: reqwest::Response, mut each: F) -> Result<(), ForwardError>
where
    F: FnMut(ShareLine) -> Option<Fut>,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt as _;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let max = tracevisor_protocol::MAX_FRAME_BYTES + 4096;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ForwardError::Unreachable {
            member: String::new(),
            message: e.to_string(),
        })?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            match serde_json::from_slice::<ShareLine>(&line) {
                Ok(line) => {
                    if let Some(fut) = each(line) {
                        fut.await;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a malformed line of a fleet share"),
            }
        }
        if buffer.len() > max {
            return Err(ForwardError::Unreachable {
                member: String::new(),
                message: format!("a line of its answer exceeds {max} bytes"),
            });
        }
    }
    Ok(())
}
