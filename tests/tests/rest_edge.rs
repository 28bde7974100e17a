//! The REST edge against hostile clients, with the real coordinator binary on loopback:
//! - a web page's cross-origin requests and a DNS-rebinding `Host` are refused, while the
//!   seed's requests (curl to `localhost`) work;
//! - half-open connections (a slow client holding descriptors) are closed after the header
//!   timeout while `/status` answers;
//! - connections beyond `max_connections` are closed at once, with a log line;
//! - requests waiting for their jobs do not hold request slots;
//! - the job caps answer 429 with `Retry-After` naming the limit; fleets naming too many
//!   unregistered hosts and unregistered relays are refused naming the setting.
//!
//! Nothing asserts how long something took: waits are bounded generously and the checks are
//! on outcomes (closed or not, answered or not).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use tracevisor_protocol::Message;
use tracevisor_tests::agents::{agent_token, hub_url, RawLink, Received};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{job_body, post_analyses, Submitted, PATIENCE};

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-edge-")
}

#[tokio::test]
async fn cross_origin_pages_and_rebinding_hosts_are_refused_and_the_seed_requests_pass() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let http = reqwest::Client::new();

    // A page on another site asks first (preflight), then posts anyway (a "simple" request).
    let preflight = http
        .request(Method::OPTIONS, c.api("/analyses"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::FORBIDDEN);
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let forged = http
        .post(c.api("/relays"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"hostname":"evil-relay","ipv4":"10.6.6.6"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let body: Json = forged.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cross-origin"),
        "{body}"
    );

    // A DNS-rebinding page reaches 127.0.0.1 under its own name.
    let rebound = http
        .get(c.api("/clients"))
        .header("host", format!("evil.example:{}", c.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let body: Json = rebound.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("loopback"),
        "{body}"
    );

    // Nothing of that was stored.
    let (status, relays) = c.get("/relays").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(relays.as_array().map(Vec::len), Some(0), "{relays}");

    // The API's own origin, and the seed's curl requests to localhost (no Origin), work.
    let same = http
        .get(c.api("/analyses"))
        .header("origin", format!("http://127.0.0.1:{}", c.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    let base = format!("http://localhost:{}/trace/api/v1.0", c.addr.port());
    let created = http
        .post(format!("{base}/relays"))
        .json(&json!({"hostname": "myrelayhostname", "ipv6": "fe80::1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    for path in [
        "/relays",
        "/relays/1",
        "/analyses",
        "/clients",
        "/ssh",
        "/list",
    ] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "GET {path}");
    }
}

/// Opens `n` connections that send half a request head and then nothing.
fn half_open(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /trace/api/v1.0/status HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect()
}

/// Whether the server closed `s` (EOF or reset), waiting at most `limit`.
fn closed_by_server(s: &TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let mut reader = s;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error answer before closing is fine
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn half_open_connections_are_closed_after_the_header_timeout_while_status_answers() {
    let _ = rlimit::increase_nofile_limit(4096);
    let dir = data_dir();
    let c =
        Coordinator::start_with_config(dir.path(), "header_read_timeout_secs = 2\n", &[]).unwrap();
    let slow = half_open(c.addr, 500);
    // The API answers while they hang.
    let (status, body) = c.get("/status").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every one of them is closed by the server (the timeout is 2 s; the bound is generous).
    let started = Instant::now();
    let still_open = tokio::task::spawn_blocking(move || {
        slow.iter()
            .filter(|s| {
                let left = PATIENCE.saturating_sub(started.elapsed());
                !closed_by_server(s, left.max(Duration::from_millis(10)))
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(
        still_open, 0,
        "half-open connections left open by the server"
    );
    let (status, _) = c.get("/status").await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// Whether the server has closed `s` by now (EOF or reset seen without waiting).
fn closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let mut reader = s;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once_with_a_log_line() {
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "max_connections = 16\nheader_read_timeout_secs = 300\n",
        &[],
    )
    .unwrap();
    // 20 idle connections for 16 places (the server would wait 300 s for their requests):
    // whichever 4 come last to the acceptor are closed at once, the others stay.
    let conns = half_open(c.addr, 20);
    let deadline = Instant::now() + PATIENCE;
    let closed = loop {
        let closed = conns.iter().filter(|s| closed_now(s)).count();
        if closed >= 4 || Instant::now() > deadline {
            break closed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        closed, 4,
        "connections past max_connections are closed, the others kept"
    );
    c.wait_log("connection limit reached", Duration::from_secs(30))
        .unwrap();
    // Places come back when connections close.
    drop(conns);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((StatusCode::OK, _)) = c.get("/status").await {
            break;
        }
        assert!(Instant::now() < deadline, "the API never answered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a refusal: its status, and that its message names `setting`.
fn assert_refused(answer: &Submitted, status: StatusCode, setting: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let message = answer.body["error"].as_str().unwrap_or_default();
    assert!(message.contains(setting), "{}", answer.body);
}

/// A hand-driven agent that accepts jobs and never finishes them.
async fn silent_agent(c: &Coordinator, dir: &std::path::Path, hostname: &str) -> RawLink {
    let token = agent_token(dir).unwrap();
    let mut link = RawLink::agent(&hub_url(c.addr, false), &token, hostname)
        .await
        .unwrap();
    link.hello(hostname).await.unwrap();
    link
}

#[tokio::test]
async fn waiting_jobs_hold_no_request_slot() {
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "max_concurrent_requests = 50\nmax_jobs_per_host = 100\n",
        &[],
    )
    .unwrap();
    let mut agent = silent_agent(&c, dir.path(), "slow-host").await;
    // 60 requests that wait for jobs which never end (more than the 50 slots).
    let mut waiting = Vec::new();
    for _ in 0..60 {
        let url = c.api("/analyses");
        waiting.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&job_body("slow-host", 3000.0, "ust"))
                .send()
                .await
        }));
    }
    let mut started = 0;
    while started < 60 {
        match agent.recv(PATIENCE).await {
            Received::Frame(Message::StartJob { .. }) => started += 1,
            Received::Frame(Message::Heartbeat { seq }) => {
                agent.send(Message::HeartbeatAck { seq }).await.unwrap()
            }
            Received::Frame(_) | Received::Other(_) => {}
            other => panic!("the agent got {started} jobs, then {other:?}"),
        }
    }
    // All 60 are waiting, and the API still answers.
    let (status, body) = c.get("/status").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs_running"], 60, "{body}");
    let (status, list) = c.get("/list").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(60));
    assert!(waiting.iter().all(|w| !w.is_finished()), "they still wait");
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn job_caps_answer_429_naming_the_limit_and_unregistered_targets_are_refused() {
    let dir = data_dir();
    let c = Coordinator::start_with_config(
        dir.path(),
        "max_jobs_per_host = 2\nmax_running_jobs = 3\nmax_unregistered_fleet_hosts = 2\n",
        &[],
    )
    .unwrap();
    let _a = silent_agent(&c, dir.path(), "host-a").await;
    let _b = silent_agent(&c, dir.path(), "host-b").await;
    let start = |host: &str| {
        let mut body = job_body(host, 3000.0, "ust");
        body["wait"] = json!(false);
        body
    };
    for _ in 0..2 {
        let ok = post_analyses(&c, &start("host-a"), &[]).await.unwrap();
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    }
    let busy = post_analyses(&c, &start("host-a"), &[]).await.unwrap();
    assert_refused(&busy, StatusCode::TOO_MANY_REQUESTS, "max_jobs_per_host");
    assert_eq!(busy.header("retry-after").as_deref(), Some("5"));
    let ok = post_analyses(&c, &start("host-b"), &[]).await.unwrap();
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    let busy = post_analyses(&c, &start("host-b"), &[]).await.unwrap();
    assert_refused(&busy, StatusCode::TOO_MANY_REQUESTS, "max_running_jobs");
    // Refused requests started nothing.
    let (_, list) = c.get("/list").await.unwrap();
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(3));

    // A fleet naming more addresses than allowed outside the registry: an SSH scan.
    let mut fleet = json!({"hosts": ["10.9.9.1", "10.9.9.2", "10.9.9.3"], "duration": 1, "type": "ust", "username": "root", "wait": false});
    let refused = post_analyses(&c, &fleet, &[]).await.unwrap();
    assert_refused(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "max_unregistered_fleet_hosts",
    );
    assert_eq!(refused.body["field"], "hosts");
    // A relay nobody registered.
    fleet = start("host-a");
    fleet["relay"] = json!("10.6.6.6");
    let refused = post_analyses(&c, &fleet, &[]).await.unwrap();
    assert_refused(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "allow_unregistered_relays",
    );
    assert_eq!(refused.body["field"], "relay");
}
