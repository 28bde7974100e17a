//! Trace jobs end to end with the real components: the coordinator binary, its built-in local
//! agent and `tracesd` processes, a root lttng-sessiond, lttng-relayd, sshd and the lttng-ust
//! test program (issue 4, "Tests with the real components").
//!
//! Every test that runs an agent or an LTTng session holds [`lttng::ust_exclusive`]: with
//! per-UID buffers a session enabling `*` records every running copy of the test program, and
//! a session enabling its tick releases a `--wait-enabled` program early. The tests without
//! agents or sessions (analysis of a generated trace, bad input) run in parallel with the
//! others. Other test processes on the machine are told apart by the program's `tag` field and
//! by session names (`tracevisor-<coordinator instance>-<job id>-<hostname>`: sessions of the
//! same job id and host left by other coordinators are not this job's). Nothing asserts how
//! long something took; waits poll with generous bounds.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;
use tracevisor_lttng::lifecycle::{run_job, LocalExecutor};
use tracevisor_protocol::{JobSpec, Summary, TraceLocator, TraceOutput};
use tracevisor_tests::agents::{eventually, hub_url, is_connected, wait_clients, Agent};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{
    check_ust_trace, fetch_trace, get_job, is_job_session, job_body, list_jobs, new_host_sessions,
    new_job_sessions, parse_session, post_analyses, result_trace, session_alive, session_gone,
    session_names, single_subdir, start_with_local_agent, unique_tag, wait_ended, wait_status,
    Submitted, TraceCleanup, AGENT_TRACE_ROOT, COMPLETE, FAILED, PATIENCE, SSH_TRACE_ROOT,
    TRACE_RUNNING,
};
use tracevisor_tests::lttng::{
    self, ensure_sessiond, gen_kernel_trace, lami_number, lami_process_row, lami_table,
    lami_tables, reference, spawn_ust_app, KernelTraceSpec, Relayd, UstAppOptions, UST_TICK_EVENT,
};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;
use tracevisor_tests::sshd::Sshd;

const TOKEN: &str = "trace-jobs-test-agent-token";

/// Ticks the test program emits in one traced run.
const TICKS: u64 = 500;
/// Trace duration of the counted `ust` jobs: the program emits its ticks within a few
/// milliseconds of the session start, this leaves a loaded machine ample margin.
const UST_SECS: f64 = 4.0;

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-jobs-")
}

use tracevisor_tests::block_on as run;

/// The entries of the agent trace directory.
fn trace_dirs() -> Vec<String> {
    std::fs::read_dir(AGENT_TRACE_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that `trace` is `root/<session of job id on host>`; returns the session name.
fn assert_local_trace(trace: &Path, root: &str, id: u64, host: &str) -> String {
    assert_eq!(trace.parent(), Some(Path::new(root)), "{}", trace.display());
    let name = trace.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        is_job_session(&name, id, host),
        "{name} is not the session of job {id} on {host}"
    );
    name
}

/// The single session of job `id` on `host` while it runs (`before`: the sessions that
/// existed before the job was submitted).
fn running_session(id: u64, host: &str, before: &[String]) -> lttng::SessionInfo {
    let mut sessions = new_job_sessions(id, host, before).unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "sessions of job {id} on {host}: {sessions:?}"
    );
    sessions.remove(0)
}

/// A finished counted `ust` run: the answer of the synchronous POST and what was emitted.
struct UstRun {
    answer: Submitted,
    tag: u64,
    app_pid: u32,
}

