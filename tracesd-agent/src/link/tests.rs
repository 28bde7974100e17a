//! Tests of the link against a tiny WebSocket hub run in the test (plain and TLS).
#![allow(clippy::unwrap_used)]
// tungstenite's upgrade callback returns `Result<Response, ErrorResponse>` by design.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{
    decode, encode, CloseReason, Frame, Hello, JobOutcome, JobSpec, Message, TraceOutput, HUB_PATH,
    MAX_FRAME_BYTES, PROTOCOL_VERSION,
};

use super::*;
use crate::config::LinkSettings;

const TOKEN: &str = "s3cr3t-token";
const STEP: Duration = Duration::from_secs(5);

fn fast_settings() -> LinkSettings {
    LinkSettings {
        connect_timeout: Duration::from_secs(2),
        hello_timeout: Duration::from_secs(2),
        send_timeout: Duration::from_secs(2),
        close_timeout: Duration::from_millis(500),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        stable_after: Duration::from_secs(30),
        detect_capabilities: false,
    }
}

/// A hub listening on 127.0.0.1:0 that the test drives by hand.
struct Hub {
    listener: TcpListener,
}

/// What the hub saw in an upgrade request.
#[derive(Debug, Default, Clone)]
struct Upgrade {
    path: String,
    headers: HeaderMap,
}

impl Hub {
    async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    fn config(&self) -> AgentConfig {
        let mut config =
            AgentConfig::new(&format!("ws://127.0.0.1:{}", self.port()), TOKEN, "agent-1").unwrap();
        config.link = fast_settings();
        config
    }

    async fn tcp(&self) -> TcpStream {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("the agent connects")
            .unwrap();
        stream
    }

    /// Accepts the next connection and upgrades it, refusing with 401 a wrong token.
    async fn accept(&self) -> (WebSocketStream<TcpStream>, Upgrade) {
        let stream = self.tcp().await;
        upgrade(stream).await
    }

