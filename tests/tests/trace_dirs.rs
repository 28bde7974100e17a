//! What a trace job writes on a traced host and what it hands to the commands it runs (issue
//! 13), with the real coordinator binary, its built-in local agent, a root lttng-sessiond and a
//! real sshd:
//!
//! - a job's trace directory that someone made in advance (world-writable with a forged file,
//!   or a symbolic link to a directory they own) is never used, on an agent host or over SSH:
//!   the job fails at step `create` naming the path, nothing is written there and no session
//!   exists; the next job gets a new directory of mode 0700 in a root nobody else can write;
//! - no token or other variable of the coordinator's environment reaches an analysis command
//!   (agent path) or the `ssh` client the SSH driver starts.
//!
//! A local attacker can predict a job's directory: session names are
//! `tracevisor-<instance>-<job id>-<host>`, the instance is told to every agent (`HelloAck`),
//! and job ids count up from 1. The tests predict it the same way.
//!
//! Tests that run LTTng sessions hold [`lttng::ust_exclusive`] (see `trace_jobs.rs`).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tracevisor_protocol::Message;
use tracevisor_tests::agents::{
    hub_url, is_connected, simulated_hello, wait_clients, RawLink, Received,
};
use tracevisor_tests::coordinator::{Coordinator, LOCAL_AGENT};
use tracevisor_tests::jobs_support::{
    job_body, new_job_sessions, post_analyses, register_ssh_client, result_trace, session_names,
    ssh_key, start_with_local_agent, wait_ended, COMPLETE, FAILED, PATIENCE, SSH_TRACE_ROOT,
};
use tracevisor_tests::lttng::{self, ensure_sessiond};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;
use tracevisor_tests::sshd::Sshd;

use tracevisor_tests::block_on as run;

const TOKEN: &str = "trace-dirs-test-agent-token";
/// What the attacker's planted trace file holds.
const FORGED: &[u8] = b"forged metadata";
/// The uid and gid of `nobody`: the owner of what the attacker plants.
const NOBODY: u32 = 65534;

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-dirs-")
}

/// The coordinator's instance id, as any agent holding the token learns it (`HelloAck`).
async fn instance(c: &Coordinator) -> String {
    let mut link = RawLink::agent(&hub_url(c.addr, false), TOKEN, "instance-probe")
        .await
        .unwrap();
    link.send(Message::Hello(simulated_hello("instance-probe")))
        .await
        .unwrap();
    loop {
        match link.recv(PATIENCE).await {
            Received::Frame(Message::HelloAck { coordinator_id, .. }) => return coordinator_id,
            Received::Frame(_) | Received::Other(_) => {}
            other => panic!("no hello-ack: {other:?}"),
        }
    }
}

