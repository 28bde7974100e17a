//! Agent-link benchmark: one process simulates N agents over real WebSocket links against the real coordinator binary and prints registration time, memory, idle CPU and `GET /clients` latency.
//!
//! Each simulated agent speaks the real protocol through the real codec on its own TCP
//! connection: the agent's upgrade request and WebSocket limits
//! ([`tracesd::link::upgrade_request`], [`tracesd::link::websocket_config`]), a real `Hello`
//! with empty capabilities, `HelloAck`, heartbeats both ways and the agent's liveness rule; it
//! is bound to one of several `127.0.0.x` source addresses (past the ephemeral-port range of
//! one address) and reconnects with the agent's backoff ([`tracesd::link::Backoff`]) when a
//! link fails. All N start at once (unless `--start-rate`). It does not run
//! [`tracesd::link::drive`], which also runs the job machinery (e.g. asks `lttng` for leftover
//! sessions at each `HelloAck`): that is the agent's host work, not the coordinator's load.
//!
//! Run (release binaries first, they take a while the first time):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/tracevisor-target-release
//! cargo build --release --workspace --bins
//! $CARGO_TARGET_DIR/release/bench-agents --agents 1000,10000,19000
//! ```
//!
//! Flags: `--agents N[,N...]` (default 1000,10000), `--addresses K` source addresses
//! 127.0.0.2.. (default 16), `--heartbeat-secs S` (the coordinator's
//! `heartbeat_interval_secs`, default 10), `--idle-secs S` (CPU window, default 10),
//! `--register-timeout-secs S` (default 120); for diagnostics `--hello-timeout-secs S` (the
//! agents' wait for `HelloAck`, default the agent's 10 s) and `--start-rate R` (start R agents
//! per second instead of all at once). Figures are printed as a markdown table, with the
//! causes of failed attempts and the coordinator's registration errors below it.
//!
//! The program raises its soft `RLIMIT_NOFILE` to the hard limit (the `rlimit` crate; the
//! coordinator it starts inherits it). Each link needs one descriptor in this process and one
//! in the coordinator, so N cannot exceed the hard limit; raise it first where allowed
//! (`ulimit -Hn 1048576` as root with CAP_SYS_RESOURCE, or `prlimit`). The simulator keeps
//! at most the limit minus [`FD_RESERVE`] sockets open (agents beyond wait for one to close),
//! so that it can still measure when N does not fit.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracesd::link::Backoff;
use tracesd::{AgentConfig, LinkSettings};
use tracevisor_protocol::{codec, CloseReason, Frame, Message, DEAD_AFTER_INTERVALS};
use tracevisor_tests::agents::{hub_url, simulated_hello};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::procfs::{clock_ticks_per_second, cpu_ticks, rss_kib};

const TOKEN: &str = "bench-agents-enrollment-token";

/// Descriptors the simulator keeps for itself (reqwest, /proc, the runtime) below its limit.
const FD_RESERVE: u64 = 300;

struct Args {
    agents: Vec<usize>,
    addresses: u8,
    heartbeat_secs: u64,
    idle_secs: u64,
    register_timeout: Duration,
    /// Overrides the agents' hello timeout (diagnostics: without retry storms).
    hello_timeout: Option<Duration>,
    /// Starts this many agents per second instead of all at once (diagnostics).
    start_rate: Option<u64>,
    /// Also runs one fleet job on every connected agent and times its fan-out.
    fleet: bool,
    /// Also restarts the coordinator (SIGTERM, same port and data) and measures the storm.
    restart: bool,
    /// Also arms a flight recorder on every connected agent and times the spread of one
    /// snapshot's start across them.
    recorder: bool,
    /// Also loads the dashboard's fleet page in headless Chromium (`--dashboard`): bytes on
    /// the wire and time until the table is interactive.
    dashboard: bool,
    /// `--cluster M`: M coordinators on one SurrealDB server (this crate's
    /// `surrealdb-server`), the agents spread over them by simulator processes.
    cluster: Option<usize>,
    /// `--simulators S`: processes simulating the agents in cluster mode (each under its own
    /// descriptor limit).
    simulators: usize,
    /// `--kill`: in cluster mode, also kill -9 one coordinator and time its agents' move.
    kill: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        agents: vec![1_000, 10_000],
        addresses: 16,
        heartbeat_secs: 10,
        idle_secs: 10,
        register_timeout: Duration::from_secs(120),
        hello_timeout: None,
        start_rate: None,
        fleet: false,
        restart: false,
        recorder: false,
        dashboard: false,
        cluster: None,
        simulators: 3,
        kill: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => {
                args.agents = value()?
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--agents takes N or N,N,...")?;
            }
            "--addresses" => args.addresses = value()?.parse().context("--addresses")?,
            "--heartbeat-secs" => {
                args.heartbeat_secs = value()?.parse().context("--heartbeat-secs")?
            }
            "--idle-secs" => args.idle_secs = value()?.parse().context("--idle-secs")?,
            "--register-timeout-secs" => {
                args.register_timeout =
                    Duration::from_secs(value()?.parse().context("--register-timeout-secs")?)
            }
            "--hello-timeout-secs" => {
                args.hello_timeout = Some(Duration::from_secs(
                    value()?.parse().context("--hello-timeout-secs")?,
                ))
            }
            "--fleet" => args.fleet = true,
            "--restart" => args.restart = true,
            "--recorder" => args.recorder = true,
            "--dashboard" => args.dashboard = true,
            "--cluster" => args.cluster = Some(value()?.parse().context("--cluster")?),
            "--simulators" => args.simulators = value()?.parse().context("--simulators")?,
            "--kill" => args.kill = true,
            "--start-rate" => {
                let rate: u64 = value()?.parse().context("--start-rate")?;
                args.start_rate = Some(rate.max(1));
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-agents [--agents N[,N...]] [--addresses K] [--heartbeat-secs S] \
                     [--idle-secs S] [--register-timeout-secs S] [--hello-timeout-secs S] \
                     [--start-rate AGENTS_PER_S] [--fleet] [--recorder] [--dashboard] [--restart] \
                     [--cluster M [--simulators S] [--kill]]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if args.addresses == 0 || args.addresses > 250 {
        bail!("--addresses must be 1..=250");
    }
    Ok(args)
}

/// Shared counters of the simulated fleet.
#[derive(Default)]
struct Stats {
    /// Agents that received `HelloAck` at least once.
    registered: AtomicUsize,
    /// Links between `HelloAck` and their end.
    live: AtomicUsize,
    /// Every `HelloAck` (registrations plus re-registrations after a lost link).
    acks: AtomicUsize,
    /// Failed attempts and lost links, by cause.
    failures: Mutex<BTreeMap<String, usize>>,
    /// When the last of the N agents registered.
    all_registered: Mutex<Option<Instant>>,
    /// N.
    target: usize,
    /// When each connection attempt started (for the reconnect-storm figures).
    attempts: Mutex<Vec<Instant>>,
    /// When each agent received the `StartJob` of a recorder snapshot.
    snapshot_starts: Mutex<Vec<Instant>>,
}

impl Stats {
    fn fail(&self, cause: String) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(cause).or_default() += 1;
        }
    }

    fn failures(&self) -> BTreeMap<String, usize> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// Where a failed attempt broke, without addresses or ports (so causes add up).