/// Starts the test program (registered with the session daemon, emitting nothing yet), then
/// `POST /analyses` with `body` (synchronous). Once the job's session is started (the job
/// shows status 2 in `/list`) the program is released and emits [`TICKS`] ticks at once,
/// well inside the traced window, and exits.
async fn counted_ust_job(c: &Coordinator, body: &Json) -> UstRun {
    let tag = unique_tag();
    let go_dir = tempfile::tempdir().unwrap();
    let go = go_dir.path().join("go");
    let mut app = spawn_ust_app(
        &UstAppOptions::new(TICKS)
            .tag(tag)
            .wait_file(&go)
            .wait_enabled(),
    )
    .unwrap();
    app.wait_ready(PATIENCE).unwrap();
    let app_pid = app.pid();
    let host = body["host"].as_str().unwrap().to_owned();
    let seen = list_jobs(c, true)
        .await
        .unwrap()
        .iter()
        .filter_map(|j| j["jobid"].as_u64())
        .max()
        .unwrap_or(0);
    let release = async {
        // The new job of `host`: released at status 2, given up when it ends first.
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let jobs = list_jobs(c, true).await.unwrap();
            let job = jobs
                .iter()
                .find(|j| j["jobid"].as_u64() > Some(seen) && j["host"] == host.as_str());
            match job.and_then(|j| j["status"].as_i64()) {
                Some(TRACE_RUNNING) => break,
                Some(COMPLETE | FAILED) => return None,
                _ if std::time::Instant::now() > deadline => return None,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        std::fs::write(&go, b"go").unwrap();
        Some(
            tokio::task::spawn_blocking(move || app.wait(PATIENCE))
                .await
                .unwrap()
                .unwrap(),
        )
    };
    let (answer, emitted) = tokio::join!(post_analyses(c, body, &[]), release);
    let answer = answer.unwrap();
    assert_eq!(
        emitted,
        Some(TICKS),
        "the program emitted what it was asked to during the job: {}",
        answer.body
    );
    UstRun {
        answer,
        tag,
        app_pid,
    }
}

/// Checks a completed `ust` job answer against the trace it names: the summary's tick count
/// equals what the program emitted (and what babeltrace2 reads), its total and processes
/// agree with the trace. Returns the result.
fn check_ust_answer(run: &UstRun, via: &str, host: &str, traces: &mut TraceCleanup) -> Json {
    let job = &run.answer.body;
    traces.add_result(&job["result"]);
    assert_eq!(run.answer.status.as_u16(), 200, "{job}");
    assert_eq!(job["status"], COMPLETE, "{job}");
    assert_eq!(job["via"], via, "{job}");
    assert_eq!(job["host"], host, "{job}");
    assert_eq!(job["type"], "ust", "{job}");
    assert!(job["error"].is_null(), "{job}");
    for stamp in ["created", "started", "finished"] {
        assert!(
            job[stamp].as_str().is_some_and(|s| !s.is_empty()),
            "{stamp} in {job}"
        );
    }
    assert_eq!(job["id"], job["jobid"]);
    let result = &job["result"];
    assert_eq!(result["kind"], "ust", "{result}");
    let trace = result_trace(result).unwrap();
    let check = check_ust_trace(&trace, run.tag, run.app_pid).unwrap();
    // Every tick of this run was recorded exactly once...
    assert_eq!(check.our_ticks, TICKS, "{check:?}");
    assert_eq!(check.our_seqs, (0..TICKS).collect::<Vec<_>>());
    assert_eq!(check.our_done, 1, "{check:?}");
    // ...and the stored summary counts exactly those, plus the ticks of any other copy of
    // the program another test process ran meanwhile (per-UID buffers record them too; they
    // carry another tag, and there are none when this file runs alone).
    let foreign = check.all_ticks - check.our_ticks;
    if foreign > 0 {
        eprintln!("note: {foreign} ticks of another tracevisor_test program in the trace");
    }
    assert_eq!(
        result["events"][UST_TICK_EVENT].as_u64(),
        Some(TICKS + foreign),
        "{result}"
    );
    assert!(result["events"]["tracevisor_test:done"].as_u64() >= Some(1));
    assert_eq!(result["total"].as_u64(), Some(check.total), "{result}");
    let counted: u64 = result["events"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, check.total);
    // One entry per process (vpid), named after its busiest thread, with events per thread
    // name: the program's ticks and done event come from its main thread "ust-app", its state
    // dump from liblttng-ust's listener thread "ust-app-ust".
    let ours: Vec<&Json> = result["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["vpid"].as_u64() == Some(u64::from(run.app_pid)))
        .collect();
    assert_eq!(ours.len(), 1, "one entry per process: {result}");
    let process = ours[0];
    assert_eq!(process["procname"], "ust-app", "{process}");
    assert_eq!(
        process["threads"]["ust-app"].as_u64(),
        Some(TICKS + 1),
        "{process}"
    );
    assert_eq!(
        process["events"].as_u64(),
        Some(check.pid_events),
        "{process} {check:?}"
    );
    let (begin, end) = (
        result["begin"].as_str().unwrap().parse::<f64>().unwrap(),
        result["end"].as_str().unwrap().parse::<f64>().unwrap(),
    );
    assert!(begin <= end, "{result}");
    result.clone()
}

// ------------------------------------------------------------------------------------------
// 1. ust through the agent

fn ust_job_through_the_agent_counts_exactly_what_the_program_emitted() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &[]).await.unwrap();
        let run = counted_ust_job(&c, &job_body("localhost", UST_SECS, "ust")).await;
        let result = check_ust_answer(&run, "agent", "localhost", &mut traces);
        let id = run.answer.job_id().unwrap();
        assert_eq!(
            run.answer.header("content-location").as_deref(),
            Some(format!("/trace/api/v1.0/jobs/{id}").as_str())
        );
        assert_eq!(result["host"], "localhost");
        let trace = result_trace(&result).unwrap();
        let session = assert_local_trace(&trace, AGENT_TRACE_ROOT, id, "localhost");
        // The stored job is the one the POST returned.
        let stored = get_job(&c, id).await.unwrap();
        assert_eq!(stored["result"], result);
        assert_eq!(stored["status"], COMPLETE);
        // The session was destroyed.
        assert!(session_gone(&session).await, "{session} destroyed");
        assert_eq!(result["trace_kept"], true, "{result}");
        assert!(trace.is_dir(), "kept: {}", trace.display());
        // The kept trace comes back through the agent link, every event in it.
        assert_eq!(result["kept_trace"]["via"], "agent", "{result}");
        assert_eq!(result["kept_trace"]["path"], trace.to_str().unwrap());
        assert_fetched_trace(&c, id, &trace, &run).await;
        // The CLI downloads it as zstd and unpacks it.
        let out = tracevisor_tests::temp_dir("tv-cli-fetch-");
        let cli = std::process::Command::new(
            tracevisor_tests::coordinator::binary("tracevisor").unwrap(),
        )
        .args(["fetch", &id.to_string(), "--zstd", "--server", &c.url("")])
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        let unpacked = out.path().join(trace.file_name().unwrap());
        assert_eq!(
            String::from_utf8_lossy(&cli.stdout).trim(),
            unpacked.display().to_string()
        );
        let check = check_ust_trace(&unpacked, run.tag, run.app_pid).unwrap();
        assert_eq!(check.our_seqs, (0..TICKS).collect::<Vec<_>>());
        // Once the trace is gone from the host, the fetch says so (410), with when and why.
        std::fs::remove_dir_all(&trace).unwrap();
        let gone = fetch_trace(&c, id, "application/gzip").await.unwrap();
        assert_eq!(gone.status.as_u16(), 410, "{}", gone.error);
        let message = gone.error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("no longer on localhost") && message.contains("trace_retention_secs"),
            "{}",
            gone.error
        );
        // Without keep_trace (the default), the trace is deleted once analysed.
        assert_trace_deleted_after_analysis(&c, "localhost", &mut traces).await;
    });
}

/// Fetches job `id`'s kept trace (gzip) and checks that babeltrace2 reads, in the unpacked
/// folder named like the trace directory, exactly the ticks the program emitted.
async fn assert_fetched_trace(c: &Coordinator, id: u64, trace: &Path, run: &UstRun) {
    let fetched = fetch_trace(c, id, "application/gzip").await.unwrap();
    assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
    assert!(fetched.complete, "the download ended cleanly");
    assert_eq!(fetched.headers["content-type"], "application/gzip");
    let size: u64 = fetched.headers["x-trace-bytes"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 0);
    let out = fetched.unpack().unwrap();
    let unpacked = single_subdir(&out).unwrap();
    assert_eq!(unpacked.file_name(), trace.file_name());
    let check = check_ust_trace(&unpacked, run.tag, run.app_pid).unwrap();
    assert_eq!(check.our_ticks, TICKS, "{check:?}");
    assert_eq!(check.our_seqs, (0..TICKS).collect::<Vec<_>>());
    assert_eq!(check.our_done, 1, "{check:?}");
}