/// Removes what a test planted or a job wrote, when dropped (also when the test fails).
#[derive(Default)]
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn add(&mut self, path: &Path) {
        self.0.push(path.to_path_buf());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
            let name_ok = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tracevisor-"));
            if is_dir && name_ok {
                let _ = std::fs::remove_dir_all(path);
            } else if name_ok {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// What an unprivileged attacker prepares: a directory of theirs that everyone can write, with
/// a forged trace file in it.
fn plant_world_writable(path: &Path) {
    std::fs::create_dir(path).unwrap();
    std::fs::write(path.join("metadata"), FORGED).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(path.join("metadata"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// The planted directory is as the attacker left it: nothing written, nothing removed.
fn assert_untouched(path: &Path) {
    let entries: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["metadata"], "{}", path.display());
    assert_eq!(std::fs::read(path.join("metadata")).unwrap(), FORGED);
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert_eq!(meta.uid(), NOBODY);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
}

/// `path` is a real directory of root's that only root can enter (mode 0700 or stricter).
fn assert_private(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.is_dir(), "{} is a directory", path.display());
    assert_eq!(meta.uid(), 0, "{} is root's", path.display());
    let mode = meta.permissions().mode() & 0o7777;
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
}

/// `path` is a real directory of root's that neither its group nor others can write.
fn assert_no_one_else_writes(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.is_dir(), "{} is a directory", path.display());
    assert_eq!(meta.uid(), 0, "{} is root's", path.display());
    let mode = meta.permissions().mode() & 0o7777;
    assert_eq!(mode & 0o022, 0, "{} has mode {mode:o}", path.display());
}

/// A failed job answer: status -1 at step `create` on `host`; returns the message.
fn assert_create_refused(answer_status: u16, job: &Json, host: &str) -> String {
    assert_eq!(answer_status, 502, "{job}");
    assert_eq!(job["status"], FAILED, "{job}");
    assert_eq!(job["error"]["step"], "create", "{job}");
    assert_eq!(job["error"]["host"], host, "{job}");
    job["error"]["message"].as_str().unwrap().to_owned()
}

fn a_trace_directory_made_in_advance_on_an_agent_host_is_not_used() {
    require!(Req::Root, Req::Lttng, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut cleanup = Cleanup::default();
        let dir = data_dir();
        let c = start_with_local_agent(dir.path(), &["--agent-token", TOKEN])
            .await
            .unwrap();
        let root = Path::new(tracevisor_lttng::lifecycle::SYSTEM_TRACE_ROOT);
        // The directory of job 1, made by the attacker before the job.
        let planted = root.join(format!("tracevisor-{}-1-localhost", instance(&c).await));
        cleanup.add(&planted);
        plant_world_writable(&planted);
        let before = session_names().unwrap();
        let answer = post_analyses(&c, &job_body("localhost", 0.5, "ust"), &[])
            .await
            .unwrap();
        assert_eq!(answer.job_id().unwrap(), 1, "{}", answer.body);
        let message = assert_create_refused(answer.status.as_u16(), &answer.body, "localhost");
        assert!(
            message.contains(&format!(
                "the trace directory {} already exists",
                planted.display()
            )) && message.contains("owned by uid 65534, mode 0777"),
            "{message}"
        );
        assert_eq!(
            new_job_sessions(1, "localhost", &before).unwrap(),
            vec![],
            "no session was created"
        );
        assert_untouched(&planted);

        // The next job gets a directory of its own: new, mode 0700, in a root only root writes.
        let answer = post_analyses(&c, &job_body("localhost", 0.5, "ust"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(job["status"], COMPLETE, "{job}");
        let trace = result_trace(&job["result"]).unwrap();
        cleanup.add(&trace);
        assert_eq!(trace.parent(), Some(root), "{}", trace.display());
        assert_ne!(trace, planted);
        assert_private(&trace);
        assert_no_one_else_writes(root);
    });
}

#[test]
fn a_trace_directory_made_in_advance_over_ssh_is_not_used() {
    require!(
        Req::Root,
        Req::Lttng,
        Req::Sshd,
        Req::SshClient,
        Req::Babeltrace2
    );
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut cleanup = Cleanup::default();
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let sshd = Sshd::start(&ssh_key(&c).await.unwrap()).unwrap();
        register_ssh_client(&c, "sshhost", sshd.port())
            .await
            .unwrap();
        // The SSH user's root exists as the lifecycle makes it (root's, 0700); the attacker
        // cannot write in it, but a symbolic link there is what a mistake or an earlier
        // compromise could leave, and it must not be followed.
        let root = Path::new(SSH_TRACE_ROOT);
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().mode(0o700).create(root).unwrap();
        }
        let theirs = tempfile::Builder::new()
            .prefix("tv-attacker-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(theirs.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        let planted = root.join(format!("tracevisor-{}-1-sshhost", instance(&c).await));
        cleanup.add(&planted);
        std::os::unix::fs::symlink(theirs.path(), &planted).unwrap();
        let before = session_names().unwrap();
        let answer = post_analyses(&c, &job_body("sshhost", 0.5, "ust"), &[])
            .await
            .unwrap();
        if answer.body["status"] != FAILED {
            eprintln!("sshd log:\n{}", sshd.log());
        }
        assert_eq!(answer.job_id().unwrap(), 1, "{}", answer.body);
        let message = assert_create_refused(answer.status.as_u16(), &answer.body, "sshhost");
        assert!(
            message.contains(&format!(
                "the trace directory {} already exists (symbolic link",
                planted.display()
            )),
            "{message}"
        );
        assert_eq!(
            new_job_sessions(1, "sshhost", &before).unwrap(),
            vec![],
            "no session was created"
        );
        assert_eq!(
            std::fs::read_dir(theirs.path()).unwrap().count(),
            0,
            "nothing written where the link points"
        );
        assert_eq!(std::fs::read_link(&planted).unwrap(), theirs.path());

        let answer = post_analyses(&c, &job_body("sshhost", 0.5, "ust"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(job["status"], COMPLETE, "{job}");
        let trace = result_trace(&job["result"]).unwrap();
        cleanup.add(&trace);
        assert_eq!(trace.parent(), Some(root), "{}", trace.display());
        assert_private(&trace);
        assert_no_one_else_writes(root);
    });
}

/// A LAMI-shaped analysis that reports its own environment.
const ENV_DUMP: &str = "#!/usr/bin/env python3\nimport json, os\nprint(json.dumps({'results': [], 'env': dict(os.environ)}))\n";
/// Values in the coordinator's environment that no child may see.
const SECRET: &str = "secret-value-0123456789";

/// What a child's environment must be: nothing of the coordinator's `TRACEVISOR_*` (tokens
/// among them) or `TRACESD_*` variables.
fn assert_clean_env(env: &serde_json::Map<String, Json>, who: &str) {
    let leaked: Vec<&String> = env
        .iter()
        .filter(|(k, v)| {
            k.starts_with("TRACEVISOR_")
                || k.starts_with("TRACESD_")
                || v.as_str()
                    .is_some_and(|v| v.contains(SECRET) || v.contains(TOKEN))
        })
        .map(|(k, _)| k)
        .collect();
    assert!(leaked.is_empty(), "{who} got {leaked:?}: {env:?}");
}

/// `ssh` processes started with a control socket under `dir` (the coordinator's `TMPDIR`):
/// the SSH driver's master connections.
fn ssh_masters_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        if is_ssh
            && args.iter().any(|a| a == "-M")
            && args.iter().any(|a| Path::new(a).starts_with(dir))
        {
            pids.push(pid);
        }
    }
    pids
}

/// The environment of process `pid`.
fn environ(pid: u32) -> serde_json::Map<String, Json> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let text = String::from_utf8_lossy(v);
            let (k, v) = text.split_once('=').unwrap_or((&text, ""));
            (k.to_owned(), Json::from(v))
        })
        .collect()
}

