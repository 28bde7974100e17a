//! End-to-end overhead of a `ust` job (response time minus duration), three ways side by side in
//! one run: through the local agent, through the SSH fallback, and the bare `lttng` command
//! sequence run locally (the floor). Needs root, lttng-sessiond and sshd.
//!
//! Run: `cargo run --release -p tracevisor-tests --bin bench-jobs -- [--runs N] [--duration S]`
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::{lttng, sshd};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The bare sequence a user would type, run locally: the floor.
fn bare(duration: Duration, dir: &std::path::Path, i: usize) -> Result<Duration> {
    let name = format!("bench-bare-{}-{i}", std::process::id());
    let out = dir.join(&name);
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new("lttng")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("lttng {args:?} failed");
        }
        Ok(())
    };
    let t0 = Instant::now();
    run(&[
        "create",
        &name,
        "--output",
        out.to_str().unwrap_or_default(),
    ])?;
    run(&["enable-event", "-s", &name, "-u", "*"])?;
    run(&[
        "add-context",
        "-s",
        &name,
        "-u",
        "-t",
        "vpid",
        "-t",
        "procname",
    ])?;
    run(&["start", &name])?;
    std::thread::sleep(duration);
    run(&["stop", &name])?;
    run(&["destroy", &name])?;
    let status = Command::new("babeltrace2")
        .args(["--clock-seconds", "--no-delta"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("babeltrace2 failed");
    }
    Ok(t0.elapsed() - duration)
}

async fn job(c: &Coordinator, host: &str, duration: f64) -> Result<Duration> {
    let t0 = Instant::now();
    let (status, body) = c
        .post(
            "/analyses",
            &json!({"host": host, "duration": duration, "type": "ust", "username": "root"}),
        )
        .await?;
    let elapsed = t0.elapsed();
    if body["status"] != 4 {
        bail!("job on {host} failed ({status}): {body}");
    }
    Ok(elapsed - Duration::from_secs_f64(duration))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = flag("--runs", 7.0) as usize;
    let duration = flag("--duration", 1.0);
    lttng::ensure_sessiond()?;
    // An instrumented application ticking every millisecond, as on a real host.
    let _app =
        lttng::spawn_ust_app(&lttng::UstAppOptions::new(0).interval(Duration::from_millis(1)))?;
    let dir = tempfile::Builder::new()
        .prefix("tv-bench-jobs-")
        .tempdir()?;
    let c = Coordinator::start(dir.path(), &[LOCAL_AGENT])?;
    c.wait_log("agent connected", Duration::from_secs(30))?;
    let (_, keys) = c.get("/ssh").await?;
    let key = keys["keys"][0].as_str().context("no ssh key")?.to_owned();
    let server = sshd::Sshd::start(&key)?;
    c.post("/clients", &json!({"hostname": "sshhost", "ipv4": "127.0.0.1", "sshport": server.port(), "sshuser": "root"}))
        .await?;
    // One SSH connection set-up with the system client (the unit of the SSH target).
    let client_dir = tempfile::tempdir()?;
    let ssh_connect = |i: usize| -> Result<Duration> {
        let t0 = Instant::now();
        let status = Command::new("ssh")
            .args(["-i"])
            .arg(dir.path().join("ssh/id_ed25519"))
            .args([
                "-p",
                &server.port().to_string(),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                client_dir.path().join(format!("kh{i}")).display()
            ))
            .args(["root@127.0.0.1", "true"])
            .status()?;
        if !status.success() {
            bail!("ssh connect failed");
        }
        Ok(t0.elapsed())
    };
    // Warm-up: one of each.
    job(&c, "localhost", duration).await?;
    job(&c, "sshhost", duration).await?;
    bare(Duration::from_secs_f64(duration), dir.path(), 999)?;
    let (mut agent, mut ssh, mut floor, mut connect) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        agent.push(job(&c, "localhost", duration).await?);
        ssh.push(job(&c, "sshhost", duration).await?);
        floor.push(bare(Duration::from_secs_f64(duration), dir.path(), i)?);
        connect.push(ssh_connect(i)?);
    }
    let (a, s, f, k) = (median(agent), median(ssh), median(floor), median(connect));
    println!("ust job overhead (response time minus the {duration} s duration), median of {runs} runs, interleaved");
    println!("| path | overhead ms | ratio |");
    println!("|---|---|---|");
    println!(
        "| bare local lttng sequence (floor) | {:.0} | 1.00x of floor |",
        ms(f)
    );
    println!(
        "| through the agent | {:.0} | {:.2}x of floor |",
        ms(a),
        a.as_secs_f64() / f.as_secs_f64()
    );
    println!("| one ssh connection set-up (ssh true) | {:.0} | |", ms(k));
    println!(
        "| through the SSH fallback | {:.0} | {:.2}x of (ssh set-up + floor) |",
        ms(s),
        s.as_secs_f64() / (k + f).as_secs_f64()
    );
    Ok(())
}
