//! The agent link end to end: the real coordinator binary with several real `tracesd` processes and hand-driven WebSocket clients on loopback (registration, liveness, restart, tokens, TLS, garbage, replacement, versions).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracevisor_protocol::{codec, CloseReason, Hello, Message, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use tracevisor_tests::agents::{
    agent_token, client, clients, eventually, free_port, hub_url, is_connected, is_disconnected,
    simulated_hello, wait_clients, Agent, CutOff, RawLink, TestCa, Upgrade,
};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};

/// Generous bound for anything that involves processes starting and links (re)connecting on
/// a loaded 2-core machine. Tests poll; they never assert how long something took.
const PATIENCE: Duration = Duration::from_secs(120);

const TOKEN: &str = "agent-link-test-token";

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-link-")
}

fn all_connected<'a>(hosts: &'a [&'a str]) -> impl Fn(&[Json]) -> bool + 'a {
    move |list| hosts.iter().all(|h| is_connected(list, h))
}

/// The `agent_id=N` of the agent's last "connected" log line.
fn logged_agent_id(agent: &Agent) -> Option<u64> {
    agent
        .logs()
        .lines()
        .filter(|l| l.contains(" connected") && l.contains("agent_id="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("agent_id="))
                .and_then(|v| v.parse().ok())
        })
        .next_back()
}

