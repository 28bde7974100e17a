//! Helpers for the trace job tests and benchmarks: submitting `POST /analyses`, polling jobs,
//! the LTTng sessions a job left behind, and checking a `ust` result against the real trace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

use crate::agents::{is_connected, wait_clients};
use crate::coordinator::{Coordinator, LOCAL_AGENT};
use crate::lttng::{self, babeltrace2_events, UST_DONE_EVENT, UST_TICK_EVENT};

/// Job statuses as the API shows them.
pub const STARTED: i64 = 1;
pub const TRACE_RUNNING: i64 = 2;
pub const ANALYSIS_RUNNING: i64 = 3;
pub const COMPLETE: i64 = 4;
pub const FAILED: i64 = -1;

/// Generous bound for anything involving processes, links and traces on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Where the agent path writes local traces (`LocalExecutor::new` as root).
pub const AGENT_TRACE_ROOT: &str = tracevisor_lttng::lifecycle::SYSTEM_TRACE_ROOT;
/// Where the SSH path writes local traces on the traced host for the SSH user `root` (the
/// user of the test sshd): `tracevisor::ssh::SSH_TRACE_ROOT_PREFIX` + user.
pub const SSH_TRACE_ROOT: &str = "/var/tmp/tracevisor-traces-root";

/// The answer of `POST /analyses` with its headers.
#[derive(Debug)]
pub struct Submitted {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Json,
}

