//! Fleet traces against the real coordinator: one analysis on several real agents (one killed
//! mid-trace), an unknown host and, for a kernel profile, hosts without the kernel tracer; every
//! host gets its own outcome, and the event stream arrives in order and ends.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tracevisor_protocol::{Capabilities, Hello, JobOutcome, Message};
use tracevisor_tests::agents::{
    hub_url, is_connected, simulated_hello, wait_clients, Agent, RawLink, Received,
};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::lttng::{self, ensure_sessiond};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const TOKEN: &str = "fleet-test-agent-token-0123456789";
const PATIENCE: Duration = Duration::from_secs(120);

/// Reads `GET /jobs/{id}/events` until the stream ends: (event name, data) in arrival order.
async fn events(c: &Coordinator, id: u64) -> Vec<(String, Json)> {
    let resp = reqwest::Client::new()
        .get(c.api(&format!("/jobs/{id}/events")))
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Json>(v).unwrap());
            }
        }
        if let (Some(n), Some(d)) = (name, data) {
            out.push((n, d));
        }
    }
    out
}

fn entry<'a>(job: &'a Json, host: &str) -> &'a Json {
    job["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host"] == host)
        .unwrap()
}

/// Destroys the sessions a killed agent left behind (its restart would; the test stops here).
fn destroy_sessions_of(hostname: &str) {
    for s in lttng::list_sessions().unwrap_or_default() {
        if s.name.starts_with("tracevisor-") && s.name.ends_with(&format!("-{hostname}")) {
            let _ = lttng::lttng(&["destroy", &s.name]);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_gets_its_own_outcome_and_the_stream_ends() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    ensure_sessiond().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("tv-fleet-")
        .tempdir()
        .unwrap();
    let c = Coordinator::start_with_config(
        dir.path(),
        "heartbeat_interval_secs = 1\n",
        &[LOCAL_AGENT, "--agent-token", TOKEN],
    )
    .unwrap();
    let url = hub_url(c.addr, false);
    let _fa = Agent::start(&url, TOKEN, "fleet-a").unwrap();
    let mut fb = Agent::start(&url, TOKEN, "fleet-b").unwrap();
    wait_clients(&c, "all agents connected", PATIENCE, |l| {
        ["localhost", "fleet-a", "fleet-b"]
            .iter()
            .all(|h| is_connected(l, h))
    })
    .await
    .unwrap();

    let body = json!({
        "hosts": ["localhost", "fleet-a", "fleet-b", "unknown-host.invalid"],
        "duration": 4, "type": "ust", "username": "root", "wait": false,
    });
    let (status, fleet) = c.post("/analyses", &body).await.unwrap();
    assert_eq!(status.as_u16(), 202, "{fleet}");
    assert_eq!(fleet["kind"], "fleet");
    let id = fleet["id"].as_u64().unwrap();
    let stream = {
        let c_events = events(&c, id);
        // Kill one agent while its trace runs (the fleet is at status 2 once every child started).
        let kill = async {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let (_, job) = c.get(&format!("/jobs/{id}")).await.unwrap();
                if job["status"] == 2 {
                    break;
                }
                assert!(Instant::now() < deadline, "the fleet never ran: {job}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            fb.kill9().unwrap();
        };
        let (stream, ()) = tokio::join!(c_events, kill);
        stream
    };
    destroy_sessions_of("fleet-b");

    // The stream: in order, a host event per host, and it ends with the final job.
    let names: Vec<&str> = stream.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"status"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "done").count(), 1);
    let hosts_seen: Vec<&str> = stream
        .iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, d)| d["host"].as_str().unwrap())
        .collect();
    let mut sorted = hosts_seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["fleet-a", "fleet-b", "localhost", "unknown-host.invalid"],
        "{names:?}"
    );
    let statuses: Vec<i64> = stream
        .iter()
        .filter(|(n, _)| n == "status")
        .map(|(_, d)| d["status"].as_i64().unwrap())
        .collect();
    // The first status is the one current when the stream opened; then each change, in order.
    let rank = |s: i64| if s < 0 { 99 } else { s };
    assert_eq!(statuses.last(), Some(&-1), "{statuses:?}");
    assert!(
        statuses.windows(2).all(|w| rank(w[0]) < rank(w[1])),
        "status events in order: {statuses:?}"
    );
    let fractions: Vec<f64> = stream
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, d)| d["fraction"].as_f64().unwrap())
        .collect();
    assert!(
        !fractions.is_empty() && fractions.windows(2).all(|w| w[0] <= w[1]),
        "{fractions:?}"
    );

    // Every host its own outcome; the healthy hosts' results are complete.
    let done = &stream.last().unwrap().1;
    let (_, job) = c.get(&format!("/jobs/{id}")).await.unwrap();
    assert_eq!(done["status"], job["status"]);
    assert_eq!(job["status"], -1, "{job}");
    for healthy in ["localhost", "fleet-a"] {
        let e = entry(&job, healthy);
        assert_eq!(e["outcome"], "complete", "{e}");
        assert_eq!(e["result"]["kind"], "ust", "{e}");
        assert_eq!(e["via"], "agent", "{e}");
        // A child is readable on its own too.
        let (status, child) = c.get(&format!("/jobs/{}", e["jobid"])).await.unwrap();
        assert_eq!(
            (status.as_u16(), &child["parent"]),
            (200, &json!(id)),
            "{child}"
        );
    }
    let killed = entry(&job, "fleet-b");
    assert_eq!(killed["outcome"], "error", "{killed}");
    assert_eq!(killed["error"]["step"], "agent-lost", "{killed}");
    assert!(
        killed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fleet-b"),
        "{killed}"
    );
    let unknown = entry(&job, "unknown-host.invalid");
    assert_eq!(unknown["outcome"], "error", "{unknown}");
    assert_eq!(unknown["error"]["step"], "ssh-connect", "{unknown}");
    assert_eq!(job["outcomes"]["complete"], 2);
    assert_eq!(job["outcomes"]["error"], 2);
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2 of 4 hosts") && message.contains("fleet-b"),
        "{message}"
    );
}