/// A `ust` job on `host` without `keep_trace`: it completes, its result counts the events,
/// and its trace directory is gone.
async fn assert_trace_deleted_after_analysis(
    c: &Coordinator,
    host: &str,
    traces: &mut TraceCleanup,
) {
    let mut body = job_body(host, UST_SECS, "ust");
    body.as_object_mut().unwrap().remove("keep_trace");
    let answer = post_analyses(c, &body, &[]).await.unwrap();
    let job = &answer.body;
    traces.add_result(&job["result"]);
    assert_eq!(answer.status.as_u16(), 200, "{job}");
    let result = &job["result"];
    assert_eq!(result["trace_kept"], false, "{result}");
    assert!(result["trace_delete_error"].is_null(), "{result}");
    let trace = result_trace(result).unwrap();
    assert!(
        !trace.exists(),
        "{} left after its analysis: {result}",
        trace.display()
    );
    assert!(result["kept_trace"].is_null(), "{result}");
    let id = answer.job_id().unwrap();
    let fetched = fetch_trace(c, id, "application/gzip").await.unwrap();
    assert_eq!(fetched.status.as_u16(), 410, "{}", fetched.error);
    assert!(
        fetched.error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("keep_trace"),
        "{}",
        fetched.error
    );
}

// ------------------------------------------------------------------------------------------
// 2. ust through the agent, streamed to a relay and analysed on the relay host

