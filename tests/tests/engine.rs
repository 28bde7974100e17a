//! The job engine across stops and crashes, with the real coordinator binary, real sshd and
//! session daemon, and hand-driven agent links speaking the real protocol:
//! - SIGTERM during an SSH job destroys its session on the host and records why;
//! - `kill -9` during a fleet, then a restart: the fleet ends with an outcome per host and the
//!   sessions its SSH hosts were recording are destroyed;
//! - a result acknowledged to the agent survives `kill -9` right after the acknowledgement
//!   (acknowledged only once committed), and results or progress from another host than the
//!   one the job was sent to change nothing;
//! - a relay registered by address is analysed over SSH at that address.
//!
//! Tests that run LTTng sessions hold [`lttng::ust_exclusive`] (see `trace_jobs.rs`). Nothing
//! asserts how long something took.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value as Json};
use tracevisor_protocol::{JobOutcome, Message};
use tracevisor_tests::agents::{agent_token, eventually, hub_url, RawLink, Received};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{
    get_job, job_body, new_host_sessions, new_job_sessions, post_analyses, register_ssh_client,
    session_alive, session_names, ssh_key, wait_job, wait_status, COMPLETE, FAILED, PATIENCE,
    TRACE_RUNNING,
};
use tracevisor_tests::lttng::{self, ensure_sessiond, Relayd};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;
use tracevisor_tests::sshd::Sshd;

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-engine-")
}

use tracevisor_tests::block_on as run;

#[test]
fn sigterm_during_an_ssh_job_destroys_its_session_and_records_why() {
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
        let dir = data_dir();
        let mut c = Coordinator::start(dir.path(), &[]).unwrap();
        let sshd = Sshd::start(&ssh_key(&c).await.unwrap()).unwrap();
        register_ssh_client(&c, "sshhost", sshd.port())
            .await
            .unwrap();
        let before = session_names().unwrap();
        let mut body = job_body("sshhost", 600.0, "ust");
        body["wait"] = json!(false);
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        let job = wait_status(&c, id, TRACE_RUNNING, PATIENCE).await.unwrap();
        assert!(
            job["ssh_session"]["session"].is_string(),
            "the SSH session is recorded while the job runs: {job}"
        );
        let sessions = new_job_sessions(id, "sshhost", &before).unwrap();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        let name = sessions[0].name.clone();
        assert_eq!(job["ssh_session"]["session"], name.as_str());

        assert_eq!(c.terminate().unwrap(), Some(0), "a clean exit on SIGTERM");
        assert!(
            !session_alive(&name).unwrap(),
            "SIGTERM destroyed the job's session {name} on the host"
        );
        let logs = c.logs();
        assert!(logs.contains("tracevisor stopped"), "{logs}");
        // The database was closed, not cut off: its background tasks stopped first.
        assert!(!logs.contains("did not shut down cleanly"), "{logs}");
        assert!(!logs.contains("did not close"), "{logs}");
        assert!(
            !logs.contains(" ERROR "),
            "a clean stop logs no error: {logs}"
        );

        let c = Coordinator::start(dir.path(), &[]).unwrap();
        let job = get_job(&c, id).await.unwrap();
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["error"]["step"], "coordinator-shutdown", "{job}");
        assert!(job["ssh_session"].is_null(), "forgotten once ended: {job}");
        let (status, _) = c.get(&format!("/jobs/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 200);
    });
}

fn kill9_during_a_fleet_then_restart_ends_it_with_an_outcome_per_host_and_cleans_up() {
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
        let dir = data_dir();
        let mut c = Coordinator::start(dir.path(), &[]).unwrap();
        let sshd = Sshd::start(&ssh_key(&c).await.unwrap()).unwrap();
        let hosts = ["fleet-ssh-a", "fleet-ssh-b"];
        for host in hosts {
            register_ssh_client(&c, host, sshd.port()).await.unwrap();
        }
        let before = session_names().unwrap();
        let body = json!({
            "hosts": hosts, "duration": 600, "type": "ust", "username": "root",
            "wait": false, "host_timeout": 60,
        });
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let fleet = answer.job_id().unwrap();
        // Both hosts recording, and their sessions recorded in the fleet's record.
        let running = wait_job(&c, fleet, "recording on both hosts", PATIENCE, |j| {
            j["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().all(|e| e["ssh_session"]["session"].is_string()))
        })
        .await
        .unwrap();
        let mut sessions = Vec::new();
        for host in hosts {
            eventually(&format!("a session on {host}"), PATIENCE, || {
                !new_host_sessions(host, &before).unwrap().is_empty()
            })
            .await
            .unwrap();
            sessions.extend(new_host_sessions(host, &before).unwrap());
        }
        assert_eq!(sessions.len(), 2, "{sessions:?} {running}");

        c.kill9().unwrap();
        for s in &sessions {
            assert!(
                session_alive(s).unwrap(),
                "{s} still recording after kill -9"
            );
        }

        let c = Coordinator::start(dir.path(), &[]).unwrap();
        let job = get_job(&c, fleet).await.unwrap();
        assert_eq!(job["status"], FAILED, "{job}");
        assert_eq!(job["error"]["step"], "fleet", "{job}");
        assert_eq!(job["outcomes"]["error"], 2, "{job}");
        assert_eq!(job["outcomes"]["pending"], 0, "{job}");
        assert!(job["finished"].is_string(), "{job}");
        for entry in job["hosts"].as_array().unwrap() {
            assert_eq!(entry["outcome"], "error", "{entry}");
            assert_eq!(entry["error"]["step"], "coordinator-restart", "{entry}");
            assert!(entry["ssh_session"].is_null(), "{entry}");
        }
        // The sessions the previous run left recording are destroyed on their host.
        for s in &sessions {
            eventually(
                &format!("{s} destroyed after the restart"),
                PATIENCE,
                || !session_alive(s).unwrap(),
            )
            .await
            .unwrap();
        }
        assert!(
            c.logs()
                .contains("destroyed a session left by the previous run"),
            "{}",
            c.logs()
        );
        // An ended fleet is no longer running.
        let (status, _) = c.delete(&format!("/jobs/{fleet}")).await.unwrap();
        assert_eq!(status.as_u16(), 409);
    });
}

