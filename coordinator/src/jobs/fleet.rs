//! Fleet jobs: the same analysis on many hosts, started together. Children run in memory with
//! derived ids and are not stored on their own: their outcomes are entries of the fleet's
//! record, written in batches, and each agent's result is acknowledged once the batch that
//! holds it is committed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::Message;

use std::collections::HashMap;

use tracevisor_protocol::Capabilities;

use super::agent::Ack;
use super::cluster::{FleetShare as ShareFor, ShareChild};
use super::request::capability;
use super::single::Stop;
use super::{
    child_id, lock, now, Engine, FleetRequest, HostSelection, JobRequest, JobView, SubmitError,
};
use crate::model::{
    FleetEntry, JobError, JobKind, JobRecord, JobStatus, Outcome, SshSession, Step,
};
use crate::registry::HostRecord;
use crate::store::{FleetUpdate, StoreError};

/// Largest result a job stores: the agent link's frame limit, applied to every path.
pub const MAX_RESULT_BYTES: usize = tracevisor_protocol::MAX_FRAME_BYTES;

/// Most bytes of per-host results a fleet record holds: one transaction must fit the storage
/// engine's write buffer (`db_memtable_mib`, at least 32 MiB).
pub const FLEET_RESULTS_BUDGET: usize = 24 << 20;

/// How often a running fleet's outcomes are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Attempts at writing a fleet's end.
const END_ATTEMPTS: u32 = 5;

/// Bytes of `value` as JSON text, counted without building the text.
pub(super) fn json_size(value: &Json) -> usize {
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
fn result_size(entry: &FleetEntry) -> usize {
    entry.result.as_ref().map_or(0, json_size)
}

/// `entries` with the results past `budget` bytes (in host order) replaced by a note; `None`
/// when they all fit. `sizes[i]` is [`result_size`] of `entries[i]`.
fn within_results_budget(
    entries: &[FleetEntry],
    sizes: &[usize],
    budget: usize,
) -> Option<Vec<FleetEntry>> {
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
            entry.result = Some(json!({
                "omitted": format!(
                    "this host's result ({size} bytes) is not stored: a fleet record holds at most {} MiB of results; trace the host on its own to get it",
                    budget >> 20
                )
            }));
            entry
        })
        .collect();
    Some(bounded)
}

