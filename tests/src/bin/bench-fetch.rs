//! Trace download throughput (`GET /jobs/{id}/trace`) through the agent link, against `cat` of
//! the same files, side by side in one run: a kept `ust` trace from a `tracesd` process, padded
//! with incompressible data to `--mib` MiB, fetched as plain tar, gzip and zstd. Needs root and
//! lttng-sessiond.
//!
//! Run: `cargo run --release -p tracevisor-tests --bin bench-fetch -- [--mib N] [--runs N]`
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tracevisor_tests::agents::{hub_url, is_connected, wait_clients, Agent};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::lttng;
use tracevisor_tests::procfs::{clock_ticks_per_second, cpu_ticks, rss_kib};

const TOKEN: &str = "bench-fetch-token";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// `cat` of every file under `dir` to /dev/null (one process per file, as `find -exec cat {} +`
/// batches them).
fn cat_all(dir: &Path) -> Result<Duration> {
    let t = Instant::now();
    let status = std::process::Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-exec", "cat", "{}", "+"])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("cat failed");
    }
    Ok(t.elapsed())
}

/// The files under `dir` read in 1 MiB blocks and written through one loopback TCP connection
/// to a reader that discards them: the cost of moving the bytes between two processes once (a
/// fetch moves them twice: agent to coordinator, coordinator to client).
fn tcp_copy(dir: &Path) -> Result<Duration> {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        std::io::copy(&mut socket, &mut std::io::sink())
    });
    let t = Instant::now();
    let mut socket = std::net::TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if entry.file_type()?.is_file() {
                let mut file = std::fs::File::open(entry.path())?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    socket.write_all(&buf[..n])?;
                }
            }
        }
    }
    drop(socket);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(t.elapsed())
}

/// Downloads the trace of job `id` with `accept`, discarding it; returns the time and bytes.
async fn fetch(c: &Coordinator, id: u64, accept: &str) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let mut resp = c
        .request(reqwest::Method::GET, &format!("/jobs/{id}/trace"))
        .header(reqwest::header::ACCEPT, accept)
        .timeout(Duration::from_secs(1800))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("fetch answered {}: {}", resp.status(), resp.text().await?);
    }
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        bytes += chunk.len() as u64;
    }
    Ok((t.elapsed(), bytes))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mib = flag("--mib", 512);
    let runs = flag("--runs", 3) as usize;
    lttng::ensure_sessiond()?;
    let _app =
        lttng::spawn_ust_app(&lttng::UstAppOptions::new(0).interval(Duration::from_millis(1)))?;
    let dir = tempfile::Builder::new()
        .prefix("tv-bench-fetch-")
        .tempdir()?;
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN])?;
    let agent = Agent::start_with(&hub_url(c.addr, false), TOKEN, "fetch1", &[])?;
    wait_clients(&c, "the agent", Duration::from_secs(60), |l| {
        is_connected(l, "fetch1")
    })
    .await?;
    let (status, job) = c
        .post(
            "/analyses",
            &json!({"host": "fetch1", "duration": 1, "type": "ust", "username": "root", "keep_trace": true}),
        )
        .await?;
    if job["status"] != 4 {
        bail!("job failed ({status}): {job}");
    }
    let id = job["id"].as_u64().context("job id")?;
    let trace =
        std::path::PathBuf::from(job["result"]["trace_path"].as_str().context("trace_path")?);
    tracevisor_tests::write_incompressible(&trace.join("padding"), mib)?;
    let size: u64 = walk_size(&trace)?;
    // Warm the page cache for both sides, then interleave.
    cat_all(&trace)?;
    fetch(&c, id, "application/x-tar").await?;
    let (mut cat, mut tar, mut gz, mut zst) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tcp = Vec::new();
    let mut sizes = (0, 0, 0);
    let rss_before = (rss_kib(c.pid())?, rss_kib(agent.pid())?);
    let pids = [c.pid(), agent.pid(), std::process::id()];
    let mut tar_cpu = [0u64; 3];
    for _ in 0..runs {
        cat.push(cat_all(&trace)?);
        tcp.push(tcp_copy(&trace)?);
        let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
        let (t, b) = fetch(&c, id, "application/x-tar").await?;
        for (i, p) in pids.iter().enumerate() {
            tar_cpu[i] += cpu_ticks(*p).unwrap_or(0).saturating_sub(before[i]);
        }
        tar.push(t);
        sizes.0 = b;
        let (t, b) = fetch(&c, id, "application/gzip").await?;
        gz.push(t);
        sizes.1 = b;
        let (t, b) = fetch(&c, id, "application/zstd").await?;
        zst.push(t);
        sizes.2 = b;
    }
    let rss_after = (rss_kib(c.pid())?, rss_kib(agent.pid())?);
    let mibs = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let (cat, tar, gz, zst) = (median(cat), median(tar), median(gz), median(zst));
    let tcp = median(tcp);
    println!(
        "trace download through the agent link: {:.0} MiB trace ({mib} MiB incompressible padding), median of {runs} interleaved runs, {} cores",
        size as f64 / (1 << 20) as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("| path | time s | MiB/s of trace | ratio to cat | bytes sent |");
    println!("|---|---|---|---|---|");
    println!(
        "| cat of the files (page cache) | {:.2} | {:.0} | 1.00x | |",
        cat.as_secs_f64(),
        mibs(cat)
    );
    println!(
        "| the files through one loopback TCP connection (one hop) | {:.2} | {:.0} | {:.2}x | |",
        tcp.as_secs_f64(),
        mibs(tcp),
        mibs(tcp) / mibs(cat)
    );
    for (name, d, bytes) in [
        ("fetch, plain tar", tar, sizes.0),
        ("fetch, gzip (fast)", gz, sizes.1),
        ("fetch, zstd (level 3)", zst, sizes.2),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2}x | {bytes} |",
            d.as_secs_f64(),
            mibs(d),
            mibs(d) / mibs(cat)
        );
    }
    let per_gib = |ticks: u64| {
        ticks as f64
            / clock_ticks_per_second() as f64
            / (runs as f64 * size as f64 / (1u64 << 30) as f64)
    };
    println!(
        "CPU per GiB fetched as plain tar: coordinator {:.2} s, tracesd {:.2} s, this client {:.2} s",
        per_gib(tar_cpu[0]),
        per_gib(tar_cpu[1]),
        per_gib(tar_cpu[2])
    );
    println!(
        "RSS coordinator {} -> {} MiB, tracesd {} -> {} MiB over the downloads",
        rss_before.0 / 1024,
        rss_after.0 / 1024,
        rss_before.1 / 1024,
        rss_after.1 / 1024
    );
    std::fs::remove_dir_all(&trace).ok();
    Ok(())
}

fn walk_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += walk_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}