/// Test 1: three agents appear connected with version and capabilities; a client registered
/// by hand with the same hostname is linked, not duplicated; the generated token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_and_link_to_hand_registered_clients() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    // No --agent-token: the coordinator generated one, `tracevisor agent-token` prints it.
    let token = agent_token(dir.path()).unwrap();
    assert!(token.len() >= 32, "weak generated token {token:?}");
    let token_files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.trim() == token))
        .collect();
    assert_eq!(
        token_files.len(),
        1,
        "the token is stored in one file of the data dir"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        token_files[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, web2) = c
        .post(
            "/clients",
            &json!({"hostname": "web-2", "ipv4": "192.0.2.2", "sshport": 2222}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{web2}");
    let (status, db1) = c
        .post(
            "/clients",
            &json!({"hostname": "db-1", "ipv4": "192.0.2.9"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{db1}");

    let url = hub_url(c.addr, false);
    let hosts = ["web-1", "web-2", "web-3"];
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::start(&url, &token, h).unwrap())
        .collect();
    let list = wait_clients(&c, "3 agents connected", PATIENCE, all_connected(&hosts))
        .await
        .unwrap();

    // web-2 was linked to the record made by hand: same id, its fields kept, no duplicate.
    assert_eq!(list.len(), 4, "{}", Json::Array(list.clone()));
    let web2_now = client(&list, "web-2").unwrap();
    assert_eq!(web2_now["id"], web2["id"]);
    assert_eq!(web2_now["ipv4"], "192.0.2.2");
    assert_eq!(web2_now["sshport"], 2222);
    // db-1 never had an agent.
    let db1_now = client(&list, "db-1").unwrap();
    assert_eq!(db1_now["id"], db1["id"]);
    assert_eq!(db1_now["agent"], Json::Null, "{db1_now}");

    for agent in &agents {
        let record = client(&list, &agent.hostname).unwrap();
        let status = &record["agent"];
        assert_eq!(status["connected"], true);
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{record}");
        for key in ["connected_since", "last_seen"] {
            let t = status[key].as_str().unwrap();
            assert!(
                t.contains('T') && t.len() >= 20,
                "{key} is not RFC 3339: {t}"
            );
        }
        let caps = status["capabilities"].as_object().unwrap();
        for key in [
            "lttng_version",
            "sessiond_running",
            "kernel_tracer",
            "kernel_tracer_error",
            "userspace_tracer",
            "userspace_tracer_error",
            "babeltrace2",
            "analyses",
        ] {
            assert!(caps.contains_key(key), "capabilities lack {key}: {record}");
        }
        assert!(caps["kernel_tracer"].is_boolean() && caps["analyses"].is_array());
        // The agent learnt its id from hello-ack: the client record's id.
        let id = record["id"].as_u64().unwrap();
        eventually("the agent to log its id", PATIENCE, || {
            logged_agent_id(agent) == Some(id)
        })
        .await
        .unwrap();
        // GET /clients/{id} shows the agent too.
        let (status, one) = c.get(&format!("/clients/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 200);
        assert_eq!(one["agent"]["connected"], true, "{one}");
    }
    // Auto-registered hosts got the registry's defaults and an address.
    for host in ["web-1", "web-3"] {
        let record = client(&list, host).unwrap();
        assert_eq!(record["sshport"], 22, "{record}");
        assert_eq!(record["sshuser"], "root", "{record}");
        assert!(
            record["ipv4"].is_string() || record["ipv6"].is_string(),
            "no address: {record}"
        );
    }
    assert!(c.logs().matches("agent connected").count() >= 3);
}

/// Test 2: kill -9 marks that agent disconnected; a frozen agent (SIGSTOP: its TCP
/// connection stays open) is marked disconnected by the heartbeat timeout and comes back
/// once thawed; the others stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_silent_agents_are_marked_disconnected() {
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "heartbeat_interval_secs = 1\n",
        &["--agent-token", TOKEN],
    )
    .unwrap();
    let url = hub_url(c.addr, false);
    let hosts = ["hb-1", "hb-2", "hb-3"];
    let mut agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::start(&url, TOKEN, h).unwrap())
        .collect();
    wait_clients(&c, "3 agents connected", PATIENCE, all_connected(&hosts))
        .await
        .unwrap();
    eventually("the agent to get the configured interval", PATIENCE, || {
        agents[0].logs().contains("heartbeat_interval_ms=1000")
    })
    .await
    .unwrap();

    // kill -9: the kernel closes the connection.
    agents[0].kill9().unwrap();
    let list = wait_clients(&c, "hb-1 disconnected, hb-3 connected", PATIENCE, |l| {
        is_disconnected(l, "hb-1") && is_connected(l, "hb-3")
    })
    .await
    .unwrap();
    let hb1 = client(&list, "hb-1").unwrap();
    assert_eq!(hb1["agent"]["version"], env!("CARGO_PKG_VERSION"), "{hb1}");
    assert!(hb1["agent"]["last_seen"].is_string(), "{hb1}");

    // SIGSTOP: nothing is sent any more, the connection stays open.
    agents[1].freeze().unwrap();
    wait_clients(&c, "hb-2 disconnected, hb-3 connected", PATIENCE, |l| {
        is_disconnected(l, "hb-2") && is_connected(l, "hb-3")
    })
    .await
    .unwrap();
    eventually(
        "the coordinator to log a heartbeat timeout",
        PATIENCE,
        || {
            c.logs()
                .lines()
                .any(|l| l.contains("hb-2") && l.contains("heartbeat timeout"))
        },
    )
    .await
    .unwrap();

    // Thawed, it notices the closed link and reconnects by itself.
    agents[1].thaw().unwrap();
    wait_clients(&c, "hb-2 back", PATIENCE, all_connected(&["hb-2", "hb-3"]))
        .await
        .unwrap();
    eventually("hb-2 to log a second connection", PATIENCE, || {
        agents[1].log_count("agent_id=") >= 2
    })
    .await
    .unwrap();
    let list = clients(&c).await.unwrap();
    assert_eq!(list.len(), 3, "{}", Json::Array(list.clone()));
    assert!(is_disconnected(&list, "hb-1"));
}

/// Test 3: SIGTERM the coordinator and start it again on the same data dir and port: every
/// agent comes back by itself, linked to the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_come_back_after_a_coordinator_restart() {
    let dir = data_dir();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let args = ["--agent-token", TOKEN];
    let mut c = Coordinator::start_with(dir.path(), &listen, &args, &[]).unwrap();
    let url = hub_url(c.addr, false);
    let hosts = ["rs-1", "rs-2", "rs-3"];
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::start(&url, TOKEN, h).unwrap())
        .collect();
    let before = wait_clients(&c, "3 agents connected", PATIENCE, all_connected(&hosts))
        .await
        .unwrap();
    let ids: HashMap<String, Json> = before
        .iter()
        .map(|r| (r["hostname"].as_str().unwrap().to_owned(), r["id"].clone()))
        .collect();

    assert_eq!(c.terminate().unwrap(), Some(0), "{}", c.logs());
    for agent in &agents {
        eventually("each agent to notice the shutdown", PATIENCE, || {
            agent.logs().contains("retrying in")
        })
        .await
        .unwrap();
    }
    let c = Coordinator::start_with(dir.path(), &listen, &args, &[]).unwrap();
    let after = wait_clients(&c, "3 agents back", PATIENCE, all_connected(&hosts))
        .await
        .unwrap();
    assert_eq!(after.len(), 3, "{}", Json::Array(after.clone()));
    for record in &after {
        assert_eq!(
            ids[record["hostname"].as_str().unwrap()],
            record["id"],
            "{record}"
        );
    }
    for agent in &agents {
        eventually("each agent to log its second connection", PATIENCE, || {
            agent.log_count("agent_id=") >= 2
        })
        .await
        .unwrap();
    }
}

/// Test 4: a wrong token is refused before the upgrade and logged on both sides; the host
/// never appears. By hand: a wrong or missing token gets HTTP 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let intruder = Agent::start(&url, "not-the-token", "intruder").unwrap();
    let good = Agent::start(&url, TOKEN, "good-1").unwrap();
    eventually("the agent to log its rejection", PATIENCE, || {
        intruder.has_log_line(|l| l.contains("rejected") && l.contains("401"))
    })
    .await
    .unwrap();
    eventually("the coordinator to log the rejection", PATIENCE, || {
        c.logs().contains("agent rejected: wrong enrollment token")
    })
    .await
    .unwrap();
    // It keeps trying (with backoff), and is refused each time.
    eventually("a second rejection", PATIENCE, || {
        intruder.log_count("rejected") >= 2 && intruder.logs().contains("retrying in")
    })
    .await
    .unwrap();
    let list = wait_clients(&c, "good-1 connected", PATIENCE, all_connected(&["good-1"]))
        .await
        .unwrap();
    assert!(client(&list, "intruder").is_none(), "{}", Json::Array(list));
    assert!(
        !intruder.logs().contains("agent_id="),
        "{}",
        intruder.logs()
    );
    drop(good);

    for (token, needle) in [
        (Some("not-the-token"), "invalid agent enrollment token"),
        (None, "missing"),
    ] {
        match RawLink::upgrade(&url, token, Some(&PROTOCOL_VERSION.to_string()))
            .await
            .unwrap()
        {
            Upgrade::Refused { status, body } => {
                assert_eq!(status, 401, "{body}");
                let body: Json = serde_json::from_str(&body).unwrap();
                assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
            }
            Upgrade::Accepted(_) => panic!("upgraded with token {token:?}"),
        }
    }
    eventually("the coordinator to log the missing token", PATIENCE, || {
        c.logs().contains("agent rejected: no enrollment token")
    })
    .await
    .unwrap();
    assert!(clients(&c)
        .await
        .unwrap()
        .iter()
        .all(|r| r["hostname"] != "intruder"));
}

