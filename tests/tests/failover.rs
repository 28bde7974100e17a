//! An agent given several coordinators (`--coordinator` twice) moves to another when the one
//! it is linked to is killed with `-9`. Both are the real coordinator binary; they know the
//! agent's credential because the second one starts from a copy of the first one's data
//! directory (several coordinators sharing one live registry is the scale-out issue's work;
//! the agent's side of it is this).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tracevisor_tests::agents::{
    agent_token, credential, hub_url, is_connected, wait_clients, Agent,
};
use tracevisor_tests::block_on as run;
use tracevisor_tests::coordinator::Coordinator;

const PATIENCE: Duration = Duration::from_secs(120);

#[test]
fn an_agent_with_two_coordinators_moves_to_the_other_when_one_is_killed() {
    let dir_a = tracevisor_tests::temp_dir("tv-failover-a-");
    let dir_b = tracevisor_tests::temp_dir("tv-failover-b-");
    // Enroll the host once, on A; then B starts from a copy of A's registry.
    let mut first = Coordinator::start(dir_a.path(), &[]).unwrap();
    let token = agent_token(dir_a.path()).unwrap();
    let host_credential =
        credential(&hub_url(first.addr, false), &token, "failover-1", &[]).unwrap();
    assert_eq!(first.terminate().unwrap(), Some(0));
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir_a.path().display()))
        .arg(dir_b.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let a = Coordinator::start(dir_a.path(), &[]).unwrap();
    let b = Coordinator::start(dir_b.path(), &[]).unwrap();
    let (url_a, url_b) = (hub_url(a.addr, false), hub_url(b.addr, false));
    let agent = Agent::start_with(
        &url_a,
        &host_credential,
        "failover-1",
        &["--coordinator", &url_b],
    )
    .unwrap();
    let mut coordinators = [Some(a), Some(b)];
    run(async {
        // It links to one of the two (picked at random).
        let deadline = Instant::now() + PATIENCE;
        let holder = loop {
            let mut found = None;
            for (i, c) in coordinators.iter().enumerate() {
                let c = c.as_ref().unwrap();
                let list = tracevisor_tests::agents::clients(c)
                    .await
                    .unwrap_or_default();
                if is_connected(&list, "failover-1") {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "the agent linked to neither coordinator:\n{}",
                agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let other = 1 - holder;
        let [url_holder, url_other] = if holder == 0 {
            [&url_a, &url_b]
        } else {
            [&url_b, &url_a]
        };
        eprintln!("the agent linked to {url_holder} first; killing it");
        let killed_at = Instant::now();
        coordinators[holder].as_mut().unwrap().kill9().unwrap();
        coordinators[holder] = None;
        wait_clients(
            coordinators[other].as_ref().unwrap(),
            "the agent on the other coordinator",
            PATIENCE,
            |l| is_connected(l, "failover-1"),
        )
        .await
        .unwrap();
        eprintln!(
            "the agent was linked to {url_other} {:.1} s after the kill",
            killed_at.elapsed().as_secs_f64()
        );
        assert!(
            agent.logs().contains(&format!("coordinator={url_other}")),
            "the agent said where it went:\n{}",
            agent.logs()
        );
    });
}
