//! Reliability under faults and over time: `kill -9` of the coordinator in the middle of 1,000
//! concurrent registry writes loses no acknowledged write and leaves nothing half-written;
//! reconnects leak no descriptor or link; storage memory and job history stay bounded.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tracevisor_tests::coordinator::Coordinator;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_1000_concurrent_writes_loses_no_acknowledged_write() {
    let dir = tempfile::Builder::new()
        .prefix("tv-rel-")
        .tempdir()
        .unwrap();
    let mut c = Coordinator::start(dir.path(), &[]).unwrap();
    let base = c.api("");
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (http, base, acked, done, gate) = (
            http.clone(),
            base.clone(),
            acked.clone(),
            done.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let hostname = format!("host-{i}");
            let body = json!({"hostname": hostname, "ipv4": "10.2.0.1", "sshport": 2200 + i % 100, "sshuser": "tracer"});
            if let Ok(resp) = http.post(format!("{base}/clients")).json(&body).send().await {
                if resp.status() == StatusCode::CREATED {
                    if let Ok(record) = resp.json::<Json>().await {
                        acked.lock().unwrap().insert(hostname, record["id"].as_u64().unwrap());
                    }
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    // Kill in the middle of the writes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.kill9().unwrap();
    let in_flight_at_kill = 1000 - done.load(Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300 && acked.len() < 1000,
        "the kill must land mid-way: {} acked",
        acked.len()
    );

    let restart = Instant::now();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let (status, list) = c.get("/clients").await.unwrap();
    let restart_time = restart.elapsed();
    assert_eq!(status, StatusCode::OK, "{list}");
    let stored: HashMap<String, Json> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["hostname"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    for (hostname, id) in &acked {
        let record = stored
            .get(hostname)
            .unwrap_or_else(|| panic!("acknowledged {hostname} lost"));
        assert_eq!(record["id"].as_u64(), Some(*id), "{record}");
    }
    // Nothing half-written: every stored record is whole, acknowledged or not.
    for record in stored.values() {
        let i: u64 = record["hostname"]
            .as_str()
            .unwrap()
            .trim_start_matches("host-")
            .parse()
            .unwrap();
        assert_eq!(record["ipv4"], "10.2.0.1", "{record}");
        assert_eq!(record["sshport"].as_u64(), Some(2200 + i % 100), "{record}");
        assert_eq!(record["sshuser"], "tracer", "{record}");
    }
    // Ids continue after the highest ever allocated.
    let (_, next) = c
        .post(
            "/clients",
            &json!({"hostname": "after-restart", "ipv4": "10.2.0.2"}),
        )
        .await
        .unwrap();
    let highest = stored
        .values()
        .map(|r| r["id"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    assert!(next["id"].as_u64().unwrap() > highest, "{next}");
    eprintln!(
        "FIGURES kill -9 mid-write: {} acknowledged, {} stored (unacknowledged writes that committed: {}), \
         {in_flight_at_kill} requests in flight at the kill, restart to first answer {:.2} s",
        acked.len(),
        stored.len(),
        stored.len() - acked.len(),
        restart_time.as_secs_f64()
    );
}

/// The embedded database's write buffer is the configured size, not SurrealKV's default (1 GiB
/// on a 24 GiB machine), and it is where writes land: the coordinator's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_memory_is_bounded_by_the_configuration() {
    use tracevisor_tests::procfs;
    let dir = tempfile::Builder::new()
        .prefix("tv-mem-")
        .tempdir()
        .unwrap();
    let c = Coordinator::start_with_config(
        dir.path(),
        "db_memtable_mib = 40\ndb_block_cache_mib = 8\n",
        &[],
    )
    .unwrap();
    let pid = c.pid();
    let arena_kib = 40 * 1024 + 4;
    let mappings = procfs::anon_mappings(pid).unwrap();
    assert_eq!(
        mappings.iter().filter(|m| m.size_kib == arena_kib).count(),
        1,
        "one memtable arena of the configured 40 MiB: {mappings:?}"
    );
    let huge: Vec<_> = mappings
        .iter()
        .filter(|m| m.size_kib >= 512 * 1024)
        .collect();
    assert!(huge.is_empty(), "no default-sized arena left: {huge:?}");

    let before = procfs::memtable_rss_kib(pid, 40).unwrap();
    for i in 0..300 {
        let label = "x".repeat(60);
        let body =
            json!({"hostname": format!("mem-{i}.{label}.{label}.{label}"), "ipv4": "10.1.2.3"});
        let (status, _) = c.post("/relays", &body).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
    }
    let after = procfs::memtable_rss_kib(pid, 40).unwrap();
    assert!(
        after >= before + 64,
        "writes land in the configured arena: {before} KiB then {after} KiB"
    );
}

/// Finished jobs are deleted once past `job_retention_secs`; a job still running is kept however
/// old. Two SSH jobs that need no LTTng: one to a closed port (fails at once), one to a port
/// that accepts and never speaks (runs until the SSH connect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_their_retention_running_ones_are_kept() {
    use tracevisor_tests::jobs_support::{get_job, job_body, list_jobs, post_analyses, wait_ended};
    let dir = tempfile::Builder::new()
        .prefix("tv-retention-")
        .tempdir()
        .unwrap();
    let c = Coordinator::start_with_config(
        dir.path(),
        "job_retention_secs = 1\nssh_connect_timeout_secs = 6\n",
        &[],
    )
    .unwrap();

    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    for (host, port) in [("closed", closed_port), ("silent", silent_port)] {
        let body = json!({"hostname": host, "ipv4": "127.0.0.1", "sshport": port});
        assert_eq!(
            c.post("/clients", &body).await.unwrap().0,
            StatusCode::CREATED
        );
    }

    let running = post_analyses(
        &c,
        &job_body("silent", 1.0, "ust"),
        &[("Prefer", "respond-async")],
    )
    .await
    .unwrap();
    assert_eq!(running.status, StatusCode::ACCEPTED, "{}", running.body);
    let running_id = running.job_id().unwrap();
    let failed = post_analyses(&c, &job_body("closed", 1.0, "ust"), &[])
        .await
        .unwrap();
    let failed_id = failed.job_id().unwrap();
    assert_eq!(failed.body["status"], -1, "{}", failed.body);
    assert_eq!(
        failed.body["error"]["step"], "ssh-connect",
        "{}",
        failed.body
    );

    // The failed job goes within a few pruning rounds; the running one stays meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = c.get(&format!("/jobs/{failed_id}")).await.unwrap();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "job {failed_id} never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = get_job(&c, running_id).await.unwrap();
    assert!(
        matches!(job["status"].as_i64(), Some(1..=3)),
        "still running, so kept: {job}"
    );
    let listed: Vec<u64> = list_jobs(&c, true)
        .await
        .unwrap()
        .iter()
        .filter_map(|j| j["jobid"].as_u64())
        .collect();
    assert!(
        listed.contains(&running_id) && !listed.contains(&failed_id),
        "{listed:?}"
    );
    assert!(c
        .logs()
        .contains("deleted finished jobs past their retention"));

    // Once it has failed too (SSH connect timeout), it goes as well.
    let ended = wait_ended(&c, running_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(ended["status"], -1, "{ended}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get(&format!("/jobs/{running_id}")).await.unwrap().0 != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "job {running_id} never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CI-sized soak (the long one is `bench-soak`): 1,000 agent reconnects (hello, then drop,
/// 32 at a time, 16 hostnames replacing their own links) leave no link open and no file
/// descriptor behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_leak_no_descriptor_and_no_link() {
    use tracevisor_tests::agents::{hub_url, RawLink};
    use tracevisor_tests::procfs;
    const TOKEN: &str = "reliability-agent-token";
    let dir = tempfile::Builder::new()
        .prefix("tv-leak-")
        .tempdir()
        .unwrap();
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let url = hub_url(c.addr, false);
    let reconnect = |n: usize| {
        let url = url.clone();
        async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::new();
            for i in 0..n {
                let (gate, url) = (gate.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let name = format!("leak-{}", i % 16);
                    let mut link = RawLink::agent(&url, TOKEN, &name).await.unwrap();
                    // A newer link for the same hostname may replace this one before its ack.
                    let _ = link.hello(&name).await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let settled = |what: &'static str| {
        let c = &c;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, s) = c.get("/status").await.unwrap();
                if s["agent_links_open"] == 0 && s["agents_connected"] == 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: links still open: {s}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Warm up: first links, first registrations, the database's first files.
    reconnect(100).await;
    settled("after the warm-up").await;
    let before = procfs::open_fds(c.pid()).unwrap();
    reconnect(1000).await;
    settled("after 1,000 reconnects").await;
    let after = procfs::open_fds(c.pid()).unwrap();
    assert!(
        after <= before,
        "file descriptors {before} before 1,000 reconnects, {after} after"
    );
    let (_, clients) = c.get("/clients").await.unwrap();
    assert_eq!(clients.as_array().unwrap().len(), 16, "{clients}");
}