#[test]
fn an_acknowledged_result_survives_kill9_and_other_hosts_cannot_forge_it() {
    run(async {
        let dir = data_dir();
        let mut c = Coordinator::start(dir.path(), &[]).unwrap();
        let token = agent_token(dir.path()).unwrap();
        let url = hub_url(c.addr, false);
        let mut victim = RawLink::agent(&url, &token, "victim-host").await.unwrap();
        victim.hello("victim-host").await.unwrap();
        let mut rogue = RawLink::agent(&url, &token, "rogue-host").await.unwrap();
        rogue.hello("rogue-host").await.unwrap();

        let mut body = job_body("victim-host", 1.0, "ust");
        body["wait"] = json!(false);
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        let start = victim
            .recv_until("start-job", |m| matches!(m, Message::StartJob { .. }))
            .await
            .unwrap();
        assert!(matches!(start, Message::StartJob { job_id, .. } if job_id == id));

        // Another enrolled host speaks for the victim's job; the victim itself reports a
        // status that is not a running one.
        for status in [2, 4] {
            rogue
                .send(Message::JobProgress {
                    job_id: id,
                    status,
                    message: "forged".into(),
                })
                .await
                .unwrap();
        }
        rogue
            .send(Message::JobResult {
                job_id: id,
                outcome: JobOutcome::Ok {
                    result_json: r#"{"forged": true}"#.into(),
                },
            })
            .await
            .unwrap();
        for status in [4, 100, -1] {
            victim
                .send(Message::JobProgress {
                    job_id: id,
                    status,
                    message: "out of range".into(),
                })
                .await
                .unwrap();
        }
        // A status the agent may report still moves the job.
        victim
            .send(Message::JobProgress {
                job_id: id,
                status: 2,
                message: "tracing".into(),
            })
            .await
            .unwrap();
        let job = wait_status(&c, id, TRACE_RUNNING, PATIENCE).await.unwrap();
        assert!(job["result"].is_null(), "nothing forged was stored: {job}");
        let heard = rogue.recv(Duration::from_millis(500)).await;
        assert!(
            !matches!(heard, Received::Frame(Message::ResultAck { .. })),
            "the forged result was acknowledged"
        );

        victim
            .send(Message::JobResult {
                job_id: id,
                outcome: JobOutcome::Ok {
                    result_json: r#"{"kind": "ust", "host": "victim-host", "total": 7}"#.into(),
                },
            })
            .await
            .unwrap();
        victim
            .recv_until(
                "result-ack",
                |m| matches!(m, Message::ResultAck { job_id } if *job_id == id),
            )
            .await
            .unwrap();
        // Acknowledged means committed: a crash right now loses nothing.
        c.kill9().unwrap();

        let c = Coordinator::start(dir.path(), &[]).unwrap();
        let job = get_job(&c, id).await.unwrap();
        assert_eq!(job["status"], COMPLETE, "{job}");
        assert_eq!(job["result"]["total"], 7, "{job}");
        assert!(job["result"].get("forged").is_none(), "{job}");
    });
}

#[test]
fn a_relay_registered_by_address_is_analysed_over_ssh_at_that_address() {
    require!(
        Req::Root,
        Req::Lttng,
        Req::Relayd,
        Req::Sshd,
        Req::SshClient,
        Req::Babeltrace2
    );
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &[]).unwrap();
        let key = ssh_key(&c).await.unwrap();
        let traced = Sshd::start(&key).unwrap();
        register_ssh_client(&c, "sshhost", traced.port())
            .await
            .unwrap();
        // The relay host has no port setting: it is reached on 22 at its registered address.
        let relay_sshd = Sshd::start_on_port(&key, 22).unwrap();
        let relayd = Relayd::start().unwrap();
        let (status, relay) = c
            .post(
                "/relays",
                &json!({
                    "hostname": "relay-a",
                    "ipv4": "127.0.0.1",
                    "ctrlport": relayd.ctrl_port(),
                    "dataport": relayd.data_port(),
                    "output_dir": relayd.output_dir().display().to_string(),
                }),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{relay}");
        let mut body = job_body("sshhost", 2.0, "ust");
        body["relay"] = json!("relay-a");
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        let job: &Json = &answer.body;
        assert_eq!(
            answer.status.as_u16(),
            200,
            "{job}\nrelay sshd log:\n{}",
            relay_sshd.log()
        );
        assert_eq!(job["analysis"], "relay-a", "{job}");
        assert_eq!(job["analysis_via"], "ssh", "{job}");
        assert_eq!(job["result"]["host"], "relay-a", "{job}");
        assert_eq!(job["result"]["recorded_on"], "sshhost", "{job}");
        let trace = job["result"]["trace"].as_str().unwrap();
        assert!(
            trace.starts_with(&relayd.output_dir().display().to_string()),
            "{trace}"
        );
        assert!(
            relay_sshd.log().contains("Accepted publickey"),
            "the analysis logged in at the relay's address:\n{}",
            relay_sshd.log()
        );
    });
}

tracevisor_tests::through_both_lttng_controls!(
    kill9_during_a_fleet_then_restart_ends_it_with_an_outcome_per_host_and_cleans_up,
);
