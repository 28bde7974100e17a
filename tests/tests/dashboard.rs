//! The web dashboard in a real browser: Debian's headless Chromium driven by Selenium
//! (`tests/browser/dashboard_e2e.py`) against the real coordinator binary with a REST token,
//! its built-in local agent, a second `tracesd`, a hostile agent, a root lttng-sessiond and the
//! lttng-ust test program. The script signs in, watches the fleet live, edits the registry,
//! traces, cancels, runs a fleet job with an offline host, sees the kernel tracer's error, signs
//! out, and checks that no request left the origin and the console stayed clean. A kernel
//! analysis cannot record here (no lttng-modules), so LAMI tables and charts are shown through
//! an analysis type of the coordinator's configuration whose program is a two-line wrapper
//! running the real `lttng-cputop-mi` on a kernel trace the test generated (python3-babeltrace's
//! CTF writer): the real analysis output, through the real job pipeline. Screenshots of
//! every page are kept under `$CARGO_TARGET_TMPDIR/dashboard-screenshots` for review.
//!
//! The HTTP-level rules of the dashboard (cookie flags, CSRF, headers, live-view bounds) are
//! checked without a browser in `dashboard_http`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracevisor_protocol::{Capabilities, Hello, Message, PROTOCOL_VERSION};
use tracevisor_tests::agents::{agent_token, hub_url, is_connected, wait_clients, Agent, RawLink};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::jobs_support::PATIENCE;
use tracevisor_tests::lttng::{
    ensure_sessiond, gen_kernel_trace, gen_kernel_trace_example, spawn_ust_app, ust_exclusive,
    UstAppOptions,
};
use tracevisor_tests::require;
use tracevisor_tests::skip::{find_program, system_python, Req};

use tracevisor_tests::block_on as run;

const TOKEN: &str = "dashboard-test-token-0123456789abcdef";
/// What the hostile host says its version is: markup that would run if shown as HTML.
const HOSTILE_VERSION: &str = "<img src=x onerror=alert(1)>";
/// A process name in a traced host's result, as markup (16 bytes at most, like a kernel comm).
const HOSTILE_COMM: &str = "<b>logger</b>";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard_e2e.py")
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

/// A configuration with the analysis type `cpu-synthetic`: a userspace trace is recorded as
/// for `ust`, then the "analysis" is `lttng-cputop-mi` of the generated kernel trace `ktrace`,
/// through a wrapper named like the real program (so its tables get their titles and units).
fn synthetic_cpu_config(dir: &Path, ktrace: &Path) -> String {
    let real = find_program("lttng-cputop-mi").unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("lttng-cputop-mi");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# The trace this job recorded is userspace; analyse the generated kernel trace.\nexec {} {}\n",
            real.display(),
            ktrace.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[analyses.cpu-synthetic]\n\
         description = \"CPU usage per process and per CPU of a generated kernel trace (lttng-cputop)\"\n\
         userspace_events = [\"tracevisor_test:*\"]\n\
         commands = [[\"{}\", \"{{trace}}\"]]\n\
         summary = \"lami\"\n",
        wrapper.display()
    )
}

/// Registers `hostname` as a lying agent whose version and kernel-tracer error are markup,
/// then leaves (the fleet keeps showing what it said).
async fn hostile_agent(c: &Coordinator, hostname: &str) {
    let url = hub_url(c.addr, false);
    let token = agent_token(&c.data_dir).unwrap();
    let mut link = RawLink::agent(&url, &token, hostname).await.unwrap();
    link.send(Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        hostname: hostname.to_owned(),
        addresses: Vec::new(),
        agent_version: HOSTILE_VERSION.into(),
        capabilities: Capabilities {
            kernel_tracer_error: Some("<script>alert(2)</script>".into()),
            ..Capabilities::default()
        },
        running_jobs: Vec::new(),
    }))
    .await
    .unwrap();
    link.recv_until("hello-ack", |m| matches!(m, Message::HelloAck { .. }))
        .await
        .unwrap();
}

