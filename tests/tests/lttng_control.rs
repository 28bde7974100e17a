//! How an agent picks its LTTng back end (liblttng-ctl or the `lttng` CLI) when the library is
//! not the session daemon's version, or is missing. The trace tests themselves run through both
//! back ends (`through_both_lttng_controls!` in trace_jobs, trace_fetch, faults, fleet, ...).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracevisor_tests::agents::{client, hub_url, is_connected, wait_clients, Agent};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{job_body, post_analyses, TraceCleanup, COMPLETE, PATIENCE};
use tracevisor_tests::lttng::{self, ensure_sessiond};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

use tracevisor_tests::block_on as run;

const TOKEN: &str = "lttng-control-test-agent-token";

/// The host's liblttng-ctl, as the dynamic loader finds it.
fn system_library() -> PathBuf {
    let out = Command::new("ldconfig").arg("-p").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("liblttng-ctl.so.0 "))
        .and_then(|l| l.rsplit("=> ").next())
        .map(|p| PathBuf::from(p.trim()))
        .expect("liblttng-ctl.so.0 in ldconfig -p (apt-get install liblttng-ctl0)")
}

/// A library that passes for liblttng-ctl 2.14 on this 2.13 host: it defines the function
/// 2.14 added (`lttng_get_kernel_tracer_status`) and takes every other one from the real
/// library it depends on, as a 2.14 library installed next to a 2.13 session daemon would
/// look to the agent.
fn library_of_another_version(dir: &Path) -> PathBuf {
    let source = dir.join("shim.c");
    std::fs::write(
        &source,
        "int lttng_get_kernel_tracer_status(void *status) { (void) status; return -1; }\n",
    )
    .unwrap();
    let shim = dir.join("liblttng-ctl-2.14-shim.so");
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,--no-as-needed", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg(system_library())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    shim
}

async fn lttng_control_of(c: &Coordinator, hostname: &str) -> String {
    let list = wait_clients(c, hostname, PATIENCE, |l| is_connected(l, hostname))
        .await
        .unwrap();
    client(&list, hostname).unwrap()["agent"]["capabilities"]["lttng_control"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_library_that_is_not_the_session_daemons_version_falls_back_to_the_cli_with_a_log_line() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = tracevisor_tests::temp_dir("tv-lttng-control-");
        let shim = library_of_another_version(dir.path());
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        // Asked for the library explicitly: it loads (2.14 is a version the agent drives), but
        // the session daemon is 2.13, so the steps go through the CLI.
        let agent = Agent::start_with(
            &hub_url(c.addr, false),
            TOKEN,
            "mismatch",
            &[
                "--lttng-control",
                "library",
                "--lttng-ctl-library",
                shim.to_str().unwrap(),
            ],
        )
        .unwrap();
        let said = lttng_control_of(&c, "mismatch").await;
        assert!(
            said.starts_with("lttng CLI (liblttng-ctl 2.14 does not match lttng-sessiond 2."),
            "{said}"
        );
        assert!(
            agent.has_log_line(|l| l.contains(
                "liblttng-ctl is not used with this session daemon: LTTng is driven through the lttng CLI"
            )),
            "{}",
            agent.logs()
        );
        // A job runs, through the CLI, and completes.
        let answer = post_analyses(&c, &job_body("mismatch", 0.5, "ust"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(job["status"], COMPLETE, "{job}");
        assert_eq!(job["result"]["kind"], "ust", "{job}");
        if let Some(trace) = job["result"]["trace_path"].as_str() {
            traces.add(Path::new(trace));
        }
        // One log line per session daemon, not one per step.
        assert_eq!(
            agent.log_count("liblttng-ctl is not used with this session daemon"),
            1,
            "{}",
            agent.logs()
        );
    });
}

#[test]
fn a_missing_library_stops_an_agent_told_to_use_it_and_an_auto_agent_uses_the_cli() {
    require!(Req::Root, Req::Lttng);
    ensure_sessiond().unwrap();
    run(async {
        let dir = tracevisor_tests::temp_dir("tv-lttng-control-");
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let url = hub_url(c.addr, false);
        let missing = "/nonexistent/liblttng-ctl.so.0";
        // `library`: the agent does not start, and says why.
        let mut told = Agent::start_with(
            &url,
            TOKEN,
            "told",
            &["--lttng-control", "library", "--lttng-ctl-library", missing],
        )
        .unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        while told.is_running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !told.is_running(),
            "an agent without its library keeps running"
        );
        let logs = told.logs();
        assert!(
            logs.contains("lttng_control = \"library\" but liblttng-ctl cannot be used")
                && logs.contains(missing),
            "{logs}"
        );
        // `auto`: it starts, with the CLI, and says so.
        let auto = Agent::start_with(
            &url,
            TOKEN,
            "auto",
            &["--lttng-control", "auto", "--lttng-ctl-library", missing],
        )
        .unwrap();
        assert_eq!(lttng_control_of(&c, "auto").await, "lttng CLI");
        assert!(
            auto.has_log_line(|l| l.contains("liblttng-ctl cannot be used")),
            "{}",
            auto.logs()
        );
    });
}

/// `tracesd ssh-job` of another version than the coordinator's declines, doing nothing (not
/// even reading the job), so the coordinator runs the job one command per step.
#[test]
fn ssh_job_of_another_version_declines_without_reading_the_job() {
    let out = Command::new(tracevisor_tests::coordinator::binary("tracesd").unwrap())
        .args([
            "ssh-job",
            "--expect-version",
            "999.0.0",
            "--host",
            "h",
            "--trace-root",
            "/nonexistent/root",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = line["declined"]["reason"].as_str().unwrap();
    assert!(reason.contains("999.0.0"), "{line}");
    assert!(!Path::new("/nonexistent/root").exists());
}