fn ust_job_streamed_to_a_relay_is_analysed_on_the_relay_host() {
    require!(
        Req::Root,
        Req::Lttng,
        Req::Relayd,
        Req::UstToolchain,
        Req::Babeltrace2
    );
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let relayd = Relayd::start().unwrap();
        // Agents read traces only under their trace root and the relay output directories
        // their own configuration names: the coordinator's built-in agent takes
        // `relay_output_dirs`, the relay host's agent `relay_roots`.
        let roots = toml::Value::Array(vec![toml::Value::String(
            relayd.output_dir().display().to_string(),
        )]);
        let coordinator_config = dir.path().join("relay-roots.toml");
        std::fs::write(
            &coordinator_config,
            format!("relay_output_dirs = {roots}\n"),
        )
        .unwrap();
        let agent_config = dir.path().join("tracesd-relay1.toml");
        std::fs::write(&agent_config, format!("relay_roots = {roots}\n")).unwrap();
        let c = start_with_local_agent(
            dir.path(),
            &[
                "--agent-token",
                TOKEN,
                "--config",
                coordinator_config.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        // The relay host runs an agent of its own (the realistic deployment); it analyses.
        let _relay_agent = Agent::start_with(
            &hub_url(c.addr, false),
            TOKEN,
            "relay1",
            &["--config", agent_config.to_str().unwrap()],
        )
        .unwrap();
        wait_clients(&c, "the relay host's agent", PATIENCE, |l| {
            is_connected(l, "relay1") && is_connected(l, "localhost")
        })
        .await
        .unwrap();
        let output_dir = relayd.output_dir().display().to_string();
        let (status, relay) = c
            .post(
                "/relays",
                &json!({
                    "hostname": "relay1",
                    "ipv4": "127.0.0.1",
                    "ctrlport": relayd.ctrl_port(),
                    "dataport": relayd.data_port(),
                    "output_dir": output_dir,
                }),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{relay}");
        // The relay record keeps output_dir: analyses search there for the trace.
        assert_eq!(
            relay["output_dir"], output_dir,
            "the relay record keeps its output_dir: {relay}"
        );

        // Default analysis host: the relay.
        let mut body = job_body("localhost", UST_SECS, "ust");
        body["relay"] = json!("relay1");
        let run = counted_ust_job(&c, &body).await;
        let result = check_ust_answer(&run, "agent", "localhost", &mut traces);
        let id = run.answer.job_id().unwrap();
        let job = &run.answer.body;
        assert_eq!(job["relay"], "relay1", "{job}");
        assert_eq!(job["analysis"], "relay1", "{job}");
        assert_eq!(job["analysis_via"], "agent", "{job}");
        assert_eq!(
            result["host"], "relay1",
            "analysed by the relay host's agent: {result}"
        );
        assert_eq!(result["recorded_on"], "localhost", "{result}");
        let trace = result_trace(&result).unwrap();
        assert!(
            trace.starts_with(relayd.output_dir()),
            "{} is not under the relay output {output_dir}",
            trace.display()
        );
        // OUTPUT/<traced host's hostname>/<session>-<YYYYMMDD-HHMMSS>
        assert_eq!(
            trace.parent().and_then(Path::parent),
            Some(relayd.output_dir())
        );
        let dir_name = trace.file_name().unwrap().to_str().unwrap();
        let session = &dir_name[..dir_name.len().saturating_sub("-YYYYMMDD-HHMMSS".len())];
        assert!(is_job_session(session, id, "localhost"), "{dir_name}");
        assert_eq!(
            relayd.session_dir(session).as_deref(),
            Some(trace.as_path()),
            "the relay wrote this job's session there"
        );
        assert!(session_gone(session).await, "{session} destroyed");
        assert!(
            !Path::new(AGENT_TRACE_ROOT).join(session).exists(),
            "nothing written locally on the traced host"
        );
        // The kept trace is fetched from the relay host, through its agent.
        assert_eq!(result["kept_trace"]["host"], "relay1", "{result}");
        assert_eq!(result["kept_trace"]["agent"], "relay1", "{result}");
        assert_fetched_trace(&c, id, &trace, &run).await;

        // An explicit analysis host: the traced host's own agent reads the relay output.
        let mut body = job_body("localhost", UST_SECS, "ust");
        body["relay"] = json!("relay1");
        body["analysis"] = json!("localhost");
        let run = counted_ust_job(&c, &body).await;
        let result = check_ust_answer(&run, "agent", "localhost", &mut traces);
        assert_eq!(run.answer.body["analysis"], "localhost");
        assert_eq!(result["host"], "localhost", "{result}");
        assert!(result_trace(&result)
            .unwrap()
            .starts_with(relayd.output_dir()));
    });
}

// ------------------------------------------------------------------------------------------
// 3. ust over the SSH fallback; a changed host key is refused

#[test]
fn ust_job_over_ssh_one_command_per_step_counts_exactly_and_a_changed_host_key_is_refused() {
    ust_job_over_ssh(false);
}

/// The same job with the host's own `tracesd` (the one built here, given as `ssh_tracesd`):
/// after the pre-flight, the whole job is one command over SSH.
#[test]
fn ust_job_over_ssh_in_one_round_trip_with_the_hosts_tracesd_counts_exactly() {
    ust_job_over_ssh(true);
}

fn ust_job_over_ssh(hosts_tracesd: bool) {
    require!(
        Req::Root,
        Req::Lttng,
        Req::Sshd,
        Req::SshClient,
        Req::UstToolchain,
        Req::Babeltrace2
    );
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        // No agent at all: the registered client is reached over SSH. The `huge` profile's
        // analysis prints a result over the 16 MiB limit.
        let huge = dir.path().join("huge-mi");
        std::fs::write(
            &huge,
            "#!/usr/bin/env python3\nimport json\nprint(json.dumps({'blob': 'x' * (17 << 20)}))\n",
        )
        .unwrap();
        std::fs::set_permissions(&huge, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // The `endless` profile's analysis prints more than the 64 MiB the executor reads.
        let endless = dir.path().join("endless-mi");
        std::fs::write(
            &endless,
            "#!/usr/bin/env python3\nimport sys\nsys.stdout.write('x' * (80 << 20))\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &endless,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // Without it, a program that does not exist: the coordinator tries it, the shell says
        // it is not found, and the job runs one command per step.
        let tracesd = if hosts_tracesd {
            tracevisor_tests::coordinator::binary("tracesd")
                .unwrap()
                .display()
                .to_string()
        } else {
            "/nonexistent/tracesd".to_owned()
        };
        let c = Coordinator::start_with_config(
            dir.path(),
            &format!(
                "ssh_tracesd = \"{tracesd}\"\n\
                 [analyses.huge]\nuserspace_events = [\"*\"]\ncommands = [[\"{}\", \"{{trace}}\"]]\n\
                 [analyses.endless]\nuserspace_events = [\"*\"]\ncommands = [[\"{}\", \"{{trace}}\"]]\n",
                huge.display(),
                endless.display()
            ),
            &[],
        )
        .unwrap();
        let (status, keys) = c.get("/ssh").await.unwrap();
        assert_eq!(status.as_u16(), 200, "{keys}");
        let key = keys["keys"][0].as_str().unwrap().to_owned();
        assert!(key.starts_with("ssh-ed25519 "), "{key}");
        let mut sshd = Sshd::start(&key).unwrap();
        let (status, client) = c
            .post(
                "/clients",
                &json!({
                    "hostname": "sshhost",
                    "ipv4": "127.0.0.1",
                    "sshport": sshd.port(),
                    "sshuser": "root",
                }),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{client}");

        let run = counted_ust_job(&c, &job_body("sshhost", UST_SECS, "ust")).await;
        let job = &run.answer.body;
        if job["status"] != COMPLETE {
            eprintln!("sshd log:\n{}", sshd.log());
        }
        let result = check_ust_answer(&run, "ssh", "sshhost", &mut traces);
        let id = run.answer.job_id().unwrap();
        assert_eq!(result["host"], "sshhost");
        let trace = result_trace(&result).unwrap();
        let session = assert_local_trace(&trace, SSH_TRACE_ROOT, id, "sshhost");
        assert!(session_gone(&session).await, "{session} destroyed");
        // One SSH connection for the whole job (the original needed nine).
        let logins = sshd.log().matches("Accepted publickey").count();
        assert_eq!(logins, 1, "sshd log:\n{}", sshd.log());
        // Which way the job ran: the host's tracesd in one command, or one command per step.
        let one_command = c.logs().contains("the host's tracesd ran the whole job");
        assert_eq!(one_command, hosts_tracesd, "{}", c.logs());
        assert_eq!(
            c.logs().contains("no usable tracesd on the host"),
            !hosts_tracesd,
            "{}",
            c.logs()
        );
        // The kept trace comes back over SSH (one more connection), every event in it.
        assert_eq!(result["kept_trace"]["via"], "ssh", "{result}");
        assert_fetched_trace(&c, id, &trace, &run).await;
        // Trust on first use: the host key is pinned in the data dir.
        let known_hosts = dir.path().join("ssh/known_hosts");
        let pinned = std::fs::read_to_string(&known_hosts).unwrap();
        let old_key = sshd.host_public_key().unwrap();
        let old_blob = old_key.split_whitespace().nth(1).unwrap();
        assert!(pinned.contains(old_blob), "{pinned}");
        // Without keep_trace, the trace is deleted on the host over SSH once analysed.
        assert_trace_deleted_after_analysis(&c, "sshhost", &mut traces).await;

        // A result over the limit fails the job at step `result` instead of being stored.
        let answer = post_analyses(&c, &job_body("sshhost", 0.2, "huge"), &[])
            .await
            .unwrap();
        let big = &answer.body;
        assert_eq!(answer.status.as_u16(), 502, "{}", big["error"]);
        assert_eq!(big["error"]["step"], "result", "{}", big["error"]);
        assert!(
            big["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limited to 16 MiB"),
            "{}",
            big["error"]
        );
        // Output past the executor's bound stops the analysis instead of filling memory.
        let endless_answer = post_analyses(&c, &job_body("sshhost", 0.2, "endless"), &[])
            .await
            .unwrap();
        let endless_job = &endless_answer.body;
        assert_eq!(
            endless_answer.status.as_u16(),
            502,
            "{}",
            endless_job["error"]
        );
        assert_eq!(
            endless_job["error"]["step"], "analysis",
            "{}",
            endless_job["error"]
        );
        // One command per step reads at most 64 MiB of it over SSH; the host's tracesd reads
        // what the agent does (512 MiB, for userspace summaries) and finds it is not JSON.
        let message = endless_job["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("bytes to standard output")
                || (hosts_tracesd && message.contains("did not print JSON")),
            "{}",
            endless_job["error"]
        );
        for id in [answer.job_id().unwrap(), endless_answer.job_id().unwrap()] {
            let suffix = format!("-{id}-sshhost");
            for trace in std::fs::read_dir(SSH_TRACE_ROOT).unwrap().flatten() {
                if trace.file_name().to_string_lossy().ends_with(&suffix) {
                    traces.add(&trace.path());
                }
            }
        }

        // The host key changes: the next job is refused before any command runs.
        let new_key = sshd.rotate_host_key().unwrap();
        let new_blob = new_key.split_whitespace().nth(1).unwrap().to_owned();
        assert_ne!(new_blob, old_blob);
        let before = session_names().unwrap();
        let answer = post_analyses(&c, &job_body("sshhost", 1.0, "ust"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(answer.status.as_u16(), 503, "{job}");
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["via"], "ssh", "{job}");
        assert_eq!(job["error"]["step"], "ssh-connect", "{job}");
        assert_eq!(job["error"]["host"], "sshhost", "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains("host key"), "{message}");
        assert_eq!(job["error_message"], job["error"]["message"]);
        let id2 = answer.job_id().unwrap();
        assert_eq!(
            new_job_sessions(id2, "sshhost", &before).unwrap(),
            vec![],
            "no session created"
        );
        // The pinned key was not replaced by the new one.
        let pinned = std::fs::read_to_string(&known_hosts).unwrap();
        assert!(
            pinned.contains(old_blob) && !pinned.contains(&new_blob),
            "{pinned}"
        );
    });
}

// ------------------------------------------------------------------------------------------
// 4. a kernel analysis on a host without the kernel tracer

fn io_job_on_a_host_without_the_kernel_tracer_fails_before_any_session() {
    require!(Req::Root, Req::Lttng, Req::NoKernelTracer);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &[]).await.unwrap();
        let before = session_names().unwrap();
        let dirs_before = trace_dirs();
        let answer = post_analyses(&c, &job_body("localhost", 2.0, "io"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(answer.status.as_u16(), 422, "{job}");
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["via"], "agent", "{job}");
        assert_eq!(job["error"]["step"], "kernel", "{job}");
        assert_eq!(job["error"]["host"], "localhost", "{job}");
        assert_eq!(
            job["error"]["message"],
            "host localhost: kernel tracer not available (lttng-modules not loaded); analysis io needs kernel events",
            "{job}"
        );
        assert_eq!(job["error_message"], job["error"]["message"]);
        assert!(job["result"].is_null(), "{job}");
        let id = answer.job_id().unwrap();
        assert_eq!(
            new_host_sessions("localhost", &before).unwrap(),
            Vec::<String>::new(),
            "no session was created"
        );
        let new_dirs: Vec<String> = trace_dirs()
            .into_iter()
            .filter(|d| !dirs_before.contains(d) && is_job_session(d, id, "localhost"))
            .collect();
        assert_eq!(
            new_dirs,
            Vec::<String>::new(),
            "no trace directory was created"
        );
        assert_eq!(get_job(&c, id).await.unwrap()["status"], FAILED);
    });
}

// ------------------------------------------------------------------------------------------
// 5. the analysis step of cpu and io on a generated kernel trace

/// The analysis-only spec of a built-in profile, as the job engine builds it.
fn analysis_spec(profile: &str, trace: &Path) -> JobSpec {
    let profiles = tracevisor::profiles::builtin();
    let p = &profiles[profile];
    JobSpec {
        session_name: format!("tracevisor-1-analysis-{profile}"),
        analysis: p.analysis.clone(),
        kernel_events: p.kernel_events.clone(),
        syscalls: p.syscalls,
        userspace_events: p.userspace_events.clone(),
        duration_ms: 1000,
        output: TraceOutput::Local,
        analysis_commands: p.commands.clone(),
        run_analysis: true,
        summary: Summary::Lami,
        analysis_only: Some(TraceLocator::Path(trace.display().to_string())),
        keep_trace: false,
        snapshot_of: None,
    }
}

/// Runs the shared lifecycle's analysis step on `trace`; returns the result and the
/// progress statuses it reported.
async fn analyse(profile: &str, trace: &Path) -> (Json, Vec<i8>) {
    let exec = LocalExecutor {
        hostname: "analysis-host".into(),
        trace_root: std::env::temp_dir(),
        policy: Default::default(),
        control: Default::default(),
    };
    let statuses = std::sync::Mutex::new(Vec::new());
    let result = run_job(
        &exec,
        &analysis_spec(profile, trace),
        |s, _| statuses.lock().unwrap().push(s),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{profile} analysis: {e}"));
    (result, statuses.into_inner().unwrap())
}

/// The LAMI document of `command` in a lami result.
fn lami_of<'a>(result: &'a Json, command: &str) -> &'a Json {
    &result["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["command"] == command)
        .unwrap_or_else(|| panic!("no {command} in {result}"))["result"]
}

#[test]
fn cpu_and_io_analyses_of_a_generated_kernel_trace_match_its_events() {
    require!(Req::Analyses, Req::Babeltrace2);
    let dir = tempfile::tempdir().unwrap();
    let trace = gen_kernel_trace(dir.path(), &KernelTraceSpec::reference()).unwrap();
    run(async {
        // cpu: lttng-cputop-mi
        let (cpu, statuses) = analyse("cpu", &trace).await;
        assert_eq!(statuses, vec![3], "analysis-only jobs report status 3");
        assert_eq!(cpu["kind"], "lami");
        assert_eq!(cpu["host"], "analysis-host");
        assert_eq!(cpu["trace"], trace.display().to_string());
        assert_eq!(cpu["analyses"].as_array().unwrap().len(), 1);
        let cputop = lami_of(&cpu, "lttng-cputop-mi");
        assert!(cputop["results"].is_array(), "{cputop}");
        let per_proc = lami_table(cputop, "per-process", None).unwrap();
        let range = &per_proc["time-range"];
        assert_eq!(
            range["end"]["value"].as_u64().unwrap() - range["begin"]["value"].as_u64().unwrap(),
            reference::DURATION_NS
        );
        let worker = lami_process_row(per_proc, reference::WORKER_TID).unwrap();
        assert_eq!(worker[0]["name"], reference::WORKER_COMM);
        assert_eq!(lami_number(&worker[3]), Some(reference::WORKER_CPU_RATIO));
        let logger = lami_process_row(per_proc, reference::LOGGER_TID).unwrap();
        assert_eq!(logger[0]["name"], reference::LOGGER_COMM);
        assert_eq!(lami_number(&logger[3]), Some(reference::LOGGER_CPU_RATIO));
        let per_cpu = lami_table(cputop, "per-cpu", None).unwrap();
        let cpus: Vec<(i64, f64)> = per_cpu["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0]["id"].as_i64().unwrap(), lami_number(&r[1]).unwrap()))
            .collect();
        assert_eq!(
            cpus,
            vec![(0, reference::CPU_RATIOS[0]), (1, reference::CPU_RATIOS[1])]
        );
        let total = lami_table(cputop, "total", None).unwrap();
        assert_eq!(
            lami_number(&total["data"][0][0]),
            Some(reference::TOTAL_CPU_RATIO)
        );

        // io: lttng-iousagetop-mi then lttng-iolatencystats-mi
        let (io, statuses) = analyse("io", &trace).await;
        assert_eq!(statuses, vec![3]);
        assert_eq!(io["kind"], "lami");
        let commands: Vec<&str> = io["analyses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["command"].as_str().unwrap())
            .collect();
        assert_eq!(commands, ["lttng-iousagetop-mi", "lttng-iolatencystats-mi"]);
        let usage = lami_of(&io, "lttng-iousagetop-mi");
        let read = lami_table(usage, "per-process-top", Some("read")).unwrap();
        let worker = lami_process_row(read, reference::WORKER_TID).unwrap();
        // columns: process, total, disk, network, unknown (state-dump fds are "unknown")
        let sizes: Vec<f64> = worker[1..]
            .iter()
            .map(|c| lami_number(c).unwrap())
            .collect();
        let r = reference::WORKER_READ_BYTES as f64;
        assert_eq!(sizes, vec![r, 0.0, 0.0, r]);
        let written = lami_table(usage, "per-process-top", Some("written")).unwrap();
        let worker = lami_process_row(written, reference::WORKER_TID).unwrap();
        let sizes: Vec<f64> = worker[1..]
            .iter()
            .map(|c| lami_number(c).unwrap())
            .collect();
        let w = reference::WORKER_WRITE_BYTES as f64;
        assert_eq!(sizes, vec![w, w, 0.0, 0.0]);
        let logger = lami_process_row(written, reference::LOGGER_TID).unwrap();
        assert_eq!(
            lami_number(&logger[1]),
            Some(reference::LOGGER_WRITE_BYTES as f64)
        );
        let files_read = lami_table(usage, "per-file-top", Some("read")).unwrap();
        assert_eq!(files_read["data"][0][0]["path"], reference::INPUT_FILE);
        assert_eq!(lami_number(&files_read["data"][0][1]), Some(r));
        let files_written = lami_table(usage, "per-file-top", Some("written")).unwrap();
        let paths: Vec<&str> = files_written["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[0]["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, vec![reference::OUTPUT_FILE, reference::LOG_FILE]);
        let block = lami_table(usage, "per-process-top-block", Some("read")).unwrap();
        let worker = lami_process_row(block, reference::WORKER_TID).unwrap();
        assert_eq!(
            lami_number(&worker[1]),
            Some(reference::BLOCK_READ_BYTES as f64)
        );
        let sectors = lami_table(usage, "per-disk-top-sector", None).unwrap();
        assert_eq!(sectors["data"][0][0]["name"], reference::DISK);
        assert_eq!(
            lami_number(&sectors["data"][0][1]),
            Some(reference::DISK_SECTORS as f64)
        );

        let lat = lami_of(&io, "lttng-iolatencystats-mi");
        let stats = lami_tables(lat, "syscall-latency-stats");
        assert_eq!(stats.len(), 1, "{lat}");
        let row = |category: &str| {
            stats[0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r[0]["value"] == category)
                .unwrap_or_else(|| panic!("no {category} row in {lat}"))
                .clone()
        };
        // columns: category, count, min, avg, max, stdev (ns)
        let read = row("Read");
        let [a, b] = reference::READ_LATENCIES_NS;
        assert_eq!(lami_number(&read[1]), Some(2.0));
        assert_eq!(lami_number(&read[2]), Some(a as f64));
        assert_eq!(lami_number(&read[3]), Some(((a + b) / 2) as f64));
        assert_eq!(lami_number(&read[4]), Some(b as f64));
        let write = row("Write");
        let [a, b] = reference::WRITE_LATENCIES_NS;
        assert_eq!(lami_number(&write[1]), Some(2.0));
        assert_eq!(lami_number(&write[2]), Some(a as f64));
        assert_eq!(lami_number(&write[4]), Some(b as f64));
        let open = row("Open");
        assert_eq!(lami_number(&open[1]), Some(1.0));
        assert_eq!(
            lami_number(&open[3]),
            Some(reference::OPEN_LATENCY_NS as f64)
        );
        let disk = lami_table(lat, "disk-latency-stats", None).unwrap();
        assert_eq!(disk["data"][0][0]["name"], reference::DISK);
        assert_eq!(lami_number(&disk["data"][0][1]), Some(1.0));
        assert_eq!(
            lami_number(&disk["data"][0][3]),
            Some(reference::DISK_LATENCY_NS as f64)
        );
    });
}

// ------------------------------------------------------------------------------------------
// 6. cancellation

fn cancelled_job_ends_failed_and_its_session_is_destroyed() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &[]).await.unwrap();
        let mut body = job_body("localhost", 60.0, "ust");
        body["wait"] = json!(false);
        let before = session_names().unwrap();
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        assert_eq!(
            answer.header("location").as_deref(),
            Some(format!("/trace/api/v1.0/jobs/{id}").as_str())
        );
        let job = wait_status(&c, id, TRACE_RUNNING, PATIENCE).await.unwrap();
        assert_eq!(job["via"], "agent");
        let active = running_session(id, "localhost", &before);
        assert!(active.active, "{active:?}");
        let session = active.name;
        traces.add(&Path::new(AGENT_TRACE_ROOT).join(&session));

        let (status, body) = c.delete(&format!("/jobs/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 202, "{body}");
        let job = wait_ended(&c, id, PATIENCE).await.unwrap();
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["error"]["step"], "cancelled", "{job}");
        assert_eq!(job["error"]["host"], "localhost", "{job}");
        assert!(job["finished"].as_str().is_some(), "{job}");
        assert!(session_gone(&session).await, "{session} destroyed");
        // Cancelling again: the job is not running any more.
        let (status, body) = c.delete(&format!("/jobs/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 409, "{body}");
    });
}

// ------------------------------------------------------------------------------------------
// 7. an agent killed mid-trace

fn agent_killed_mid_trace_destroys_its_session_on_restart_and_fails_the_job() {
    require!(Req::Root, Req::Lttng);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let url = hub_url(c.addr, false);
        let mut agent = Agent::start(&url, TOKEN, "h1").unwrap();
        wait_clients(&c, "agent h1", PATIENCE, |l| is_connected(l, "h1"))
            .await
            .unwrap();
        let mut body = job_body("h1", 30.0, "ust");
        body["wait"] = json!(false);
        let before = session_names().unwrap();
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        let job = wait_status(&c, id, TRACE_RUNNING, PATIENCE).await.unwrap();
        assert_eq!(job["via"], "agent");
        let session = running_session(id, "h1", &before).name;
        traces.add(&Path::new(AGENT_TRACE_ROOT).join(&session));

        agent.kill9().unwrap();
        // The session outlives the agent: nobody stops it.
        assert!(session_alive(&session).unwrap());
        let job = get_job(&c, id).await.unwrap();
        assert_eq!(job["status"], TRACE_RUNNING, "still running: {job}");

        let agent = Agent::start(&url, TOKEN, "h1").unwrap();
        let job = wait_ended(&c, id, PATIENCE).await.unwrap();
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["error"]["step"], "agent-restart", "{job}");
        assert_eq!(job["error"]["host"], "h1", "{job}");
        assert!(
            job["error"]["message"].as_str().unwrap().contains("h1"),
            "{job}"
        );
        assert!(session_gone(&session).await, "{session} destroyed");
        assert!(
            eventually(
                "the orphan session destroyed",
                std::time::Duration::from_secs(10),
                || { new_host_sessions("h1", &before).is_ok_and(|s| s.is_empty()) }
            )
            .await
            .is_ok(),
            "the restarted agent destroyed the orphan session; agent log:\n{}",
            agent.logs()
        );
    });
}