impl Submitted {
    /// The job id of the answer (`jobid`, else `id`).
    pub fn job_id(&self) -> Result<u64> {
        self.body["jobid"]
            .as_u64()
            .or_else(|| self.body["id"].as_u64())
            .with_context(|| format!("no job id in {} {}", self.status, self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// `POST /trace/api/v1.0/analyses` with `body` and extra headers; keeps the response headers.
pub async fn post_analyses(
    c: &Coordinator,
    body: &Json,
    headers: &[(&str, &str)],
) -> Result<Submitted> {
    let mut rb = c.request(Method::POST, "/analyses").json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.context("POST /analyses")?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await?;
    let body = if text.is_empty() {
        Json::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("non-JSON answer {status}: {text}"))?
    };
    Ok(Submitted {
        status,
        headers,
        body,
    })
}

/// A trace request body: `{host, duration, type, username: root}`.
pub fn job_body(host: &str, duration: f64, analysis_type: &str) -> Json {
    serde_json::json!({
        "host": host,
        "duration": duration,
        "type": analysis_type,
        "username": "root",
        // The tests read the trace back to check the result against it; a job that does not
        // keep its trace deletes it once analysed (tests of that remove this key).
        "keep_trace": true,
    })
}

/// `GET /jobs/{id}` (must answer 200).
pub async fn get_job(c: &Coordinator, id: u64) -> Result<Json> {
    let (status, body) = c.get(&format!("/jobs/{id}")).await?;
    if status != StatusCode::OK {
        bail!("GET /jobs/{id} answered {status}: {body}");
    }
    Ok(body)
}

/// Polls `GET /jobs/{id}` every 100 ms until `pred` holds; returns that job.
pub async fn wait_job(
    c: &Coordinator,
    id: u64,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Json) -> bool,
) -> Result<Json> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(c, id).await?;
        if pred(&job) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {} s waiting for job {id} to be {what}; last: {job}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until job `id` has `status`; fails at once if it ended otherwise.
pub async fn wait_status(c: &Coordinator, id: u64, status: i64, timeout: Duration) -> Result<Json> {
    let job = wait_job(c, id, &format!("status {status}"), timeout, |j| {
        let s = j["status"].as_i64();
        s == Some(status) || s == Some(COMPLETE) || s == Some(FAILED)
    })
    .await?;
    if job["status"].as_i64() != Some(status) {
        bail!("job {id} ended instead of reaching status {status}: {job}");
    }
    Ok(job)
}

/// Waits until job `id` has ended (status 4 or -1).
pub async fn wait_ended(c: &Coordinator, id: u64, timeout: Duration) -> Result<Json> {
    wait_job(c, id, "ended", timeout, |j| {
        matches!(j["status"].as_i64(), Some(COMPLETE | FAILED))
    })
    .await
}

/// `GET /list` (or `?all=true`): the `sessions` array.
pub async fn list_jobs(c: &Coordinator, all: bool) -> Result<Vec<Json>> {
    let path = if all { "/list?all=true" } else { "/list" };
    let (status, body) = c.get(path).await?;
    if status != StatusCode::OK {
        bail!("GET {path} answered {status}: {body}");
    }
    match &body["sessions"] {
        Json::Array(list) => Ok(list.clone()),
        _ => bail!("GET {path}: no sessions array in {body}"),
    }
}

/// Starts a coordinator with its built-in local agent (hostname `localhost`) and waits
/// until that agent is connected.
pub async fn start_with_local_agent(dir: &Path, extra: &[&str]) -> Result<Coordinator> {
    let mut args = vec![LOCAL_AGENT];
    args.extend_from_slice(extra);
    let c = Coordinator::start(dir, &args)?;
    wait_clients(&c, "the local agent", PATIENCE, |l| {
        is_connected(l, "localhost")
    })
    .await?;
    crate::agents::assert_lttng_control(&c, "localhost").await;
    Ok(c)
}

/// Names of the LTTng sessions of the root session daemon named `tracevisor-*-<hostname>`
/// (all `tracevisor-*` sessions when `hostname` is `None`).
pub fn tracevisor_sessions(hostname: Option<&str>) -> Result<Vec<String>> {
    Ok(lttng::list_sessions()?
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("tracevisor-"))
        .filter(|n| hostname.is_none_or(|h| n.ends_with(&format!("-{h}"))))
        .collect())
}

/// The parts of a Tracevisor session name `tracevisor-<instance>-<job id>-<hostname>`
/// (the instance is the coordinator registry's id, 8 hex digits).
pub fn parse_session(name: &str) -> Option<(String, u64, String)> {
    let rest = name.strip_prefix("tracevisor-")?;
    let (instance, rest) = rest.split_once('-')?;
    if instance.is_empty() || !instance.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let (id, host) = rest.split_once('-')?;
    Some((instance.to_owned(), id.parse().ok()?, host.to_owned()))
}

/// Whether `name` is the session of job `id` on `hostname` (of any coordinator instance).
pub fn is_job_session(name: &str, id: u64, hostname: &str) -> bool {
    parse_session(name).is_some_and(|(_, i, h)| i == id && h == hostname)
}

/// The sessions of the root session daemon that belong to job `id` on `hostname`.
pub fn job_sessions(id: u64, hostname: &str) -> Result<Vec<lttng::SessionInfo>> {
    Ok(lttng::list_sessions()?
        .into_iter()
        .filter(|s| is_job_session(&s.name, id, hostname))
        .collect())
}

/// The names of all sessions of the root session daemon.
pub fn session_names() -> Result<Vec<String>> {
    Ok(lttng::list_sessions()?
        .into_iter()
        .map(|s| s.name)
        .collect())
}

/// Whether a session named `name` exists.
pub fn session_alive(name: &str) -> Result<bool> {
    Ok(lttng::list_sessions()?.iter().any(|s| s.name == name))
}

/// Whether session `name` is gone within 10 s. A job through liblttng-ctl ends once its trace
/// is complete; the session daemon finishes destroying the session (about 0.7 s) after.
pub async fn session_gone(name: &str) -> bool {
    crate::agents::eventually(
        &format!("session {name} destroyed"),
        std::time::Duration::from_secs(10),
        || session_alive(name).is_ok_and(|alive| !alive),
    )
    .await
    .is_ok()
}

/// The sessions of job `id` on `hostname` that are not in `before` (a [`session_names`]
/// snapshot taken before the job was submitted): other coordinators' jobs with the same id
/// and host (leftovers of other test runs) are not this job's.
pub fn new_job_sessions(
    id: u64,
    hostname: &str,
    before: &[String],
) -> Result<Vec<lttng::SessionInfo>> {
    Ok(job_sessions(id, hostname)?
        .into_iter()
        .filter(|s| !before.contains(&s.name))
        .collect())
}

/// The `tracevisor-*-<hostname>` sessions that are not in `before`.
pub fn new_host_sessions(hostname: &str, before: &[String]) -> Result<Vec<String>> {
    Ok(tracevisor_sessions(Some(hostname))?
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect())
}

/// A `tag` for the test program unlikely to be used by any other run (pid and a counter).
pub fn unique_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 16) + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a trace holds of the test program's run with `tag`, and overall.
#[derive(Debug)]
pub struct UstTraceCheck {
    /// `tracevisor_test:tick` events of any run (what the summary must count).
    pub all_ticks: u64,
    /// Ticks carrying our tag.
    pub our_ticks: u64,
    /// The `seq` numbers of our ticks, sorted.
    pub our_seqs: Vec<u64>,
    /// `done` events carrying our tag.
    pub our_done: u64,
    /// Total events.
    pub total: u64,
    /// Events of the process with the `vpid` given to [`check_ust_trace`].
    pub pid_events: u64,
}

