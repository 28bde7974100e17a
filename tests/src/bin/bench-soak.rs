//! Soak: thousands of agent reconnects and hundreds of trace jobs against one coordinator,
//! printing its open file descriptors and resident memory before and after (they must stay
//! flat). Needs root and lttng-sessiond for the jobs.
//!
//! Run: `$CARGO_TARGET_DIR/release/bench-soak [--jobs N] [--reconnects N]`
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tracevisor_tests::agents::{hub_url, RawLink};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::lttng;

const TOKEN: &str = "soak-agent-token-0123456789abcdef";

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn reconnects(url: &str, n: usize) -> Result<usize> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (gate, url) = (gate.clone(), url.to_owned());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let mut link = RawLink::connect(&url, TOKEN).await.ok()?;
            // 64 hostnames, each reconnecting many times (replacing its own earlier link).
            link.hello(&format!("soak-{}", i % 64)).await.ok()?;
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
    lttng::ensure_sessiond()?;
    let dir = tempfile::Builder::new().prefix("tv-soak-").tempdir()?;
    let c = Coordinator::start(dir.path(), &[LOCAL_AGENT, "--agent-token", TOKEN])?;
    c.wait_log("agent connected", Duration::from_secs(60))?;
    let pid = c.pid();
    let url = hub_url(c.addr, false);
    // Warm up (allocator arenas, first job, first links) before the baseline.
    jobs(&c, 4).await?;
    reconnects(&url, 200).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fd0, rss0) = (fds(pid), rss_mib(pid));
    let t = Instant::now();
    let (reconnect_job, job_run) = tokio::join!(reconnects(&url, n_reconnects), jobs(&c, n_jobs));
    let ok_links = reconnect_job.context("reconnects")?;
    let (complete, failed) = job_run.context("jobs")?;
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (fd1, rss1) = (fds(pid), rss_mib(pid));
    println!("soak: {n_reconnects} agent reconnects ({ok_links} registered) and {n_jobs} ust jobs ({complete} complete, {failed} failed) in {:.0} s", elapsed.as_secs_f64());
    println!("| coordinator | before | after | change |");
    println!("|---|---|---|---|");
    println!(
        "| open file descriptors | {fd0} | {fd1} | {:+} |",
        fd1 as i64 - fd0 as i64
    );
    println!(
        "| resident memory MiB | {rss0:.1} | {rss1:.1} | {:+.1} |",
        rss1 - rss0
    );
    let leftovers: Vec<String> = lttng::list_sessions()?
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.ends_with("-localhost") && n.starts_with("tracevisor-"))
        .collect();
    println!("tracevisor sessions left on localhost: {}", leftovers.len());
    Ok(())
}
