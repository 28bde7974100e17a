//! The engine in process: a `mem://` store, the real hub, and agents speaking the real protocol
//! over channels ([`FakeAgent`]). Grace timers, results from the wrong host, duplicates, fleet
//! timeouts, shutdown and restart recovery, without processes or sockets.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracevisor_protocol::{JobOutcome, Message};

use super::*;
use crate::hub::testing::FakeAgent;
use crate::hub::TakeoverPolicy;
use crate::model::{FleetEntry, JobKind, Outcome, SshSession, Step, Via};
use crate::ssh::HostKeyPolicy;
use crate::store::StorageLimits;

const INSTANCE: &str = "0test000";

struct Setup {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    store: Store,
    shutdown: CancellationToken,
}

async fn setup(heartbeat: Duration) -> Setup {
    let store = Store::open("mem://", StorageLimits::default())
        .await
        .expect("mem:// store");
    let shutdown = CancellationToken::new();
    let mut config = Config::for_data_dir("/nonexistent/tracevisor-test");
    config.heartbeat_interval = heartbeat;
    let (hub, events) = Hub::new(
        store.clone(),
        "agent-token".into(),
        heartbeat,
        shutdown.clone(),
        INSTANCE.into(),
        100,
        TakeoverPolicy::PinAddress,
    );
    let engine = Engine::new(
        store.clone(),
        hub.clone(),
        Arc::new(config),
        SshSettings {
            key_file: "/nonexistent/key".into(),
            known_hosts: "/nonexistent/known_hosts".into(),
            policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(1),
            traces: Default::default(),
            tracesd: None,
        },
        INSTANCE.into(),
        shutdown.clone(),
    );
    engine.spawn_event_loop(events);
    Setup {
        engine,
        hub,
        store,
        shutdown,
    }
}

fn request(host: &str, duration: f64) -> JobRequest {
    JobRequest {
        host: host.into(),
        duration,
        analysis_type: "ust".into(),
        username: "root".into(),
        relay: None,
        analysis_host: None,
        mongohost: None,
        mongoport: None,
        wait: false,
        keep_trace: false,
        snapshot_of: None,
    }
}

fn ok(result: serde_json::Value) -> JobOutcome {
    JobOutcome::Ok {
        result_json: result.to_string(),
    }
}

async fn started(agent: &mut FakeAgent) -> u64 {
    match agent
        .expect("start-job", |m| matches!(m, Message::StartJob { .. }))
        .await
    {
        Message::StartJob { job_id, .. } => job_id,
        _ => unreachable!(),
    }
}

async fn acked(agent: &mut FakeAgent, id: u64) {
    agent
        .expect(
            "result-ack",
            |m| matches!(m, Message::ResultAck { job_id } if *job_id == id),
        )
        .await;
}

/// Polls the stored job until `pred` holds (60 s at most: a bound for a loaded machine, well
/// past the engine's own 10 s restart grace).
async fn stored_until(store: &Store, id: u64, pred: impl Fn(&JobRecord) -> bool) -> JobRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = store.job(id).await.unwrap().unwrap();
        if pred(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never got there: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_result_is_committed_before_it_is_acknowledged_and_stored_once() {
    let s = setup(Duration::from_secs(5)).await;
    let mut agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let (id, _view) = s.engine.submit(request("web-1", 0.1)).await.unwrap();
    assert_eq!(started(&mut agent).await, id);
    let job = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(job.agent.as_deref(), Some("web-1"));
    assert_eq!(job.via, Some(Via::Agent));

    agent
        .send(Message::JobResult {
            job_id: id,
            outcome: ok(json!({"kind": "ust", "total": 3})),
        })
        .await;
    acked(&mut agent, id).await;
    // Acknowledged means committed.
    let job = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Complete);
    assert_eq!(job.result.as_ref().unwrap()["total"], 3);
    let finished = job.finished.clone();

    // The agent sends it again (it missed the ack): acknowledged, nothing rewritten.
    agent
        .send(Message::JobResult {
            job_id: id,
            outcome: ok(json!({"kind": "ust", "total": 99})),
        })
        .await;
    acked(&mut agent, id).await;
    let again = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(again.result.as_ref().unwrap()["total"], 3);
    assert_eq!(again.finished, finished);
    assert_eq!(s.engine.running(), 0);
}

