//! Faults survived or reported clearly: the agent link cut while the agent lives (the result
//! arrives after the reconnect, exactly once), the relay down, lttng-sessiond stopped, and the
//! data disk full. Real coordinator, real agents, real LTTng.
//!
//! The tests of this file run one at a time (they stop the shared lttng-sessiond or fill a disk);
//! cargo runs test binaries one after the other, so no other file's test sees it.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracevisor_tests::agents::{is_connected, wait_clients, Agent};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{job_body, wait_ended, wait_status, PATIENCE};
use tracevisor_tests::lttng::{self, ensure_sessiond};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const TOKEN: &str = "faults-test-agent-token-0123456789";

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP proxy the test can cut: every connection through it is dropped on `cut`, while it
/// keeps accepting new ones.
struct Proxy {
    port: u16,
    generation: Arc<Mutex<CancellationToken>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (gen, count) = (generation.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cut = gen.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            generation,
            connections,
        }
    }

    /// Drops every connection open now (both sides see the TCP connection end).
    fn cut(&self) {
        let mut current = self.generation.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_delivers_the_result_after_the_reconnect_exactly_once() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    let _serial = SERIAL.lock().await;
    ensure_sessiond().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("tv-fault-link-")
        .tempdir()
        .unwrap();
    // Long enough a heartbeat that the cut link is not declared lost before the agent is back.
    let c = Coordinator::start_with_config(
        dir.path(),
        "heartbeat_interval_secs = 2\n",
        &["--agent-token", TOKEN],
    )
    .unwrap();
    let proxy = Proxy::start(c.addr).await;
    let mut agent = Agent::start(
        &format!("ws://127.0.0.1:{}", proxy.port),
        TOKEN,
        "behind-proxy",
    )
    .unwrap();
    wait_clients(&c, "agent connected", PATIENCE, |l| {
        is_connected(l, "behind-proxy")
    })
    .await
    .unwrap();

    let mut body = job_body("behind-proxy", 4.0, "ust");
    body["wait"] = json!(false);
    let (status, job) = c.post("/analyses", &body).await.unwrap();
    assert_eq!(status.as_u16(), 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    wait_status(&c, id, 2, PATIENCE).await.unwrap();
    proxy.cut();
    let job = wait_ended(&c, id, PATIENCE).await.unwrap();
    assert_eq!(
        job["status"], 4,
        "the job completes after the reconnect: {job}"
    );
    assert_eq!(job["result"]["kind"], "ust", "{job}");
    assert!(
        proxy.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the agent reconnected"
    );
    // Stored once, acknowledged, and the agent forgot it: a later reconnect sends nothing again.
    let result = job["result"].clone();
    proxy.cut();
    wait_clients(&c, "agent back", PATIENCE, |l| {
        is_connected(l, "behind-proxy")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, again) = c.get(&format!("/jobs/{id}")).await.unwrap();
    assert_eq!(again["result"], result);
    assert_eq!(
        c.logs()
            .lines()
            .filter(|l| l.contains("job complete") && l.contains(&format!("job_id={id}")))
            .count(),
        1
    );
    agent.terminate().unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_is_a_clear_error_and_leaves_no_session() {
    require!(Req::Root, Req::Lttng);
    let _serial = SERIAL.lock().await;
    ensure_sessiond().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("tv-fault-relay-")
        .tempdir()
        .unwrap();
    let c = tracevisor_tests::jobs_support::start_with_local_agent(dir.path(), &[])
        .await
        .unwrap();
    let ports = lttng::free_ports(2).unwrap();
    let (s, _) = c
        .post("/relays", &json!({"hostname": "downrelay", "ipv4": "127.0.0.1", "ctrlport": ports[0], "dataport": ports[1]}))
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 201);
    let before = tracevisor_tests::jobs_support::session_names().unwrap();
    let mut body = job_body("localhost", 1.0, "ust");
    body["relay"] = json!("downrelay");
    let (status, job) = c.post("/analyses", &body).await.unwrap();
    assert_eq!(status.as_u16(), 502, "{job}");
    // lttng 2.13 accepts `create --set-url` and fails at the next command that needs the relay.
    let step = job["error"]["step"].as_str().unwrap();
    assert!(
        ["create", "enable-event", "add-context", "start"].contains(&step),
        "{job}"
    );
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host localhost")
            && message.contains(&format!("lttng-relayd at 127.0.0.1:{}", ports[0])),
        "{message}"
    );
    // Through liblttng-ctl the session daemon finishes destroying the session after the job.
    let gone = tracevisor_tests::agents::eventually(
        "no session left",
        std::time::Duration::from_secs(10),
        || {
            tracevisor_tests::jobs_support::session_names()
                .is_ok_and(|after| after.iter().all(|s| before.contains(s)))
        },
    )
    .await
    .is_ok();
    let after = tracevisor_tests::jobs_support::session_names().unwrap();
    assert!(gone, "no session left: {after:?}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_session_daemon_is_a_clear_error() {
    require!(Req::Root, Req::Lttng);
    let _serial = SERIAL.lock().await;
    ensure_sessiond().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("tv-fault-sessiond-")
        .tempdir()
        .unwrap();
    let c = tracevisor_tests::jobs_support::start_with_local_agent(dir.path(), &[])
        .await
        .unwrap();
    // Stop the root session daemon (the test restarts it whatever happens).
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ = ensure_sessiond();
        }
    }
    let _restart = Restart;
    let _ = lttng::run_tool("pkill", &["-x", "lttng-sessiond"], Duration::from_secs(10));
    for _ in 0..100 {
        if lttng::run_tool("pgrep", &["-x", "lttng-sessiond"], Duration::from_secs(5))
            .is_ok_and(|o| !o.status.success())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, job) = c
        .post("/analyses", &job_body("localhost", 1.0, "ust"))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 502, "{job}");
    assert_eq!(job["error"]["step"], "create", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host localhost") && message.to_lowercase().contains("session daemon"),
        "{message}"
    );
    // The coordinator and the agent are still there.
    let (s, _) = c.get("/clients").await.unwrap();
    assert_eq!(s.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_is_a_503_and_nothing_is_corrupted() {
    require!(Req::Root);
    let _serial = SERIAL.lock().await;
    let mount = tempfile::Builder::new()
        .prefix("tv-fault-disk-")
        .tempdir()
        .unwrap();
    let path = mount.path().to_str().unwrap().to_owned();
    let out = lttng::run_tool(
        "mount",
        &["-t", "tmpfs", "-o", "size=8m", "tmpfs", &path],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.status.success(), "mount tmpfs: {}", out.stderr);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = lttng::run_tool("umount", &["-l", &self.0], Duration::from_secs(10));
        }
    }
    let _unmount = Unmount(path.clone());
    let data = mount.path().join("data");
    let mut c = Coordinator::start(&data, &[]).unwrap();
    let (s, _) = c
        .post(
            "/relays",
            &json!({"hostname": "before", "ipv4": "10.0.0.1"}),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 201);
    // Fill the disk.
    let filler = mount.path().join("filler");
    let _ = lttng::run_tool(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=1M",
            "count=64",
        ],
        Duration::from_secs(30),
    );
    let mut acked = vec!["before".to_owned()];
    let mut refused = 0;
    let mut attempted: Vec<String> = Vec::new();
    for i in 0..50 {
        let hostname = format!("full-{i}");
        let (s, body) = c
            .post(
                "/relays",
                &json!({"hostname": hostname, "ipv4": "10.0.0.1"}),
            )
            .await
            .unwrap();
        match s.as_u16() {
            201 => acked.push(hostname),
            503 => {
                refused += 1;
                attempted.push(hostname.clone());
                let error = body["error"].as_str().unwrap();
                assert!(
                    error.contains("No space left on device") || error.contains("did not answer"),
                    "{body}"
                );
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "the full disk refused writes");
    let (s, _) = c.get("/relays").await.unwrap();
    assert_eq!(s.as_u16(), 200, "reads keep working");
    std::fs::remove_file(&filler).unwrap();
    let (s, _) = c
        .post("/relays", &json!({"hostname": "after", "ipv4": "10.0.0.1"}))
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 201, "writes work again once there is room");
    acked.push("after".into());
    c.kill9().unwrap();
    let c = Coordinator::start(&data, &[]).unwrap();
    let (_, list) = c.get("/relays").await.unwrap();
    let stored: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    for name in &acked {
        assert!(
            stored.contains(&name.as_str()),
            "acknowledged {name} lost: {stored:?}"
        );
    }
    // A refused write may have reached the log before the disk filled (the client was told it
    // failed; it is whole): nothing else is stored, and every record is complete.
    for name in &stored {
        assert!(
            acked.iter().chain(&attempted).any(|a| a == name),
            "unexpected {name}: {stored:?}"
        );
    }
    for record in list.as_array().unwrap() {
        assert_eq!(
            (record["ipv4"].as_str(), record["ctrlport"].as_u64()),
            (Some("10.0.0.1"), Some(5342)),
            "{record}"
        );
    }
}

tracevisor_tests::through_both_lttng_controls!(
    a_cut_link_delivers_the_result_after_the_reconnect_exactly_once,
    a_relay_that_is_down_is_a_clear_error_and_leaves_no_session,
    a_stopped_session_daemon_is_a_clear_error,
);
