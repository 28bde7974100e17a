//! The dashboard's HTTP rules against the real coordinator binary, without a browser: the page
//! and its files on `/` and `/ui/` (no secret in them, strict headers, gzip, revalidation), the
//! seed's JSON `GET /` unchanged for API clients, the token-for-cookie sign-in, a cookie that
//! cannot be used without this server's `Origin` to change anything (a page on another port of
//! the same host is same-site, so the browser sends it the cookie), sign-out, and the fleet's
//! live view as agents come and go. The browser scenario is in `dashboard`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::header;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tracevisor_tests::agents::{agent_token, hub_url, RawLink};
use tracevisor_tests::block_on as run;
use tracevisor_tests::coordinator::Coordinator;

const TOKEN: &str = "dashboard-http-token-0123456789abcdef";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_millis(800))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[test]
fn the_page_and_its_files_are_served_with_strict_headers_and_the_seed_root_is_unchanged() {
    let dir = tracevisor_tests::temp_dir("tv-dash-http-");
    let c = Coordinator::start(dir.path(), &["--token", TOKEN]).unwrap();
    run(async {
        let http = http();
        // A browser's navigation gets the page, without a token: it holds no secret.
        let page = http
            .get(c.url("/"))
            .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers().clone();
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = page.text().await.unwrap();
        assert!(body.contains("/ui/app.js"), "{body}");
        assert!(!body.contains(TOKEN));
        // The seed's `GET /` for API clients is still JSON.
        let root = http.get(c.url("/")).send().await.unwrap();
        assert_eq!(root.status(), StatusCode::OK);
        let root: Json = root.json().await.unwrap();
        assert_eq!(root["name"], "tracevisor");
        // Files: gzipped when asked, revalidated by their tag, nothing outside the embedded set.
        let js = http
            .get(c.url("/ui/app.js"))
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(js.headers()[header::CONTENT_ENCODING], "gzip");
        let etag = js.headers()[header::ETAG].clone();
        let again = http
            .get(c.url("/ui/app.js"))
            .header(header::IF_NONE_MATCH, etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        for path in [
            "/ui/vendor/uPlot.iife.min.js",
            "/ui/app.css",
            "/ui/lami_classes.json",
        ] {
            let r = http.get(c.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
        // Only the embedded files: a path that climbs out (the client may normalise it to a
        // path outside /ui/, which then wants the token) or names nothing gets no file.
        for path in [
            "/ui/%2e%2e/Cargo.toml",
            "/ui/..%2fCargo.toml",
            "/ui/vendor/..%2f..%2f..%2fCargo.toml",
            "/ui/nothing.js",
        ] {
            let r = http.get(c.url(path)).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::UNAUTHORIZED,
                "{path}: {status}"
            );
            assert!(
                !body.contains("[package]") && !body.contains("[workspace"),
                "{path}"
            );
        }
        // The API itself still wants the token.
        let r = http.get(c.api("/relays")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    });
}

/// Sends `method url` with these headers and, when given, a JSON body.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
    body: Option<&Json>,
) -> reqwest::Response {
    let mut request = http.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// The `name=value` part of a `Set-Cookie` answer.
fn cookie_of(response: &reqwest::Response) -> String {
    let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

#[test]
fn the_session_cookie_stands_for_the_token_only_from_this_origin_and_ends_at_sign_out() {
    use reqwest::Method;
    let dir = tracevisor_tests::temp_dir("tv-dash-http-");
    // A sibling origin is allowed cross-origin access (CORS, for scripts with the token): it
    // is same-site, so a browser sends it the dashboard's cookie; the cookie must still not
    // work for it.
    const SIBLING: &str = "http://localhost:3000";
    let c = Coordinator::start_with_config(
        dir.path(),
        &format!("cors_allow_origins = [\"{SIBLING}\"]\n"),
        &["--token", TOKEN],
    )
    .unwrap();
    run(async {
        let http = http();
        let own = format!("http://{}", c.addr);
        let session = c.url("/ui/session");
        let relays = || c.api("/relays");
        let state: Json = send(&http, Method::GET, session.clone(), &[], None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(state["auth_required"], true);
        assert_eq!(state["signed_in"], false);

        // A wrong token: 401, no cookie. Another site cannot sign the operator in to its own
        // session either.
        let wrong_token = json!({ "token": "guess-guess-guess-guess" });
        let right_token = json!({ "token": TOKEN });
        let wrong = send(
            &http,
            Method::POST,
            session.clone(),
            &[("origin", &own)],
            Some(&wrong_token),
        )
        .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        assert!(wrong.headers().get(header::SET_COOKIE).is_none());
        let forged = send(
            &http,
            Method::POST,
            session.clone(),
            &[("origin", "https://evil.example")],
            Some(&right_token),
        )
        .await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);

        let signed = send(
            &http,
            Method::POST,
            session.clone(),
            &[("origin", &own)],
            Some(&right_token),
        )
        .await;
        assert_eq!(signed.status(), StatusCode::NO_CONTENT);
        let set_cookie = signed.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        assert!(!set_cookie.contains(TOKEN), "the cookie is not the token");
        let cookie = cookie_of(&signed);

        let state: Json = send(
            &http,
            Method::GET,
            session.clone(),
            &[("cookie", &cookie)],
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(state["signed_in"], true);
        // Reads with the cookie work.
        let r = send(&http, Method::GET, relays(), &[("cookie", &cookie)], None).await;
        assert_eq!(r.status(), StatusCode::OK);
        // A change with the cookie but no Origin (a form or script the browser did not vouch
        // for), from another port of the same host (same-site: the browser sends the cookie),
        // or from that sibling although CORS lists it: refused. From this origin: done.
        let relay = json!({ "hostname": "relay-cookie-1", "ipv4": "192.0.2.9" });
        let sibling_port = format!("http://127.0.0.1:{}", c.addr.port() ^ 1);
        for (origin, why) in [
            (None, "no Origin"),
            (Some(sibling_port.as_str()), "a sibling port"),
            (Some(SIBLING), "a CORS-listed sibling"),
        ] {
            let mut headers = vec![("cookie", cookie.as_str())];
            headers.extend(origin.map(|o| ("origin", o)));
            let r = send(&http, Method::POST, relays(), &headers, Some(&relay)).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{why}");
        }
        // An <img> or link on a same-site page (no Origin on a GET, but the browser says
        // where it comes from): refused; the operator's own pages and typed addresses pass.
        for (site, expected) in [
            ("same-site", StatusCode::FORBIDDEN),
            ("cross-site", StatusCode::FORBIDDEN),
            ("same-origin", StatusCode::OK),
            ("none", StatusCode::OK),
        ] {
            let headers = [("cookie", cookie.as_str()), ("sec-fetch-site", site)];
            let r = send(&http, Method::GET, relays(), &headers, None).await;
            assert_eq!(r.status(), expected, "Sec-Fetch-Site: {site}");
        }
        // The bearer token from the listed origin works as CORS says.
        let bearer = format!("Bearer {TOKEN}");
        let scripted = send(
            &http,
            Method::POST,
            relays(),
            &[("authorization", &bearer), ("origin", SIBLING)],
            Some(&json!({ "hostname": "relay-cors-1", "ipv4": "192.0.2.10" })),
        )
        .await;
        assert_eq!(scripted.status(), StatusCode::CREATED);
        let ok = send(
            &http,
            Method::POST,
            relays(),
            &[("cookie", &cookie), ("origin", &own)],
            Some(&relay),
        )
        .await;
        assert_eq!(ok.status(), StatusCode::CREATED);

        // Signing in again with the old cookie: a new session, and the old one ends.
        let again = send(
            &http,
            Method::POST,
            session.clone(),
            &[("origin", &own), ("cookie", &cookie)],
            Some(&right_token),
        )
        .await;
        assert_eq!(again.status(), StatusCode::NO_CONTENT);
        let renewed = cookie_of(&again);
        assert_ne!(renewed, cookie);
        let old = send(&http, Method::GET, relays(), &[("cookie", &cookie)], None).await;
        assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
        let cookie = renewed;
        // A made-up cookie is nothing.
        let made_up = format!("tracevisor_session={}", "0".repeat(64));
        let r = send(&http, Method::GET, relays(), &[("cookie", &made_up)], None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        // Sign-out ends the session on the server, not only in the browser.
        let out = send(
            &http,
            Method::DELETE,
            session.clone(),
            &[("cookie", &cookie), ("origin", &own)],
            None,
        )
        .await;
        assert_eq!(out.status(), StatusCode::NO_CONTENT);
        assert!(out.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
        let after = send(&http, Method::GET, relays(), &[("cookie", &cookie)], None).await;
        assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    });
    assert!(c.logs().contains("dashboard sign-in with a wrong token"));
    assert!(!c.logs().contains(TOKEN));
}

/// Reads Server-Sent Events until one named `name` whose data satisfies `pred`.
async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    name: &str,
    pred: impl Fn(&Json) -> bool,
) -> Json {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if event == name {
                let value: Json = serde_json::from_str(&data).unwrap();
                if pred(&value) {
                    return value;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 30 s; buffer: {buffer}"))
            .expect("the event stream ended")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[test]
fn the_fleet_live_view_tells_agents_coming_and_going() {
    let dir = tracevisor_tests::temp_dir("tv-dash-http-");
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    run(async {
        let response = http().get(c.api("/clients/events")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut stream = response;
        let mut buffer = String::new();
        let url = hub_url(c.addr, false);
        let token = agent_token(&c.data_dir).unwrap();
        let mut link = RawLink::agent(&url, &token, "live-1").await.unwrap();
        link.hello("live-1").await.unwrap();
        let up = next_event(&mut stream, &mut buffer, "agent", |e| {
            e["hostname"] == "live-1" && e["agent"]["connected"] == true
        })
        .await;
        assert_eq!(up["agent"]["version"], "0.0.0-simulated");
        drop(link);
        next_event(&mut stream, &mut buffer, "agent", |e| {
            e["hostname"] == "live-1" && e["agent"]["connected"] == false
        })
        .await;
        // The same state `GET /clients` gives.
        let (_, clients) = c.get("/clients").await.unwrap();
        let live = clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["hostname"] == "live-1")
            .unwrap();
        assert_eq!(live["agent"]["connected"], false);
    });
}

#[test]
fn live_views_are_bounded_and_a_view_that_never_reads_holds_nothing_but_its_place() {
    // 256 open views (clients that connect and never read a byte), then one more: 503 with
    // Retry-After; the API still answers; closing one view frees its place.
    let dir = tracevisor_tests::temp_dir("tv-dash-http-");
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    run(async {
        let http = http();
        let mut views = Vec::new();
        for _ in 0..256 {
            let r = http.get(c.api("/clients/events")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            views.push(r);
        }
        let refused = http.get(c.api("/clients/events")).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.headers().contains_key(header::RETRY_AFTER));
        let (status, _) = c.get("/clients").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        drop(views.pop());
        // The server sees the close at its next keep-alive write (15 s apart) at the latest.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let r = http.get(c.api("/clients/events")).send().await.unwrap();
            if r.status() == StatusCode::OK {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a closed view's place was not given back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn the_jobs_list_can_be_the_newest_few_without_fleet_host_entries() {
    // What the dashboard's jobs page polls every 3 s must not grow with the history: `limit`
    // keeps the newest, `brief` leaves out fleets' per-host entries (their counts stay).
    let dir = tracevisor_tests::temp_dir("tv-dash-http-");
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    run(async {
        // Hosts that do not resolve: each job fails at once, over SSH, with a clear error.
        for host in ["one.invalid", "two.invalid"] {
            let (status, job) = c
                .post(
                    "/analyses",
                    &json!({ "type": "ust", "host": host, "username": "root", "duration": 1 }),
                )
                .await
                .unwrap();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{job}"
            );
        }
        let (_, fleet) = c
            .post(
                "/analyses",
                &json!({ "type": "ust", "hosts": ["three.invalid", "four.invalid"], "username": "root", "duration": 1 }),
            )
            .await
            .unwrap();
        let fleet_id = fleet["jobid"].as_u64().unwrap();
        let (status, all) = c.get("/list?all=true").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let all = all["sessions"].as_array().unwrap().clone();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2]["hosts"].as_array().unwrap().len(), 2);

        let (_, newest) = c.get("/list?all=true&limit=2&brief=true").await.unwrap();
        let newest = newest["sessions"].as_array().unwrap().clone();
        let ids: Vec<u64> = newest
            .iter()
            .map(|j| j["jobid"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![all[1]["jobid"].as_u64().unwrap(), fleet_id],
            "the newest two, oldest first"
        );
        assert!(newest[1].get("hosts").is_none(), "{}", newest[1]);
        assert_eq!(newest[1]["outcomes"]["error"], 2, "{}", newest[1]);
        for bad in ["0", "100001", "x"] {
            let (status, body) = c.get(&format!("/list?all=true&limit={bad}")).await.unwrap();
            assert!(status.is_client_error(), "limit={bad}: {status} {body}");
        }
    });
}