    /// Accepts the next connection and answers its upgrade with `status` and `body`.
    async fn refuse(&self, status: u16, body: &str) {
        let stream = self.tcp().await;
        let body = body.to_owned();
        let callback = move |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut response = ErrorResponse::new(Some(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Err(response)
        };
        assert!(tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .is_err());
    }

    /// Accepts, reads the hello and acknowledges it with `interval_ms`.
    async fn accept_and_ack(&self, interval_ms: u32) -> (WebSocketStream<TcpStream>, Hello) {
        let (mut ws, _) = self.accept().await;
        let hello = expect_hello(&mut ws).await;
        send(
            &mut ws,
            Message::HelloAck {
                agent_id: 1,
                heartbeat_interval_ms: interval_ms,
                coordinator_id: "c0ffee00".into(),
            },
        )
        .await;
        (ws, hello)
    }
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> (WebSocketStream<S>, Upgrade) {
    let seen = Arc::new(Mutex::new(Upgrade::default()));
    let record = seen.clone();
    let callback = move |request: &Request, response: Response| {
        *record.lock().unwrap() = Upgrade {
            path: request.uri().path().to_owned(),
            headers: request.headers().clone(),
        };
        let authorized = request
            .headers()
            .get("authorization")
            .is_some_and(|value| value.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
        if authorized {
            Ok(response)
        } else {
            let mut response = ErrorResponse::new(Some("invalid agent token".to_owned()));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Err(response)
        }
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .expect("upgrade");
    let seen = seen.lock().unwrap().clone();
    (ws, seen)
}

/// The next protocol message (pings and pongs skipped); `None` when the agent closed.
async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<Message> {
    loop {
        let next = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message from the agent");
        match next {
            Some(Ok(WsMessage::Binary(bytes))) => return Some(decode(&bytes).unwrap().body),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected websocket message {other:?}"),
        }
    }
}

/// The next message that is not a heartbeat.
async fn recv_skipping_heartbeats<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Message> {
    loop {
        match recv(ws).await {
            Some(Message::Heartbeat { .. }) => continue,
            other => return other,
        }
    }
}

async fn expect_hello<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Hello {
    match recv(ws).await {
        Some(Message::Hello(hello)) => hello,
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, message: Message) {
    let bytes = encode(&Frame::new(message)).unwrap();
    ws.send(WsMessage::binary(bytes)).await.unwrap();
}

/// Expects `Close { reason }` followed by the end of the link; returns its message.
async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    reason: CloseReason,
) -> String {
    match recv_skipping_heartbeats(ws).await {
        Some(Message::Close {
            reason: got,
            message,
        }) => {
            assert_eq!(got, reason, "{message}");
            assert_eq!(recv(ws).await, None, "the link ends after close");
            message
        }
        other => panic!("expected close {reason:?}, got {other:?}"),
    }
}

fn spawn_agent(config: AgentConfig) -> (CancellationToken, JoinHandle<Result<(), LinkError>>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, shutdown.clone()));
    (shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: JoinHandle<Result<(), LinkError>>) {
    shutdown.cancel();
    let result = tokio::time::timeout(STEP, task)
        .await
        .expect("the agent stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn hello_heartbeats_and_clean_shutdown() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());

    let (mut ws, upgrade) = hub.accept().await;
    assert_eq!(upgrade.path, HUB_PATH);
    assert_eq!(
        upgrade.headers["authorization"].as_bytes(),
        format!("Bearer {TOKEN}").as_bytes()
    );
    assert_eq!(
        upgrade.headers[tracevisor_protocol::PROTOCOL_VERSION_HEADER],
        PROTOCOL_VERSION.to_string().as_str()
    );
    assert!(upgrade.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("tracesd/"));

    let hello = expect_hello(&mut ws).await;
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.hostname, "agent-1");
    assert_eq!(hello.agent_version, AGENT_VERSION);
    assert!(hello.running_jobs.is_empty());
    assert!(hello.addresses.iter().all(|address| !address.is_loopback()));

    send(
        &mut ws,
        Message::HelloAck {
            agent_id: 5,
            heartbeat_interval_ms: 100,
            coordinator_id: "c0ffee00".into(),
        },
    )
    .await;
    let started = Instant::now();
    assert_eq!(recv(&mut ws).await, Some(Message::Heartbeat { seq: 0 }));
    assert_eq!(recv(&mut ws).await, Some(Message::Heartbeat { seq: 1 }));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    send(&mut ws, Message::Heartbeat { seq: 77 }).await;
    assert_eq!(
        recv_skipping_heartbeats(&mut ws).await,
        Some(Message::HeartbeatAck { seq: 77 })
    );

    shutdown.cancel();
    let message = expect_close(&mut ws, CloseReason::Shutdown).await;
    assert_eq!(message, "agent shutting down");
    stop(shutdown, task).await;
}

#[tokio::test]
async fn reconnects_after_the_coordinator_drops_the_link() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    for _ in 0..3 {
        let (ws, hello) = hub.accept_and_ack(1_000).await;
        assert_eq!(hello.hostname, "agent-1");
        drop(ws);
    }
    stop(shutdown, task).await;
}

#[tokio::test]
async fn malformed_frames_close_with_a_reason_and_reconnect() {
    let mut newer = encode(&Frame::new(Message::Heartbeat { seq: 1 })).unwrap();
    newer[0] = (PROTOCOL_VERSION + 1) as u8;
    let mut trailing = encode(&Frame::new(Message::Heartbeat { seq: 1 })).unwrap();
    trailing.push(0);
    let cases: Vec<(WsMessage, CloseReason, &str)> = vec![
        (
            WsMessage::binary(vec![5, 0]),
            CloseReason::UnsupportedVersion,
            "protocol version 5",
        ),
        (
            WsMessage::binary(vec![0xde, 0xad, 0xbe, 0xef]),
            CloseReason::ProtocolError,
            "invalid varint",
        ),
        (
            WsMessage::binary(vec![PROTOCOL_VERSION as u8, 100]),
            CloseReason::ProtocolError,
            "malformed frame",
        ),
        (
            WsMessage::binary(Vec::new()),
            CloseReason::ProtocolError,
            "truncated",
        ),
        (
            WsMessage::binary(newer),
            CloseReason::UnsupportedVersion,
            "this side speaks version 4",
        ),
        (
            WsMessage::binary(trailing),
            CloseReason::ProtocolError,
            "trailing",
        ),
        (
            WsMessage::text("hello"),
            CloseReason::ProtocolError,
            "text message",
        ),
        (
            WsMessage::binary(
                encode(&Frame::new(Message::JobProgress {
                    job_id: 1,
                    status: 1,
                    message: String::new(),
                }))
                .unwrap(),
            ),
            CloseReason::ProtocolError,
            "unexpected job-progress",
        ),
    ];
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    for (bad, reason, expected) in cases {
        let (mut ws, _) = hub.accept_and_ack(1_000).await;
        ws.send(bad).await.unwrap();
        let message = expect_close(&mut ws, reason).await;
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // And the agent still comes back.
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn job_command_before_hello_ack_is_a_protocol_error() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (mut ws, _) = hub.accept().await;
    expect_hello(&mut ws).await;
    send(&mut ws, Message::CancelJob { job_id: 1 }).await;
    let message = expect_close(&mut ws, CloseReason::ProtocolError).await;
    assert_eq!(message, "cancel-job before hello-ack");
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_agent_reconnects() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (ws, _) = hub.accept_and_ack(1_000).await;
    let (mut sink, mut stream) = ws.split();
    // The agent stops reading at the frame header; the rest may never be read.
    let sender = tokio::spawn(async move {
        let _ = sink
            .send(WsMessage::binary(vec![0u8; MAX_FRAME_BYTES + 1]))
            .await;
        sink
    });
    let close = loop {
        match tokio::time::timeout(STEP, stream.next()).await.unwrap() {
            Some(Ok(WsMessage::Binary(bytes))) => match decode(&bytes).unwrap().body {
                Message::Heartbeat { .. } => continue,
                other => break Some(other),
            },
            _ => break None,
        }
    };
    match close {
        Some(Message::Close { reason, message }) => {
            assert_eq!(reason, CloseReason::ProtocolError);
            assert!(message.contains("frame refused"), "{message}");
        }
        other => panic!("expected close, got {other:?}"),
    }
    sender.abort();
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn silent_coordinator_is_dropped_after_three_intervals() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (mut ws, _) = hub.accept_and_ack(100).await;
    let acked = Instant::now();
    // Read the agent's heartbeats but never answer nor send anything.
    let message = expect_close(&mut ws, CloseReason::HeartbeatTimeout).await;
    let elapsed = acked.elapsed();
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(message.contains("3 heartbeat intervals"), "{message}");
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn missing_hello_ack_times_out() {
    let hub = Hub::start().await;
    let mut config = hub.config();
    config.link.hello_timeout = Duration::from_millis(300);
    let (shutdown, task) = spawn_agent(config);
    let (mut ws, _) = hub.accept().await;
    expect_hello(&mut ws).await;
    let message = expect_close(&mut ws, CloseReason::ProtocolError).await;
    assert!(message.starts_with("no hello-ack"), "{message}");
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn closed_by_the_coordinator_reconnects() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (mut ws, _) = hub.accept_and_ack(1_000).await;
    send(
        &mut ws,
        Message::Close {
            reason: CloseReason::Replaced,
            message: "a newer link for agent-1".into(),
        },
    )
    .await;
    drop(ws);
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn wrong_token_is_rejected_and_retried() {
    let hub = Hub::start().await;

    // The error, as logged.
    let mut wrong = hub.config();
    wrong.token = crate::config::Token::new("wrong").unwrap();
    let connecting = tokio::spawn(async move { connect(&wrong, None).await.map(|_| ()) });
    upgrade_expecting_refusal(hub.tcp().await).await;
    let error = connecting.await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "rejected: HTTP 401 Unauthorized: invalid agent token"
    );
    assert!(!error.is_fatal());

    // The agent keeps retrying after refusals (the token may be fixed on the server).
    let (shutdown, task) = spawn_agent(hub.config());
    hub.refuse(401, "invalid agent token").await;
    hub.refuse(503, "").await;
    hub.accept_and_ack(1_000).await;
    stop(shutdown, task).await;
}

/// Runs the test hub's upgrade on a request whose token is wrong.
async fn upgrade_expecting_refusal(stream: TcpStream) {
    let callback = |request: &Request, _: Response| -> Result<Response, ErrorResponse> {
        assert_eq!(request.headers()["authorization"], "Bearer wrong");
        let mut response = ErrorResponse::new(Some("invalid agent token".to_owned()));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Err(response)
    };
    assert!(tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .is_err());
}

#[tokio::test]
async fn connection_refused_is_retried_and_shutdown_is_prompt() {
    // A port nothing listens on.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = AgentConfig::new(&format!("ws://127.0.0.1:{port}"), TOKEN, "a").unwrap();
    config.link = fast_settings();
    config.link.backoff_base = Duration::from_secs(60);
    config.link.backoff_cap = Duration::from_secs(60);
    let error = connect(&config, None).await.map(|_| ()).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "cannot connect to ws://127.0.0.1:{port}/trace/api/v1.0/agents: "
        )),
        "{error}"
    );
    let (shutdown, task) = spawn_agent(config);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    stop(shutdown, task).await;
    assert!(stopping.elapsed() < Duration::from_secs(1));
}

fn spec() -> JobSpec {
    JobSpec {
        // Invalid on purpose: the job is refused at once with a deterministic result.
        session_name: "not a session".into(),
        analysis: "cputop".into(),
        kernel_events: vec!["sched_switch".into()],
        syscalls: false,
        userspace_events: vec![],
        duration_ms: 1_000,
        output: TraceOutput::Local,
        analysis_commands: vec![vec!["lttng-cputop-mi".into(), "{trace}".into()]],
        run_analysis: true,
        summary: tracevisor_protocol::Summary::Lami,
        analysis_only: None,
        keep_trace: false,
        snapshot_of: None,
    }
}

#[tokio::test]
async fn job_results_are_resent_until_acknowledged() {
    let refusal = Message::JobResult {
        job_id: 9,
        outcome: JobOutcome::Err {
            step: "validate".into(),
            message: "invalid session name \"not a session\"".into(),
        },
    };
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());