/// A fleet's end: complete when every host completed, else failed naming the others.
pub(super) fn fleet_end(entries: &[FleetEntry]) -> (JobStatus, Option<JobError>) {
    let failed: Vec<String> = entries
        .iter()
        .filter(|e| e.outcome != Outcome::Complete)
        .map(|e| format!("{} ({})", e.host, e.outcome))
        .collect();
    if failed.is_empty() {
        return (JobStatus::Complete, None);
    }
    let shown = failed[..failed.len().min(20)].join(", ");
    let more = failed.len().saturating_sub(20);
    let error = JobError {
        step: Step::Fleet,
        host: None,
        message: format!(
            "{} of {} hosts did not complete: {shown}{}",
            failed.len(),
            entries.len(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        kept_trace: None,
    };
    (JobStatus::Failed, Some(error))
}

/// What a fleet's children tell the fleet.
pub(super) enum ChildEvent {
    /// The child is about to create this SSH session.
    Session(usize, SshSession),
    /// The child ended; `ack` tells its agent once the entry is committed.
    Done(usize, FleetEntry, Option<Ack>),
    /// A child another member of the cluster ran ended; that member acknowledges its agent's
    /// result once the entry is committed.
    Remote(usize, FleetEntry, String),
}

/// Whose child a fleet child run here is.
pub(super) enum ChildOrigin<'a> {
    /// This member's fleet: the child's SSH session goes to its events, at its index.
    Fleet(&'a mpsc::Sender<ChildEvent>, usize),
    /// Another member's share: it runs only on this agent link.
    Share(&'a str),
}

/// A fleet child as `GET /jobs/{id}` shows it: its entry in the fleet's record.
pub(super) fn child_view(fleet: &JobRecord, index: usize, job_id: u64) -> Option<JobRecord> {
    let entry = fleet
        .hosts
        .as_ref()?
        .get(index)
        .filter(|e| e.jobid == Some(job_id))?;
    Some(JobRecord {
        id: job_id,
        jobid: job_id,
        host: Some(entry.host.clone()),
        via: entry.via,
        status: match entry.outcome {
            Outcome::Complete => JobStatus::Complete,
            Outcome::Pending => fleet.status,
            _ => JobStatus::Failed,
        },
        started: fleet.started.clone(),
        finished: (entry.outcome != Outcome::Pending)
            .then(|| fleet.finished.clone())
            .flatten(),
        result: entry.result.clone(),
        error: entry.error.clone(),
        parent: Some(fleet.id),
        ..JobRecord::started(
            &fleet.analysis_type,
            &fleet.username,
            fleet.duration,
            fleet.relay.clone(),
            &fleet.created,
        )
    })
}

impl Engine {
    /// Creates a fleet job: one child job per host, all started together; returns the fleet.
    pub async fn submit_fleet(
        self: &Arc<Self>,
        req: FleetRequest,
    ) -> Result<(u64, JobView), SubmitError> {
        self.check_relay(req.template.relay.as_deref()).await?;
        let profile = self.config.profiles[&req.template.analysis_type].clone();
        let statuses = self.hub.statuses();
        // In a cluster: the agents the other members hold, by hostname.
        let remote = self.remote_agents().await?;
        let hosts: Vec<String> = match &req.hosts {
            HostSelection::List(hosts) => hosts.clone(),
            HostSelection::Agents { .. } => {
                let mut names = self.hub.hostnames();
                names.extend(
                    remote
                        .keys()
                        .filter(|h| self.hub.find(h).is_none())
                        .cloned(),
                );
                names.sort();
                names.dedup();
                names
            }
        };
        let required: Vec<String> = match &req.hosts {
            HostSelection::Agents { require } => require.clone(),
            HostSelection::List(_) => Vec::new(),
        };
        if let HostSelection::List(listed) = &req.hosts {
            self.check_unregistered(listed, &statuses, &remote).await?;
        }
        // Outcomes known before anything runs: offline agents and missing capabilities.
        let mut entries: Vec<FleetEntry> = Vec::with_capacity(hosts.len());
        let mut to_run: Vec<(usize, String)> = Vec::new();
        let mut shares: HashMap<String, Vec<ShareChild>> = HashMap::new();
        for (index, host) in hosts.iter().enumerate() {
            let agent = self.hub.find(host);
            let elsewhere = agent.is_none().then(|| remote.get(host.as_str())).flatten();
            let known_agent = statuses.get(host.as_str());
            let caps_of = |name: &String| match elsewhere {
                Some(location) => {
                    serde_json::from_value::<Capabilities>(location.capabilities.clone()).ok()
                }
                None => self.hub.capabilities(name),
            };
            let skip_reason = agent
                .as_ref()
                .or(elsewhere.map(|l| &l.hostname))
                .and_then(|name| {
                    let caps = caps_of(name)?;
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
                    (!missing.is_empty())
                        .then(|| format!("missing capability: {}", missing.join(", ")))
                });
            let entry = if agent.is_none()
                && elsewhere.is_none()
                && known_agent.is_some_and(|a| !a.connected)
            {
                let last_seen = known_agent.map_or("never", |a| a.last_seen.as_str());
                FleetEntry::failed(
                    host,
                    Outcome::Offline,
                    JobError::new(
                        Step::Dispatch,
                        host,
                        format!("host {host}: its agent is not connected (last seen {last_seen})"),
                    ),
                )
            } else if let Some(reason) = skip_reason {
                FleetEntry::failed(
                    host,
                    Outcome::Skipped,
                    JobError::new(Step::Capability, host, format!("host {host}: {reason}")),
                )
            } else if let (Some(location), Some(owner)) =
                (elsewhere, elsewhere.and_then(|l| l.owner.clone()))
            {
                shares.entry(owner).or_default().push(ShareChild {
                    index,
                    job_id: 0,
                    host: host.clone(),
                    hostname: location.hostname.clone(),
                    epoch: location.epoch,
                });
                FleetEntry::pending(host)
            } else {
                to_run.push((index, host.clone()));
                FleetEntry::pending(host)
            };
            entries.push(entry);
        }
        let fleet = JobRecord {
            kind: Some(JobKind::Fleet),
            host_timeout: Some(req.host_timeout),
            outcomes: Some(crate::model::OutcomeCounts::of(&entries)),
            hosts: Some(entries.clone()),
            ..JobRecord::started(
                &req.template.analysis_type,
                &req.template.username,
                req.template.duration,
                req.template.relay.clone(),
                &now(),
            )
        };
        let admission = self.admit(to_run.iter().map(|(_, h)| h.clone()).collect())?;
        let (stored, rx, cancel) = self.store_new_job(&fleet).await?;
        let fleet_id = stored.id;
        let engine = self.clone();
        self.spawn(async move {
            engine
                .run_fleet(fleet_id, req, entries, to_run, shares, cancel)
                .await;
            drop(admission);
        });
        Ok((fleet_id, rx))
    }

    /// Runs one fleet child here (plan, then the job), bounded by `limit`; its entry and the
    /// agent's acknowledgement to send once the entry is committed. `sessions` hears of the
    /// SSH session the child is about to create.
    pub(super) async fn run_child(
        self: &Arc<Self>,
        job_id: u64,
        host: &str,
        child: &JobRequest,
        limit: Duration,
        cancel: &CancellationToken,
        origin: ChildOrigin<'_>,
    ) -> (FleetEntry, Option<Ack>) {
        let (sessions, agent_only) = match origin {
            ChildOrigin::Fleet(events, index) => (Some((events, index)), None),
            ChildOrigin::Share(agent) => (None, Some(agent)),
        };
        let run = async {
            let plan = self
                .plan(child)
                .await
                .map_err(|e| Stop::from(JobError::new(Step::Resolve, host, e.to_string())))?;
            // A share of another member's fleet runs only on the agent link it was sent for.
            if let Some(agent) = agent_only {
                if !matches!(&plan.route, super::Route::Agent { hostname } if hostname == agent) {
                    return Err(Stop::from(JobError::new(
                        Step::Dispatch,
                        host,
                        format!("host {host}: its agent's link is no longer on the coordinator the fleet sent it to; run the fleet again"),
                    )));
                }
            }
            if let (Some(session), Some((events, index))) =
                (plan.ssh_session(&self.instance, job_id), sessions)
            {
                let _ = events.send(ChildEvent::Session(index, session)).await;
            }
            let via = plan.route.via();
            self.execute(job_id, child, &plan, cancel)
                .await
                .map(|(result, ack)| (result, ack, via))
        };
        match tokio::time::timeout(limit, run).await {
            Ok(Ok((result, ack, via))) => (
                FleetEntry {
                    jobid: Some(job_id),
                    outcome: Outcome::Complete,
                    status: Some(JobStatus::Complete),
                    via: Some(via),
                    result: Some(result),
                    ..FleetEntry::pending(host)
                },
                ack,
            ),
            Ok(Err(Stop::Failed(error, ack))) => (
                FleetEntry {
                    jobid: Some(job_id),
                    ..FleetEntry::failed(host, Outcome::Error, error)
                },
                ack,
            ),
            Ok(Err(Stop::LeftToAgent)) => (
                FleetEntry {
                    jobid: Some(job_id),
                    ..FleetEntry::failed(host, Outcome::Error, JobError::new(
                        Step::CoordinatorShutdown,
                        host,
                        format!("host {host}: the coordinator shut down during the fleet; the agent finishes its trace but this fleet no longer waits for it"),
                    ))
                },
                None,
            ),
            Err(_) => {
                // Stop the agent's session too (without waiting on its link).
                let pending = lock(&self.pending).remove(&job_id);
                if let Some(p) = pending {
                    let hub = self.hub.clone();
                    self.spawn(async move {
                        let _ = hub.send(&p.hostname, Message::CancelJob { job_id }).await;
                    });
                }
                (
                    FleetEntry {
                        jobid: Some(job_id),
                        ..FleetEntry::failed(host, Outcome::Timeout, JobError::new(
                            Step::Timeout,
                            host,
                            format!("host {host}: no outcome within the duration plus host_timeout ({:.0} s)", limit.as_secs_f64()),
                        ))
                    },
                    None,
                )
            }
        }
    }

    async fn run_fleet(
        self: Arc<Self>,
        fleet_id: u64,
        req: FleetRequest,
        mut entries: Vec<FleetEntry>,
        to_run: Vec<(usize, String)>,
        shares: HashMap<String, Vec<ShareChild>>,
        cancel: CancellationToken,
    ) {
        let began = std::time::Instant::now();
        let limit = Duration::from_secs_f64(req.template.duration + req.host_timeout);
        let remote_children: usize = shares.values().map(Vec::len).sum();
        // Each child sends at most a session and its end.
        let (events_tx, mut events) =
            mpsc::channel::<ChildEvent>(2 * (to_run.len() + remote_children).max(1));
        // Every child starts at once, so the traces cover the same window.
        for (index, host) in to_run {
            let job_id = child_id(fleet_id, index);
            entries[index].jobid = Some(job_id);
            let mut child = req.template.clone();
            child.host = host.clone();
            let engine = self.clone();
            let events = events_tx.clone();
            let cancel = cancel.child_token();
            self.spawn(async move {
                let (entry, ack) = engine
                    .run_child(
                        job_id,
                        &host,
                        &child,
                        limit,
                        &cancel,
                        ChildOrigin::Fleet(&events, index),
                    )
                    .await;
                let _ = events.send(ChildEvent::Done(index, entry, ack)).await;
            });
        }
        // The hosts whose agents other members hold: one share per member.
        for (member, mut children) in shares {
            for child in &mut children {
                child.job_id = child_id(fleet_id, child.index);
                entries[child.index].jobid = Some(child.job_id);
            }
            let share = ShareFor {
                request: req.template.to_body(),
                limit_secs: limit.as_secs_f64(),
                children,
                snapshot_of: req.template.snapshot_of,
            };
            self.spawn_share(
                member,
                share,
                fleet_id,
                limit,
                events_tx.clone(),
                cancel.child_token(),
            );
        }
        drop(events_tx);
        let mut sizes = vec![0; entries.len()];
        let mut unacked: Vec<Ack> = Vec::new();
        let mut unacked_remote: HashMap<String, Vec<u64>> = HashMap::new();
        let mut dirty = true;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        // Outcomes are written in batches: a 10,000-host fleet must not rewrite its record
        // 10,000 times.
        loop {
            tokio::select! {
                next = events.recv() => match next {
                    Some(ChildEvent::Session(index, session)) => {
                        entries[index].ssh_session = Some(session);
                        dirty = true;
                    }
                    Some(ChildEvent::Done(index, entry, ack)) => {
                        sizes[index] = result_size(&entry);
                        entries[index] = entry;
                        unacked.extend(ack);
                        dirty = true;
                    }
                    Some(ChildEvent::Remote(index, mut entry, member)) => {
                        // Only its own host's outcome, under the id this fleet gave it, with
                        // a status that follows it, no SSH session (recovery would reach
                        // it) and a result within the limit: another member's entry is
                        // checked like an agent's.
                        entry.host = entries[index].host.clone();
                        entry.jobid = entries[index].jobid;
                        entry.ssh_session = None;
                        entry.status = Some(match entry.outcome {
                            Outcome::Complete => JobStatus::Complete,
                            Outcome::Pending => {
                                entry.outcome = Outcome::Error;
                                JobStatus::Failed
                            }
                            _ => JobStatus::Failed,
                        });
                        if entry.result.as_ref().is_some_and(|r| json_size(r) > MAX_RESULT_BYTES) {
                            let host = entry.host.clone();
                            entry = FleetEntry {
                                jobid: entry.jobid,
                                ..FleetEntry::failed(&host, Outcome::Error, JobError::new(
                                    Step::Result,
                                    &host,
                                    format!("host {host}: its result is over {} MiB", MAX_RESULT_BYTES >> 20),
                                ))
                            };
                        }
                        if let Some(job_id) = entry.jobid {
                            unacked_remote.entry(member).or_default().push(job_id);
                        }
                        sizes[index] = result_size(&entry);
                        entries[index] = entry;
                        dirty = true;
                    }
                    None => break,
                },
                _ = flush.tick(), if dirty => {
                    match self.write_fleet(fleet_id, JobStatus::TraceRunning, &entries, &sizes, None).await {
                        Ok(()) => {
                            dirty = false;
                            self.send_acks(std::mem::take(&mut unacked));
                            self.ack_remote(std::mem::take(&mut unacked_remote));
                        }
                        Err(error) => tracing::warn!(job_id = fleet_id, %error, "could not store a fleet's progress; retrying"),
                    }
                }
            }
        }
        let (status, error) = fleet_end(&entries);
        let mut attempt = 1;
        let stored = loop {
            match self
                .write_fleet(fleet_id, status, &entries, &sizes, Some(error.as_ref()))
                .await
            {
                Err(error) if attempt < END_ATTEMPTS => {
                    tracing::warn!(job_id = fleet_id, attempt, %error, "storing a fleet's end failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match stored {
            Ok(()) => {
                self.send_acks(unacked);
                self.ack_remote(unacked_remote);
                crate::metrics::fleet_ended(&req.template.analysis_type, status, began.elapsed());
            }
            Err(error) => {
                // Not acknowledged: agents send their results again after a reconnect; the
                // next run ends the fleet (recovery).
                tracing::error!(job_id = fleet_id, %error, "could not store the end of a fleet job");
            }
        }
        self.forget(fleet_id, None);
    }

    /// Refuses a host list naming more than `max_unregistered_fleet_hosts` hosts that are
    /// neither agents nor registered clients: each would be an SSH connection to whatever
    /// address the request names (a port scanner of the coordinator's network).
    async fn check_unregistered(
        &self,
        hosts: &[String],
        statuses: &HashMap<String, crate::hub::AgentStatus>,
        remote: &HashMap<String, crate::store::AgentLocation>,
    ) -> Result<(), SubmitError> {
        // Every name clients answer to, once: a fleet may list 10,000 hosts.
        let clients = self.store.list(crate::registry::Kind::Clients).await?;
        let registered: std::collections::HashSet<&str> =
            clients.iter().flat_map(HostRecord::names).collect();
        let unregistered: Vec<&String> = hosts
            .iter()
            .filter(|h| {
                self.hub.find(h).is_none()
                    && !statuses.contains_key(h.as_str())
                    && !remote.contains_key(h.as_str())
            })
            .filter(|h| !registered.contains(h.as_str()))
            .collect();
        let max = self.config.max_unregistered_fleet_hosts;
        if unregistered.len() > max {
            let shown: Vec<&str> = unregistered.iter().take(5).map(|h| h.as_str()).collect();
            return Err(crate::registry::FieldError::new(
                "hosts",
                format!(
                    "{} hosts are neither agents nor registered clients ({}{}): a fleet may name at most {max} such hosts (max_unregistered_fleet_hosts); register them (POST /clients) first",
                    unregistered.len(),
                    shown.join(", "),
                    if unregistered.len() > shown.len() { ", ..." } else { "" }
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Acknowledges committed results without waiting on any agent's link.
    pub(super) fn send_acks(&self, acks: Vec<Ack>) {
        if acks.is_empty() {
            return;
        }
        self.spawn(async move {
            for ack in acks {
                ack.send().await;
            }
        });
    }

    /// Writes a fleet's per-host outcomes (and its end, when `end` is given), and wakes its
    /// watchers. Results beyond [`FLEET_RESULTS_BUDGET`] are left out of the record (each
    /// replaced by a note), so the write always fits the storage engine's write buffer.
    async fn write_fleet(
        &self,
        fleet_id: u64,
        status: JobStatus,
        entries: &[FleetEntry],
        sizes: &[usize],
        end: Option<Option<&JobError>>,
    ) -> Result<(), StoreError> {
        let bounded = within_results_budget(entries, sizes, FLEET_RESULTS_BUDGET);
        let hosts: &[FleetEntry] = bounded.as_deref().unwrap_or(entries);
        let finished = end.map(|_| now());
        let record = self
            .store
            .update_fleet(
                fleet_id,
                FleetUpdate {
                    status,
                    hosts,
                    error: end.flatten(),
                    finished: finished.as_deref(),
                },
            )
            .await?;
        if let Some(record) = record {
            self.publish(&record);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fleet_results_past_the_budget_are_left_out_in_host_order() {
        let entry = |host: &str, bytes: usize| FleetEntry {
            outcome: Outcome::Complete,
            result: Some(json!({"blob": "x".repeat(bytes)})),
            ..FleetEntry::pending(host)
        };
        let failed = FleetEntry::failed(
            "f",
            Outcome::Error,
            JobError::new(Step::Analysis, "f", "failed"),
        );
        let entries = vec![
            entry("a", 400),
            failed.clone(),
            entry("b", 400),
            entry("c", 100),
        ];
        let sizes: Vec<usize> = entries.iter().map(result_size).collect();
        assert_eq!(
            sizes[0],
            serde_json::to_vec(entries[0].result.as_ref().unwrap())
                .unwrap()
                .len()
        );
        assert!(
            within_results_budget(&entries, &sizes, 10_000).is_none(),
            "all fit"
        );
        let bounded = within_results_budget(&entries, &sizes, 600).unwrap();
        assert_eq!(bounded[0], entries[0]);
        assert_eq!(bounded[1], failed);
        let note = bounded[2].result.as_ref().unwrap()["omitted"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(note.contains("bytes) is not stored"), "{note}");
        assert_eq!(bounded[2].outcome, Outcome::Complete, "the outcome stays");
        assert_eq!(
            bounded[3], entries[3],
            "a later result that still fits is kept"
        );
    }

    #[test]
    fn a_fleet_ends_complete_only_when_every_host_completed() {
        let done = FleetEntry {
            outcome: Outcome::Complete,
            ..FleetEntry::pending("a")
        };
        assert_eq!(
            fleet_end(std::slice::from_ref(&done)),
            (JobStatus::Complete, None)
        );
        let (status, error) = fleet_end(&[done, FleetEntry::pending("b")]);
        assert_eq!(status, JobStatus::Failed);
        let error = error.unwrap();
        assert_eq!(error.step, Step::Fleet);
        assert!(error.message.contains("1 of 2 hosts"), "{}", error.message);
        assert!(error.message.contains("b (pending)"), "{}", error.message);
    }
}
