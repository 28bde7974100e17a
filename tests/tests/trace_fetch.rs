//! Fetching kept traces (`GET /jobs/{id}/trace`) beyond the single-host cases of
//! `trace_jobs.rs`: a fleet's traces in one archive, a 200 MiB trace through the agent link
//! with both processes' memory flat, and a hostile agent that lies about where its trace is
//! or sends an archive that would escape its folder.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value as Json};
use tracevisor_protocol::{JobOutcome, Message, TRACE_CHUNK_BYTES};
use tracevisor_tests::agents::{hub_url, is_connected, wait_clients, Agent, RawLink};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{
    check_ust_trace, fetch_trace, job_body, post_analyses, result_trace, start_with_local_agent,
    unique_tag, TraceCleanup, COMPLETE, PATIENCE,
};
use tracevisor_tests::lttng::{
    self, ensure_sessiond, spawn_ust_app, UstAppOptions, UST_TICK_EVENT,
};
use tracevisor_tests::procfs::rss_kib;
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const TOKEN: &str = "trace-fetch-test-agent-token";

use tracevisor_tests::block_on as run;

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-fetch-")
}

/// A coordinator with its built-in agent (`localhost`) and a `tracesd` process as `name`.
async fn two_agents(dir: &std::path::Path, name: &str) -> (Coordinator, Agent) {
    let c = start_with_local_agent(dir, &["--agent-token", TOKEN])
        .await
        .unwrap();
    let agent = Agent::start_with(&hub_url(c.addr, false), TOKEN, name, &[]).unwrap();
    wait_clients(&c, "both agents", PATIENCE, |l| {
        is_connected(l, name) && is_connected(l, "localhost")
    })
    .await
    .unwrap();
    (c, agent)
}

fn a_fleet_jobs_kept_traces_come_as_one_archive_with_a_folder_per_host() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let (c, _agent) = two_agents(dir.path(), "fleet2").await;
        // A program ticking all along: both hosts' sessions record it.
        let tag = unique_tag();
        let mut app = spawn_ust_app(
            &UstAppOptions::new(0)
                .tag(tag)
                .interval(Duration::from_millis(2)),
        )
        .unwrap();
        app.wait_ready(PATIENCE).unwrap();
        let body = json!({
            "hosts": ["localhost", "fleet2", "offline9"],
            "type": "ust", "duration": 2, "username": "root", "keep_trace": true,
        });
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        drop(app);
        let fleet = &answer.body;
        let id = answer.job_id().unwrap();
        let entries = fleet["hosts"].as_array().unwrap();
        let mut ticks = std::collections::HashMap::new();
        for entry in entries {
            let host = entry["host"].as_str().unwrap();
            if host == "offline9" {
                assert_ne!(entry["outcome"], "complete", "{entry}");
                continue;
            }
            assert_eq!(entry["outcome"], "complete", "{entry}");
            traces.add_result(&entry["result"]);
            assert_eq!(entry["result"]["kept_trace"]["agent"], host, "{entry}");
            ticks.insert(
                host.to_owned(),
                entry["result"]["events"][UST_TICK_EVENT]
                    .as_u64()
                    .unwrap_or(0),
            );
        }
        let fetched = fetch_trace(&c, id, "*/*").await.unwrap();
        assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
        assert!(fetched.complete);
        assert!(
            fetched.headers.get("x-trace-bytes").is_none(),
            "a fleet's size is not known up front"
        );
        let out = fetched.unpack().unwrap();
        let mut folders: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        folders.sort();
        assert_eq!(
            folders,
            ["fleet2", "localhost"],
            "a folder per host that kept a trace"
        );
        for (host, counted) in &ticks {
            let host_dir = out.join(host);
            let trace = tracevisor_tests::jobs_support::single_subdir(&host_dir).unwrap();
            let kept = result_trace(
                &entries.iter().find(|e| e["host"] == host.as_str()).unwrap()["result"],
            )
            .unwrap();
            assert_eq!(trace.file_name(), kept.file_name());
            // The archive holds exactly the trace the host analysed: the same tick count.
            let check = check_ust_trace(&trace, tag, 0).unwrap();
            assert_eq!(check.all_ticks, *counted, "{host}: {check:?}");
        }
        assert!(
            ticks.values().any(|t| *t > 0),
            "the program was traced: {ticks:?}"
        );
    });
}