fn connect_cause(stage: &str, e: &std::io::Error) -> String {
    format!("{stage}: {e}")
}

type Link = WebSocketStream<TcpStream>;

/// TCP from `source`, then the WebSocket upgrade with the agent's request and limits.
async fn dial(
    source: Ipv4Addr,
    coordinator: SocketAddr,
    config: &AgentConfig,
) -> Result<Link, String> {
    let socket = TcpSocket::new_v4().map_err(|e| connect_cause("socket", &e))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| connect_cause("bind", &e))?;
    let stream = socket
        .connect(coordinator)
        .await
        .map_err(|e| connect_cause("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let request = tracesd::link::upgrade_request(config).map_err(|e| e.to_string())?;
    // Small buffers on the simulator's side only, so that N links fit in one process.
    let ws_config = tracesd::link::websocket_config()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(format!("upgrade refused: HTTP {}", response.status())),
        Err(WsError::Io(e)) => Err(connect_cause("upgrade", &e)),
        Err(e) => Err(format!("upgrade: {e}")),
    }
}

/// Enrolls `sim-000000` .. for `n` hosts, 32 at a time; their credentials in order.
async fn enroll_all(url: &str, n: usize) -> Result<Vec<String>> {
    enroll_range(&[url.to_owned()], TOKEN, 0, n).await
}