/// Test 5: with a certificate made by a test CA, an agent given that CA connects over wss://;
/// an agent given another CA fails the TLS handshake and never connects; REST over https works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca() {
    let dir = data_dir();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tracevisor test CA").unwrap();
    let other = TestCa::new("some other CA").unwrap();
    let ca_path = pki.path().join("ca.pem");
    let other_path = pki.path().join("other-ca.pem");
    ca.write(&ca_path).unwrap();
    other.write(&other_path).unwrap();
    let (cert, key) = ca.server_cert(pki.path()).unwrap();
    let c = Coordinator::start(
        dir.path(),
        &[
            "--agent-token",
            TOKEN,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap();
    let url = hub_url(c.addr, true);
    let trusted = Agent::start_with(
        &url,
        TOKEN,
        "tls-good",
        &["--ca-cert", ca_path.to_str().unwrap()],
    )
    .unwrap();
    let untrusting = Agent::start_with(
        &url,
        TOKEN,
        "tls-bad",
        &["--ca-cert", other_path.to_str().unwrap()],
    )
    .unwrap();

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let api = format!("https://localhost:{}/trace/api/v1.0/clients", c.addr.port());
    let mut list = Vec::new();
    for _ in 0..600 {
        let resp = https.get(&api).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        list = resp.json::<Vec<Json>>().await.unwrap();
        if is_connected(&list, "tls-good") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        is_connected(&list, "tls-good"),
        "{}",
        Json::Array(list.clone())
    );
    assert!(logged_agent_id(&trusted).is_some());

    let tls_failure = |l: &str| {
        let l = l.to_lowercase();
        l.contains("cannot connect") && l.contains("certificate")
    };
    eventually(
        "tls-bad to log the certificate error twice",
        PATIENCE,
        || untrusting.logs().lines().filter(|l| tls_failure(l)).count() >= 2,
    )
    .await
    .unwrap();
    assert!(
        !untrusting.logs().contains("agent_id="),
        "{}",
        untrusting.logs()
    );
    let list: Vec<Json> = https.get(&api).send().await.unwrap().json().await.unwrap();
    assert!(
        client(&list, "tls-bad").is_none(),
        "{}",
        Json::Array(list.clone())
    );

    // Without the test CA the server is not trusted, and plain http is not served.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(plain.get(&api).send().await.is_err());
    let http = format!("http://127.0.0.1:{}/trace/api/v1.0/clients", c.addr.port());
    assert!(plain.get(&http).send().await.is_err());
}

/// What a misbehaving client sends in [`garbage_is_cut_off`].
struct Garbage {
    name: &'static str,
    /// Say a valid hello first (the main loop) or not (the hello wait).
    hello_first: bool,
    message: WsMessage,
    /// The protocol close reason the coordinator must give, when it can still send one.
    reason: Option<CloseReason>,
}

/// The current protocol version, then pseudo-random bytes that do not decode as a message
/// (fixed, so a failure reproduces; frames of another version are a case of their own).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut bytes = vec![u8::try_from(PROTOCOL_VERSION).unwrap()];
    bytes.extend((1..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }));
    assert!(codec::decode(&bytes).is_err(), "the random bytes decode");
    bytes
}

