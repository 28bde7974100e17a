//! Three real coordinators sharing one real SurrealDB server (this crate's `surrealdb-server`,
//! SurrealDB's own server at the SDK's version) as a cluster, with real `tracesd` agents and a
//! real lttng-sessiond: a request on one coordinator runs on an agent another one holds, a
//! fleet covers agents on all three, the registry is one, a `kill -9` moves agents and ends
//! their jobs, two links for one host leave exactly one owner, a late close does not clear a
//! newer owner, and the internal API refuses a caller without the cluster token.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tracevisor_tests::agents::{client, clients, hub_url, wait_clients, Agent, RawLink};
use tracevisor_tests::block_on as run;
use tracevisor_tests::cluster::{ClusterSetup, Member};
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::jobs_support::{get_job, job_body, post_analyses, wait_ended};
use tracevisor_tests::lttng::ensure_sessiond;
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const PATIENCE: Duration = Duration::from_secs(120);
/// The agents' reconnection backoff is capped at 30 s: a killed coordinator's agents are on
/// another one within that.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// Which member holds `hostname`'s link, as `GET /clients` on `c` says (connected only).
async fn holder(c: &Coordinator, hostname: &str) -> Option<String> {
    let list = clients(c).await.ok()?;
    let record = client(&list, hostname)?;
    (record["agent"]["connected"] == true)
        .then(|| record["agent"]["coordinator"].as_str().map(str::to_owned))
        .flatten()
}

async fn wait_members(m: &Member, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, status) = m.coordinator.get("/status").await.unwrap();
        let alive = status["cluster"]["members"]
            .as_array()
            .map(|a| a.iter().filter(|m| m["alive"] == true).count())
            .unwrap_or(0);
        if alive == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} members never alive: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ust job body without keeping the trace (nothing to clean up after).
fn ust(host: &str) -> Json {
    let mut body = job_body(host, 1.0, "ust");
    body["keep_trace"] = json!(false);
    body
}

/// The value of `name` with `labels` in a Prometheus exposition, as the official client's
/// parser reads it.
fn prometheus_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    tracevisor_tests::prometheus::sample(&tracevisor_tests::prometheus::parse(text), name, labels)
}

