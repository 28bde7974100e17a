//! Where a job runs: how its host is reached, where its trace goes, where it is analysed, and
//! the [`JobSpec`] the lifecycle runs.

use tracevisor_lttng::lifecycle;
use tracevisor_protocol::{JobSpec, Summary as WireSummary, TraceLocator, TraceOutput};

use super::{sanitize, Engine, JobRequest, SubmitError};
use crate::model::{SshSession, Via};
use crate::profiles::{Profile, Summary};
use crate::registry::{FieldError, HostRecord, Kind, DEFAULT_CTRLPORT, DEFAULT_DATAPORT};
use crate::ssh::SshTarget;
use crate::store::StoreError;

/// How a host is reached.
#[derive(Debug, Clone)]
pub enum Route {
    Agent { hostname: String },
    Ssh(SshTarget),
}

impl Route {
    pub fn via(&self) -> Via {
        match self {
            Route::Agent { .. } => Via::Agent,
            Route::Ssh(_) => Via::Ssh,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Route::Agent { hostname } => hostname.clone(),
            Route::Ssh(t) => t.display.clone(),
        }
    }
}

/// What a job resolved to before it runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: Profile,
    pub route: Route,
    pub relay: Option<HostRecord>,
    /// Where the analysis runs when it is not the traced host.
    pub analysis_host: Option<String>,
    pub analysis_route: Option<Route>,
}

impl Plan {
    /// The session name of job `job_id` on the traced host.
    pub fn session(&self, instance: &str, job_id: u64) -> String {
        lifecycle::session_name(instance, job_id, &sanitize(&self.route.name()))
    }

    /// The session a job creates over SSH, recorded so it can be destroyed after a crash.
    pub fn ssh_session(&self, instance: &str, job_id: u64) -> Option<SshSession> {
        match &self.route {
            Route::Agent { .. } => None,
            Route::Ssh(t) => Some(SshSession {
                address: t.address.clone(),
                port: t.port,
                user: t.user.clone(),
                display: t.display.clone(),
                session: self.session(instance, job_id),
            }),
        }
    }

    /// The spec of the recording phase (with the analysis when it runs on the traced host).
    pub fn trace_spec(&self, instance: &str, job_id: u64, req: &JobRequest) -> JobSpec {
        let profile = &self.profile;
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
        let output = match &self.relay {
            Some(r) => TraceOutput::Relay {
                host: r.address(),
                ctrl_port: r.ctrlport.unwrap_or(DEFAULT_CTRLPORT),
                data_port: r.dataport.unwrap_or(DEFAULT_DATAPORT),
            },
            None => TraceOutput::Local,
        };
        JobSpec {
            session_name: self.session(instance, job_id),
            analysis: profile.analysis.clone(),
            kernel_events: profile.kernel_events.clone(),
            syscalls: profile.syscalls,
            userspace_events: profile.userspace_events.clone(),
            duration_ms: (req.duration * 1000.0).round() as u64,
            output,
            analysis_commands: commands,
            run_analysis: self.analysis_route.is_none(),
            summary: match profile.summary {
                Summary::Lami => WireSummary::Lami,
                Summary::Ust => WireSummary::Ust,
            },
            analysis_only: None,
            keep_trace: req.keep_trace,
            snapshot_of: req
                .snapshot_of
                .map(|recorder| recorder_session(instance, recorder, &self.route.name())),
        }
    }

    /// The spec of the analysis phase on the relay's output.
    pub fn analysis_spec(&self, trace_spec: &JobSpec, default_roots: &[String]) -> JobSpec {
        let roots = self
            .relay
            .as_ref()
            .and_then(|r| r.output_dir.clone())
            .map(|d| vec![d])
            .unwrap_or_else(|| default_roots.to_vec());
        JobSpec {
            analysis_only: Some(TraceLocator::RelaySession { roots }),
            run_analysis: true,
            ..trace_spec.clone()
        }
    }
}

impl Engine {
    /// Resolves how to reach `host`: a connected agent, a registered client, or the address.
    pub async fn route(&self, host: &str, username: &str) -> Result<Route, StoreError> {
        if let Some(hostname) = self.hub.find(host) {
            return Ok(Route::Agent { hostname });
        }
        let clients = self.store.list(Kind::Clients).await?;
        if let Some(c) = clients.iter().find(|c| c.answers_to(host)) {
            // A registered address reaches the client's agent when it has one connected.
            if self.hub.client_id(&c.hostname).is_some() {
                return Ok(Route::Agent {
                    hostname: c.hostname.clone(),
                });
            }
            return Ok(Route::Ssh(ssh_target(host, c)));
        }
        Ok(Route::Ssh(SshTarget {
            display: host.to_owned(),
            address: host.to_owned(),
            port: 22,
            user: username.to_owned(),
        }))
    }