fn a_200_mib_trace_streams_through_the_agent_link_with_both_processes_memory_flat() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        let (c, agent) = two_agents(dir.path(), "bulk1").await;
        let mut app =
            spawn_ust_app(&UstAppOptions::new(0).interval(Duration::from_millis(5))).unwrap();
        app.wait_ready(PATIENCE).unwrap();
        let answer = post_analyses(&c, &job_body("bulk1", 1.0, "ust"), &[])
            .await
            .unwrap();
        drop(app);
        assert_eq!(answer.body["status"], COMPLETE, "{}", answer.body);
        traces.add_result(&answer.body["result"]);
        let id = answer.job_id().unwrap();
        let trace = result_trace(&answer.body["result"]).unwrap();
        // 200 MiB more in the kept trace directory, not compressible.
        const PAD_MIB: u64 = 200;
        tracevisor_tests::write_incompressible(&trace.join("padding"), PAD_MIB).unwrap();
        let pids = [("coordinator", c.pid()), ("tracesd", agent.pid())];
        let before: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p).unwrap()).collect();
        // Sample both processes' memory during the download.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = [0u64; 2];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (i, (_, pid)) in pids.iter().enumerate() {
                        peak[i] = peak[i].max(rss_kib(*pid).unwrap_or(0));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
        };
        let fetched = fetch_trace(&c, id, "application/x-tar").await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        let after: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p).unwrap()).collect();
        assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
        assert!(fetched.complete);
        for (i, (name, _)) in pids.iter().enumerate() {
            eprintln!(
                "{name}: RSS before {} MiB, peak during the {PAD_MIB} MiB fetch {} MiB, after {} MiB",
                before[i] / 1024,
                peak[i] / 1024,
                after[i] / 1024
            );
            // Flat: what grows is bounded by the windows and buffers (a few MiB), far from the
            // trace's size.
            assert!(
                peak[i] < before[i] + 48 * 1024,
                "{name} grew from {} KiB to {} KiB during the fetch",
                before[i],
                peak[i]
            );
        }
        assert!(fetched.bytes > PAD_MIB << 20, "{} bytes", fetched.bytes);
        // The padding is in the archive whole: GNU tar lists it at its size.
        let listing = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(fetched.archive.as_ref().unwrap())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let padding = listing
            .lines()
            .find(|l| l.ends_with("/padding"))
            .unwrap_or_else(|| panic!("no padding in\n{listing}"));
        assert!(padding.contains(&(PAD_MIB << 20).to_string()), "{padding}");
    });
}

/// A fake agent that completes one job with a result claiming its trace is on some SSH host,
/// then answers the fetch with an archive whose entry escapes its folder.
#[test]
fn a_hostile_agent_cannot_redirect_a_fetch_nor_send_files_outside_its_folder() {
    run(async {
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let mut link = RawLink::agent(&hub_url(c.addr, false), TOKEN, "liar1")
            .await
            .unwrap();
        link.hello("liar1").await.unwrap();
        let submit = {
            let c = &c;
            async move {
                post_analyses(c, &job_body("liar1", 0.2, "ust"), &[])
                    .await
                    .unwrap()
            }
        };
        let agent_side = async {
            let Message::StartJob { job_id, spec } = link
                .recv_until("start-job", |m| matches!(m, Message::StartJob { .. }))
                .await
                .unwrap()
            else {
                unreachable!()
            };
            let path = format!("/var/lib/tracesd/traces/{}", spec.session_name);
            let result = json!({
                "kind": "ust", "events": {}, "total": 0, "processes": [],
                "trace_kept": true, "trace_path": path,
                // What a liar adds: "fetch it from my friend over SSH".
                "kept_trace": {"host": "evil", "via": "ssh", "path": "/etc",
                               "ssh": {"address": "203.0.113.9", "port": 22, "user": "root"}},
            });
            link.send(Message::JobResult {
                job_id,
                outcome: JobOutcome::Ok {
                    result_json: result.to_string(),
                },
            })
            .await
            .unwrap();
            path
        };
        let (answer, path) = tokio::join!(submit, agent_side);
        let job = &answer.body;
        assert_eq!(job["status"], COMPLETE, "{job}");
        let kept = &job["result"]["kept_trace"];
        assert_eq!(
            kept["via"], "agent",
            "the coordinator's own route, not the agent's claim: {kept}"
        );
        assert_eq!(kept["agent"], "liar1", "{kept}");
        assert_eq!(kept["path"], path.as_str(), "{kept}");
        assert!(kept["ssh"].is_null(), "{kept}");
        let id = answer.job_id().unwrap();

        // The fetch goes to the liar itself, which answers with an entry escaping its folder.
        let fetch = fetch_trace(&c, id, "application/x-tar");
        let agent_side = async {
            let Message::FetchTrace {
                fetch_id,
                path: asked,
                window,
            } = link
                .recv_until("fetch-trace", |m| matches!(m, Message::FetchTrace { .. }))
                .await
                .unwrap()
            else {
                unreachable!()
            };
            assert_eq!(asked, path);
            assert!(window as usize >= TRACE_CHUNK_BYTES);
            let mut header = [0u8; 512];
            let name = b"../../../../etc/cron.d/evil";
            header[..name.len()].copy_from_slice(name);
            header[100..108].copy_from_slice(b"0000644\0");
            header[108..116].copy_from_slice(b"0000000\0");
            header[116..124].copy_from_slice(b"0000000\0");
            header[124..136].copy_from_slice(b"00000000004\0");
            header[136..148].copy_from_slice(b"00000000000\0");
            header[156] = b'0';
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
            header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            let mut data = header.to_vec();
            data.extend_from_slice(b"evil");
            data.resize(1024, 0);
            link.send(Message::TraceStart {
                fetch_id,
                bytes: 4,
                files: 1,
            })
            .await
            .unwrap();
            link.send(Message::TraceChunk { fetch_id, data })
                .await
                .unwrap();
            link.send(Message::TraceEnd {
                fetch_id,
                error: None,
            })
            .await
            .unwrap();
        };
        let (fetched, ()) = tokio::join!(fetch, agent_side);
        let fetched = fetched.unwrap();
        // The response started (the trace opened) but is cut off, never completed: no
        // archive that looks whole carries the entry.
        assert_eq!(fetched.status.as_u16(), 200);
        assert!(!fetched.complete, "the download must be cut off");
        let bytes = std::fs::read(fetched.archive.as_ref().unwrap()).unwrap();
        assert!(
            !bytes.windows(4).any(|w| w == b"evil"),
            "nothing of the escaping entry was passed on"
        );
        c.wait_log("leaves its directory", PATIENCE).unwrap();
    });
}