    let (mut ws, _) = hub.accept_and_ack(1_000).await;
    send(
        &mut ws,
        Message::StartJob {
            job_id: 9,
            spec: spec(),
        },
    )
    .await;
    assert_eq!(
        recv_skipping_heartbeats(&mut ws).await,
        Some(refusal.clone())
    );
    drop(ws);

    // Not acknowledged: sent again right after the next hello-ack.
    let (mut ws, _) = hub.accept_and_ack(100).await;
    assert_eq!(recv(&mut ws).await, Some(refusal.clone()));
    send(&mut ws, Message::ResultAck { job_id: 9 }).await;
    // Heartbeat answered after the ack: the ack was processed.
    send(&mut ws, Message::Heartbeat { seq: 1 }).await;
    assert_eq!(
        recv_skipping_heartbeats(&mut ws).await,
        Some(Message::HeartbeatAck { seq: 1 })
    );
    drop(ws);

    // Acknowledged: not sent again.
    let (mut ws, _) = hub.accept_and_ack(100).await;
    assert_eq!(recv(&mut ws).await, Some(Message::Heartbeat { seq: 0 }));
    stop(shutdown, task).await;
}

/// A fake coordinator (any WebSocket server the agent is pointed at) names a shell as the
/// analysis of an analysis-only job: the agent, running as root, refuses it and runs nothing.
#[tokio::test]
async fn a_fake_coordinator_cannot_run_a_program_this_host_does_not_allow() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (mut ws, _) = hub.accept_and_ack(60_000).await;
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("pwned");
    let hostile = JobSpec {
        session_name: "tracevisor-deadbeef-7-host".into(),
        analysis_only: Some(tracevisor_protocol::TraceLocator::Path(
            dir.path().display().to_string(),
        )),
        analysis_commands: vec![vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("touch {}", canary.display()),
        ]],
        run_analysis: true,
        ..spec()
    };
    send(
        &mut ws,
        Message::StartJob {
            job_id: 7,
            spec: hostile,
        },
    )
    .await;
    match recv_skipping_heartbeats(&mut ws).await {
        Some(Message::JobResult {
            job_id: 7,
            outcome: JobOutcome::Err { step, message },
        }) => {
            assert_eq!(step, "validate");
            assert!(message.contains("\"/bin/sh\""), "{message}");
            assert!(message.contains("analysis_programs"), "{message}");
        }
        other => panic!("expected the job refused, got {other:?}"),
    }
    assert!(!canary.exists(), "the shell ran as the agent's user");
    stop(shutdown, task).await;
}