#[test]
fn three_coordinators_share_the_registry_the_agents_and_the_jobs() {
    require!(
        Req::Root,
        Req::Lttng,
        Req::Babeltrace2,
        Req::PrometheusParser
    );
    let _ust = tracevisor_tests::lttng::ust_exclusive();
    ensure_sessiond().unwrap();
    let setup = ClusterSetup::new().unwrap();
    let mut members: Vec<Option<Member>> =
        (0..3).map(|_| Some(setup.member(&[]).unwrap())).collect();
    run(async {
        let m = |i: usize| members[i].as_ref().unwrap();
        for i in 0..3 {
            wait_members(m(i), 3).await;
        }
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(m(i).id().await.unwrap());
        }
        let (a, c) = (&m(0).coordinator, &m(2).coordinator);

        // The registry written through A is read through C.
        let (status, relay) = a
            .post(
                "/relays",
                &json!({"hostname": "relay-cluster", "ipv4": "10.9.8.7"}),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{relay}");
        let (_, relays) = c.get("/relays").await.unwrap();
        assert!(
            relays
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["hostname"] == "relay-cluster"),
            "{relays}"
        );

        // One agent per coordinator (each given only that one), enrolled through it.
        let names = ["cl-a", "cl-b", "cl-c"];
        let mut agents = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let url = hub_url(m(i).coordinator.addr, false);
            agents.push(Agent::start_with(&url, &setup.agent_token, name, &[]).unwrap());
        }
        // Every member shows every agent, held where it linked.
        for i in 0..3 {
            wait_clients(&m(i).coordinator, "the three agents", PATIENCE, |list| {
                names.iter().enumerate().all(|(j, n)| {
                    client(list, n).is_some_and(|r| {
                        r["agent"]["connected"] == true
                            && r["agent"]["coordinator"] == ids[j].as_str()
                    })
                })
            })
            .await
            .unwrap();
        }

        // A REST call on A traces for real on the agent B holds; B runs it.
        let answer = post_analyses(a, &ust("cl-b"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["status"], 4, "{}", answer.body);
        assert_eq!(answer.body["runner"], ids[1].as_str(), "{}", answer.body);
        assert_eq!(answer.body["result"]["host"], "cl-b", "{}", answer.body);
        let id = answer.job_id().unwrap();
        assert!(
            m(1).coordinator.logs().contains(&format!("job_id={id}")),
            "B ran job {id}"
        );
        // Its status and result read from any coordinator.
        let seen = get_job(c, id).await.unwrap();
        assert_eq!(seen["status"], 4);
        assert_eq!(seen["result"], answer.body["result"]);

        // A fleet on C covers the agents on all three.
        let answer = post_analyses(
            c,
            &json!({"hosts": names, "duration": 1, "type": "ust", "username": "root"}),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let hosts = answer.body["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 3);
        for host in hosts {
            assert_eq!(host["outcome"], "complete", "{host}");
            assert_eq!(host["result"]["host"], host["host"], "{host}");
        }

        // /metrics on A parses and counts what went through the cluster.
        let metrics = reqwest::get(a.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            prometheus_sample(&metrics, "tracevisor_cluster_members", &[]),
            Some(3.0)
        );
        assert!(
            prometheus_sample(
                &metrics,
                "tracevisor_forwarded_requests_total",
                &[("kind", "job"), ("result", "ok")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{metrics}"
        );
        let metrics = reqwest::get(c.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            prometheus_sample(
                &metrics,
                "tracevisor_forwarded_requests_total",
                &[("kind", "fleet-share"), ("result", "ok")]
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{metrics}"
        );

        // The internal API refuses a caller without the cluster token.
        let http = reqwest::Client::new();
        let internal = format!("http://{}/internal/v1/jobs/{id}/run", m(1).internal);
        let forged = json!({"request": ust("cl-b"), "hostname": "cl-b", "epoch": 1});
        for auth in [Some("Bearer not-the-cluster-token"), None] {
            let mut request = http.post(&internal).json(&forged);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        }

        // An agent that may use any of the three; the coordinator holding it is killed (-9)
        // while it runs a job there.
        let others: Vec<String> = (1..3)
            .map(|i| hub_url(m(i).coordinator.addr, false))
            .collect();
        let roaming = Agent::start_with(
            &hub_url(a.addr, false),
            &setup.agent_token,
            "cl-f",
            &["--coordinator", &others[0], "--coordinator", &others[1]],
        )
        .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let first = loop {
            if let Some(h) = holder(a, "cl-f").await {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "cl-f never linked:\n{}",
                roaming.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let victim = ids.iter().position(|id| *id == first).unwrap();
        let asker = (victim + 1) % 3;
        let other = (victim + 2) % 3;
        eprintln!("cl-f is on member {victim} ({first}); killing it, asking member {asker}");
        let mut running = job_body("cl-f", 3.0, "ust");
        running["keep_trace"] = json!(false);
        running["wait"] = json!(false);
        let started = post_analyses(&m(asker).coordinator, &running, &[])
            .await
            .unwrap();
        assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
        let running_id = started.job_id().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed_at = Instant::now();
        members[victim]
            .as_mut()
            .unwrap()
            .coordinator
            .kill9()
            .unwrap();
        let m = |i: usize| members[i].as_ref().unwrap();
        // Meanwhile a host only the killed member held answers 503 with Retry-After.
        let answer = post_analyses(&m(asker).coordinator, &ust(names[victim]), &[])
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert!(
            answer.header("retry-after").is_some(),
            "{:?}",
            answer.headers
        );
        // The agent is back on one of the two others within its backoff's cap.
        let deadline = killed_at + FAILOVER_BOUND;
        let moved_to = loop {
            match holder(&m(asker).coordinator, "cl-f").await {
                Some(h) if h != first => break h,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "cl-f not on another coordinator within {} s:\n{}",
                FAILOVER_BOUND.as_secs(),
                roaming.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("cl-f moved to {moved_to} after {:?}", killed_at.elapsed());
        assert!(moved_to == ids[asker] || moved_to == ids[other]);
        // The job it ran when its coordinator died ends with the agent's result, delivered
        // after it reconnected.
        let ended = wait_ended(&m(asker).coordinator, running_id, PATIENCE)
            .await
            .unwrap();
        assert_eq!(ended["status"], 4, "{ended}");
        assert_eq!(ended["result"]["host"], "cl-f", "{ended}");
        // A new job on it succeeds, asked on either survivor.
        for i in [asker, other] {
            let answer = post_analyses(&m(i).coordinator, &ust("cl-f"), &[])
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.body["status"], 4, "{}", answer.body);
        }
        // Both survivors see one member gone.
        wait_members(m(asker), 2).await;
        drop(agents);
        drop(roaming);
    });
}

/// Reads frames (answering heartbeats) for `span`; `Err` when the link closed meanwhile.
async fn stays(link: &mut RawLink, span: Duration) -> anyhow::Result<u64> {
    link.keep_alive(span, Duration::from_secs(2)).await
}

#[test]
fn two_links_for_one_host_leave_one_owner_and_a_late_close_keeps_the_newer() {
    let setup = ClusterSetup::new().unwrap();
    let members: Vec<Member> = (0..3).map(|_| setup.member(&[]).unwrap()).collect();
    run(async {
        for m in &members {
            wait_members(m, 3).await;
        }
        let mut ids = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            ids.insert(m.id().await.unwrap(), i);
        }
        let urls: Vec<String> = members
            .iter()
            .map(|m| hub_url(m.coordinator.addr, false))
            .collect();
        // One credential (issued through A), two links at once: through A and through B.
        let credential = RawLink::credential(&urls[0], &setup.agent_token, "dup-1")
            .await
            .unwrap();
        let mut one = RawLink::connect(&urls[0], &credential).await.unwrap();
        let mut two = RawLink::connect(&urls[1], &credential).await.unwrap();
        let (h1, h2) = tokio::join!(one.hello("dup-1"), two.hello("dup-1"));
        h1.unwrap();
        h2.unwrap();
        // The registration that committed last owns the host; the other link is evicted.
        let (s1, s2) = tokio::join!(
            stays(&mut one, Duration::from_secs(8)),
            stays(&mut two, Duration::from_secs(8))
        );
        assert!(
            s1.is_ok() != s2.is_ok(),
            "exactly one link must stay: through A {s1:?}, through B {s2:?}"
        );
        let (survivor, evicted, at) = if s1.is_ok() {
            (one, two, 0)
        } else {
            (two, one, 1)
        };
        drop(evicted);
        let c = &members[2].coordinator;
        let owner = holder(c, "dup-1").await.expect("dup-1 connected");
        assert_eq!(
            ids[&owner], at,
            "the owner is the member that kept its link"
        );
        for m in &members {
            assert_eq!(
                holder(&m.coordinator, "dup-1").await.as_deref(),
                Some(owner.as_str()),
                "every member sees one owner"
            );
        }
        // A newer link through C; the older one's close comes after it registered, and does
        // not clear C's hold.
        let mut newer = RawLink::connect(&urls[2], &credential).await.unwrap();
        newer.hello("dup-1").await.unwrap();
        drop(survivor);
        stays(&mut newer, Duration::from_secs(6)).await.unwrap();
        for m in &members {
            assert_eq!(
                holder(&m.coordinator, "dup-1").await.as_deref(),
                Some(members[2].id().await.unwrap().as_str()),
                "C still holds dup-1 after the older link closed"
            );
        }
        // Its own close clears it.
        drop(newer);
        wait_clients(c, "dup-1 disconnected", PATIENCE, |list| {
            client(list, "dup-1").is_some_and(|r| r["agent"]["connected"] == false)
        })
        .await
        .unwrap();
    });
}