/// Test 6: random bytes, an oversized message, text, a frame of another version and frames
/// out of order are each cut off; a real agent stays connected and the REST API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_cut_off() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let _steady = Agent::start(&url, TOKEN, "steady").unwrap();
    let list = wait_clients(&c, "steady connected", PATIENCE, all_connected(&["steady"]))
        .await
        .unwrap();
    let since = client(&list, "steady").unwrap()["agent"]["connected_since"].clone();

    let hello = codec::encode(&Message::Hello(simulated_hello("late-hello")).into()).unwrap();
    let mut other_version = codec::encode(&Message::Heartbeat { seq: 1 }.into()).unwrap();
    other_version[0] = 99;
    let cases = vec![
        Garbage {
            name: "random bytes instead of hello",
            hello_first: false,
            message: WsMessage::binary(random_bytes(7, 300)),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "random bytes after hello",
            hello_first: true,
            message: WsMessage::binary(random_bytes(11, 64)),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "oversized binary message instead of hello",
            hello_first: false,
            message: WsMessage::binary(vec![0u8; MAX_FRAME_BYTES + 4096]),
            reason: None,
        },
        Garbage {
            name: "oversized binary message after hello",
            hello_first: true,
            message: WsMessage::binary(vec![1u8; MAX_FRAME_BYTES + 1]),
            reason: None,
        },
        Garbage {
            name: "text message instead of hello",
            hello_first: false,
            message: WsMessage::text("{\"hello\": \"web-1\"}"),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "text message after hello",
            hello_first: true,
            message: WsMessage::text("hi"),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "heartbeat before hello",
            hello_first: false,
            message: WsMessage::binary(
                codec::encode(&Message::Heartbeat { seq: 0 }.into()).unwrap(),
            ),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "a second hello",
            hello_first: true,
            message: WsMessage::binary(hello),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "hello-ack from an agent",
            hello_first: true,
            message: WsMessage::binary(
                codec::encode(
                    &Message::HelloAck {
                        agent_id: 1,
                        heartbeat_interval_ms: 1,
                        coordinator_id: "c0ffee00".into(),
                    }
                    .into(),
                )
                .unwrap(),
            ),
            reason: Some(CloseReason::ProtocolError),
        },
        Garbage {
            name: "frame of protocol version 99",
            hello_first: false,
            message: WsMessage::binary(other_version),
            reason: Some(CloseReason::UnsupportedVersion),
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let hostname = format!("garbage-{i}");
        let mut link = RawLink::agent(&url, TOKEN, &hostname).await.unwrap();
        if case.hello_first {
            link.hello(&hostname).await.unwrap();
        }
        // The coordinator may stop reading (and reset the connection) before an oversized
        // message is fully sent: a failed or unfinished send is fine, the answer is checked.
        let sent =
            match tokio::time::timeout(Duration::from_secs(30), link.send_ws(case.message)).await {
                Ok(Ok(())) => "sent".to_owned(),
                Ok(Err(e)) => format!("send failed: {e:#}"),
                Err(_) => "send unfinished after 30 s".to_owned(),
            };
        eprintln!("case {:?}: {sent}", case.name);
        let cut = link
            .wait_cut_off(PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("case {:?}: {e:#}", case.name));
        eprintln!("case {:?}: {cut:?}", case.name);
        match (case.reason, &cut) {
            (Some(expected), CutOff::Closed { reason, message }) => {
                assert_eq!(*reason, expected, "case {:?}: {message}", case.name);
                assert!(!message.is_empty(), "case {:?}", case.name);
            }
            (Some(_), other) => panic!("case {:?}: no Close message: {other:?}", case.name),
            (None, _) => {}
        }
        // Whatever happened, nothing more arrives on that link.
        if let CutOff::Closed { .. } = cut {
            let rest = link.wait_cut_off(PATIENCE).await;
            assert!(
                matches!(rest, Ok(CutOff::CloseFrame(_) | CutOff::Ended(_))),
                "case {:?}: {rest:?}",
                case.name
            );
        }
        // The REST API answers, the real agent kept its link, and a host that said hello
        // before its garbage is shown disconnected.
        let list = wait_clients(&c, "the aftermath", PATIENCE, |l| {
            is_connected(l, "steady") && (!case.hello_first || is_disconnected(l, &hostname))
        })
        .await
        .unwrap_or_else(|e| panic!("case {:?}: {e:#}", case.name));
        assert_eq!(
            client(&list, "steady").unwrap()["agent"]["connected_since"],
            since,
            "case {:?}: the real agent had to reconnect",
            case.name
        );
        if !case.hello_first {
            assert!(client(&list, &hostname).is_none(), "case {:?}", case.name);
        }
    }
    assert!(c.logs().contains("closing agent link"));
    let (status, _) = c.get("/relays").await.unwrap();
    assert_eq!(status.as_u16(), 200);
}