/// Enrolls `sim-{first}` .. `sim-{first + n - 1}` with `token`, spread over `urls`, 32 at a
/// time on each; their credentials in order.
async fn enroll_range(urls: &[String], token: &str, first: usize, n: usize) -> Result<Vec<String>> {
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(32 * urls.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (gate, url, token) = (gate.clone(), urls[i % urls.len()].clone(), token.to_owned());
        tasks.spawn(async move {
            let _permit = gate.acquire().await?;
            let hostname = format!("sim-{:06}", first + i);
            match tracevisor_tests::agents::RawLink::enroll(&url, &token, &hostname).await? {
                Message::Enrolled { credential, .. } => Ok::<_, anyhow::Error>((i, credential)),
                other => anyhow::bail!("enrolling {hostname}: {other:?}"),
            }
        });
    }
    let mut credentials = vec![String::new(); n];
    while let Some(done) = tasks.join_next().await {
        let (i, credential) = done??;
        credentials[i] = credential;
    }
    eprintln!(
        "   enrolled {n} hosts (one credential each) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(credentials)
}

/// A random number (the simulator's choice of another coordinator).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// One simulated agent: connect, run a session, reconnect with the agent's backoff. Given
/// several coordinators, it starts with `coordinators[index % len]` and moves to another one
/// at random whenever an attempt fails or a link ends, as `tracesd` does.
async fn simulated_agent(
    index: usize,
    source: Ipv4Addr,
    coordinators: Arc<Vec<SocketAddr>>,
    config: Arc<AgentConfig>,
    stats: Arc<Stats>,
    sockets: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
) {
    let hostname = format!("sim-{index:06}");
    let settings = &config.link;
    let mut backoff = Backoff::new(settings.backoff_base, settings.backoff_cap);
    let mut ever_registered = false;
    let mut target = index % coordinators.len().max(1);
    let mut first = true;
    loop {
        if !first && coordinators.len() > 1 {
            // As tracesd: another coordinator at random after a failed attempt or a link end.
            let len = coordinators.len() as u64;
            target = ((target as u64 + 1 + rand_u64() % (len - 1)) % len) as usize;
        }
        first = false;
        let coordinator = coordinators[target];
        // One descriptor of the simulator's budget for as long as this attempt's socket lives.
        let _socket = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = sockets.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let dialled = tokio::select! {
            _ = shutdown.cancelled() => return,
            d = async {
                if let Ok(mut a) = stats.attempts.lock() {
                    a.push(Instant::now());
                }
                tokio::time::timeout(settings.connect_timeout, dial(source, coordinator, &config)).await
            } => d,
        };
        match dialled {
            Err(_) => stats.fail("connect or upgrade timed out".into()),
            Ok(Err(cause)) => stats.fail(cause),
            Ok(Ok(mut ws)) => {
                let mut acked = false;
                let started = Instant::now();
                let result = session(
                    &mut ws,
                    &hostname,
                    settings,
                    &stats,
                    &mut acked,
                    &mut ever_registered,
                    &shutdown,
                )
                .await;
                if acked {
                    stats.live.fetch_sub(1, Ordering::Relaxed);
                }
                match result {
                    Ok(()) => return,
                    Err(cause) => stats.fail(cause),
                }

                if acked && started.elapsed() >= settings.stable_after {
                    backoff.reset();
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn send(ws: &mut Link, message: Message, timeout: Duration) -> Result<(), String> {
    let bytes = codec::encode(&Frame::new(message)).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, ws.send(WsMessage::binary(bytes))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err("send timed out".into()),
    }
}

/// One link as the agent runs it: `Hello`, wait for `HelloAck`, then heartbeats both ways
/// until shutdown (`Ok`) or the link fails (the cause, without addresses).
async fn session(
    ws: &mut Link,
    hostname: &str,
    settings: &LinkSettings,
    stats: &Stats,
    acked: &mut bool,
    ever_registered: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let send_timeout = settings.send_timeout;
    send(ws, Message::Hello(simulated_hello(hostname)), send_timeout).await?;
    let hello_deadline = tokio::time::Instant::now() + settings.hello_timeout;
    let mut ticker: Option<tokio::time::Interval> = None;
    let mut dead_after = settings.hello_timeout;
    let mut last_received = tokio::time::Instant::now();
    let mut seq = 0u64;
    loop {
        let deadline = if *acked {
            last_received + dead_after
        } else {
            hello_deadline
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let close = Message::Close { reason: CloseReason::Shutdown, message: "simulator stopping".into() };
                let _ = send(ws, close, settings.close_timeout).await;
                return Ok(());
            }
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                send(ws, Message::Heartbeat { seq }, send_timeout).await?;
                seq += 1;
            }
            received = ws.next() => {
                last_received = tokio::time::Instant::now();
                let bytes = match received {
                    None => return Err("connection closed by the coordinator".into()),
                    Some(Err(e)) => return Err(format!("link lost: {e}")),
                    Some(Ok(WsMessage::Binary(bytes))) => bytes,
                    Some(Ok(WsMessage::Close(_))) => return Err("connection closed by the coordinator".into()),
                    Some(Ok(WsMessage::Text(_))) => return Err("text message from the coordinator".into()),
                    Some(Ok(_)) => continue,
                };
                match codec::decode(&bytes).map_err(|e| format!("undecodable frame: {e}"))?.body {
                    Message::HelloAck { heartbeat_interval_ms, .. } if !*acked => {
                        *acked = true;
                        stats.live.fetch_add(1, Ordering::Relaxed);
                        stats.acks.fetch_add(1, Ordering::Relaxed);
                        if !*ever_registered {
                            *ever_registered = true;
                            let n = stats.registered.fetch_add(1, Ordering::Relaxed) + 1;
                            if n == stats.target {
                                if let Ok(mut at) = stats.all_registered.lock() {
                                    *at = Some(Instant::now());
                                }
                            }
                        }
                        let interval = Duration::from_millis(u64::from(heartbeat_interval_ms.max(1)));
                        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        ticker = Some(t);
                        dead_after = interval * DEAD_AFTER_INTERVALS;
                    }
                    Message::Heartbeat { seq } if *acked => {
                        send(ws, Message::HeartbeatAck { seq }, send_timeout).await?;
                    }
                    Message::HeartbeatAck { .. } if *acked => {}
                    Message::Close { reason, message } => {
                        return Err(format!("closed by the coordinator ({reason}): {message}"));
                    }
                    // A zero-work trace request (the fleet benchmark): answered at once.
                    Message::StartJob { job_id, spec } if *acked => {
                        if spec.snapshot_of.is_some() {
                            if let Ok(mut starts) = stats.snapshot_starts.lock() {
                                starts.push(Instant::now());
                            }
                        }
                        let outcome = tracevisor_protocol::JobOutcome::Ok {
                            result_json: r#"{"kind":"ust","total":0,"events":{},"processes":[]}"#.into(),
                        };
                        send(ws, Message::JobResult { job_id, outcome }, send_timeout).await?;
                    }
                    Message::ResultAck { .. } | Message::CancelJob { .. } if *acked => {}
                    // Flight recorders: every one armed at once (nothing to arm here).
                    Message::ArmRecorders { recorders, .. } if *acked => {
                        let states = recorders
                            .into_iter()
                            .map(|r| tracevisor_protocol::RecorderState { session_name: r.session_name, error: None })
                            .collect();
                        send(ws, Message::RecordersArmed { states }, send_timeout).await?;
                    }
                    other => return Err(format!("unexpected {} from the coordinator", other.kind())),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(if *acked {
                    "link dead (no frame for 3 heartbeat intervals)".into()
                } else {
                    "no hello-ack within the agent's hello timeout".into()
                });
            }
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn read_sys(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-"))
        .unwrap_or_else(|_| "?".into())
}

/// The figures of one run.
struct Row {
    agents: usize,
    registered: usize,
    register_time: Option<Duration>,
    connected_in_api: Option<usize>,
    rss_base_kib: u64,
    rss_kib: u64,
    idle_cpu: f64,
    sim_cpu: f64,
    reconnects_idle: usize,
    clients_median: Option<Duration>,
    clients_bytes: usize,
    settle: Duration,
    failures: BTreeMap<String, usize>,
    registration_errors: usize,
    first_registration_error: Option<String>,
}

async fn run_one(args: &Args, n: usize, fd_limit: u64, ticks: u64) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("tv-bench-agents-")
        .tempdir()?;
    let config_path = dir.path().join("tracevisor.toml");
    std::fs::write(
        &config_path,
        format!("heartbeat_interval_secs = {}\n", args.heartbeat_secs),
    )?;
    let coordinator = start_coordinator(&dir.path().join("data"), "127.0.0.1:0", &config_path)?;
    let pid = coordinator.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base_kib = rss_kib(pid)?;
    eprintln!(
        "== {n} agents: coordinator pid {pid} on {}, RSS {} MiB before any agent",
        coordinator.addr,
        rss_base_kib / 1024
    );
    let socket_budget = fd_limit.saturating_sub(FD_RESERVE).max(1);
    if (n as u64) > socket_budget {
        eprintln!(
            "   warning: {n} links need {n} descriptors in this process and {n} in the coordinator; \
             the limit is {fd_limit}: at most {socket_budget} links at once here, and the \
             coordinator will hit 'Too many open files'"
        );
    }
    let sockets = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(socket_budget).unwrap_or(usize::MAX),
    ));

    let mut agent_config = AgentConfig::new(&hub_url(coordinator.addr, false), TOKEN, "sim")?;
    agent_config.link = LinkSettings {
        detect_capabilities: false,
        ..LinkSettings::default()
    };
    if let Some(timeout) = args.hello_timeout {
        agent_config.link.hello_timeout = timeout;
    }
    // Each simulated host enrolls first (its own credential, as `tracesd enroll` gets it); the
    // registration figures below are measured after, with links authenticated by credential.
    let credentials = enroll_all(&hub_url(coordinator.addr, false), n).await?;
    let agent_configs: Vec<Arc<AgentConfig>> = credentials
        .into_iter()
        .map(|credential| {
            let mut config = agent_config.clone();
            config.token = tracesd::Token::new(credential)?;
            Ok(Arc::new(config))
        })
        .collect::<Result<_>>()?;
    let stats = Arc::new(Stats {
        target: n,
        ..Stats::default()
    });
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, agent_config) in agent_configs.iter().enumerate() {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(args.addresses)) as u8);
        let delay = args
            .start_rate
            .map(|rate| Duration::from_secs_f64(i as f64 / rate as f64))
            .unwrap_or_default();
        let agent = simulated_agent(
            i,
            source,
            Arc::new(vec![coordinator.addr]),
            agent_config.clone(),
            stats.clone(),
            sockets.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            agent.await
        });
    }
    // Registration: until every agent got its HelloAck, or the timeout.
    let mut next_report = Instant::now() + Duration::from_secs(5);
    while stats.registered.load(Ordering::Relaxed) < n && started.elapsed() < args.register_timeout
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "   {:>5.1} s: {} registered, {} live, failures {:?}",
                started.elapsed().as_secs_f64(),
                stats.registered.load(Ordering::Relaxed),
                stats.live.load(Ordering::Relaxed),
                stats.failures()
            );
        }
    }
    let register_time = stats
        .all_registered
        .lock()
        .ok()
        .and_then(|at| *at)
        .map(|at| at - started);
    let registered = stats.registered.load(Ordering::Relaxed);
    eprintln!(
        "   registration: {registered}/{n} in {:.1} s",
        register_time.unwrap_or(started.elapsed()).as_secs_f64()
    );

    // What the API says.
    let connected_in_api = match coordinator.get("/clients").await {
        Ok((status, body)) if status.is_success() => body.as_array().map(|list| {
            list.iter()
                .filter(|c| c["agent"]["connected"] == true)
                .count()
        }),
        Ok((status, _)) => {
            eprintln!("   GET /clients answered {status}");
            None
        }
        Err(e) => {
            eprintln!("   GET /clients failed: {e:#}");
            None
        }
    };

    // Let the coordinator finish what the start left queued (registrations of links the
    // agents already gave up on, database work): until a 2 s window uses under 20 % of a
    // core, 60 s at most.
    let settle_started = Instant::now();
    loop {
        let before = cpu_ticks(pid)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = (cpu_ticks(pid)? - before) as f64 / ticks as f64 / 2.0;
        if used < 0.2 || settle_started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let settle = settle_started.elapsed();
    eprintln!("   settled after {:.0} s", settle.as_secs_f64());

    // Idle with heartbeats: CPU of the coordinator (and of this simulator, for context).
    let acks_before = stats.acks.load(Ordering::Relaxed);
    let (c0, s0, t0) = (
        cpu_ticks(pid)?,
        cpu_ticks(std::process::id())?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (c1, s1, window) = (
        cpu_ticks(pid)?,
        cpu_ticks(std::process::id())?,
        t0.elapsed(),
    );
    let percent = |d: u64| d as f64 / ticks as f64 / window.as_secs_f64() * 100.0;
    let idle_cpu = percent(c1 - c0);
    let sim_cpu = percent(s1 - s0);
    let reconnects_idle = stats.acks.load(Ordering::Relaxed) - acks_before;
    let rss = rss_kib(pid)?;
    eprintln!(
        "   idle {:.0} s: coordinator CPU {idle_cpu:.1} %, simulator CPU {sim_cpu:.1} %, RSS {} MiB, \
         {} live, {reconnects_idle} re-registrations",
        window.as_secs_f64(),
        rss / 1024,
        stats.live.load(Ordering::Relaxed)
    );

    // GET /clients latency: the median of 5 sequential requests.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut times = Vec::new();
    let mut clients_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        match http.get(coordinator.api("/clients")).send().await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.bytes().await?;
                times.push(t.elapsed());
                clients_bytes = body.len();
            }
            Ok(resp) => eprintln!("   GET /clients answered {}", resp.status()),
            Err(e) => eprintln!("   GET /clients failed: {e}"),
        }
    }
    times.sort();
    let clients_median = times.get(times.len() / 2).copied();
    eprintln!(
        "   GET /clients: {:?} ({} KiB)",
        times,
        clients_bytes / 1024
    );
    if args.fleet {
        fleet_fan_out(&coordinator, &http, pid, n).await;
    }
    if args.recorder {
        snapshot_spread(&coordinator, &http, &stats, n).await;
    }
    if args.dashboard {
        dashboard_load(&coordinator, n).await;
    }
    let coordinator = if args.restart {
        let addr = coordinator.addr;
        let mut old = coordinator;
        let restart_at = Instant::now();
        let exit = old.terminate()?;
        drop(old);
        let restarted =
            start_coordinator(&dir.path().join("data"), &addr.to_string(), &config_path)?;
        let up_at = Instant::now();
        let deadline = up_at + args.register_timeout;
        while stats.live.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let recovered = (stats.live.load(Ordering::Relaxed) >= n).then(|| restart_at.elapsed());
        let attempts: Vec<Instant> = stats
            .attempts
            .lock()
            .map(|a| a.iter().copied().filter(|t| *t >= restart_at).collect())
            .unwrap_or_default();
        let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
        for t in &attempts {
            *per_second
                .entry(t.duration_since(restart_at).as_secs())
                .or_default() += 1;
        }
        let peak = per_second.values().max().copied().unwrap_or(0);
        eprintln!(
            "RESTART {n} agents: coordinator exit {exit:?}, back up after {:.2} s; {} reconnect attempts, \
             peak {peak}/s (per second: {:?}); all {n} back after {}",
            up_at.duration_since(restart_at).as_secs_f64(),
            attempts.len(),
            per_second.values().take(40).collect::<Vec<_>>(),
            recovered.map_or("not within the timeout".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        restarted
    } else {
        coordinator
    };
    let failures = stats.failures();
    let logs = coordinator.logs();
    let registration_errors = logs
        .lines()
        .filter(|l| l.contains("agent registration failed"))
        .count();
    let first_registration_error = logs
        .lines()
        .find(|l| l.contains("agent registration failed"))
        .map(|l| {
            l.split_once("ERROR")
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_owned()
        });

    // Tear down: the coordinator first (its sockets close at once), then the simulator.
    drop(coordinator);
    shutdown.cancel();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(2)).await;

    Ok(Row {
        agents: n,
        registered,
        register_time,
        connected_in_api,
        rss_base_kib,
        rss_kib: rss,
        idle_cpu,
        sim_cpu,
        reconnects_idle,
        clients_median,
        clients_bytes,
        settle,
        failures,
        registration_errors,
        first_registration_error,
    })
}