#[test]
fn no_token_reaches_an_analysis_or_the_ssh_client() {
    require!(Req::Root, Req::Lttng, Req::Sshd, Req::SshClient);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut cleanup = Cleanup::default();
        let dir = data_dir();
        let script = dir.path().join("envdump-mi");
        std::fs::write(&script, ENV_DUMP).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let config = dir.path().join("tracevisor.toml");
        std::fs::write(
            &config,
            format!(
                "[analyses.envdump]\nuserspace_events = [\"*\"]\ncommands = [[\"{}\", \"{{trace}}\"]]\n",
                script.display()
            ),
        )
        .unwrap();
        // The agent token in the environment, as a packaged service may have it, and other
        // variables of both prefixes.
        let config = config.display().to_string();
        let tmp_text = tmp.display().to_string();
        let c = Coordinator::start_with(
            dir.path(),
            "127.0.0.1:0",
            &[LOCAL_AGENT, "--config", &config],
            &[
                ("TRACEVISOR_AGENT_TOKEN", TOKEN),
                ("TRACEVISOR_TEST_SECRET", SECRET),
                ("TRACESD_TEST_SECRET", SECRET),
                ("TMPDIR", &tmp_text),
            ],
        )
        .unwrap();
        wait_clients(&c, "the local agent", PATIENCE, |l| {
            is_connected(l, "localhost")
        })
        .await
        .unwrap();

        // Through the built-in agent: the analysis runs from the runner's environment.
        let answer = post_analyses(&c, &job_body("localhost", 0.5, "envdump"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        cleanup.add(&result_trace(&job["result"]).unwrap_or_default());
        assert_eq!(job["status"], COMPLETE, "{job}");
        let env = job["result"]["analyses"][0]["result"]["env"]
            .as_object()
            .unwrap_or_else(|| panic!("no env in {job}"));
        assert_clean_env(env, "the analysis");
        assert_eq!(env["PATH"], tracevisor_lttng::runner::CHILD_PATH, "{env:?}");

        // Over SSH: the `ssh` master the driver starts for the job.
        let sshd = Sshd::start(&ssh_key(&c).await.unwrap()).unwrap();
        register_ssh_client(&c, "sshhost", sshd.port())
            .await
            .unwrap();
        let answer = post_analyses(
            &c,
            &job_body("sshhost", 4.0, "envdump"),
            &[("Prefer", "respond-async")],
        )
        .await
        .unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let masters = loop {
            let masters = ssh_masters_under(&tmp);
            if !masters.is_empty() {
                break masters;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no ssh master with a control socket under {}",
                tmp.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        for pid in masters {
            let env = environ(pid);
            assert_clean_env(&env, "the ssh master");
            assert_eq!(
                env.get("PATH").and_then(Json::as_str),
                Some(tracevisor_lttng::runner::CHILD_PATH),
                "{env:?}"
            );
        }
        let job = wait_ended(&c, id, PATIENCE).await.unwrap();
        cleanup.add(&result_trace(&job["result"]).unwrap_or_default());
        assert_eq!(job["status"], COMPLETE, "{job}");
        let env = job["result"]["analyses"][0]["result"]["env"]
            .as_object()
            .unwrap_or_else(|| panic!("no env in {job}"));
        assert_clean_env(env, "the analysis over ssh");
    });
}

tracevisor_tests::through_both_lttng_controls!(
    a_trace_directory_made_in_advance_on_an_agent_host_is_not_used,
);
