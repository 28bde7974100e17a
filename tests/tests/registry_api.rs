//! The REST registry against the real coordinator binary: the seed's examples, restarts, kill -9, bad input.
#![allow(clippy::unwrap_used)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use tracevisor_tests::coordinator::Coordinator;

fn data_dir() -> tempfile::TempDir {
    tracevisor_tests::temp_dir("tv-reg-")
}

/// The seed's sequence (register, list, get, update, delete) for one kind.
async fn seed_sequence(c: &Coordinator, kind: &str, extra_defaults: Json) {
    let (status, created) = c
        .post(
            &format!("/{kind}"),
            &json!({"hostname": "myrelayhostname", "ipv6": "fe80::1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["hostname"], "myrelayhostname");
    assert_eq!(created["ipv6"], "fe80::1");
    assert_eq!(created["ipv4"], Json::Null);
    for (k, v) in extra_defaults.as_object().unwrap() {
        assert_eq!(&created[k], v, "default of {k}");
    }
    let (status, list) = c.get(&format!("/{kind}")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0], created);
    let (status, one) = c.get(&format!("/{kind}/{id}")).await.unwrap();
    assert_eq!((status, &one), (StatusCode::OK, &created));
    let (status, updated) = c
        .put(
            &format!("/{kind}/{id}"),
            &json!({"hostname": "myrelayhostname2", "ipv6": "fe80::1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["hostname"], "myrelayhostname2");
    assert_eq!(updated["id"], created["id"]);
    // PUT changes only the fields given.
    let (_, partial) = c
        .put(&format!("/{kind}/{id}"), &json!({"ipv4": "192.0.2.7"}))
        .await
        .unwrap();
    assert_eq!(
        (
            partial["hostname"].as_str(),
            partial["ipv4"].as_str(),
            partial["ipv6"].as_str()
        ),
        (Some("myrelayhostname2"), Some("192.0.2.7"), Some("fe80::1"))
    );
    let (status, _) = c.delete(&format!("/{kind}/{id}")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = c
            .call(method, &format!("/{kind}/{id}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("not found"));
    }
    let (status, _) = c
        .put(&format!("/{kind}/{id}"), &json!({"hostname": "x"}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = c.get(&format!("/{kind}")).await.unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn seed_examples_in_order() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let (status, root) = {
        let resp = reqwest::get(c.url("/")).await.unwrap();
        (resp.status(), resp.json::<Json>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(root["name"], "tracevisor");
    seed_sequence(&c, "relays", json!({"ctrlport": 5342, "dataport": 5343})).await;
    seed_sequence(&c, "clients", json!({"sshport": 22, "sshuser": "root"})).await;
    seed_sequence(
        &c,
        "analyses_servers",
        json!({"sshport": 22, "sshuser": "root"}),
    )
    .await;

    let (status, ssh) = c.get("/ssh").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let key = ssh["keys"][0].as_str().unwrap();
    assert!(
        key.starts_with("ssh-ed25519 ") && key.contains(" tracevisor@"),
        "{key}"
    );
    let private = dir.path().join("ssh/id_ed25519");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(private).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (_, list) = c.get("/list").await.unwrap();
    assert_eq!(list, json!({"sessions": []}));
    let (_, analyses) = c.get("/analyses").await.unwrap();
    let names: Vec<&str> = analyses
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["analysis"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu", "io", "irq", "mem", "sched", "ust"]);
    let io = &analyses[1];
    assert_eq!(io["syscalls"], true);
    assert!(io["kernel_events"]
        .as_array()
        .unwrap()
        .contains(&json!("block_rq_complete")));
    assert_eq!(io["commands"][0], json!(["lttng-iousagetop-mi", "{trace}"]));

    // The OpenAPI document covers every route.
    let (status, doc) = c.get("/openapi.json").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/",
        "/trace/api/v1.0/relays",
        "/trace/api/v1.0/relays/{id}",
        "/trace/api/v1.0/clients/{id}",
        "/trace/api/v1.0/analyses_servers/{id}",
        "/trace/api/v1.0/ssh",
        "/trace/api/v1.0/analyses",
        "/trace/api/v1.0/list",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
}

#[tokio::test]
async fn ids_survive_restart_and_are_never_reused() {
    let dir = data_dir();
    let mut c = Coordinator::start(dir.path(), &[]).unwrap();
    for i in 1..=3 {
        let (s, r) = c
            .post(
                "/relays",
                &json!({"hostname": format!("r{i}"), "ipv4": "10.0.0.1"}),
            )
            .await
            .unwrap();
        assert_eq!((s, r["id"].as_u64()), (StatusCode::CREATED, Some(i)));
    }
    c.delete("/relays/3").await.unwrap();
    assert_eq!(c.terminate().unwrap(), Some(0), "clean exit on SIGTERM");
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let (_, list) = c.get("/relays").await.unwrap();
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    let (_, r) = c
        .post("/relays", &json!({"hostname": "r4", "ipv4": "10.0.0.1"}))
        .await
        .unwrap();
    // Ids are reserved in blocks: a restart may skip the rest of one, never reuse an id.
    let id = r["id"].as_u64().unwrap();
    assert!(id > 3, "id 3 was deleted and must not be reused: got {id}");
    let (_, next) = c
        .post("/relays", &json!({"hostname": "r5", "ipv4": "10.0.0.1"}))
        .await
        .unwrap();
    assert_eq!(next["id"], id + 1, "consecutive within one run");
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = data_dir();
    let mut c = Coordinator::start(dir.path(), &[]).unwrap();
    let mut acked = Vec::new();
    let mut tasks = Vec::new();
    let c_ref = std::sync::Arc::new(c.api(""));
    for i in 0..200 {
        let base = c_ref.clone();
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/clients"))
                .json(&json!({"hostname": format!("host-{i}"), "ipv4": "10.1.0.1"}))
                .send()
                .await
                .ok()?;
            (resp.status() == StatusCode::CREATED).then_some(())?;
            resp.json::<Json>().await.ok()
        }));
    }
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            acked.push((
                r["id"].as_u64().unwrap(),
                r["hostname"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert_eq!(acked.len(), 200);
    c.kill9().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let (_, list) = c.get("/clients").await.unwrap();
    let stored: std::collections::HashSet<(u64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["hostname"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for a in &acked {
        assert!(
            stored.contains(a),
            "acknowledged write {a:?} lost after kill -9"
        );
    }
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "lists are in id order");
}

/// Strings that would do harm if they reached a shell.
const INJECTIONS: &[&str] = &[
    "localhost; touch /tmp/tracevisor-canary #",
    "$(touch /tmp/tracevisor-canary)",
    "`touch /tmp/tracevisor-canary`",
    "a\nb",
    "a b",
    "a|b",
    "a&&b",
    "../../etc/passwd",
    "-oProxyCommand=touch",
    "",
];

#[tokio::test]
async fn bad_input_is_refused_and_nothing_stored() {
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    for kind in ["relays", "clients", "analyses_servers"] {
        let path = format!("/{kind}");
        // Malformed JSON, with the parse error.
        let resp = c
            .request(Method::POST, &path)
            .header("content-type", "application/json")
            .body("{\"hostname\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Json = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("malformed JSON"),
            "{body}"
        );
        // Not an object.
        let (s, _) = c.post(&path, &json!(["hostname"])).await.unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // Wrong content type.
        let resp = c
            .request(Method::POST, &path)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Oversized body.
        let big = json!({"hostname": "h", "ipv4": "10.0.0.1", "pad": "x".repeat(70 * 1024)});
        let (s, body) = c.post(&path, &big).await.unwrap();
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        // Missing and mistyped fields name the field.
        for (body, field) in [
            (json!({"ipv4": "10.0.0.1"}), "hostname"),
            (json!({"hostname": "h"}), "ipv4"),
            (json!({"hostname": ["h"], "ipv4": "10.0.0.1"}), "hostname"),
            (json!({"hostname": "h", "ipv4": 10}), "ipv4"),
            (json!({"hostname": "h", "ipv4": "10.0.0.999"}), "ipv4"),
            (json!({"hostname": "h", "ipv6": "fe80::1::2"}), "ipv6"),
        ] {
            let (s, answer) = c.post(&path, &body).await.unwrap();
            assert_eq!(
                s,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{kind} {body}: {answer}"
            );
            assert_eq!(answer["field"], field, "{kind} {body}: {answer}");
        }
        let port_fields: &[&str] = if kind == "relays" {
            &["ctrlport", "dataport"]
        } else {
            &["sshport"]
        };
        for field in port_fields {
            for bad in [json!(0), json!(65536), json!(-1), json!("22"), json!(1.5)] {
                let (s, answer) = c
                    .post(
                        &path,
                        &json!({"hostname": "h", "ipv4": "10.0.0.1", *field: bad}),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    (s, answer["field"].as_str()),
                    (StatusCode::UNPROCESSABLE_ENTITY, Some(*field)),
                    "{field}={bad}"
                );
            }
        }
        // Shell metacharacters in every string field.
        let string_fields: &[&str] = if kind == "relays" {
            &["hostname", "ipv4", "ipv6"]
        } else {
            &["hostname", "ipv4", "ipv6", "sshuser"]
        };
        for field in string_fields {
            for bad in INJECTIONS {
                let mut body = json!({"hostname": "ok-host", "ipv4": "10.0.0.1"});
                body[*field] = json!(bad);
                let (s, answer) = c.post(&path, &body).await.unwrap();
                assert_eq!(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{kind}.{field}={bad:?}: {answer}"
                );
                assert_eq!(answer["field"], *field);
            }
        }
        // Duplicate hostname: 409; bad ids: 404.
        let (s, _) = c
            .post(&path, &json!({"hostname": "dup", "ipv4": "10.0.0.1"}))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::CREATED);
        let (s, body) = c
            .post(&path, &json!({"hostname": "dup", "ipv4": "10.0.0.2"}))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        for bad_id in ["0", "-1", "abc", "1;ls", "99999999999999999999999"] {
            let (s, _) = c.get(&format!("{path}/{bad_id}")).await.unwrap();
            assert_eq!(s, StatusCode::NOT_FOUND, "{bad_id}");
        }
        // PUT with bad values leaves the record unchanged.
        let (_, list) = c.get(&path).await.unwrap();
        let id = list[0]["id"].as_u64().unwrap();
        let (s, _) = c
            .put(&format!("{path}/{id}"), &json!({"hostname": "x; rm -rf /"}))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = c
            .put(&format!("{path}/{id}"), &json!({"ipv4": null}))
            .await
            .unwrap();
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "removing the only address is refused"
        );
        let (_, after) = c.get(&path).await.unwrap();
        assert_eq!(
            after, list,
            "{kind}: only the duplicate-check record is stored"
        );
        assert_eq!(after.as_array().unwrap().len(), 1);
    }
    assert!(!std::path::Path::new("/tmp/tracevisor-canary").exists());
    // Unknown paths and methods are JSON too.
    let (s, body) = c.get("/nope").await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (s, body) = c.call(Method::PATCH, "/relays", None).await.unwrap();
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[tokio::test]
async fn non_loopback_requires_a_token() {
    let dir = data_dir();
    let mut c = Coordinator::start_with(dir.path(), "0.0.0.0:0", &[], &[]).unwrap();
    c.addr.set_ip([127, 0, 0, 1].into());
    let (s, body) = c.get("/relays").await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    c.token = Some("wrong-token-wrong-token".into());
    assert_eq!(c.get("/relays").await.unwrap().0, StatusCode::UNAUTHORIZED);
    let file = dir.path().join("api-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    c.token = Some(std::fs::read_to_string(file).unwrap().trim().to_owned());
    assert_eq!(c.get("/relays").await.unwrap().0, StatusCode::OK);
    assert!(
        !c.logs().contains(c.token.as_deref().unwrap()),
        "the token is never logged"
    );
    drop(c);

    // A configured token is used as given; --insecure-no-auth opens it on purpose.
    let token = "0123456789abcdef0123";
    let mut c =
        Coordinator::start_with(dir.path(), "0.0.0.0:0", &[], &[("TRACEVISOR_TOKEN", token)])
            .unwrap();
    c.addr.set_ip([127, 0, 0, 1].into());
    assert_eq!(c.get("/relays").await.unwrap().0, StatusCode::UNAUTHORIZED);
    c.token = Some(token.into());
    assert_eq!(c.get("/relays").await.unwrap().0, StatusCode::OK);
    drop(c);
    let mut c =
        Coordinator::start_with(dir.path(), "0.0.0.0:0", &["--insecure-no-auth"], &[]).unwrap();
    c.addr.set_ip([127, 0, 0, 1].into());
    assert_eq!(c.get("/relays").await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn invalid_configuration_stops_start_up_naming_the_key() {
    let dir = data_dir();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "max_duration_secs = 0\n").unwrap();
    let out =
        std::process::Command::new(tracevisor_tests::coordinator::binary("tracevisor").unwrap())
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_duration_secs"), "{stderr}");
    let out =
        std::process::Command::new(tracevisor_tests::coordinator::binary("tracevisor").unwrap())
            .args(["serve", "--listen", "localhost:x", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let preflight = |c: &Coordinator| {
        reqwest::Client::new()
            .request(Method::OPTIONS, c.api("/relays"))
            .header("origin", "http://dashboard.example")
            .header("access-control-request-method", "POST")
            .send()
    };
    // Configured: any origin.
    let dir = data_dir();
    let c =
        Coordinator::start_with_config(dir.path(), "cors_allow_origins = [\"*\"]\n", &[]).unwrap();
    let resp = preflight(&c).await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    // By default: no cross-origin access at all.
    let dir = data_dir();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let resp = preflight(&c).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