/// A fake coordinator points an analysis-only job at a directory outside the agent's trace
/// and relay roots (or searches one for a relay's output): the agent refuses it, reads nothing.
#[tokio::test]
async fn a_fake_coordinator_cannot_make_the_agent_read_outside_its_trace_roots() {
    let hub = Hub::start().await;
    let (shutdown, task) = spawn_agent(hub.config());
    let (mut ws, _) = hub.accept_and_ack(60_000).await;
    let locators = [
        tracevisor_protocol::TraceLocator::Path("/etc".into()),
        tracevisor_protocol::TraceLocator::RelaySession {
            roots: vec!["/root".into()],
        },
    ];
    for (job_id, locator) in (8..).zip(locators) {
        let hostile = JobSpec {
            session_name: format!("tracevisor-deadbeef-{job_id}-host"),
            analysis_only: Some(locator),
            analysis_commands: vec![],
            run_analysis: true,
            summary: tracevisor_protocol::Summary::Ust,
            ..spec()
        };
        send(
            &mut ws,
            Message::StartJob {
                job_id,
                spec: hostile,
            },
        )
        .await;
        match recv_skipping_heartbeats(&mut ws).await {
            Some(Message::JobResult {
                job_id: id,
                outcome: JobOutcome::Err { step, message },
            }) if id == job_id => {
                assert_eq!(step, "validate");
                assert!(message.starts_with("host agent-1: "), "{message}");
                assert!(
                    message.contains(" /etc is outside") || message.contains(" /root is outside"),
                    "{message}"
                );
                assert!(message.contains("relay_roots"), "{message}");
            }
            other => panic!("expected job {job_id} refused, got {other:?}"),
        }
    }
    stop(shutdown, task).await;
}

