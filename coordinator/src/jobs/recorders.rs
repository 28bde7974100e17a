//! Flight recorders across the fleet: snapshot-mode sessions kept armed on agents, and
//! snapshots taken on all of a recorder's hosts at once.
//!
//! What to record where is stored (`recorder` table) and cached here; each host's state is
//! what its agent last reported (`RecordersArmed`), kept in memory. The coordinator sends a host
//! the whole set of its recorders (`ArmRecorders`) when they change and after every hello, so
//! an agent restart or a host reboot re-arms them; the agent destroys this coordinator's
//! recorder sessions that are not in the set. A snapshot is a fleet job over the recorder's
//! hosts whose children record a snapshot of the armed session instead of a new trace
//! (`JobRequest::snapshot_of`): it answers, stores, keeps and fetches like any fleet job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracevisor_protocol::{Message, RecorderSpec, RecorderState};

use super::request::{capability, HostSelection};
use super::route::{recorder_owner, recorder_session};
use super::{lock, now, Engine, FleetRequest, JobRequest, JobView, SubmitError};
use crate::model::{RecorderHostState, RecorderRecord};
use crate::registry::FieldError;

/// Most recorders on one host.
pub const MAX_RECORDERS_PER_HOST: usize = 4;
/// Default and largest ring buffer per channel and CPU, in MiB.
pub const DEFAULT_BUFFER_MIB: u64 = 16;
pub const MAX_BUFFER_MIB: u64 = 1024;
/// How long creating or deleting a recorder waits for its hosts' agents to answer.
const ARM_WAIT: Duration = Duration::from_secs(30);
/// Seconds each host has for a snapshot and its analysis.
const SNAPSHOT_HOST_TIMEOUT: f64 = 300.0;

/// A `POST /recorders` request, validated.
#[derive(Debug, Clone)]
pub struct RecorderRequest {
    pub hosts: HostSelection,
    pub analysis_type: String,
    pub buffer_mib: u64,
}

/// The recorders and their states on the hosts.
pub struct Recorders {
    by_id: Mutex<BTreeMap<u64, RecorderRecord>>,
    /// By (recorder, host).
    states: Mutex<HashMap<(u64, String), RecorderHostState>>,
    /// Hosts whose recorder sessions must be destroyed when their agent comes back.
    disarm_pending: Mutex<HashSet<String>>,
    /// Counts the `RecordersArmed` answers received, per host.
    answers: Mutex<HashMap<String, u64>>,
    /// Bumped at every answer, for waiters.
    answered: watch::Sender<u64>,
}

impl Recorders {
    pub fn new() -> Recorders {
        Recorders {
            by_id: Mutex::default(),
            states: Mutex::default(),
            disarm_pending: Mutex::default(),
            answers: Mutex::default(),
            answered: watch::channel(0).0,
        }
    }

    fn state(&self, id: u64, host: &str, state: &str, error: Option<String>) {
        lock(&self.states).insert(
            (id, host.to_owned()),
            RecorderHostState {
                host: host.to_owned(),
                state: state.to_owned(),
                error,
                since: Some(now()),
            },
        );
    }

    fn with_states(&self, mut record: RecorderRecord) -> RecorderRecord {
        let states = lock(&self.states);
        record.states = record
            .hosts
            .iter()
            .map(|h| {
                states
                    .get(&(record.id, h.clone()))
                    .cloned()
                    .unwrap_or_else(|| RecorderHostState {
                        host: h.clone(),
                        state: "offline".into(),
                        error: None,
                        since: None,
                    })
            })
            .collect();
        record
    }

    fn answer_count(&self, host: &str) -> u64 {
        lock(&self.answers).get(host).copied().unwrap_or(0)
    }
}

impl Engine {
    /// Loads the stored recorders (at start-up); their hosts are armed as their agents say
    /// hello.
    pub async fn load_recorders(&self) -> Result<(), crate::store::StoreError> {
        let stored = self.store.recorders().await?;
        let mut by_id = lock(&self.recorders.by_id);
        for r in stored {
            by_id.insert(r.id, r);
        }
        Ok(())
    }

    /// Every recorder with its hosts' states.
    pub fn recorders(&self) -> Vec<RecorderRecord> {
        let all: Vec<RecorderRecord> = lock(&self.recorders.by_id).values().cloned().collect();
        all.into_iter()
            .map(|r| self.recorders.with_states(r))
            .collect()
    }

    /// One recorder with its hosts' states.
    pub fn recorder(&self, id: u64) -> Option<RecorderRecord> {
        let record = lock(&self.recorders.by_id).get(&id).cloned()?;
        Some(self.recorders.with_states(record))
    }

    /// The recorder specs of `host` (every recorder that lists it).
    fn specs_of(&self, host: &str) -> Vec<RecorderSpec> {
        let by_id = lock(&self.recorders.by_id);
        by_id
            .values()
            .filter(|r| r.hosts.iter().any(|h| h == host))
            .filter_map(|r| {
                let profile = self.config.profiles.get(&r.analysis_type)?;
                Some(RecorderSpec {
                    session_name: recorder_session(&self.instance, r.id, host),
                    kernel_events: profile.kernel_events.clone(),
                    syscalls: profile.syscalls,
                    userspace_events: profile.userspace_events.clone(),
                    buffer_bytes: r.buffer_mib << 20,
                })
            })
            .collect()
    }

