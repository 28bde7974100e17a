//! End-to-end overhead of a `ust` job (response time minus duration), side by side in one run,
//! interleaved: the bare `lttng` command sequence run locally (what today's CLI path costs),
//! an agent driving LTTng through liblttng-ctl, an agent driving it through the CLI, the SSH
//! fallback one command per step, and the SSH fallback in one round trip (the host's own
//! `tracesd ssh-job`). Needs root, lttng-sessiond, sshd and an instrumented program (built
//! here, ticking every millisecond).
//!
//! Run: `cargo run --release -p tracevisor-tests --bin bench-jobs -- [--runs N] [--duration S]`
//! (build the release binaries first: `cargo build --release --workspace --bins`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tracevisor_tests::agents::{hub_url, Agent};
use tracevisor_tests::coordinator::{binary, Coordinator, LOCAL_AGENT};

const TOKEN: &str = "bench-jobs-agent-token";
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
    // The built-in agent drives LTTng through liblttng-ctl; a tracesd process through the CLI.
    // SSH jobs run one command per step here (ssh_tracesd = ""), in one round trip on the
    // second coordinator (ssh_tracesd = the tracesd built with this benchmark).
    let c = Coordinator::start_with_config(
        dir.path(),
        "ssh_tracesd = \"\"\n",
        &[
            LOCAL_AGENT,
            "--lttng-control",
            "library",
            "--agent-token",
            TOKEN,
        ],
    )?;
    c.wait_log("agent connected", Duration::from_secs(30))?;
    let _cli_agent = Agent::start_with(
        &hub_url(c.addr, false),
        TOKEN,
        "agent-cli",
        &["--lttng-control", "cli"],
    )?;
    let tracesd = binary("tracesd")?;
    let dir2 = tempfile::Builder::new()
        .prefix("tv-bench-jobs-")
        .tempdir()?;
    let c2 = Coordinator::start_with_config(
        dir2.path(),
        &format!("ssh_tracesd = \"{}\"\n", tracesd.display()),
        &[],
    )?;
    let (_, keys2) = c2.get("/ssh").await?;
    let key2 = keys2["keys"][0].as_str().context("no ssh key")?.to_owned();
    let (_, keys) = c.get("/ssh").await?;
    let key = keys["keys"][0].as_str().context("no ssh key")?.to_owned();
    let server = sshd::Sshd::start(&key)?;
    let server2 = sshd::Sshd::start(&key2)?;
    c.post("/clients", &json!({"hostname": "sshhost", "ipv4": "127.0.0.1", "sshport": server.port(), "sshuser": "root"}))
        .await?;
    c2.post("/clients", &json!({"hostname": "sshhost", "ipv4": "127.0.0.1", "sshport": server2.port(), "sshuser": "root"}))
        .await?;
    tracevisor_tests::agents::wait_clients(&c, "agent-cli", Duration::from_secs(30), |l| {
        tracevisor_tests::agents::is_connected(l, "agent-cli")
    })
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
    job(&c, "agent-cli", duration).await?;
    job(&c, "sshhost", duration).await?;
    job(&c2, "sshhost", duration).await?;
    bare(Duration::from_secs_f64(duration), dir.path(), 999)?;
    let (mut library, mut cli, mut ssh, mut ssh_one, mut floor, mut connect) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for i in 0..runs {
        library.push(job(&c, "localhost", duration).await?);
        cli.push(job(&c, "agent-cli", duration).await?);
        ssh.push(job(&c, "sshhost", duration).await?);
        ssh_one.push(job(&c2, "sshhost", duration).await?);
        floor.push(bare(Duration::from_secs_f64(duration), dir.path(), i)?);
        connect.push(ssh_connect(i)?);
    }
    let (l, a, s, o, f, k) = (
        median(library),
        median(cli),
        median(ssh),
        median(ssh_one),
        median(floor),
        median(connect),
    );
    let x = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("ust job overhead (response time minus the {duration} s duration), median of {runs} runs, interleaved");
    println!("| path | overhead ms | ratio |");
    println!("|---|---|---|");
    println!(
        "| bare local lttng CLI sequence (create ... stop, destroy, babeltrace2) | {:.0} | 1.00x |",
        ms(f)
    );
    println!(
        "| agent, liblttng-ctl | {:.0} | {:.2}x of the CLI sequence |",
        ms(l),
        x(l, f)
    );
    println!(
        "| agent, lttng CLI | {:.0} | {:.2}x of the CLI sequence |",
        ms(a),
        x(a, f)
    );
    println!("| one ssh connection set-up (ssh true) | {:.0} | |", ms(k));
    println!(
        "| SSH, one command per step | {:.0} | {:.2}x of (ssh set-up + agent liblttng-ctl) |",
        ms(s),
        x(s, k + l)
    );
    println!(
        "| SSH, one round trip (host's tracesd) | {:.0} | {:.2}x of (ssh set-up + agent liblttng-ctl) |",
        ms(o),
        x(o, k + l)
    );
    Ok(())
}