/// `GET /jobs/{id}/trace` of a running job is 409, of an unknown one 404.
#[test]
fn a_running_or_unknown_jobs_trace_is_refused() {
    run(async {
        let dir = data_dir();
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let mut link = RawLink::agent(&hub_url(c.addr, false), TOKEN, "slow1")
            .await
            .unwrap();
        link.hello("slow1").await.unwrap();
        let mut body = job_body("slow1", 30.0, "ust");
        body["wait"] = json!(false);
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        let id = answer.job_id().unwrap();
        link.recv_until("start-job", |m| matches!(m, Message::StartJob { .. }))
            .await
            .unwrap();
        let running = fetch_trace(&c, id, "*/*").await.unwrap();
        assert_eq!(running.status.as_u16(), 409, "{}", running.error);
        assert!(
            running.error["error"]
                .as_str()
                .unwrap()
                .contains("still running"),
            "{}",
            running.error
        );
        let unknown = fetch_trace(&c, 987_654, "*/*").await.unwrap();
        assert_eq!(unknown.status.as_u16(), 404, "{}", unknown.error);
        let _: Json = running.error;
    });
}

/// Unmounts a test file system when dropped (also when the test fails).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn a_full_disk_fails_the_job_clearly_and_leaves_the_kept_traces_whole() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let dir = data_dir();
        // The agent's trace root on a 100 MiB file system of its own.
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=100m,mode=0755", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs");
        let _mount = Mount(mnt.clone());
        let root = mnt.join("traces");
        let config = dir.path().join("tracesd-disk1.toml");
        std::fs::write(
            &config,
            format!("trace_root = {:?}\n", root.display().to_string()),
        )
        .unwrap();
        let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
        let _agent = Agent::start_with(
            &hub_url(c.addr, false),
            TOKEN,
            "disk1",
            &["--config", config.to_str().unwrap()],
        )
        .unwrap();
        wait_clients(&c, "the agent", PATIENCE, |l| is_connected(l, "disk1"))
            .await
            .unwrap();
        let mut app =
            spawn_ust_app(&UstAppOptions::new(0).interval(Duration::from_millis(2))).unwrap();
        app.wait_ready(PATIENCE).unwrap();
        let first = post_analyses(&c, &job_body("disk1", 1.0, "ust"), &[])
            .await
            .unwrap();
        assert_eq!(first.body["status"], COMPLETE, "{}", first.body);
        let kept = result_trace(&first.body["result"]).unwrap();
        assert!(kept.starts_with(&root), "{}", kept.display());
        let counted = first.body["result"]["events"][UST_TICK_EVENT]
            .as_u64()
            .unwrap_or(0);
        // Fill the disk to under the room a job needs.
        std::fs::write(mnt.join("filler"), vec![1u8; 80 << 20]).unwrap();
        let second = post_analyses(&c, &job_body("disk1", 1.0, "ust"), &[])
            .await
            .unwrap();
        drop(app);
        let error = &second.body["error"];
        assert_eq!(second.body["status"], -1, "{}", second.body);
        assert_eq!(error["step"], "create", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("MiB free") && message.contains(&root.display().to_string()),
            "{message}"
        );
        // Nothing of the refused job is left, and the kept trace is whole: the same ticks as
        // its analysis counted, and it is still fetched.
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let check = check_ust_trace(&kept, 0, 0).unwrap();
        assert_eq!(check.all_ticks, counted, "{check:?}");
        let id = first.job_id().unwrap();
        let fetched = fetch_trace(&c, id, "*/*").await.unwrap();
        assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
        assert!(fetched.complete);
    });
}