    /// Sends `host` its whole set of recorders (when its agent is connected); marks them
    /// pending. Never waits on the link: the send is a task of its own.
    fn push_recorders(self: &Arc<Self>, host: &str) {
        if self.hub.client_id(host).is_none() {
            return;
        }
        let specs = self.specs_of(host);
        for spec in &specs {
            if let Some(id) = recorder_id(&self.instance, &spec.session_name) {
                self.recorders.state(id, host, "pending", None);
            }
        }
        let message = Message::ArmRecorders {
            owner: recorder_owner(&self.instance),
            recorders: specs,
        };
        let engine = self.clone();
        let host = host.to_owned();
        self.spawn(async move {
            if let Err(error) = engine.hub.send(&host, message).await {
                tracing::warn!(%host, %error, "could not send the host its flight recorders");
            }
        });
    }

    /// An agent said hello: it gets its recorders (re-armed after a restart or a reboot), or
    /// the empty set when recorders it had were deleted meanwhile.
    pub(super) fn recorders_on_hello(self: &Arc<Self>, host: &str) {
        let listed = lock(&self.recorders.by_id)
            .values()
            .any(|r| r.hosts.iter().any(|h| h == host));
        let disarm = lock(&self.recorders.disarm_pending).remove(host);
        if listed || disarm {
            self.push_recorders(host);
        }
    }

    /// An agent's link closed: its recorders show as offline (still armed on the host, as far
    /// as anyone knows, until it reconnects).
    pub(super) fn recorders_on_close(&self, host: &str) {
        let mut states = lock(&self.recorders.states);
        for ((_, h), state) in states.iter_mut() {
            if h == host {
                state.state = "offline".into();
                state.error = None;
                state.since = Some(now());
            }
        }
    }

    /// An agent reported its recorders' states.
    pub(super) fn recorders_armed(&self, host: &str, states: Vec<RecorderState>) {
        for state in states {
            let Some(id) = recorder_id(&self.instance, &state.session_name) else {
                continue;
            };
            // Only a recorder this host is part of: an agent cannot report for another's.
            let listed = lock(&self.recorders.by_id)
                .get(&id)
                .is_some_and(|r| r.hosts.iter().any(|h| h == host));
            if !listed {
                tracing::warn!(%host, session = %state.session_name, "ignoring the state of a recorder this host is not part of");
                continue;
            }
            match &state.error {
                None => self.recorders.state(id, host, "armed", None),
                Some(why) => {
                    tracing::warn!(%host, recorder = id, %why, "flight recorder not armed");
                    self.recorders.state(id, host, "error", Some(why.clone()));
                }
            }
        }
        *lock(&self.recorders.answers)
            .entry(host.to_owned())
            .or_default() += 1;
        self.recorders.answered.send_modify(|n| *n += 1);
    }