/// One fleet job on every connected agent (each answers its zero-work trace request at once):
/// time from the request until every outcome is collected, and the coordinator's CPU and
/// memory meanwhile.
async fn fleet_fan_out(coordinator: &Coordinator, http: &reqwest::Client, pid: u32, n: usize) {
    let ticks_before = cpu_ticks(pid).unwrap_or(0);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_kib(pid).unwrap_or(0)));
    let sampling = CancellationToken::new();
    let sampler = {
        let (peak, stop) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let body = serde_json::json!({"hosts": {"agents": "connected"}, "duration": 0.001, "type": "ust", "username": "root"});
    let t = Instant::now();
    let answer = http
        .post(coordinator.api("/analyses"))
        .json(&body)
        .send()
        .await;
    let elapsed = t.elapsed();
    sampling.cancel();
    let _ = sampler.await;
    let cpu_secs = (cpu_ticks(pid).unwrap_or(0).saturating_sub(ticks_before)) as f64
        / clock_ticks_per_second() as f64;
    match answer {
        Ok(resp) => {
            let status = resp.status();
            let job: serde_json::Value = resp.json().await.unwrap_or_default();
            eprintln!(
                "FLEET {n} connected agents: HTTP {status}, all outcomes in {:.2} s, outcomes {}, \
                 coordinator CPU {:.2} s ({:.0} % of one core over the fan-out), peak RSS {} MiB",
                elapsed.as_secs_f64(),
                job["outcomes"],
                cpu_secs,
                100.0 * cpu_secs / elapsed.as_secs_f64().max(1e-9),
                peak.load(Ordering::Relaxed) / 1024
            );
        }
        Err(e) => eprintln!(
            "FLEET {n} agents: request failed after {:.2} s: {e}",
            elapsed.as_secs_f64()
        ),
    }
}