/// A job that keeps its trace and whose analysis fails says where the trace is, and the trace
/// is fetched: the trace that broke the analysis is the one to look at. Without `keep_trace`,
/// the fetch says the job failed.
fn a_kept_trace_whose_analysis_failed_is_still_fetched() {
    require!(Req::Root, Req::Lttng, Req::UstToolchain, Req::Babeltrace2);
    let _ust = lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    run(async {
        let mut traces = TraceCleanup::default();
        let dir = data_dir();
        // An analysis that always fails (`false` exits 1), on a userspace trace.
        let c = Coordinator::start_with_config(
            dir.path(),
            "[analyses.broken]\nuserspace_events = [\"*\"]\ncommands = [[\"false\", \"{trace}\"]]\n",
            &[tracevisor_tests::coordinator::LOCAL_AGENT],
        )
        .unwrap();
        wait_clients(&c, "the local agent", PATIENCE, |l| {
            is_connected(l, "localhost")
        })
        .await
        .unwrap();
        let tag = unique_tag();
        let mut app = spawn_ust_app(
            &UstAppOptions::new(0)
                .tag(tag)
                .interval(Duration::from_millis(2)),
        )
        .unwrap();
        app.wait_ready(PATIENCE).unwrap();
        let answer = post_analyses(&c, &job_body("localhost", 1.0, "broken"), &[])
            .await
            .unwrap();
        let job = &answer.body;
        assert_eq!(job["status"], -1, "{job}");
        assert_eq!(job["error"]["step"], "analysis", "{job}");
        let kept = &job["error"]["kept_trace"];
        assert_eq!(kept["via"], "agent", "{job}");
        let session = kept["path"].as_str().unwrap();
        assert!(
            session.starts_with("tracevisor-") && !session.contains('/'),
            "{kept}"
        );
        traces.add(
            &std::path::Path::new(tracevisor_tests::jobs_support::AGENT_TRACE_ROOT).join(session),
        );
        let id = answer.job_id().unwrap();
        let fetched = fetch_trace(&c, id, "*/*").await.unwrap();
        assert_eq!(fetched.status.as_u16(), 200, "{}", fetched.error);
        let out = fetched.unpack().unwrap();
        let trace = out.join(session);
        let check = check_ust_trace(&trace, tag, 0).unwrap();
        assert!(
            check.our_ticks > 0,
            "the trace holds the program's ticks: {check:?}"
        );

        // Not kept: the fetch says the job failed, and where.
        let mut body = job_body("localhost", 0.5, "broken");
        body["keep_trace"] = json!(false);
        let answer = post_analyses(&c, &body, &[]).await.unwrap();
        drop(app);
        assert_eq!(answer.body["status"], -1, "{}", answer.body);
        assert!(
            answer.body["error"]["kept_trace"].is_null(),
            "{}",
            answer.body
        );
        let id = answer.job_id().unwrap();
        let fetched = fetch_trace(&c, id, "*/*").await.unwrap();
        assert_eq!(fetched.status.as_u16(), 410, "{}", fetched.error);
        assert!(
            fetched.error["error"]
                .as_str()
                .unwrap_or_default()
                .contains("failed at step analysis"),
            "{}",
            fetched.error
        );
    });
}

tracevisor_tests::through_both_lttng_controls!(
    a_fleet_jobs_kept_traces_come_as_one_archive_with_a_folder_per_host,
    a_200_mib_trace_streams_through_the_agent_link_with_both_processes_memory_flat,
    a_full_disk_fails_the_job_clearly_and_leaves_the_kept_traces_whole,
    a_kept_trace_whose_analysis_failed_is_still_fetched,
);