/// Test 7: a second link saying hello with the same hostname replaces the first, which gets
/// `Close { Replaced }`; the second stays through several heartbeat intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_link_for_a_hostname_replaces_the_first() {
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "heartbeat_interval_secs = 1\n",
        &["--agent-token", TOKEN],
    )
    .unwrap();
    let url = hub_url(c.addr, false);
    let mut first = RawLink::agent(&url, TOKEN, "twin").await.unwrap();
    let (id1, interval_ms) = first.hello("twin").await.unwrap();
    assert_eq!(interval_ms, 1000);
    let mut second = RawLink::agent(&url, TOKEN, "twin").await.unwrap();
    let (id2, _) = second.hello("twin").await.unwrap();
    assert_eq!(id1, id2, "both links are the same host's");
    match first.wait_cut_off(PATIENCE).await.unwrap() {
        CutOff::Closed { reason, .. } => assert_eq!(reason, CloseReason::Replaced),
        other => panic!("the first link was not closed with a reason: {other:?}"),
    }
    // Five intervals, answering heartbeats: the second link stays.
    let answered = second
        .keep_alive(Duration::from_secs(5), Duration::from_millis(1000))
        .await
        .unwrap();
    assert!(
        answered >= 2,
        "only {answered} heartbeats from the coordinator"
    );
    let list = clients(&c).await.unwrap();
    assert_eq!(list.len(), 1, "{}", Json::Array(list.clone()));
    assert!(is_connected(&list, "twin"));
    assert!(c.logs().contains("replaced by a newer one"));
}

