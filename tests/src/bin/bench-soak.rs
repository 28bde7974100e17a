//! Soak: thousands of agent reconnects and hundreds of trace jobs against one coordinator,
//! printing its open file descriptors and resident memory before and after (they must stay
//! flat). Needs root and lttng-sessiond for the jobs.
//!
//! Resident memory is split into the storage engine's memtable arena (bounded by
//! `db_memtable_mib`: it fills as writes land and empties when flushed) and everything else.
//!
//! Run: `$CARGO_TARGET_DIR/release/bench-soak [--jobs N] [--reconnects N] [--rounds R] [--memtable-mib M]`
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tracevisor_tests::agents::{hub_url, RawLink};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::{lttng, procfs};

const TOKEN: &str = "soak-agent-token-0123456789abcdef";

fn fds(pid: u32) -> usize {
    procfs::open_fds(pid).unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    procfs::rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

async fn reconnects(url: &str, n: usize) -> Result<usize> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (gate, url) = (gate.clone(), url.to_owned());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let name = format!("soak-{}", i % 64);
            let mut link = RawLink::agent(&url, TOKEN, &name).await.ok()?;
            // 64 hostnames, each reconnecting many times (replacing its own earlier link).
            link.hello(&name).await.ok()?;
            Some(())
        });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        ok += usize::from(matches!(done, Ok(Some(()))));
    }
    Ok(ok)
}

async fn jobs(c: &Coordinator, n: usize) -> Result<(usize, usize)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let url = c.api("/analyses");
    for _ in 0..n {
        let (gate, url) = (gate.clone(), url.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let body =
                json!({"host": "localhost", "duration": 0.05, "type": "ust", "username": "root"});
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .ok()?;
            let job: serde_json::Value = resp.json().await.ok()?;
            Some(job["status"] == 4)
        });
    }
    let (mut complete, mut failed) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(true)) => complete += 1,
            _ => failed += 1,
        }
    }
    Ok((complete, failed))
}

fn memtable_rss_mib(pid: u32, memtable_mib: u64) -> f64 {
    procfs::memtable_rss_kib(pid, memtable_mib).unwrap_or(0) as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n_jobs, n_reconnects) = (flag("--jobs", 300), flag("--reconnects", 5000));
    let rounds = flag("--rounds", 5).max(1);
    let memtable_mib = flag("--memtable-mib", 32) as u64;
    lttng::ensure_sessiond()?;
    let dir = tempfile::Builder::new().prefix("tv-soak-").tempdir()?;
    let c = Coordinator::start_with_config(
        dir.path(),
        &format!("db_memtable_mib = {memtable_mib}\n"),
        &[LOCAL_AGENT, "--agent-token", TOKEN],
    )?;
    c.wait_log("agent connected", Duration::from_secs(60))?;
    let pid = c.pid();
    let url = hub_url(c.addr, false);
    // Warm up (allocator arenas, first job, first links) before the baseline.
    jobs(&c, 4).await?;
    reconnects(&url, 200).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sample = || {
        let (rss, memtable) = (rss_mib(pid), memtable_rss_mib(pid, memtable_mib));
        (fds(pid), rss, memtable, rss - memtable)
    };
    println!(
        "soak: {n_reconnects} agent reconnects and {n_jobs} ust jobs in {rounds} rounds, memtable {memtable_mib} MiB"
    );
    println!("| after | reconnects registered | jobs complete | open fds | RSS MiB | memtable arena MiB | RSS without memtable MiB |");
    println!("|---|---|---|---|---|---|---|");
    let row = |label: &str,
               links: usize,
               done: usize,
               (fd, rss, memtable, rest): (usize, f64, f64, f64)| {
        println!("| {label} | {links} | {done} | {fd} | {rss:.1} | {memtable:.1} | {rest:.1} |");
    };
    let first = sample();
    row("warm-up", 0, 0, first);
    let t = Instant::now();
    let (mut links_total, mut complete_total, mut failed_total) = (0, 0, 0);
    let mut last = first;
    for round in 1..=rounds {
        let (reconnect_job, job_run) = tokio::join!(
            reconnects(&url, n_reconnects / rounds),
            jobs(&c, n_jobs / rounds)
        );
        links_total += reconnect_job.context("reconnects")?;
        let (complete, failed) = job_run.context("jobs")?;
        complete_total += complete;
        failed_total += failed;
        // Let closed links and finished jobs settle before sampling.
        tokio::time::sleep(Duration::from_secs(3)).await;
        last = sample();
        row(&format!("round {round}"), links_total, complete_total, last);
    }
    println!(
        "{links_total} of {n_reconnects} reconnects registered, {complete_total} jobs complete, {failed_total} failed, in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "change from warm-up: fds {:+}, RSS {:+.1} MiB, memtable arena {:+.1} MiB, RSS without memtable {:+.1} MiB",
        last.0 as i64 - first.0 as i64,
        last.1 - first.1,
        last.2 - first.2,
        last.3 - first.3
    );
    let leftovers: Vec<String> = lttng::list_sessions()?
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.ends_with("-localhost") && n.starts_with("tracevisor-"))
        .collect();
    println!("tracevisor sessions left on localhost: {}", leftovers.len());
    Ok(())
}