/// Three cold loads of the dashboard's fleet page in headless Chromium
/// (`tests/browser/dashboard_e2e.py --mode bench`), each printed as one `DASHBOARD` line:
/// bytes on the wire (the app's files, then `GET /clients`), the time from navigation until
/// the first page of the table is drawn, and the time a search over every host takes.
async fn dashboard_load(coordinator: &Coordinator, n: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard_e2e.py");
    let out = std::env::temp_dir().join("tracevisor-bench-dashboard");
    let url = format!("http://localhost:{}", coordinator.addr.port());
    let run = tokio::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["--mode", "bench", "--runs", "3", "--url", &url, "--hosts"])
        .arg(n.to_string())
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(600), run).await {
        Ok(Ok(output)) if output.status.success() => {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Some(json) = line.strip_prefix("BENCH ") else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                eprintln!(
                    "DASHBOARD {n} hosts: fleet page interactive after {:.0} ms, search over all {:.0} ms; \
                     bytes on the wire {} ({} for the app, {} for GET /clients); shown: {}",
                    v["ready_ms"].as_f64().unwrap_or(f64::NAN),
                    v["filter_ms"].as_f64().unwrap_or(f64::NAN),
                    v["bytes_total"],
                    v["bytes_app"],
                    v["bytes_clients"],
                    v["count_text"]
                );
            }
        }
        Ok(Ok(output)) => eprintln!(
            "DASHBOARD failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Ok(Err(e)) => eprintln!("DASHBOARD could not run {}: {e}", script.display()),
        Err(_) => eprintln!("DASHBOARD timed out after 600 s"),
    }
}