// ------------------------------------------------------------------------------------------
// 8. concurrent jobs

fn concurrent_jobs_on_two_agents_all_complete() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &["--agent-token", TOKEN])
            .await
            .unwrap();
        let _h2 = Agent::start(&hub_url(c.addr, false), TOKEN, "h2").unwrap();
        wait_clients(&c, "agent h2", PATIENCE, |l| is_connected(l, "h2"))
            .await
            .unwrap();
        let hosts = ["localhost", "h2", "localhost", "h2"];
        let bodies: Vec<Json> = hosts.iter().map(|h| job_body(h, 2.0, "ust")).collect();
        let answers =
            futures_util::future::join_all(bodies.iter().map(|b| post_analyses(&c, b, &[]))).await;
        let mut ids = Vec::new();
        let mut paths = Vec::new();
        for (answer, host) in answers.into_iter().zip(hosts) {
            let answer = answer.unwrap();
            let job = &answer.body;
            traces.add_result(&job["result"]);
            assert_eq!(answer.status.as_u16(), 200, "{job}");
            assert_eq!(job["status"], COMPLETE, "{job}");
            assert_eq!(job["host"], host, "{job}");
            assert_eq!(job["via"], "agent", "{job}");
            assert_eq!(job["result"]["kind"], "ust", "{job}");
            assert_eq!(job["result"]["host"], host, "{job}");
            let id = answer.job_id().unwrap();
            let trace = result_trace(&job["result"]).unwrap();
            let session = assert_local_trace(&trace, AGENT_TRACE_ROOT, id, host);
            assert!(trace.is_dir(), "{}", trace.display());
            assert!(session_gone(&session).await, "{session} destroyed");
            ids.push(id);
            paths.push(trace);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "four distinct jobs");
        let mut instances: Vec<String> = paths
            .iter()
            .map(|t| {
                parse_session(t.file_name().unwrap().to_str().unwrap())
                    .unwrap()
                    .0
            })
            .collect();
        instances.dedup();
        assert_eq!(
            instances.len(),
            1,
            "one coordinator instance names every session"
        );
        let all = list_jobs(&c, true).await.unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|j| j["status"] == COMPLETE), "{all:?}");
        assert!(list_jobs(&c, false).await.unwrap().is_empty());
    });
}