#[tokio::test]
async fn results_and_progress_count_only_from_the_host_the_job_was_sent_to() {
    let s = setup(Duration::from_secs(5)).await;
    let mut victim = FakeAgent::connect(&s.hub, "victim", Vec::new()).await;
    let mut rogue = FakeAgent::connect(&s.hub, "rogue", Vec::new()).await;
    let (id, _view) = s.engine.submit(request("victim", 0.1)).await.unwrap();
    assert_eq!(started(&mut victim).await, id);

    rogue
        .send(Message::JobProgress {
            job_id: id,
            status: 3,
            message: "forged".into(),
        })
        .await;
    rogue
        .send(Message::JobResult {
            job_id: id,
            outcome: ok(json!({"forged": true})),
        })
        .await;
    // Statuses outside 1-3 are never taken from an agent.
    for status in [4, 100, -1] {
        victim
            .send(Message::JobProgress {
                job_id: id,
                status,
                message: "out of range".into(),
            })
            .await;
    }
    assert!(
        rogue.recv(Duration::from_millis(300)).await.is_none(),
        "nothing is acknowledged to the rogue"
    );
    let job = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Started, "{job:?}");
    assert!(job.result.is_none());

    victim
        .send(Message::JobProgress {
            job_id: id,
            status: 2,
            message: "tracing".into(),
        })
        .await;
    stored_until(&s.store, id, |j| j.status == JobStatus::TraceRunning).await;
    victim
        .send(Message::JobResult {
            job_id: id,
            outcome: ok(json!({"kind": "ust", "total": 1})),
        })
        .await;
    acked(&mut victim, id).await;
    let job = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Complete);
    assert_eq!(job.result.unwrap()["total"], 1);
}

#[tokio::test]
async fn a_link_that_stays_down_fails_its_job_after_three_heartbeats() {
    let s = setup(Duration::from_millis(50)).await;
    let mut agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let (id, _view) = s.engine.submit(request("web-1", 60.0)).await.unwrap();
    assert_eq!(started(&mut agent).await, id);
    agent.cut().await;
    let job = stored_until(&s.store, id, |j| j.status.is_ended()).await;
    let error = job.error.unwrap();
    assert_eq!(error.step, Step::AgentLost, "{error:?}");
    assert!(error.message.contains("did not reconnect"), "{error:?}");
}

#[tokio::test]
async fn an_agent_that_comes_back_without_the_job_fails_it() {
    let s = setup(Duration::from_secs(5)).await;
    let mut agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let (id, _view) = s.engine.submit(request("web-1", 60.0)).await.unwrap();
    assert_eq!(started(&mut agent).await, id);
    agent.cut().await;
    // Back at once, without the job in its running list (it restarted).
    let _agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let job = stored_until(&s.store, id, |j| j.status.is_ended()).await;
    assert_eq!(job.error.unwrap().step, Step::AgentRestart);
}

#[tokio::test]
async fn a_fleet_host_that_never_answers_times_out_and_its_agent_is_told_to_stop() {
    let s = setup(Duration::from_secs(5)).await;
    let mut agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let fleet = FleetRequest {
        hosts: HostSelection::List(vec!["web-1".into(), "never-seen".into()]),
        template: request("fleet.invalid", 0.05),
        host_timeout: 0.2,
    };
    let (id, _view) = s.engine.submit_fleet(fleet).await.unwrap();
    let child = started(&mut agent).await;
    assert_eq!(child_of(child), Some((id, 0)));
    let cancel = agent
        .expect("cancel-job", |m| matches!(m, Message::CancelJob { .. }))
        .await;
    assert!(matches!(cancel, Message::CancelJob { job_id } if job_id == child));
    let job = stored_until(&s.store, id, |j| j.status.is_ended()).await;
    assert_eq!(job.status, JobStatus::Failed);
    let hosts = job.hosts.unwrap();
    assert_eq!(hosts[0].outcome, Outcome::Timeout, "{:?}", hosts[0]);
    assert_eq!(hosts[0].error.as_ref().unwrap().step, Step::Timeout);
    // The other host is tried over SSH by name and fails on its own.
    assert_eq!(hosts[1].outcome, Outcome::Error, "{:?}", hosts[1]);
    assert_eq!(job.outcomes.unwrap().timeout, 1);

    // Its late result is acknowledged (the agent may forget it) and changes nothing.
    agent
        .send(Message::JobResult {
            job_id: child,
            outcome: ok(json!({"late": true})),
        })
        .await;
    acked(&mut agent, child).await;
    let after = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(after.hosts.unwrap()[0].outcome, Outcome::Timeout);
}