/// A flight recorder on every connected agent, then one snapshot: how long arming took, and
/// the spread of the snapshot's start (each agent's receipt of its `StartJob`, all on this
/// process's clock) across the agents.
async fn snapshot_spread(
    coordinator: &Coordinator,
    http: &reqwest::Client,
    stats: &Stats,
    n: usize,
) {
    let body =
        serde_json::json!({"hosts": {"agents": "connected"}, "type": "ust", "buffer_mib": 1});
    let t = Instant::now();
    let created = http
        .post(coordinator.api("/recorders"))
        .json(&body)
        .send()
        .await;
    let armed_in = t.elapsed();
    let recorder: serde_json::Value = match created {
        Ok(resp) if resp.status().is_success() => resp.json().await.unwrap_or_default(),
        Ok(resp) => {
            eprintln!(
                "RECORDER: POST /recorders answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            return;
        }
        Err(e) => {
            eprintln!("RECORDER: POST /recorders failed: {e}");
            return;
        }
    };
    let armed = recorder["states"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["state"] == "armed").count())
        .unwrap_or(0);
    if let Ok(mut starts) = stats.snapshot_starts.lock() {
        starts.clear();
    }
    let t = Instant::now();
    let answer = http
        .post(coordinator.api(&format!("/recorders/{}/snapshots", recorder["id"])))
        .json(&serde_json::json!({}))
        .send()
        .await;
    let all_in = t.elapsed();
    let outcomes = match answer {
        Ok(resp) => resp.json::<serde_json::Value>().await.unwrap_or_default()["outcomes"].clone(),
        Err(e) => serde_json::json!(e.to_string()),
    };
    let starts = stats
        .snapshot_starts
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let (Some(first), Some(last)) = (starts.iter().min(), starts.iter().max()) else {
        eprintln!("RECORDER: no snapshot started; outcomes {outcomes}");
        return;
    };
    eprintln!(
        "RECORDER {n} agents: armed on {armed} in {:.2} s; snapshot: {} starts, first {:.1} ms after the request,          spread first-to-last {:.1} ms, all outcomes in {:.2} s, outcomes {outcomes}",
        armed_in.as_secs_f64(),
        starts.len(),
        first.duration_since(t).as_secs_f64() * 1e3,
        last.duration_since(*first).as_secs_f64() * 1e3,
        all_in.as_secs_f64(),
    );
}

/// The coordinator under test: no local agent, the bench's token and heartbeat config.
fn start_coordinator(data: &Path, listen: &str, config: &Path) -> Result<Coordinator> {
    Coordinator::start_with(
        data,
        listen,
        &[
            "--no-local-agent",
            "--agent-token",
            TOKEN,
            "--config",
            path_str(config)?,
        ],
        &[("RUST_LOG", "warn,tracevisor=info,tracevisor::hub=error")],
    )
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 temp path")
}