// ------------------------------------------------------------------------------------------
// 9. bad input

#[test]
fn bad_trace_requests_are_refused_and_run_nothing() {
    let canary = Path::new("/tmp/tracevisor-canary");
    let canary2 = std::env::temp_dir().join(format!("tracevisor-canary-{}", std::process::id()));
    let _ = std::fs::remove_file(canary);
    let _ = std::fs::remove_file(&canary2);
    run(async {
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &[]).unwrap();
        let before = list_jobs(&c, true).await.unwrap();
        let valid = job_body("localhost", 2.0, "ust");
        let with = |field: &str, value: Json| {
            let mut b = valid.clone();
            b[field] = value;
            b
        };
        let without = |field: &str| {
            let mut b = valid.clone();
            b.as_object_mut().unwrap().remove(field);
            b
        };

        // Unknown type: the answer lists the known ones.
        let (status, body) = c
            .post("/analyses", &with("type", json!("bogus")))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 422, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("known types: cpu, io, irq, mem, sched, ust"),
            "{message}"
        );
        assert_eq!(body["field"], "type");

        let touch = canary.display().to_string();
        let touch2 = canary2.display().to_string();
        let metachars = [
            ";".to_owned(),
            format!("localhost; touch {touch}"),
            format!("$(touch {touch})"),
            format!("`touch {touch2}`"),
            format!("localhost\ntouch {touch}"),
            "local host".to_owned(),
            format!("localhost|touch {touch}"),
            format!("localhost&&touch {touch}"),
            format!("-oProxyCommand=touch {touch}"),
            format!("root>{touch}"),
            "../../etc".to_owned(),
            String::new(),
        ];
        // (what, the field the error must name, body)
        let mut cases: Vec<(String, Option<&str>, Json)> = vec![
            (
                "duration 0".into(),
                Some("duration"),
                with("duration", json!(0)),
            ),
            (
                "duration -1".into(),
                Some("duration"),
                with("duration", json!(-1)),
            ),
            (
                "duration 999999".into(),
                Some("duration"),
                with("duration", json!(999_999)),
            ),
            (
                "duration 3601".into(),
                Some("duration"),
                with("duration", json!(3601)),
            ),
            (
                "duration \"2\"".into(),
                Some("duration"),
                with("duration", json!("2")),
            ),
            (
                "duration null".into(),
                Some("duration"),
                with("duration", Json::Null),
            ),
            (
                "duration true".into(),
                Some("duration"),
                with("duration", json!(true)),
            ),
            ("no duration".into(), Some("duration"), without("duration")),
            ("no host".into(), Some("host"), without("host")),
            ("no username".into(), Some("username"), without("username")),
            ("no type".into(), Some("type"), without("type")),
            ("host number".into(), Some("host"), with("host", json!(42))),
            (
                "type ust;ls".into(),
                Some("type"),
                with("type", json!("ust;ls")),
            ),
            (
                "mongoport 0".into(),
                Some("mongoport"),
                with("mongoport", json!(0)),
            ),
            (
                "mongoport 70000".into(),
                Some("mongoport"),
                with("mongoport", json!(70_000)),
            ),
            (
                "mongoport shell".into(),
                Some("mongoport"),
                with("mongoport", json!(format!("1; touch {touch}"))),
            ),
            (
                "wait string".into(),
                Some("wait"),
                with("wait", json!("no")),
            ),
            (
                "not an object".into(),
                None,
                json!(["localhost", 2, "ust", "root"]),
            ),
        ];
        for field in ["host", "username", "relay", "analysis", "mongohost"] {
            for value in &metachars {
                if value.is_empty() && matches!(field, "relay" | "analysis" | "mongohost") {
                    continue; // an empty optional field means "not given"
                }
                cases.push((
                    format!("{field} = {value:?}"),
                    Some(field),
                    with(field, json!(value)),
                ));
            }
        }
        for (what, field, body) in &cases {
            let (status, answer) = c.post("/analyses", body).await.unwrap();
            assert!(
                status.is_client_error(),
                "{what}: expected a 4xx, got {status} {answer}"
            );
            assert!(answer["error"].is_string(), "{what}: {answer}");
            if let Some(field) = field {
                assert_eq!(answer["field"], *field, "{what}: {answer}");
            }
        }
        // Not JSON at all.
        let resp = c
            .request(reqwest::Method::POST, "/analyses")
            .header("content-type", "application/json")
            .body(format!("{{\"host\": \"$(touch {touch})\""))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());

        assert_eq!(list_jobs(&c, true).await.unwrap(), before, "no job stored");
        assert!(before.is_empty(), "{before:?}");
    });
    assert!(!canary.exists(), "a shell ran a request's value");
    assert!(!canary2.exists(), "a shell ran a request's value");
}