fn an_operator_signs_in_watches_the_fleet_edits_the_registry_and_traces_in_chromium() {
    require!(
        Req::Root,
        Req::Lttng,
        Req::UstToolchain,
        Req::Babeltrace2,
        Req::Analyses,
        Req::Browser
    );
    let _ust = ust_exclusive();
    ensure_sessiond().unwrap();
    let dir = tracevisor_tests::temp_dir("tv-dashboard-");
    // The traced host's own data can be hostile too: a process named as markup.
    let mut spec = gen_kernel_trace_example().unwrap();
    for process in &mut spec.processes {
        if process.comm == "logger" {
            process.comm = HOSTILE_COMM.into();
        }
    }
    assert!(spec.processes.iter().any(|p| p.comm == HOSTILE_COMM));
    let ktrace = gen_kernel_trace(&dir.path().join("ktrace"), &spec).unwrap();
    let config = synthetic_cpu_config(dir.path(), &ktrace);
    let mut c =
        Coordinator::start_with_config(dir.path(), &config, &[LOCAL_AGENT, "--token", TOKEN])
            .unwrap();
    c.token = Some(TOKEN.into());
    let mut web2 = None;
    run(async {
        wait_clients(&c, "the local agent", PATIENCE, |l| {
            is_connected(l, "localhost")
        })
        .await
        .unwrap();
        hostile_agent(&c, "evil-1").await;
        let token = agent_token(&c.data_dir).unwrap();
        web2 = Some(Agent::start(&hub_url(c.addr, false), &token, "web-2").unwrap());
        wait_clients(&c, "web-2", PATIENCE, |l| is_connected(l, "web-2"))
            .await
            .unwrap();
    });
    let out = screenshots();
    let _ = std::fs::remove_dir_all(&out);
    // `localhost`, not 127.0.0.1: the origin the operator types; both are loopback names.
    let url = format!("http://localhost:{}", c.addr.port());
    let mut browser = Command::new(system_python())
        .arg(script())
        .args(["--url", &url, "--token", TOKEN, "--out"])
        .arg(&out)
        .args([
            "--hostile-hostname",
            "evil-1",
            "--hostile-version",
            HOSTILE_VERSION,
            "--hostile-comm",
            HOSTILE_COMM,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut to_script = browser.stdin.take().unwrap();
    let from_script = BufReader::new(browser.stdout.take().unwrap());
    // The script's whole run is bounded: a hung browser fails the test instead of CI.
    let deadline = Instant::now() + Duration::from_secs(600);
    let pid = browser.id();
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return false;
            }
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        true
    });
    let mut ust_app = None;
    let mut passed = false;
    let mut steps = Vec::new();
    for line in from_script.lines().map_while(Result::ok) {
        println!("[browser] {line}");
        if let Some(step) = line.strip_prefix("STEP ") {
            steps.push(step.to_owned());
        }
        if line == "E2E PASSED" {
            passed = true;
        }
        let Some(command) = line.strip_prefix("HARNESS ") else {
            continue;
        };
        let answer = match command {
            "ust-app-start" => {
                // Ticks every millisecond until stopped, so the 4 s trace holds thousands.
                match spawn_ust_app(
                    &UstAppOptions::new(0)
                        .interval(Duration::from_millis(1))
                        .without_done(),
                ) {
                    Ok(mut app) => {
                        app.wait_ready(Duration::from_secs(30)).unwrap();
                        ust_app = Some(app);
                        "ok".to_owned()
                    }
                    Err(e) => format!("error {e:#}"),
                }
            }
            "agent-stop web-2" => {
                let mut agent = web2.take().unwrap();
                agent.kill9().unwrap();
                "ok".to_owned()
            }
            other => format!("error unknown command {other:?}"),
        };
        writeln!(to_script, "{answer}").unwrap();
        to_script.flush().unwrap();
    }
    let status = browser.wait().unwrap();
    let killed = watchdog.join().unwrap();
    if let Some(app) = ust_app {
        let _ = app.stop(Duration::from_secs(10));
    }
    let shots: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    println!("screenshots in {}: {}", out.display(), shots.len());
    assert!(
        !killed,
        "the browser scenario ran past 10 minutes; steps: {steps:?}"
    );
    assert!(
        status.success() && passed,
        "the browser scenario failed ({status}) after steps {steps:?}; see its output above and the screenshots in {}",
        out.display()
    );
    assert!(shots.len() >= 13, "a screenshot of each page: {shots:?}");
    // The sign-in with a wrong token was logged, the token never.
    assert!(c.logs().contains("dashboard sign-in with a wrong token"));
    assert!(!c.logs().contains(TOKEN));
}

tracevisor_tests::through_both_lttng_controls!(
    an_operator_signs_in_watches_the_fleet_edits_the_registry_and_traces_in_chromium,
);