    /// Resolves a host that is only reached to analyse: a connected agent, a registered
    /// analyses server or client, the relay the trace went to (at its registered address),
    /// else the name itself.
    async fn analysis_route(
        &self,
        host: &str,
        username: &str,
        relay: Option<&HostRecord>,
    ) -> Result<Route, StoreError> {
        if let Some(hostname) = self.hub.find(host) {
            return Ok(Route::Agent { hostname });
        }
        if let Some(server) = self
            .store
            .find_by_hostname(Kind::AnalysesServers, host)
            .await?
        {
            return Ok(Route::Ssh(ssh_target(host, &server)));
        }
        let route = self.route(host, username).await?;
        match (route, relay) {
            // Not a registered client: a relay registered by address is reached there, not by
            // its name (which may not resolve).
            (Route::Ssh(t), Some(r)) if t.address == host && r.hostname == host => {
                Ok(Route::Ssh(SshTarget {
                    address: r.address(),
                    ..t
                }))
            }
            (route, _) => Ok(route),
        }
    }

    /// The registered relay named `name` (its hostname or one of its addresses).
    async fn registered_relay(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        if let Some(relay) = self.store.find_by_hostname(Kind::Relays, name).await? {
            return Ok(Some(relay));
        }
        Ok(self
            .store
            .list(Kind::Relays)
            .await?
            .into_iter()
            .find(|r| r.has_address(name)))
    }

    /// Refuses a relay that is not registered unless `allow_unregistered_relays`: otherwise a
    /// request could make hosts stream their traces to any address.
    pub(super) async fn check_relay(&self, relay: Option<&str>) -> Result<(), SubmitError> {
        let Some(name) = relay else { return Ok(()) };
        if self.config.allow_unregistered_relays || self.registered_relay(name).await?.is_some() {
            return Ok(());
        }
        Err(FieldError::new(
            "relay",
            format!("{name:?} is not a registered relay: register it first (POST /relays) or set allow_unregistered_relays = true"),
        )
        .into())
    }

    /// Resolves everything a job needs before it runs: profile, route, relay, analysis host.
    pub(super) async fn plan(&self, req: &JobRequest) -> Result<Plan, StoreError> {
        let profile = self.config.profiles[&req.analysis_type].clone();
        let route = self.route(&req.host, &req.username).await?;
        // The relay: registered (ports from the registry) or an address with default ports.
        let relay = match &req.relay {
            None => None,
            Some(name) => Some(match self.registered_relay(name).await? {
                Some(r) => r,
                None => {
                    let mut r = HostRecord::new(Kind::Relays, name.clone(), None, None);
                    r.ctrlport = Some(DEFAULT_CTRLPORT);
                    r.dataport = Some(DEFAULT_DATAPORT);
                    r
                }
            }),
        };
        // Where the analysis runs: the analysis host, else the relay, else the traced host.
        let analysis_host = req
            .analysis_host
            .clone()
            .or_else(|| relay.as_ref().map(|r| r.hostname.clone()));
        let analysis_route = match &analysis_host {
            Some(h) if relay.is_some() => Some(
                self.analysis_route(h, &req.username, relay.as_ref())
                    .await?,
            ),
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
}

/// The session of flight recorder `recorder` of coordinator `instance` on `host`.
pub fn recorder_session(instance: &str, recorder: u64, host: &str) -> String {
    format!(
        "{}{instance}-{recorder}-{}",
        tracevisor_protocol::RECORDER_PREFIX,
        sanitize(host)
    )
}

/// The prefix of coordinator `instance`'s recorder sessions.
pub fn recorder_owner(instance: &str) -> String {
    format!("{}{instance}-", tracevisor_protocol::RECORDER_PREFIX)
}

/// The SSH target of a registered host: its address, its SSH port and user (else 22 and root).
fn ssh_target(display: &str, record: &HostRecord) -> SshTarget {
    SshTarget {
        display: display.to_owned(),
        address: record.address(),
        port: record.sshport.unwrap_or(22),
        user: record.sshuser.clone().unwrap_or_else(|| "root".into()),
    }
}