    /// Waits (at most [`ARM_WAIT`]) until each of `hosts` answered more often than `before`
    /// says, or has gone.
    async fn wait_answers(&self, hosts: &[(String, u64)]) {
        let mut rx = self.recorders.answered.subscribe();
        let deadline = tokio::time::Instant::now() + ARM_WAIT;
        loop {
            let waiting = hosts.iter().any(|(h, before)| {
                self.recorders.answer_count(h) <= *before && self.hub.client_id(h).is_some()
            });
            if !waiting {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Creates a recorder, arms it on its connected hosts and waits (bounded) for their
    /// answers; hosts whose agent is offline are armed when it connects.
    pub async fn create_recorder(
        self: &Arc<Self>,
        req: RecorderRequest,
    ) -> Result<RecorderRecord, SubmitError> {
        let hosts = self.recorder_hosts(&req.hosts)?;
        {
            let by_id = lock(&self.recorders.by_id);
            for host in &hosts {
                let count = by_id
                    .values()
                    .filter(|r| r.hosts.iter().any(|h| h == host))
                    .count();
                if count >= MAX_RECORDERS_PER_HOST {
                    return Err(FieldError::new(
                        "hosts",
                        format!("host {host} already has {count} flight recorders (at most {MAX_RECORDERS_PER_HOST}); delete one first"),
                    )
                    .into());
                }
            }
        }
        let record = RecorderRecord {
            id: 0,
            analysis_type: req.analysis_type,
            hosts: hosts.clone(),
            buffer_mib: req.buffer_mib,
            created: now(),
            states: Vec::new(),
        };
        let stored = self.store.create_recorder(&record).await?;
        lock(&self.recorders.by_id).insert(stored.id, stored.clone());
        tracing::info!(recorder = stored.id, hosts = hosts.len(), r#type = %stored.analysis_type, "flight recorder created");
        let before: Vec<(String, u64)> = hosts
            .iter()
            .map(|h| (h.clone(), self.recorders.answer_count(h)))
            .collect();
        for host in &hosts {
            self.push_recorders(host);
        }
        self.wait_answers(&before).await;
        Ok(self.recorders.with_states(stored))
    }

    /// The agents a recorder request names: each listed host must have an agent (connected or
    /// not); a selector takes the connected agents with the capabilities it requires.
    fn recorder_hosts(&self, selection: &HostSelection) -> Result<Vec<String>, SubmitError> {
        match selection {
            HostSelection::List(list) => {
                let known = self.hub.statuses();
                list.iter()
                    .map(|name| {
                        if let Some(hostname) = self.hub.find(name) {
                            return Ok(hostname);
                        }
                        let lower = name.to_ascii_lowercase();
                        if known.contains_key(&lower) {
                            return Ok(lower);
                        }
                        Err(FieldError::new(
                            "hosts",
                            format!("{name:?} has no agent: flight recorders run on hosts with a tracesd agent (enroll it first)"),
                        )
                        .into())
                    })
                    .collect::<Result<Vec<_>, SubmitError>>()
                    .map(|mut hosts| {
                        hosts.sort();
                        hosts.dedup();
                        hosts
                    })
            }
            HostSelection::Agents { require } => {
                let mut hosts: Vec<String> = self
                    .hub
                    .hostnames()
                    .into_iter()
                    .filter(|h| {
                        self.hub
                            .capabilities(h)
                            .is_some_and(|caps| require.iter().all(|c| capability(&caps, c)))
                    })
                    .collect();
                hosts.sort();
                if hosts.is_empty() {
                    return Err(FieldError::new(
                        "hosts",
                        "no connected agent has the capabilities required",
                    )
                    .into());
                }
                Ok(hosts)
            }
        }
    }

    /// Deletes a recorder: its sessions are destroyed on the hosts whose agent is connected
    /// (waiting, bounded, for their answers), and on the others when they connect. Returns
    /// the recorder as it was, each host's state saying whether it was disarmed.
    pub async fn delete_recorder(
        self: &Arc<Self>,
        id: u64,
    ) -> Result<Option<RecorderRecord>, SubmitError> {
        let Some(deleted) = self.store.delete_recorder(id).await? else {
            return Ok(None);
        };
        lock(&self.recorders.by_id).remove(&id);
        lock(&self.recorders.states).retain(|(r, _), _| *r != id);
        let before: Vec<(String, u64)> = deleted
            .hosts
            .iter()
            .map(|h| (h.clone(), self.recorders.answer_count(h)))
            .collect();
        for host in &deleted.hosts {
            if self.hub.client_id(host).is_some() {
                self.push_recorders(host);
            } else {
                lock(&self.recorders.disarm_pending).insert(host.clone());
            }
        }
        self.wait_answers(&before).await;
        let states = before
            .iter()
            .map(|(host, count)| {
                let done = self.recorders.answer_count(host) > *count;
                RecorderHostState {
                    host: host.clone(),
                    state: if done { "disarmed" } else { "pending" }.into(),
                    error: (!done).then(|| {
                        "the agent is not connected: its session is destroyed when it connects"
                            .to_owned()
                    }),
                    since: Some(now()),
                }
            })
            .collect();
        tracing::info!(recorder = id, "flight recorder deleted");
        Ok(Some(RecorderRecord { states, ..deleted }))
    }

    /// Takes a snapshot on every host of recorder `id` at once, as a fleet job (see the
    /// module docs); `None` when there is no such recorder.
    pub async fn snapshot(
        self: &Arc<Self>,
        id: u64,
        keep_trace: bool,
        wait: bool,
    ) -> Result<Option<(u64, JobView)>, SubmitError> {
        let Some(recorder) = lock(&self.recorders.by_id).get(&id).cloned() else {
            return Ok(None);
        };
        let request = FleetRequest {
            hosts: HostSelection::List(recorder.hosts.clone()),
            template: JobRequest {
                host: "fleet.invalid".into(),
                duration: 0.001,
                analysis_type: recorder.analysis_type.clone(),
                username: "root".into(),
                relay: None,
                analysis_host: None,
                mongohost: None,
                mongoport: None,
                wait,
                keep_trace,
                snapshot_of: Some(id),
            },
            host_timeout: SNAPSHOT_HOST_TIMEOUT,
        };
        let (job, view) = self.submit_fleet(request).await?;
        tracing::info!(recorder = id, job, "flight recorder snapshot");
        Ok(Some((job, view)))
    }
}

/// The recorder id in one of `instance`'s recorder session names.
fn recorder_id(instance: &str, session: &str) -> Option<u64> {
    let rest = session.strip_prefix(&recorder_owner(instance))?;
    rest.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_ids_come_back_from_session_names() {
        let session = recorder_session("c0ffee00", 42, "web-1.example");
        assert_eq!(session, "tracevisor-rec-c0ffee00-42-web-1.example");
        assert_eq!(recorder_id("c0ffee00", &session), Some(42));
        assert_eq!(recorder_id("deadbeef", &session), None);
        assert_eq!(recorder_id("c0ffee00", "tracevisor-c0ffee00-42-web"), None);
    }
}