/// Test 8: protocol version 99 in the upgrade header is refused with HTTP 400 naming the
/// supported version; a hello of version 99 is closed with `UnsupportedVersion`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    match RawLink::upgrade(&url, Some(TOKEN), Some("99"))
        .await
        .unwrap()
    {
        Upgrade::Refused { status, body } => {
            assert_eq!(status, 400, "{body}");
            let body: Json = serde_json::from_str(&body).unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("99"), "{body}");
            assert!(
                error.contains(&format!("version {PROTOCOL_VERSION}")),
                "{body}"
            );
            assert_eq!(body["supported"], json!([PROTOCOL_VERSION]), "{body}");
        }
        Upgrade::Accepted(_) => panic!("version 99 was upgraded"),
    }
    // The log line is read from the coordinator's output by another thread: wait for it.
    c.wait_log("unsupported protocol version", PATIENCE)
        .unwrap();

    let mut link = RawLink::agent(&url, TOKEN, "future-host").await.unwrap();
    link.send(Message::Hello(Hello {
        protocol_version: 99,
        ..simulated_hello("future-host")
    }))
    .await
    .unwrap();
    match link.wait_cut_off(PATIENCE).await.unwrap() {
        CutOff::Closed { reason, message } => {
            assert_eq!(reason, CloseReason::UnsupportedVersion, "{message}");
            assert!(
                message.contains(&format!("version {PROTOCOL_VERSION}")),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(clients(&c).await.unwrap().is_empty());
}

/// `tracevisor serve` without `--no-local-agent` runs a built-in agent for `localhost`
/// through the same hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_local_agent_registers_localhost() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[LOCAL_AGENT]).unwrap();
    let list = wait_clients(
        &c,
        "localhost connected",
        PATIENCE,
        all_connected(&["localhost"]),
    )
    .await
    .unwrap();
    let record = client(&list, "localhost").unwrap();
    assert!(record["agent"]["capabilities"].is_object(), "{record}");
    assert!(c.logs().contains("starting the built-in local agent"));
}

/// A client deleted by hand while its agent was known is registered again when the agent
/// reconnects.
///
/// Regression test: the `agent` row of the deleted client (keyed by the old client id, with a
/// UNIQUE index on `hostname`) used to stay, so the new client's agent row could never be
/// written ("Database index `agent_hostname` already contains ..."); `Hub::register` now
/// deletes stale rows of the hostname in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_client_is_registered_again_by_its_agent() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let mut agent = Agent::start(&url, TOKEN, "phoenix").unwrap();
    let list = wait_clients(
        &c,
        "phoenix connected",
        PATIENCE,
        all_connected(&["phoenix"]),
    )
    .await
    .unwrap();
    let id = client(&list, "phoenix").unwrap()["id"].as_u64().unwrap();
    agent.kill9().unwrap();
    wait_clients(&c, "phoenix disconnected", PATIENCE, |l| {
        is_disconnected(l, "phoenix")
    })
    .await
    .unwrap();
    let (status, _) = c.delete(&format!("/clients/{id}")).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let _agent = Agent::start(&url, TOKEN, "phoenix").unwrap();
    let list = wait_clients(&c, "phoenix registered again", PATIENCE, |l| {
        is_connected(l, "phoenix") || c.logs().contains("agent registration failed")
    })
    .await
    .unwrap();
    assert!(
        !c.logs().contains("agent registration failed"),
        "the hub could not register the host again:\n{}",
        c.logs()
    );
    let record = client(&list, "phoenix").unwrap();
    assert_ne!(record["id"].as_u64().unwrap(), id, "ids are never reused");
}

/// Many agents saying hello at once: a link whose registration waited in the hub's queue is
/// not declared dead at its first heartbeat tick.
///
/// Regression test: `serve_link` used to start the link's silence clock when the hello
/// arrived, before `Hub::register` ran, while an agent owes nothing until one interval after
/// `HelloAck`; with registrations queued for more than two intervals (1500 hellos at once with
/// a 1 s heartbeat) healthy links were closed with `HeartbeatTimeout`. The clock now starts
/// once the link is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_registered_late_are_not_timed_out() {
    // 1500 links take 1500 descriptors here and in the coordinator (which inherits the limit):
    // more than a default soft limit of 1024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "heartbeat_interval_secs = 1\n",
        &["--agent-token", TOKEN],
    )
    .unwrap();
    let url = hub_url(c.addr, false);
    // Each host enrolls first (its credential); then all links open before any hello.
    let mut credentials = Vec::new();
    for i in 0..1500 {
        credentials.push(
            RawLink::credential(&url, TOKEN, &format!("burst-{i}"))
                .await
                .unwrap(),
        );
    }
    let mut links = Vec::new();
    for (i, credential) in credentials.iter().enumerate() {
        links.push(RawLink::connect(&url, credential).await.unwrap());
        if i % 100 == 99 {
            eprintln!("{} links open", i + 1);
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        tasks.spawn(async move {
            let asked = std::time::Instant::now();
            link.hello(&format!("burst-{i}")).await?;
            let acked = std::time::Instant::now();
            let kept = link
                .keep_alive(Duration::from_secs(5), Duration::from_secs(1))
                .await;
            anyhow::Ok((acked - asked, kept.err().map(|e| (acked.elapsed(), e))))
        });
    }
    // A correct hub cannot find a link silent for 3 intervals less than 3 intervals after
    // its hello-ack, however loaded the machine: count the links cut off sooner.
    let mut slowest_ack = Duration::ZERO;
    let mut early = Vec::new();
    let mut late = 0;
    while let Some(result) = tasks.join_next().await {
        let (ack_after, cut) = result.unwrap().unwrap();
        slowest_ack = slowest_ack.max(ack_after);
        match cut {
            Some((after, e)) if after < Duration::from_millis(2500) => early.push(format!(
                "{:.1} s after its hello-ack: {e:#}",
                after.as_secs_f64()
            )),
            Some(_) => late += 1,
            None => {}
        }
    }
    eprintln!(
        "slowest hello-ack {:.1} s; {} links cut off early, {late} later",
        slowest_ack.as_secs_f64(),
        early.len()
    );
    assert!(
        early.is_empty(),
        "{} of 1500 healthy links were cut off less than 2.5 heartbeat intervals after their \
         hello-ack (the slowest hello-ack came {:.1} s after its hello); the first: {}",
        early.len(),
        slowest_ack.as_secs_f64(),
        early[0]
    );
}