#[tokio::test]
async fn drive_works_over_an_in_memory_stream() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let (mut ws, upgrade) = upgrade(server_io).await;
        assert_eq!(upgrade.path, "/hub");
        let hello = expect_hello(&mut ws).await;
        send(
            &mut ws,
            Message::HelloAck {
                agent_id: 3,
                heartbeat_interval_ms: 50,
                coordinator_id: "c0ffee00".into(),
            },
        )
        .await;
        assert_eq!(recv(&mut ws).await, Some(Message::Heartbeat { seq: 0 }));
        hello
    });
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            "ws://agent.test/hub",
        )
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, client_io)
        .await
        .unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        hostname: "in-memory".into(),
        addresses: vec![],
        agent_version: AGENT_VERSION.into(),
        capabilities: Default::default(),
        running_jobs: vec![4],
    };
    let shutdown = CancellationToken::new();
    let mut jobs = crate::jobs::Jobs::new(
        LocalExecutor {
            hostname: "in-memory".into(),
            trace_root: std::env::temp_dir(),
            policy: Default::default(),
            control: Default::default(),
        },
        crate::allow::Allowlist::discover(&[]),
        vec![],
    );
    let mut established = None;
    let settings = fast_settings();
    let result = drive(
        &mut ws,
        hello.clone(),
        &mut jobs,
        &settings,
        &shutdown,
        &mut established,
    )
    .await;
    // The server task ends after the first heartbeat, which drops its side.
    assert!(result.is_err());
    assert!(established.is_some());
    assert_eq!(server.await.unwrap(), hello);
}

