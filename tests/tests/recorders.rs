//! Flight recorders with the real components: the coordinator binary with its built-in agent, a
//! `tracesd` process, a root lttng-sessiond and the lttng-ust test program. A recorder is armed
//! on two agents, a snapshot taken after the program emitted its events holds them on each
//! host, an agent restart re-arms its recorder (even after its session was lost), and `DELETE`
//! leaves no session.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tracevisor_protocol::{Message, RecorderState};
use tracevisor_tests::agents::{hub_url, is_connected, wait_clients, Agent, RawLink};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{
    check_ust_trace, fetch_trace, session_names, start_with_local_agent, unique_tag, TraceCleanup,
    PATIENCE,
};
use tracevisor_tests::lttng::{
    self, ensure_sessiond, spawn_ust_app, UstAppOptions, UST_TICK_EVENT,
};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const TOKEN: &str = "recorders-test-agent-token";
/// Ticks the program emits while the recorder runs: far fewer than its buffer holds.
const TICKS: u64 = 300;

use tracevisor_tests::block_on as run;

/// The recorder sessions of recorder `id` on this machine that are not in `before` (those of
/// other coordinators, e.g. left by an earlier failed run), sorted.
fn recorder_sessions(id: u64, before: &[String]) -> Vec<String> {
    session_names()
        .unwrap()
        .into_iter()
        .filter(|s| s.starts_with("tracevisor-rec-") && s.contains(&format!("-{id}-")))
        .filter(|s| !before.contains(s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Destroys the recorder sessions this test made when dropped (also when it fails).
struct Sessions(Vec<String>);

impl Drop for Sessions {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = lttng::lttng(&["destroy", name]);
        }
    }
}

/// Polls `GET /recorders/{id}` until `host`'s state is `state` (or the patience runs out).
async fn wait_state(c: &Coordinator, id: u64, host: &str, state: &str) -> Json {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, recorder) = c.get(&format!("/recorders/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 200, "{recorder}");
        let reached = recorder["states"].as_array().is_some_and(|states| {
            states
                .iter()
                .any(|s| s["host"] == host && s["state"] == state)
        });
        if reached {
            return recorder;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never {state}: {recorder}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn a_recorder_on_two_agents_snapshots_what_was_emitted_and_is_rearmed_after_an_agent_restart() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = tracevisor_tests::temp_dir("tv-rec-");
        let c = start_with_local_agent(dir.path(), &["--agent-token", TOKEN])
            .await
            .unwrap();
        let url = hub_url(c.addr, false);
        let mut agent = Agent::start_with(&url, TOKEN, "rec2", &[]).unwrap();
        wait_clients(&c, "both agents", PATIENCE, |l| {
            is_connected(l, "rec2") && is_connected(l, "localhost")
        })
        .await
        .unwrap();

        // Refusals name the field.
        for (body, field) in [
            (json!({"hosts": ["localhost"], "type": "nope"}), "type"),
            (
                json!({"hosts": ["nowhere.invalid"], "type": "ust"}),
                "hosts",
            ),
            (
                json!({"host": "localhost", "type": "ust", "buffer_mib": 0}),
                "buffer_mib",
            ),
            (json!({"type": "ust"}), "hosts"),
        ] {
            let (status, answer) = c.post("/recorders", &body).await.unwrap();
            assert_eq!(status.as_u16(), 422, "{body}: {answer}");
            assert_eq!(answer["field"], field, "{answer}");
        }

        let before: Vec<String> = session_names()
            .unwrap()
            .into_iter()
            .filter(|s| s.starts_with("tracevisor-rec-"))
            .collect();
        let (status, recorder) = c
            .post(
                "/recorders",
                &json!({"hosts": ["localhost", "rec2"], "type": "ust", "buffer_mib": 4}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{recorder}");
        let id = recorder["id"].as_u64().unwrap();
        for state in recorder["states"].as_array().unwrap() {
            assert_eq!(state["state"], "armed", "{recorder}");
        }
        let armed = recorder_sessions(id, &before);
        let _cleanup = Sessions(armed.clone());
        assert_eq!(armed.len(), 2, "{armed:?}");

        // Another enrolled host cannot report for them: its claim that localhost's recorder
        // failed is logged and ignored.
        let mut liar = RawLink::agent(&url, TOKEN, "liar3").await.unwrap();
        liar.hello("liar3").await.unwrap();
        let local = armed.iter().find(|s| s.ends_with("-localhost")).unwrap();
        liar.send(Message::RecordersArmed {
            states: vec![RecorderState {
                session_name: local.clone(),
                error: Some("forged".into()),
            }],
        })
        .await
        .unwrap();
        c.wait_log(
            "ignoring the state of a recorder this host is not part of",
            PATIENCE,
        )
        .unwrap();
        wait_state(&c, id, "localhost", "armed").await;

        // The program emits its ticks once a session enabling them is started: the recorders.
        let tag = unique_tag();
        let mut app = spawn_ust_app(&UstAppOptions::new(TICKS).tag(tag).wait_enabled()).unwrap();
        app.wait_ready(PATIENCE).unwrap();
        let emitted = tokio::task::spawn_blocking(move || app.wait(PATIENCE))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(emitted, TICKS);

        // One snapshot on both hosts at once, analysed like a fleet job, kept for a fetch.
        let (status, job) = c
            .post(
                &format!("/recorders/{id}/snapshots"),
                &json!({"keep_trace": true}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200, "{job}");
        let hosts = job["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2, "{job}");
        for entry in hosts {
            assert_eq!(entry["outcome"], "complete", "{entry}");
            traces.add_result(&entry["result"]);
            let counted = entry["result"]["events"][UST_TICK_EVENT].as_u64();
            assert!(counted >= Some(TICKS), "{entry}");
        }
        let job_id = job["id"].as_u64().unwrap();
        let fetched = fetch_trace(&c, job_id, "*/*").await.unwrap();
        assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
        let out = fetched.unpack().unwrap();
        for host in ["localhost", "rec2"] {
            let host_dir = out.join(host);
            let trace = tracevisor_tests::jobs_support::single_subdir(&host_dir).unwrap();
            let check = check_ust_trace(&trace, tag, 0).unwrap();
            assert_eq!(check.our_ticks, TICKS, "{host}: {check:?}");
            assert_eq!(check.our_seqs, (0..TICKS).collect::<Vec<_>>(), "{host}");
        }
        // The recorders are still armed after a snapshot.
        assert_eq!(recorder_sessions(id, &before).len(), 2);

        // The agent restarts after its host lost the session (as a reboot would): it is armed
        // again when the agent says hello.
        agent.kill9().unwrap();
        let rec2 = armed.iter().find(|s| s.ends_with("-rec2")).unwrap().clone();
        lttng::lttng(&["destroy", &rec2]).unwrap();
        wait_state(&c, id, "rec2", "offline").await;
        let _agent = Agent::start_with(&url, TOKEN, "rec2", &[]).unwrap();
        wait_state(&c, id, "rec2", "armed").await;
        assert!(recorder_sessions(id, &before).contains(&rec2), "re-armed");
        // Only its own: the other host's recorder (on the same session daemon here) is intact.
        assert_eq!(
            recorder_sessions(id, &before),
            armed,
            "{:?}",
            recorder_sessions(id, &before)
        );

        let (status, listed) = c.get("/recorders").await.unwrap();
        assert_eq!(status.as_u16(), 200);
        assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == id));

        // The CLI lists it, then stops it (DELETE), which leaves no session.
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(
                tracevisor_tests::coordinator::binary("tracevisor").unwrap(),
            )
            .args(args)
            .args(["--server", &c.url("")])
            .output()
            .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let listed = cli(&["recorder", "list"]);
        assert!(
            listed.contains("localhost armed") && listed.contains("rec2 armed"),
            "{listed}"
        );
        let deleted: Json =
            serde_json::from_str(&cli(&["recorder", "stop", &id.to_string(), "--json"])).unwrap();
        for state in deleted["states"].as_array().unwrap() {
            assert_eq!(state["state"], "disarmed", "{deleted}");
        }
        // Through liblttng-ctl the session daemon finishes destroying them just after.
        assert!(
            tracevisor_tests::agents::eventually(
                "the recorder's sessions destroyed",
                std::time::Duration::from_secs(10),
                || { recorder_sessions(id, &before).is_empty() }
            )
            .await
            .is_ok(),
            "{:?}",
            recorder_sessions(id, &before)
        );
        let (status, _) = c.get(&format!("/recorders/{id}")).await.unwrap();
        assert_eq!(status.as_u16(), 404);
        let (status, _) = c
            .post(&format!("/recorders/{id}/snapshots"), &json!({}))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 404);
    });
}

/// What a fake coordinator can do with `ArmRecorders` on a host, played with the agent's own
/// code against the real session daemon: only this coordinator's recorder sessions named for
/// this host are created or destroyed; job sessions, other coordinators' recorders, other
/// hosts' and bad requests are left alone.
#[test]
fn recorder_requests_touch_only_the_owners_recorder_sessions_for_this_host() {
    use tracevisor_lttng::lifecycle::LocalExecutor;
    use tracevisor_lttng::recorder::arm_recorders;
    use tracevisor_protocol::RecorderSpec;
    require!(Req::Root, Req::Lttng);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let tag = unique_tag();
        let host = format!("h{tag}");
        let exec = LocalExecutor::new(&host);
        let owner = format!("tracevisor-rec-c{tag}-");
        let bystanders = [
            format!("tracevisor-c{tag}-77-{host}"),
            format!("tracevisor-rec-other{tag}-1-{host}"),
            format!("{owner}1-elsewhere{tag}"),
        ];
        let mut made: Vec<String> = bystanders.to_vec();
        made.push(format!("{owner}5-{host}"));
        let _cleanup = Sessions(made);
        for name in &bystanders {
            lttng::lttng(&["create", name, "--snapshot", "--no-output"]).unwrap();
        }
        let spec = |name: String, buffer_bytes: u64| RecorderSpec {
            session_name: name,
            kernel_events: Vec::new(),
            syscalls: false,
            userspace_events: vec!["tracevisor_test:*".into()],
            buffer_bytes,
        };
        // A broad owner is refused before anything is touched.
        for bad_owner in ["tracevisor-", "tracevisor-rec-", "x"] {
            let states = arm_recorders(
                &exec,
                bad_owner,
                &[spec(format!("{owner}2-{host}"), 1 << 20)],
            )
            .await;
            assert!(
                states[0].error.as_deref().unwrap().contains("owner"),
                "{states:?}"
            );
        }
        // Bad specs are refused one by one; a good one is armed.
        let states = arm_recorders(
            &exec,
            &owner,
            &[
                spec(format!("{owner}3-someone-else"), 1 << 20),
                spec(format!("{owner}4-{host}"), 10 << 30),
                spec(format!("{owner}5-{host}"), 1 << 20),
            ],
        )
        .await;
        assert!(states[0].error.is_some(), "{states:?}");
        assert!(
            states[1].error.as_deref().unwrap().contains("buffer"),
            "{states:?}"
        );
        assert_eq!(states[2].error, None, "{states:?}");
        let names = session_names().unwrap();
        assert!(names.contains(&format!("{owner}5-{host}")));
        assert!(!names.contains(&format!("{owner}3-someone-else")));
        // The empty set disarms this owner's recorder for this host, and nothing else.
        let states = arm_recorders(&exec, &owner, &[]).await;
        assert!(states.is_empty());
        let names = session_names().unwrap();
        assert!(!names.contains(&format!("{owner}5-{host}")), "disarmed");
        for name in &bystanders {
            assert!(names.contains(name), "{name} left alone: {names:?}");
        }
    });
}

tracevisor_tests::through_both_lttng_controls!(
    a_recorder_on_two_agents_snapshots_what_was_emitted_and_is_rearmed_after_an_agent_restart,
);
