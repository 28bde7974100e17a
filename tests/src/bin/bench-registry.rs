//! Registry benchmark: 64 concurrent HTTP clients against the real coordinator, read and write mixes.
//!
//! Each mix runs twice. Closed loop: every client sends its next request as soon as the last is
//! answered, which finds the maximum throughput (latency there is mostly queueing: clients /
//! throughput). Open loop: requests are sent on a fixed schedule at the target rate (`--read-rate`,
//! `--write-rate`), and each latency is measured from the time the request was due, so a stall
//! counts against every request it delays (no coordinated omission).
//!
//! Run: `cargo run --release -p tracevisor-tests --bin bench-registry -- [--seconds N] [--clients N] [--read-rate R] [--write-rate W] [--backends embedded,server]`
//! (`server`: a SurrealDB server, this crate's `surrealdb-server`, reached over ws:// by a
//! cluster member; `embedded`: the default SurrealKV in the data directory).
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tracevisor_tests::coordinator::Coordinator;

/// One request: method, path, body and the expected status.
type Request = (Method, String, Option<serde_json::Value>, StatusCode);

struct Mix {
    name: &'static str,
    /// Picks the request for iteration `i` of client `c`.
    pick: fn(client: u64, i: u64, seeded: u64) -> Request,
}

fn read_mix(_c: u64, i: u64, seeded: u64) -> Request {
    match i % 4 {
        0 => (Method::GET, "/relays".into(), None, StatusCode::OK),
        1 => (Method::GET, "/clients".into(), None, StatusCode::OK),
        _ => (
            Method::GET,
            format!("/clients/{}", 1 + (i * 7919) % seeded),
            None,
            StatusCode::OK,
        ),
    }
}

fn write_mix(c: u64, i: u64, _seeded: u64) -> Request {
    // Each client cycles POST, PUT, DELETE on its own hostnames; the id is filled in at run time.
    let host = format!("w{c}-{}", i / 3);
    match i % 3 {
        0 => (
            Method::POST,
            "/relays".into(),
            Some(json!({"hostname": host, "ipv4": "10.9.0.1"})),
            StatusCode::CREATED,
        ),
        1 => (
            Method::PUT,
            "/relays/{id}".into(),
            Some(json!({"ipv4": "10.9.0.2", "ctrlport": 6000})),
            StatusCode::OK,
        ),
        _ => (Method::DELETE, "/relays/{id}".into(), None, StatusCode::OK),
    }
}

struct Figures {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn run_mix(
    c: &Coordinator,
    mix: &Mix,
    clients: u64,
    seconds: u64,
    seeded: u64,
    rate: Option<f64>,
) -> Figures {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize)
        .build()
        .unwrap_or_default();
    let base = c.api("");
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let http = http.clone();
        let base = base.clone();
        let errors = errors.clone();
        let pick = mix.pick;
        // Open loop: this client's requests are due every `interval`, staggered across clients.
        let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        let mut due =
            start + interval.map_or(Duration::ZERO, |i| i * client as u32 / clients as u32);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last_id = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                if interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                    if due >= deadline {
                        break;
                    }
                }
                let (method, path, body, expected) = pick(client, i, seeded);
                let path = path.replace("{id}", &last_id.to_string());
                let mut rb = http.request(method, format!("{base}{path}"));
                if let Some(b) = &body {
                    rb = rb.json(b);
                }
                // Latency counts from when the request was due (open loop) or sent (closed).
                let t0 = if interval.is_some() {
                    due
                } else {
                    Instant::now()
                };
                if let Some(interval) = interval {
                    due += interval;
                }
                let ok = match rb.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.bytes().await.unwrap_or_default();
                        if status == StatusCode::CREATED {
                            last_id = serde_json::from_slice::<serde_json::Value>(&text)
                                .ok()
                                .and_then(|v| v["id"].as_u64())
                                .unwrap_or(0);
                        }
                        if status != expected {
                            eprintln!("unexpected {status}: {}", String::from_utf8_lossy(&text));
                        }
                        status == expected
                    }
                    Err(e) => {
                        eprintln!("request error: {e}");
                        false
                    }
                };
                latencies.push(t0.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        requests: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: all.last().copied().unwrap_or_default(),
    }
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
    let seconds = flag("--seconds", 10);
    let clients = flag("--clients", 64);
    let (read_rate, write_rate) = (flag("--read-rate", 5000), flag("--write-rate", 1000));
    // Side by side in one run: the embedded default, then a SurrealDB server (this crate's
    // `surrealdb-server`, in memory, over ws://, as a cluster member signs in to it).
    let backends: Vec<String> = args
        .iter()
        .position(|a| a == "--backends")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| vec!["embedded".into(), "server".into()]);
    println!("| database | mix | load | requests | req/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for backend in &backends {
        let dir = tempfile::Builder::new().prefix("tv-bench-").tempdir()?;
        let (embedded, server);
        let c: &Coordinator = match backend.as_str() {
            "embedded" => {
                embedded = Coordinator::start(dir.path(), &[])?;
                &embedded
            }
            "server" => {
                let setup = tracevisor_tests::cluster::ClusterSetup::new()?;
                let member = setup.member(&[])?;
                server = (setup, member);
                &server.1.coordinator
            }
            other => anyhow::bail!("--backends takes embedded and/or server, not {other:?}"),
        };
        run_backend(c, backend, seconds, clients, read_rate, write_rate).await?;
    }
    Ok(())
}

async fn run_backend(
    c: &Coordinator,
    backend: &str,
    seconds: u64,
    clients: u64,
    read_rate: u64,
    write_rate: u64,
) -> Result<()> {
    let seeded = 200u64;
    for i in 0..seeded {
        c.post(
            "/clients",
            &json!({"hostname": format!("seed-{i}"), "ipv4": "10.0.0.1"}),
        )
        .await?;
    }
    for i in 0..20 {
        c.post(
            "/relays",
            &json!({"hostname": format!("relay-{i}"), "ipv4": "10.0.0.2"}),
        )
        .await?;
    }
    eprintln!(
        "registry benchmark ({backend}): {clients} concurrent clients, {seconds} s per mix, coordinator {}",
        c.addr
    );
    let read = Mix {
        name: "read (GET lists and records)",
        pick: read_mix,
    };
    let write = Mix {
        name: "write (POST/PUT/DELETE)",
        pick: write_mix,
    };
    for (mix, rate) in [
        (&read, None),
        (&read, Some(read_rate)),
        (&write, None),
        (&write, Some(write_rate)),
    ] {
        let f = run_mix(c, mix, clients, seconds, seeded, rate.map(|r| r as f64)).await;
        let load = match rate {
            Some(r) => format!("open loop, {r} req/s due"),
            None => "closed loop".to_owned(),
        };
        println!(
            "| {backend} | {} | {load} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            mix.name,
            f.requests,
            f.requests as f64 / f.elapsed.as_secs_f64(),
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3,
            f.errors
        );
    }
    Ok(())
}