mod tls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    struct TestCa {
        pem: String,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    fn test_ca(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A TLS acceptor for `localhost` with a certificate signed by `ca`.
    fn acceptor(ca: &TestCa) -> tokio_rustls::TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn wss_config(hub: &Hub, ca_file: &std::path::Path) -> AgentConfig {
        let mut config = AgentConfig::new(
            &format!("wss://localhost:{}", hub.port()),
            TOKEN,
            "tls-agent",
        )
        .unwrap();
        config.ca_cert = Some(ca_file.to_owned());
        config.link = fast_settings();
        config
    }

    #[tokio::test]
    async fn wss_with_the_test_ca_works() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca("tracevisor test ca");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let acceptor = acceptor(&ca);

        let hub = Hub::start().await;
        let (shutdown, task) = spawn_agent(wss_config(&hub, &ca_file));
        let stream = hub.tcp().await;
        let tls = acceptor.accept(stream).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut ws, upgrade) = upgrade(tls).await;
        assert_eq!(upgrade.path, HUB_PATH);
        let hello = expect_hello(&mut ws).await;
        assert_eq!(hello.hostname, "tls-agent");
        send(
            &mut ws,
            Message::HelloAck {
                agent_id: 1,
                heartbeat_interval_ms: 100,
                coordinator_id: "c0ffee00".into(),
            },
        )
        .await;
        assert_eq!(recv(&mut ws).await, Some(Message::Heartbeat { seq: 0 }));
        shutdown.cancel();
        expect_close(&mut ws, CloseReason::Shutdown).await;
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn wss_with_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = test_ca("server ca");
        let other_ca = test_ca("other ca");
        let ca_file = dir.path().join("other.pem");
        std::fs::write(&ca_file, &other_ca.pem).unwrap();
        let acceptor = acceptor(&server_ca);

        let hub = Hub::start().await;
        let config = wss_config(&hub, &ca_file);
        let tls = crate::tls::client_config(Some(&ca_file)).unwrap();
        let connecting = tokio::spawn(async move { connect(&config, Some(tls)).await.map(|_| ()) });
        let stream = hub.tcp().await;
        assert!(acceptor.accept(stream).await.is_err());
        let error = connecting.await.unwrap().unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, LinkError::Connect { .. }), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
    }

    #[tokio::test]
    async fn unreadable_ca_file_is_fatal() {
        let hub = Hub::start().await;
        let config = wss_config(&hub, std::path::Path::new("/nonexistent/ca.pem"));
        let error = run(config, CancellationToken::new()).await.unwrap_err();
        assert!(error.is_fatal());
        assert!(
            error
                .to_string()
                .starts_with("tls: cannot read /nonexistent/ca.pem"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn hello_carries_the_detected_capabilities() {
    let hub = Hub::start().await;
    let mut config = hub.config();
    config.link.detect_capabilities = true;
    let (shutdown, task) = spawn_agent(config);
    let (mut ws, _) = hub.accept().await;
    let hello = expect_hello(&mut ws).await;
    let caps = hello.capabilities;
    eprintln!("detected: {caps:?}");
    assert!(
        caps.kernel_tracer || caps.kernel_tracer_error.is_some(),
        "{caps:?}"
    );
    if tracevisor_lttng::runner::find_in_path("lttng").is_some() {
        assert!(caps.lttng_version.is_some(), "{caps:?}");
    }
    if tracevisor_lttng::runner::find_in_path("lttng-cputop-mi").is_some() {
        assert!(caps.analyses.iter().any(|name| name == "lttng-cputop-mi"));
    }
    stop(shutdown, task).await;
}

#[test]
fn a_link_that_ends_moves_to_any_other_coordinator_evenly() {
    let mut seen = [0usize; 4];
    for roll in 0..300u64 {
        let next = super::another(2, 4, roll);
        assert_ne!(next, 2);
        seen[next] += 1;
    }
    assert_eq!(seen, [100, 100, 0, 100]);
    assert_eq!(super::another(0, 2, 12345), 1);
}