#[tokio::test]
async fn shutdown_leaves_agent_jobs_to_their_agent_and_every_task_ends() {
    let s = setup(Duration::from_secs(5)).await;
    let mut agent = FakeAgent::connect(&s.hub, "web-1", Vec::new()).await;
    let (id, mut view) = s.engine.submit(request("web-1", 60.0)).await.unwrap();
    assert_eq!(started(&mut agent).await, id);
    s.shutdown.cancel();
    assert_eq!(s.engine.stopped(Duration::from_secs(10)).await, 0);
    // Not ended here: the agent finishes it and the next run stores its result.
    let job = s.store.job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Started, "{job:?}");
    assert!(view.changed().await.is_err(), "waiters are released");
    assert_eq!(s.engine.running(), 0);
}

fn record(host: &str, status: JobStatus) -> JobRecord {
    JobRecord {
        host: Some(host.into()),
        analysis: Some(host.into()),
        phases: Some(1),
        status,
        ..JobRecord::started("ust", "root", 1.0, None, &now())
    }
}

#[tokio::test]
async fn recovery_ends_or_resumes_everything_a_previous_run_left() {
    let s = setup(Duration::from_secs(5)).await;
    // What a crashed run left: an SSH job with its session, a fleet half done, a
    // single-phase agent job, a two-phase agent job.
    let ssh = s
        .store
        .create_job(&JobRecord {
            via: Some(Via::Ssh),
            ssh_session: Some(SshSession {
                address: "127.0.0.1".into(),
                port: 1,
                user: "root".into(),
                display: "ssh-1".into(),
                session: format!("tracevisor-{INSTANCE}-1-ssh-1"),
            }),
            ..record("ssh-1", JobStatus::TraceRunning)
        })
        .await
        .unwrap();
    let done = FleetEntry {
        jobid: Some(child_id(2, 0)),
        outcome: Outcome::Complete,
        status: Some(JobStatus::Complete),
        result: Some(json!({"kind": "ust"})),
        ..FleetEntry::pending("a")
    };
    let pending = FleetEntry {
        jobid: Some(child_id(2, 1)),
        ..FleetEntry::pending("b")
    };
    let fleet = s
        .store
        .create_job(&JobRecord {
            kind: Some(JobKind::Fleet),
            host: None,
            phases: None,
            hosts: Some(vec![done.clone(), pending]),
            ..record("", JobStatus::TraceRunning)
        })
        .await
        .unwrap();
    let on_agent = s
        .store
        .create_job(&JobRecord {
            via: Some(Via::Agent),
            agent: Some("web-9".into()),
            ..record("web-9", JobStatus::TraceRunning)
        })
        .await
        .unwrap();
    let two_phase = s
        .store
        .create_job(&JobRecord {
            via: Some(Via::Agent),
            agent: Some("web-8".into()),
            phases: Some(2),
            ..record("web-8", JobStatus::AnalysisRunning)
        })
        .await
        .unwrap();

    s.engine.recover().await.unwrap();

    let job = s.store.job(ssh.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.unwrap().step, Step::CoordinatorRestart);
    assert!(job.ssh_session.is_none(), "forgotten once ended");

    let job = s.store.job(fleet.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.finished.is_some());
    let hosts = job.hosts.unwrap();
    assert_eq!(hosts[0], done, "a host's outcome stays");
    assert_eq!(hosts[1].outcome, Outcome::Error);
    assert_eq!(
        hosts[1].error.as_ref().map(|e| e.step),
        Some(Step::CoordinatorRestart)
    );
    assert_eq!(job.outcomes.unwrap().pending, 0);

    let job = s.store.job(two_phase.id).await.unwrap().unwrap();
    assert_eq!(job.error.unwrap().step, Step::CoordinatorRestart);

    // The single-phase agent job waits for its agent, which delivers the result it kept.
    let job = s.store.job(on_agent.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::TraceRunning);
    let mut agent = FakeAgent::connect(&s.hub, "web-9", vec![on_agent.id]).await;
    agent
        .send(Message::JobResult {
            job_id: on_agent.id,
            outcome: ok(json!({"kind": "ust", "total": 5})),
        })
        .await;
    acked(&mut agent, on_agent.id).await;
    let job = s.store.job(on_agent.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Complete);
    assert_eq!(job.result.unwrap()["total"], 5);

    // Nothing is left running.
    assert!(s.store.unfinished_jobs().await.unwrap().is_empty());
}