// ------------------------------------------------------------------------------------------
// 10. /list, /jobs/{id}, DELETE of a finished job

fn list_shows_running_jobs_and_all_jobs_and_unknown_or_finished_jobs_are_refused() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &[]).await.unwrap();
        assert!(list_jobs(&c, false).await.unwrap().is_empty());
        // Prefer: respond-async answers at once, like "wait": false.
        let answer = post_analyses(
            &c,
            &job_body("localhost", 3.0, "ust"),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        assert_eq!(
            answer.header("location").as_deref(),
            Some(format!("/trace/api/v1.0/jobs/{id}").as_str())
        );
        wait_status(&c, id, TRACE_RUNNING, PATIENCE).await.unwrap();
        let running = list_jobs(&c, false).await.unwrap();
        let entry = running
            .iter()
            .find(|j| j["jobid"] == id)
            .unwrap_or_else(|| panic!("job {id} not in /list: {running:?}"));
        assert!(matches!(entry["status"].as_i64(), Some(2 | 3)), "{entry}");
        assert_eq!(entry["host"], "localhost");
        assert_eq!(entry["type"], "ust");
        assert!(
            entry["started"].as_str().is_some_and(|s| !s.is_empty()),
            "{entry}"
        );

        let done = wait_ended(&c, id, PATIENCE).await.unwrap();
        traces.add_result(&done["result"]);
        assert_eq!(done["status"], COMPLETE, "{done}");
        assert!(list_jobs(&c, false).await.unwrap().is_empty());
        let all = list_jobs(&c, true).await.unwrap();
        let entry = all
            .iter()
            .find(|j| j["jobid"] == id)
            .unwrap_or_else(|| panic!("job {id} not in /list?all=true: {all:?}"));
        assert_eq!(entry["status"], COMPLETE);
        assert_eq!(entry["type"], "ust");
        assert!(entry["finished"].as_str().is_some(), "{entry}");

        for path in ["/jobs/999", "/jobs/0", "/jobs/abc"] {
            let (status, body) = c.get(path).await.unwrap();
            assert_eq!(status.as_u16(), 404, "GET {path}: {body}");
        }
        let (status, body) = c.delete("/jobs/999").await.unwrap();
        assert_eq!(status.as_u16(), 404, "{body}");
        let (status, body) = c.delete(&format!("/jobs/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 409, "{body}");
        assert_eq!(get_job(&c, id).await.unwrap()["status"], COMPLETE);
    });
}