/// A host that reports the kernel tracer, simulated with a raw link since no host here has
/// lttng-modules: it answers the trace request at once with a LAMI-shaped result.
async fn kernel_host(url: &str, hostname: &str) -> tokio::task::JoinHandle<Vec<u64>> {
    let mut link = RawLink::agent(url, TOKEN, hostname).await.unwrap();
    let hello = Hello {
        capabilities: Capabilities {
            kernel_tracer: true,
            sessiond_running: true,
            ..Capabilities::default()
        },
        ..simulated_hello(hostname)
    };
    link.send(Message::Hello(hello)).await.unwrap();
    tokio::spawn(async move {
        let mut started = Vec::new();
        loop {
            match link.recv(PATIENCE).await {
                Received::Frame(Message::Heartbeat { seq }) => {
                    link.send(Message::HeartbeatAck { seq }).await.unwrap();
                }
                Received::Frame(Message::StartJob { job_id, spec }) => {
                    assert!(
                        spec.kernel_events.contains(&"sched_switch".to_string()),
                        "{spec:?}"
                    );
                    started.push(job_id);
                    let result =
                        json!({"kind": "lami", "analyses": [], "host": "simulated"}).to_string();
                    link.send(Message::JobResult {
                        job_id,
                        outcome: JobOutcome::Ok {
                            result_json: result,
                        },
                    })
                    .await
                    .unwrap();
                }
                Received::Frame(Message::ResultAck { .. }) => return started,
                Received::Frame(_) | Received::Other(_) => {}
                other => panic!("simulated kernel host: {other:?}"),
            }
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_without_the_kernel_tracer_are_skipped_for_a_kernel_profile() {
    require!(Req::Root, Req::Lttng, Req::NoKernelTracer);
    ensure_sessiond().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("tv-fleet-k-")
        .tempdir()
        .unwrap();
    let c = Coordinator::start(dir.path(), &[LOCAL_AGENT, "--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let simulated = kernel_host(&url, "kernel-host").await;
    wait_clients(&c, "agents connected", PATIENCE, |l| {
        is_connected(l, "localhost") && is_connected(l, "kernel-host")
    })
    .await
    .unwrap();
    // Every connected agent, for the kernel `cpu` profile.
    let body =
        json!({"hosts": {"agents": "connected"}, "duration": 1, "type": "cpu", "username": "root"});
    let (status, job) = c.post("/analyses", &body).await.unwrap();
    assert_eq!(status.as_u16(), 207, "some hosts did not complete: {job}");
    let skipped = entry(&job, "localhost");
    assert_eq!(skipped["outcome"], "skipped", "{skipped}");
    assert!(
        skipped["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kernel_tracer"),
        "{skipped}"
    );
    let ran = entry(&job, "kernel-host");
    assert_eq!(ran["outcome"], "complete", "{ran}");
    assert_eq!(ran["result"]["kind"], "lami", "{ran}");
    assert_eq!(
        simulated.await.unwrap(),
        vec![ran["jobid"].as_u64().unwrap()],
        "one trace request"
    );
    assert!(
        skipped["jobid"].is_null(),
        "a skipped host gets no job: {skipped}"
    );

    // The selector can require the capability instead: the host is then not even tried.
    let body = json!({"hosts": {"agents": "connected", "require": ["kernel_tracer"]}, "duration": 1,
        "type": "ust", "username": "root"});
    let (status, job) = c.post("/analyses", &body).await.unwrap();
    assert_eq!(status.as_u16(), 207, "{job}");
    assert_eq!(entry(&job, "localhost")["outcome"], "skipped");
    // Bad selectors are refused naming the field.
    for bad in [
        json!({"agents": "all"}),
        json!({"agents": "connected", "require": ["warp_drive"]}),
        json!([]),
        json!("x"),
    ] {
        let (status, answer) = c
            .post(
                "/analyses",
                &json!({"hosts": bad, "duration": 1, "type": "ust", "username": "root"}),
            )
            .await
            .unwrap();
        assert_eq!(
            (status.as_u16(), answer["field"].as_str()),
            (422, Some("hosts")),
            "{answer}"
        );
    }
}

/// A fleet record holds at most 24 MiB of results, so its write always fits the storage
/// engine's write buffer: four simulated hosts answer with 10 MiB each (40 MiB, more than the
/// 32 MiB buffer), the fleet completes, every host keeps its outcome, and the results past the
/// budget are replaced by a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_results_past_the_record_budget_are_left_out_not_lost_with_the_job() {
    let dir = tempfile::Builder::new()
        .prefix("tv-fleet-big-")
        .tempdir()
        .unwrap();
    // The smallest write buffer allowed: without the budget, 30 MiB of results would not fit.
    let c = Coordinator::start_with_config(
        dir.path(),
        "db_memtable_mib = 32\n",
        &["--agent-token", TOKEN],
    )
    .unwrap();
    let url = hub_url(c.addr, false);
    let mut hosts = Vec::new();
    for name in ["big-1", "big-2", "big-3", "big-4"] {
        let mut link = RawLink::agent(&url, TOKEN, name).await.unwrap();
        link.hello(name).await.unwrap();
        hosts.push(tokio::spawn(async move {
            loop {
                match link.recv(PATIENCE).await {
                    Received::Frame(Message::Heartbeat { seq }) => {
                        link.send(Message::HeartbeatAck { seq }).await.unwrap();
                    }
                    Received::Frame(Message::StartJob { job_id, .. }) => {
                        let result = json!({"kind": "ust", "blob": "x".repeat(10 << 20)});
                        link.send(Message::JobResult {
                            job_id,
                            outcome: JobOutcome::Ok {
                                result_json: result.to_string(),
                            },
                        })
                        .await
                        .unwrap();
                    }
                    Received::Frame(Message::ResultAck { .. }) => return,
                    Received::Frame(_) | Received::Other(_) => {}
                    other => panic!("simulated host: {other:?}"),
                }
            }
        }));
    }
    let body = json!({"hosts": ["big-1", "big-2", "big-3", "big-4"], "duration": 0.01,
        "type": "ust", "username": "root"});
    let (status, job) = c.post("/analyses", &body).await.unwrap();
    for host in hosts {
        host.await.unwrap();
    }
    assert_eq!(status.as_u16(), 200, "{}", job["error"]);
    assert_eq!(job["status"], 4);
    let (kept, omitted): (Vec<&Json>, Vec<&Json>) = job["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|e| assert_eq!(e["outcome"], "complete", "{}", e["host"]))
        .partition(|e| e["result"]["blob"].is_string());
    assert_eq!((kept.len(), omitted.len()), (2, 2));
    let note = omitted[0]["result"]["omitted"].as_str().unwrap();
    assert!(note.contains("at most 24 MiB"), "{note}");
    // The stored record reads back the same.
    let id = job["id"].as_u64().unwrap();
    let (status, stored) = c.get(&format!("/jobs/{id}")).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(stored["status"], 4);
    assert_eq!(stored["hosts"], job["hosts"]);
}

tracevisor_tests::through_both_lttng_controls!(
    every_host_gets_its_own_outcome_and_the_stream_ends,
    hosts_without_the_kernel_tracer_are_skipped_for_a_kernel_profile,
);