fn print_table(args: &Args, rows: &[Row], fd_limit: u64) {
    println!();
    println!(
        "Agent-link benchmark: {} cores, RLIMIT_NOFILE {fd_limit}, heartbeat {} s, {} source addresses, \
         ephemeral ports {}, somaxconn {}, start {}, agents' hello timeout {} s",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.heartbeat_secs,
        args.addresses,
        read_sys("/proc/sys/net/ipv4/ip_local_port_range"),
        read_sys("/proc/sys/net/core/somaxconn"),
        args.start_rate
            .map(|r| format!("{r} agents/s"))
            .unwrap_or_else(|| "simultaneous".into()),
        args.hello_timeout
            .unwrap_or(LinkSettings::default().hello_timeout)
            .as_secs(),
    );
    println!();
    println!(
        "| agents | registered | all registered after | connected in GET /clients | coordinator RSS | RSS per agent | settled after | idle CPU (coordinator) | idle CPU (simulator) | re-registrations while idle | GET /clients median | body |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let per_agent = if r.registered > 0 {
            format!(
                "{:.1} KiB",
                r.rss_kib.saturating_sub(r.rss_base_kib) as f64 / r.registered as f64
            )
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {} | {} | {} MiB (base {} MiB) | {per_agent} | {:.0} s | {:.1} % | {:.1} % | {} | {} | {} KiB |",
            r.agents,
            r.registered,
            r.register_time
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not all (timeout)".into()),
            r.connected_in_api
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.rss_kib / 1024,
            r.rss_base_kib / 1024,
            r.settle.as_secs_f64(),
            r.idle_cpu,
            r.sim_cpu,
            r.reconnects_idle,
            r.clients_median
                .map(|d| format!("{} ms", d.as_millis()))
                .unwrap_or_else(|| "failed".into()),
            r.clients_bytes / 1024,
        );
    }
    println!();
    for r in rows {
        if !r.failures.is_empty() {
            println!("Failed attempts and lost links at {} agents:", r.agents);
            for (cause, count) in &r.failures {
                println!("- {count} × {cause}");
            }
        }
        if let Some(first) = &r.first_registration_error {
            println!(
                "Coordinator at {} agents: {} × 'agent registration failed', the first: {first}",
                r.agents, r.registration_errors
            );
        }
    }
}

/// `bench-agents --simulate FILE --targets ADDR,ADDR.. --first I --addresses K`: a simulator
/// process of the cluster benchmark. It runs one simulated agent per credential line of FILE
/// (hosts `sim-{I}`, `sim-{I+1}`, ...), each starting at `targets[index % len]` and moving to
/// the next one when a link fails, until its standard input closes.
async fn simulate(mut it: impl Iterator<Item = String>) -> Result<()> {
    let (mut file, mut targets, mut first, mut addresses) = (None, Vec::new(), 0usize, 16u8);
    let mut rate: Option<f64> = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--targets" => {
                targets = value()?
                    .split(',')
                    .map(|a| a.parse::<SocketAddr>())
                    .collect::<Result<_, _>>()
                    .context("--targets")?
            }
            "--first" => first = value()?.parse().context("--first")?,
            "--addresses" => addresses = value()?.parse().context("--addresses")?,
            "--start-rate" => rate = Some(value()?.parse().context("--start-rate")?),
            other if file.is_none() => file = Some(other.to_owned()),
            other => bail!("unknown flag {other}"),
        }
    }
    let file = file.context("--simulate FILE")?;
    let credentials: Vec<String> = std::fs::read_to_string(&file)?
        .lines()
        .map(str::to_owned)
        .collect();
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let sockets = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX),
    ));
    let targets = Arc::new(targets);
    let mut base = AgentConfig::new(&hub_url(targets[0], false), TOKEN, "sim")?;
    base.link = LinkSettings {
        detect_capabilities: false,
        ..LinkSettings::default()
    };
    let stats = Arc::new(Stats {
        target: credentials.len(),
        ..Stats::default()
    });
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, credential) in credentials.into_iter().enumerate() {
        let mut config = base.clone();
        config.token = tracesd::Token::new(credential)?;
        let index = first + i;
        let source = Ipv4Addr::new(127, 0, 0, 2 + (index % usize::from(addresses.max(1))) as u8);
        let agent = simulated_agent(
            index,
            source,
            targets.clone(),
            Arc::new(config),
            stats.clone(),
            sockets.clone(),
            shutdown.clone(),
        );
        let delay = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(i as f64 / r.max(1.0))
        });
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            agent.await
        });
    }
    // Runs until the benchmark closes this process's input.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    eprintln!(
        "simulator {first}: {} registered, {} registrations in all, failures {:?}",
        stats.registered.load(Ordering::Relaxed),
        stats.acks.load(Ordering::Relaxed),
        stats.failures()
    );
    Ok(())
}