/// `GET /status` says the database answers and counts what the coordinator holds: links open
/// before their hello, agents registered, its own memory and descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_links_and_agents() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let (code, s) = c.get("/status").await.unwrap();
    assert_eq!(code.as_u16(), 200, "{s}");
    assert_eq!(s["database"], "ok", "{s}");
    assert!(s["schema_version"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(
        (
            s["agents_connected"].as_u64(),
            s["agent_links_open"].as_u64()
        ),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["jobs_running"], 0, "{s}");
    assert!(
        s["resident_memory_bytes"].as_u64().unwrap() > 1 << 20,
        "{s}"
    );
    assert!(s["open_fds"].as_u64().unwrap() > 3, "{s}");

    let url = hub_url(c.addr, false);
    let mut registered = RawLink::agent(&url, TOKEN, "status-1").await.unwrap();
    registered.hello("status-1").await.unwrap();
    let _silent = RawLink::connect(&url, TOKEN).await.unwrap();
    let (_, s) = c.get("/status").await.unwrap();
    assert_eq!(s["agents_connected"], 1, "{s}");
    assert_eq!(
        s["agent_links_open"], 2,
        "one link has not said hello yet: {s}"
    );
    drop(registered);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, s) = c.get("/status").await.unwrap();
        if s["agents_connected"] == 0 && s["agent_links_open"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed link still counted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 12: a stolen credential is revoked with the CLI; the real agent using it is cut off
/// at once, and its reconnects are refused with 401 naming the revocation. Its neighbour keeps
/// its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_cut_off_within_a_second_and_refused_after() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let stolen = Agent::start(&url, TOKEN, "stolen-1").unwrap();
    let _neighbour = Agent::start(&url, TOKEN, "neighbour-1").unwrap();
    wait_clients(
        &c,
        "both connected",
        PATIENCE,
        all_connected(&["stolen-1", "neighbour-1"]),
    )
    .await
    .unwrap();
    let (status, list) = c.get("/agents/credentials").await.unwrap();
    assert_eq!(status, 200, "{list}");
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows.iter().all(|r| r["connected"] == json!(true)), "{list}");
    assert!(
        rows.iter().all(|r| r.get("secret_sha256").is_none()),
        "{list}"
    );

    let out =
        std::process::Command::new(tracevisor_tests::coordinator::binary("tracevisor").unwrap())
            .args(["credentials", "revoke", "stolen-1", "--server"])
            .arg(c.url(""))
            .output()
            .unwrap();
    let revoked_at = std::time::Instant::now();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked credential"));
    wait_clients(&c, "stolen-1 cut off", PATIENCE, |list| {
        is_disconnected(list, "stolen-1") && is_connected(list, "neighbour-1")
    })
    .await
    .unwrap();
    eprintln!(
        "stolen-1 shown disconnected {} ms after the CLI returned",
        revoked_at.elapsed().as_millis()
    );
    eventually("the agent to log its refused reconnect", PATIENCE, || {
        stolen.has_log_line(|l| l.contains("401") && l.contains("revoked"))
    })
    .await
    .unwrap();
    c.wait_log("agent rejected: revoked credential", PATIENCE)
        .unwrap();
    let (_, list) = c.get("/agents/credentials").await.unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hostname"] == "stolen-1")
        .unwrap()
        .clone();
    assert_eq!(row["revoked_why"], "revoked by the operator", "{row}");
    assert_eq!(row["connected"], false, "{row}");
    // Still connected after a while: its neighbour was never disturbed.
    let list = clients(&c).await.unwrap();
    assert!(is_connected(&list, "neighbour-1"));
}

