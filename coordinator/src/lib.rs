//! The Tracevisor coordinator: REST API, registry store, agent hub and job engine.
//!
//! [`run`] is the whole server: the caller binds the listener (tests bind port 0) and passes a
//! cancellation token; `run` returns once every connection has drained after cancellation and
//! every task it started (jobs, agent links, the local agent) has ended, each within a bound.

pub mod api;
pub mod archive;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod jobs;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod profiles;
pub mod registry;
pub mod secrets;
pub mod ssh;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error("data dir {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("refusing to serve without authentication on non-loopback address {0}; set a token or pass --insecure-no-auth")]
    OpenOnNetwork(SocketAddr),
    #[error("tls: {0}")]
    Tls(String),
    #[error("server: {0}")]
    Serve(String),
}

/// How long running jobs may take to end after shutdown (SSH jobs destroy their sessions).
const JOB_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agent links and the local agent may take to close after shutdown.
const LINK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    prepare_data_dir(&config)?;
    let store =
        store::Store::open_as(&config.db, config.storage, config.db_credentials.as_ref()).await?;
    let instance = store.instance_id().await?;
    let ssh = secrets::load_or_create_ssh_key(&config.data_dir)?;
    let rest_token = rest_token(&config)?;
    let agent_token = match &config.agent_token {
        Some(t) => t.clone(),
        None => secrets::load_or_create_token(&config.data_dir, secrets::AGENT_TOKEN_FILE)?,
    };
    let local_addr = listener
        .local_addr()
        .map_err(|e| RunError::Serve(e.to_string()))?;
    let config = Arc::new(config);
    let (hub, agent_events) = hub::Hub::new(
        store.clone(),
        agent_token,
        config.heartbeat_interval,
        shutdown.clone(),
        instance.clone(),
        config.max_agent_links,
        config.agent_takeover,
    );
    hub.load().await?;
    // In a cluster: the internal API's port is taken before anything else can fail later.
    let cluster = match &config.cluster {
        None => None,
        Some(settings) => {
            let internal = std::net::TcpListener::bind(settings.listen)
                .map_err(|e| RunError::Serve(format!("cluster_listen {}: {e}", settings.listen)))?;
            let cluster = cluster::Cluster::new(
                settings.clone(),
                local_addr.to_string(),
                store.clone(),
                config.tls.as_ref().map(|t| t.cert.clone()),
            )
            .map_err(RunError::Serve)?;
            let evictions = hub.join_cluster(cluster.id.clone());
            // Joined before anything is recovered: the live members' jobs are theirs.
            cluster.beat(0).await?;
            tracing::info!(member = %cluster.id, internal = %settings.listen, url = %settings.url, "joined the cluster");
            Some((cluster, internal, evictions))
        }
    };
    let engine = jobs::Engine::new(
        store.clone(),
        hub.clone(),
        config.clone(),
        ssh::SshSettings {
            key_file: ssh.private_key.clone(),
            known_hosts: ssh::known_hosts(&config.data_dir),
            policy: config.ssh_host_key_policy,
            connect_timeout: config.ssh_connect_timeout,
            traces: config.traces,
            tracesd: config.ssh_tracesd.clone(),
        },
        instance,
        shutdown.clone(),
    );
    let cluster = cluster.map(|(cluster, internal, evictions)| {
        engine.join_cluster(cluster.clone());
        (cluster, internal, evictions)
    });
    engine.recover().await?;
    engine.load_recorders().await?;
    engine.spawn_event_loop(agent_events);
    engine.spawn_pruner(config.job_retention);
    let (cluster, internal) = match cluster {
        None => (None, None),
        Some((cluster, internal, evictions)) => {
            engine.spawn_cluster_duties(evictions);
            (Some(cluster), Some(internal))
        }
    };
    let state = Arc::new(api::AppState {
        config: config.clone(),
        hub: hub.clone(),
        engine: engine.clone(),
        store: store.clone(),
        ssh,
        rest_token,
        started: std::time::Instant::now(),
        request_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        sessions: api::ui::Sessions::default(),
        live_views: Arc::new(tokio::sync::Semaphore::new(api::ui::MAX_LIVE_VIEWS)),
    });
    let internal_server = internal.map(|listener| {
        let app = api::internal::router(state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { listener::serve(listener, app, &config, &shutdown).await })
    });
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let local_agent = if config.local_agent {
        Some(spawn_local_agent(
            &config,
            local_addr,
            &hub.local_credential(&config.local_agent_hostname),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    tracing::info!(
        address = %local_addr,
        tls = config.tls.is_some(),
        auth = if config.token.is_some() || !config.is_loopback() && !config.insecure_no_auth { "bearer token" } else { "none (loopback)" },
        db = %config.db,
        "tracevisor listening"
    );
    let served = listener::serve(listener, app, &config, &shutdown).await;
    if let Some(server) = internal_server {
        // Stopped by the same shutdown (or the REST server's failure ends the process).
        shutdown.cancel();
        match server.await {
            Ok(Err(error)) => {
                tracing::warn!(%error, "the cluster's internal API stopped with an error")
            }
            Err(error) => tracing::warn!(%error, "the cluster's internal API task failed"),
            Ok(Ok(())) => {}
        }
    }
    served?;
    // Everything the coordinator started ends before `run` returns: jobs (SSH sessions are
    // destroyed, agent jobs are left to their agents), the event loop, the pruner, agent links
    // and the local agent.
    let left = engine.stopped(JOB_DRAIN_TIMEOUT).await;
    if left > 0 {
        tracing::warn!(
            tasks = left,
            seconds = JOB_DRAIN_TIMEOUT.as_secs(),
            "job tasks still running after the drain time; abandoning them"
        );
    }
    let open = hub.closed(LINK_DRAIN_TIMEOUT).await;
    if open > 0 {
        tracing::warn!(links = open, "agent links still open at exit");
    }
    hub.flush_last_seen().await;
    if let Some(cluster) = &cluster {
        // The others see this member gone at once, not after the dead-after time.
        cluster.leave().await;
    }
    if let Some(agent) = local_agent {
        if tokio::time::timeout(LINK_DRAIN_TIMEOUT, agent)
            .await
            .is_err()
        {
            tracing::warn!("the built-in local agent did not stop in time");
        }
    }
    // Last, once nothing queries any more: every other handle on the store goes first.
    drop((engine, hub, cluster));
    store.close().await;
    tracing::info!("tracevisor stopped");
    Ok(())
}

/// Starts the built-in agent for this host, dialling this coordinator through the same hub path
/// as any other agent.
fn spawn_local_agent(
    config: &Config,
    addr: SocketAddr,
    token: &str,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if target.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{target}{}", tracevisor_protocol::HUB_PATH);
    let mut agent = tracesd::AgentConfig::new(&url, token, &config.local_agent_hostname)
        .map_err(|e| RunError::Serve(format!("local agent: {e}")))?;
    if let Some(tls) = &config.tls {
        // The coordinator's own certificate is the trust anchor for its local agent.
        agent.ca_cert = Some(tls.cert.clone());
    }
    // The built-in agent runs this coordinator's own profiles: their programs are allowed on
    // this host, as if listed in its analysis_programs.
    agent.analysis_programs = config
        .profiles
        .values()
        .flat_map(|p| p.commands.iter().filter_map(|argv| argv.first()))
        .filter_map(|program| {
            if program.starts_with('/') {
                Some(std::path::PathBuf::from(program))
            } else {
                tracevisor_lttng::runner::find_in_path(program)
            }
        })
        .collect();
    // It also analyses traces relays wrote on this host: the coordinator's relay output
    // directories are its relay roots (those that do not exist are skipped at each job).
    agent.trace_policy = config.traces;
    agent.lttng_control = config.lttng_control;
    agent.relay_roots = config
        .relay_output_dirs
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    tracing::info!(hostname = %config.local_agent_hostname, %url, "starting the built-in local agent");
    Ok(tokio::spawn(async move {
        if let Err(error) = tracesd::run(agent, shutdown).await {
            tracing::error!(%error, "the built-in local agent stopped");
        }
    }))
}

fn prepare_data_dir(config: &Config) -> Result<(), RunError> {
    let dir = &config.data_dir;
    let fail = |e: std::io::Error| RunError::DataDir {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    Ok(())
}

/// The REST token in force: configured, else generated when the address is not loopback.
fn rest_token(config: &Config) -> Result<Option<String>, RunError> {
    if let Some(token) = &config.token {
        return Ok(Some(token.clone()));
    }
    if config.is_loopback() {
        return Ok(None);
    }
    if config.insecure_no_auth {
        tracing::warn!(address = %config.listen, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth)");
        return Ok(None);
    }
    let token = secrets::load_or_create_token(&config.data_dir, secrets::REST_TOKEN_FILE)?;
    tracing::info!(file = %config.data_dir.join(secrets::REST_TOKEN_FILE).display(), "REST API requires the bearer token in this file");
    Ok(Some(token))
}