tracevisor_tests::through_both_lttng_controls!(
    ust_job_through_the_agent_counts_exactly_what_the_program_emitted,
    ust_job_streamed_to_a_relay_is_analysed_on_the_relay_host,
    cancelled_job_ends_failed_and_its_session_is_destroyed,
    agent_killed_mid_trace_destroys_its_session_on_restart_and_fails_the_job,
    concurrent_jobs_on_two_agents_all_complete,
    io_job_on_a_host_without_the_kernel_tracer_fails_before_any_session,
    list_shows_running_jobs_and_all_jobs_and_unknown_or_finished_jobs_are_refused,
);

/// An SSH host whose `tracesd` lies (a script that claims the job complete through progress,
/// then floods one endless line): the coordinator takes no
/// status from progress but the running ones, reads a bounded line, and fails the job at step
/// `ssh-job`.
#[test]
fn a_hostile_hosts_tracesd_cannot_end_the_job_through_progress_nor_flood_the_coordinator() {
    require!(Req::Root, Req::Lttng, Req::Sshd, Req::SshClient);
    ensure_sessiond().unwrap();
    run(async {
        let dir = data_dir();
        let real = tracevisor_tests::coordinator::binary("tracesd").unwrap();
        let script = dir.path().join("hostile-tracesd");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 if [ \"$1\" = --version ]; then exec {} --version; fi\n\
                 echo '{{\"progress\":{{\"status\":4,\"text\":\"complete, honest\"}}}}'\n\
                 echo '{{\"progress\":{{\"status\":-1,\"text\":\"failed\"}}}}'\n\
                 head -c 100000000 /dev/zero | tr '\\0' x\n",
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let c = Coordinator::start_with_config(
            dir.path(),
            &format!("ssh_tracesd = \"{}\"\n", script.display()),
            &[],
        )
        .unwrap();
        let (_, keys) = c.get("/ssh").await.unwrap();
        let sshd = Sshd::start(keys["keys"][0].as_str().unwrap()).unwrap();
        let (status, client) = c
            .post(
                "/clients",
                &json!({"hostname": "liar", "ipv4": "127.0.0.1", "sshport": sshd.port(), "sshuser": "root"}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{client}");
        let answer = post_analyses(&c, &job_body("liar", 0.2, "ust"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(answer.status.as_u16(), 502, "{job}");
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["error"]["step"], "ssh-job", "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains("ended without an outcome"), "{message}");
        assert!(job["result"].is_null(), "{job}");
        assert!(
            c.logs().contains("a status that is not a running one"),
            "{}",
            c.logs()
        );
    });
}