/// Reads `trace` with babeltrace2 and counts the test program's events (those with `tag`)
/// and the events of process `vpid`.
pub fn check_ust_trace(trace: &Path, tag: u64, vpid: u32) -> Result<UstTraceCheck> {
    let events = babeltrace2_events(trace)?;
    let tag_text = tag.to_string();
    let vpid_text = vpid.to_string();
    let mut check = UstTraceCheck {
        all_ticks: 0,
        our_ticks: 0,
        our_seqs: Vec::new(),
        our_done: 0,
        total: events.len() as u64,
        pid_events: 0,
    };
    for e in &events {
        if e.field("vpid") == Some(vpid_text.as_str()) {
            check.pid_events += 1;
        }
        let ours = e.field("tag") == Some(tag_text.as_str());
        if e.name == UST_TICK_EVENT {
            check.all_ticks += 1;
            if ours {
                check.our_ticks += 1;
                let seq = e
                    .field("seq")
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("no seq in {}", e.line))?;
                check.our_seqs.push(seq);
            }
        } else if e.name == UST_DONE_EVENT && ours {
            check.our_done += 1;
        }
    }
    check.our_seqs.sort_unstable();
    Ok(check)
}

/// The `trace` of a job result as a path.
pub fn result_trace(result: &Json) -> Result<PathBuf> {
    result["trace"]
        .as_str()
        .map(PathBuf::from)
        .with_context(|| format!("no trace path in result {result}"))
}

/// Removes a trace directory a job wrote (only below the known trace roots or `allowed`).
pub fn remove_trace(trace: &Path, allowed: &[&Path]) {
    let ok = [Path::new(AGENT_TRACE_ROOT), Path::new(SSH_TRACE_ROOT)]
        .iter()
        .chain(allowed)
        .any(|root| trace.starts_with(root) && trace != *root);
    if ok
        && trace
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("tracevisor-"))
    {
        let _ = std::fs::remove_dir_all(trace);
    }
}

/// Removes the trace directories registered with it when dropped (also when a test fails).
#[derive(Debug, Default)]
pub struct TraceCleanup {
    paths: Vec<PathBuf>,
    allowed: Vec<PathBuf>,
}

impl TraceCleanup {
    /// Also allow removals below `root` (e.g. a relay's output directory).
    pub fn allow(&mut self, root: &Path) {
        self.allowed.push(root.to_path_buf());
    }

