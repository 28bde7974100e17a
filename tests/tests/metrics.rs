//! `GET /metrics` of the real coordinator binary, parsed by the official Prometheus client's
//! text-format parser (`prometheus_client.parser`, python3-prometheus-client): it wants the
//! token like the API, and its figures follow what happened (an agent registered over the real
//! protocol, a job that failed, database queries answered).
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::json;
use tracevisor_tests::agents::{agent_token, hub_url, RawLink};
use tracevisor_tests::block_on as run;
use tracevisor_tests::coordinator::Coordinator;
use tracevisor_tests::prometheus::{parse, sample};
use tracevisor_tests::require;
use tracevisor_tests::skip::Req;

const TOKEN: &str = "metrics-test-token-0123456789abcdef";

#[test]
fn metrics_parse_as_prometheus_text_and_follow_agents_jobs_and_the_database() {
    require!(Req::PrometheusParser);
    let dir = tracevisor_tests::temp_dir("tv-metrics-");
    let mut c = Coordinator::start(dir.path(), &["--token", TOKEN]).unwrap();
    run(async {
        let http = reqwest::Client::new();
        let anonymous = http.get(c.url("/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        c.token = Some(TOKEN.into());

        let url = hub_url(c.addr, false);
        let token = agent_token(&c.data_dir).unwrap();
        let mut link = RawLink::agent(&url, &token, "metrics-1").await.unwrap();
        link.hello("metrics-1").await.unwrap();
        // A job that fails at once (the host does not resolve), over SSH.
        let (status, job) = c
            .post(
                "/analyses",
                &json!({ "type": "ust", "host": "nowhere.invalid", "username": "root", "duration": 1 }),
            )
            .await
            .unwrap();
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{job}"
        );
        // And a fleet job whose hosts do not resolve either.
        let (_, fleet) = c
            .post(
                "/analyses",
                &json!({ "type": "ust", "hosts": ["a.invalid", "b.invalid"], "username": "root", "duration": 1 }),
            )
            .await
            .unwrap();
        assert_eq!(fleet["kind"], "fleet", "{fleet}");

        let scraped = http
            .get(c.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(scraped.status(), StatusCode::OK);
        assert!(scraped.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = scraped.text().await.unwrap();
        let parsed = parse(&text);
        assert_eq!(
            parsed["types"]["tracevisor_job_duration_seconds"],
            "histogram"
        );
        assert_eq!(parsed["types"]["tracevisor_agent_registrations"], "counter");
        assert_eq!(
            sample(&parsed, "tracevisor_agents_connected", &[]),
            Some(1.0),
            "{text}"
        );
        assert!(sample(&parsed, "tracevisor_agent_registrations_total", &[]).unwrap() >= 1.0);
        assert_eq!(
            sample(
                &parsed,
                "tracevisor_jobs_ended_total",
                &[("kind", "single"), ("type", "ust"), ("status", "failed")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &parsed,
                "tracevisor_jobs_ended_total",
                &[("kind", "fleet"), ("type", "ust"), ("status", "failed")]
            ),
            Some(1.0),
            "{text}"
        );
        // One single job and one fleet job, each observed once.
        assert_eq!(
            sample(
                &parsed,
                "tracevisor_job_duration_seconds_count",
                &[("type", "ust")]
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &parsed,
                "tracevisor_job_duration_seconds_bucket",
                &[("type", "ust"), ("le", "+Inf")]
            ),
            Some(2.0)
        );
        assert!(
            sample(&parsed, "tracevisor_database_query_seconds_count", &[]).unwrap() > 0.0,
            "{text}"
        );
        assert_eq!(sample(&parsed, "tracevisor_database_up", &[]), Some(1.0));
        assert_eq!(sample(&parsed, "tracevisor_jobs_running", &[]), Some(0.0));
        assert!(sample(&parsed, "process_resident_memory_bytes", &[]).unwrap() > 1e6);

        // The agent leaves: the gauge follows.
        drop(link);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = http
                .get(c.url("/metrics"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if sample(&parse(&text), "tracevisor_agents_connected", &[]) == Some(0.0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agents_connected stayed up: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
}