/// Issue 12: a hostile peer holding one host's credential cannot register another host, and the
/// shared enrollment token alone opens no agent link; the victim's link is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_credential_cannot_speak_for_another_host_and_the_token_only_enrolls() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let _victim = Agent::start(&url, TOKEN, "victim-1").unwrap();
    wait_clients(
        &c,
        "victim connected",
        PATIENCE,
        all_connected(&["victim-1"]),
    )
    .await
    .unwrap();
    let mut rogue = RawLink::agent(&url, TOKEN, "rogue-1").await.unwrap();
    rogue
        .send(Message::Hello(simulated_hello("victim-1")))
        .await
        .unwrap();
    match rogue.wait_cut_off(PATIENCE).await.unwrap() {
        CutOff::Closed { reason, message } => {
            assert_eq!(reason, CloseReason::Unauthorized, "{message}");
            assert!(message.contains("issued to rogue-1"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    let mut token_only = RawLink::connect(&url, TOKEN).await.unwrap();
    token_only
        .send(Message::Hello(simulated_hello("fresh-host")))
        .await
        .unwrap();
    match token_only.wait_cut_off(PATIENCE).await.unwrap() {
        CutOff::Closed { reason, message } => {
            assert_eq!(reason, CloseReason::Unauthorized, "{message}");
            assert!(message.contains("tracesd enroll"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    let list = clients(&c).await.unwrap();
    assert!(
        is_connected(&list, "victim-1"),
        "{}",
        Json::Array(list.clone())
    );
    assert!(client(&list, "fresh-host").is_none());
    assert!(
        client(&list, "rogue-1").is_none(),
        "never said hello as itself"
    );
}

/// Issue 12: over wss://, `tracesd enroll` pins the certificate the coordinator presented; a
/// coordinator at the same address with another certificate from the same CA (valid for the
/// name) is refused by the agent, which never registers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_pins_the_coordinators_certificate_and_refuses_another() {
    let dir = data_dir();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tracevisor pin CA").unwrap();
    let ca_path = pki.path().join("ca.pem");
    ca.write(&ca_path).unwrap();
    let (first_dir, second_dir) = (pki.path().join("first"), pki.path().join("second"));
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let (cert1, key1) = ca.server_cert(&first_dir).unwrap();
    let (cert2, key2) = ca.server_cert(&second_dir).unwrap();
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            "--agent-token".to_owned(),
            TOKEN.to_owned(),
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ]
    };
    let args1 = tls(&cert1, &key1);
    let args1: Vec<&str> = args1.iter().map(String::as_str).collect();
    let mut c = Coordinator::start_with(dir.path(), &listen, &args1, &[]).unwrap();
    let url = format!("wss://localhost:{port}");
    let config = pki.path().join("tracesd.toml");
    let out = std::process::Command::new(tracevisor_tests::coordinator::binary("tracesd").unwrap())
        .args([
            "enroll",
            "--no-enable",
            "--coordinator",
            &url,
            "--hostname",
            "pinned-1",
        ])
        .arg("--ca-cert")
        .arg(&ca_path)
        .arg("--config")
        .arg(&config)
        .env("TRACESD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("certificate sha256:"), "{printed}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("coordinator_fingerprints = [\"sha256:"),
        "{written}"
    );
    assert!(
        !written.contains(TOKEN),
        "the enrollment token is not kept: {written}"
    );

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let api = format!("https://localhost:{port}/trace/api/v1.0/clients");
    let list_clients = || async {
        match https.get(&api).send().await {
            Ok(resp) => resp.json::<Vec<Json>>().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    };
    let agent = Agent::start_configured(&config, "pinned-1").unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !is_connected(&list_clients().await, "pinned-1") {
        assert!(
            std::time::Instant::now() < deadline,
            "pinned-1 never connected: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.terminate().unwrap();
    // Same address, same data (the credential is valid there), same CA and name: another
    // certificate.
    let args2 = tls(&cert2, &key2);
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    let c2 = Coordinator::start_with(dir.path(), &listen, &args2, &[]).unwrap();
    eventually(
        "the agent to refuse the unpinned certificate",
        PATIENCE,
        || agent.has_log_line(|l| l.contains("not the one pinned")),
    )
    .await
    .unwrap();
    let list = list_clients().await;
    assert!(
        client(&list, "pinned-1").is_some() && !is_connected(&list, "pinned-1"),
        "{}",
        Json::Array(list.clone())
    );
    assert!(!c2.logs().contains("agent connected"), "{}", c2.logs());
}