/// A simulator process of the cluster benchmark.
struct Simulator {
    child: std::process::Child,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Closing its input stops it; it is killed if it does not go.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Agents connected on each member (`GET /status`), `None` for one that does not answer.
async fn connected_per_member(
    members: &[Option<tracevisor_tests::cluster::Member>],
) -> Vec<Option<u64>> {
    let mut counts = Vec::new();
    for m in members {
        let count = match m {
            Some(m) => m
                .coordinator
                .get("/status")
                .await
                .ok()
                .and_then(|(_, s)| s["agents_connected"].as_u64()),
            None => None,
        };
        counts.push(count);
    }
    counts
}

/// The cluster benchmark: `n` simulated agents over `m` coordinators sharing one SurrealDB
/// server, the simulation split over `args.simulators` processes.
async fn run_cluster(args: &Args, n: usize, m: usize) -> Result<()> {
    use tracevisor_tests::cluster::ClusterSetup;
    let setup = ClusterSetup::new()?;
    let log = [(
        "RUST_LOG",
        "warn,tracevisor=info,tracevisor::hub=error,tracevisor::jobs::cluster=warn",
    )];
    let mut members = Vec::new();
    for _ in 0..m {
        members.push(Some(setup.member_with(&["--no-local-agent"], &log)?));
    }
    let urls: Vec<String> = members
        .iter()
        .flatten()
        .map(|x| hub_url(x.coordinator.addr, false))
        .collect();
    let targets: Vec<String> = members
        .iter()
        .flatten()
        .map(|x| x.coordinator.addr.to_string())
        .collect();
    eprintln!(
        "== cluster: {m} coordinators on {}, {n} agents, {} simulators, start {}",
        setup.server.url(),
        args.simulators,
        args.start_rate
            .map_or("simultaneous".to_owned(), |r| format!("{r} agents/s"))
    );
    let enrolled = Instant::now();
    let credentials = enroll_range(&urls, &setup.agent_token, 0, n).await?;
    eprintln!(
        "   enrolled {n} hosts in {:.1} s (spread over the {m} coordinators)",
        enrolled.elapsed().as_secs_f64()
    );
    let per = n.div_ceil(args.simulators.max(1));
    let started = Instant::now();
    let mut simulators = Vec::new();
    for (s, chunk) in credentials.chunks(per).enumerate() {
        let file = setup.dir().join(format!("credentials-{s}"));
        std::fs::write(&file, chunk.join("\n"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--simulate")
            .arg(&file)
            .args([
                "--targets",
                &targets.join(","),
                "--first",
                &(s * per).to_string(),
            ])
            .args(["--addresses", &args.addresses.to_string()])
            .args(
                args.start_rate
                    .map(|r| {
                        // The whole fleet's rate, shared by the simulators.
                        let each = r as f64 / args.simulators.max(1) as f64;
                        ["--start-rate".to_owned(), each.to_string()]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("spawning a simulator")?;
        simulators.push(Simulator { child });
    }
    // Registration: until the members hold every agent between them.
    let mut last = Vec::new();
    let registered = loop {
        let counts = connected_per_member(&members).await;
        let sum: u64 = counts.iter().flatten().sum();
        if sum as usize >= n {
            break Some(started.elapsed());
        }
        if started.elapsed() > args.register_timeout {
            break None;
        }
        if counts != last {
            last = counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let counts = connected_per_member(&members).await;
    let rss: Vec<u64> = members
        .iter()
        .flatten()
        .map(|x| rss_kib(x.coordinator.pid()).unwrap_or(0) / 1024)
        .collect();
    println!(
        "CLUSTER {n} agents on {m} coordinators: all registered after {}, agents per coordinator {:?}, RSS per coordinator {:?} MiB",
        registered
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| format!("not all within {} s (last {last:?})", args.register_timeout.as_secs())),
        counts,
        rss
    );
    // One fleet job on every connected agent, asked on the first member.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let first = members[0].as_ref().context("no first member")?;
    let body = serde_json::json!({"hosts": {"agents": "connected"}, "duration": 0.001, "type": "ust", "username": "root"});
    let t = Instant::now();
    let answer = http
        .post(first.coordinator.api("/analyses"))
        .json(&body)
        .send()
        .await?;
    let status = answer.status();
    let job: serde_json::Value = answer.json().await.unwrap_or_default();
    println!(
        "CLUSTER FLEET {n} agents: HTTP {status}, every outcome after {:.2} s, outcomes {}",
        t.elapsed().as_secs_f64(),
        job["outcomes"]
    );
    if args.kill && m > 1 {
        let victim = members[1].as_mut().context("no second member")?;
        let held = counts.get(1).copied().flatten().unwrap_or(0);
        victim.coordinator.kill9()?;
        let killed = Instant::now();
        members[1] = None;
        let recovered = loop {
            let sum: u64 = connected_per_member(&members).await.iter().flatten().sum();
            if sum as usize >= n {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > args.register_timeout {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        println!(
            "CLUSTER KILL -9 of a coordinator holding {held} agents: all {n} on the others after {}, agents per coordinator {:?}",
            recovered
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not within the timeout".into()),
            connected_per_member(&members).await
        );
    }
    drop(simulators);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut raw = std::env::args().skip(1).peekable();
    if raw.peek().map(String::as_str) == Some("--simulate") {
        raw.next();
        return simulate(raw).await;
    }
    let args = parse_args()?;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX)?;
    eprintln!("RLIMIT_NOFILE: soft {soft} -> {fd_limit} (hard {hard})");
    if let Some(m) = args.cluster {
        for &n in &args.agents {
            if let Err(e) = run_cluster(&args, n, m.max(1)).await {
                eprintln!("cluster run with {n} agents failed: {e:#}");
            }
        }
        return Ok(());
    }
    let ticks = clock_ticks_per_second();
    let mut rows = Vec::new();
    for &n in &args.agents {
        match run_one(&args, n, fd_limit, ticks).await {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("run with {n} agents failed: {e:#}"),
        }
    }
    print_table(&args, &rows, fd_limit);
    Ok(())
}