    /// Registers a trace directory.
    pub fn add(&mut self, trace: &Path) {
        self.paths.push(trace.to_path_buf());
    }

    /// Registers the `trace` of a job result, if it has one.
    pub fn add_result(&mut self, result: &Json) {
        if let Ok(trace) = result_trace(result) {
            self.add(&trace);
        }
    }
}

impl Drop for TraceCleanup {
    fn drop(&mut self) {
        let allowed: Vec<&Path> = self.allowed.iter().map(PathBuf::as_path).collect();
        for path in &self.paths {
            remove_trace(path, &allowed);
        }
    }
}

/// The coordinator's SSH public key (`GET /ssh`, must answer 200).
pub async fn ssh_key(c: &Coordinator) -> Result<String> {
    let (status, keys) = c.get("/ssh").await?;
    if status != StatusCode::OK {
        bail!("GET /ssh answered {status}: {keys}");
    }
    keys["keys"][0]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no key in {keys}"))
}

/// Registers `hostname` as a client reached over SSH on 127.0.0.1:`port` as root (must
/// answer 201).
pub async fn register_ssh_client(c: &Coordinator, hostname: &str, port: u16) -> Result<()> {
    let (status, client) = c
        .post(
            "/clients",
            &serde_json::json!({ "hostname": hostname, "ipv4": "127.0.0.1", "sshport": port, "sshuser": "root" }),
        )
        .await?;
    if status != StatusCode::CREATED {
        bail!("POST /clients {hostname} answered {status}: {client}");
    }
    Ok(())
}

/// A trace downloaded from `GET /jobs/{id}/trace`.
#[derive(Debug)]
pub struct FetchedTrace {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The error answer (JSON) when the status is not 200.
    pub error: Json,
    /// The archive as downloaded (200), in `dir`.
    pub archive: Option<PathBuf>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Whether the download ended cleanly (false: the server cut it off).
    pub complete: bool,
    pub dir: tempfile::TempDir,
}

impl FetchedTrace {
    /// Unpacks the archive with the system's GNU tar (which detects gzip) into `dir/out`.
    pub fn unpack(&self) -> Result<PathBuf> {
        let archive = self.archive.as_ref().context("no archive downloaded")?;
        let out = self.dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&out)
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("tar -xf {} failed: {status}", archive.display());
        }
        Ok(out)
    }
}

/// Downloads job `id`'s trace with `accept` into a new temporary directory, streaming it to a
/// file (memory stays flat whatever its size).
pub async fn fetch_trace(c: &Coordinator, id: u64, accept: &str) -> Result<FetchedTrace> {
    use std::io::Write as _;
    let dir = crate::temp_dir("tv-fetch-");
    let mut resp = c
        .request(Method::GET, &format!("/jobs/{id}/trace"))
        .header(reqwest::header::ACCEPT, accept)
        .timeout(Duration::from_secs(900))
        .send()
        .await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if status != StatusCode::OK {
        let text = resp.text().await.unwrap_or_default();
        return Ok(FetchedTrace {
            status,
            headers,
            error: serde_json::from_str(&text).unwrap_or(Json::String(text)),
            archive: None,
            bytes: 0,
            complete: false,
            dir,
        });
    }
    let path = dir.path().join("trace.archive");
    let mut file = std::fs::File::create(&path)?;
    let mut bytes = 0u64;
    let complete = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                file.write_all(&chunk)?;
            }
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    file.flush()?;
    Ok(FetchedTrace {
        status,
        headers,
        error: Json::Null,
        archive: Some(path),
        bytes,
        complete,
        dir,
    })
}

/// The one trace directory (holding `metadata` somewhere below) under `dir`, e.g. an unpacked
/// archive's single folder.
pub fn single_subdir(dir: &Path) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    match entries.as_slice() {
        [one] if one.is_dir() => Ok(one.clone()),
        other => bail!("expected one directory in {}: {other:?}", dir.display()),
    }
}
