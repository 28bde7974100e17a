//! `tracevisor trace`: submit a job (one host) or a fleet job (several hosts, or every
//! connected agent), follow it through `GET /jobs/{id}/events` (or by polling `GET /jobs/{id}`
//! when the server has no event stream), then print the result.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::client::Client;
use super::{job_view, render, sanitize};
use super::{
    print_json, print_text, CliError, Connection, Settings, TopConnection, EXIT_INTERRUPTED,
    EXIT_JOB_FAILED, EXIT_OK, EXIT_OTHER,
};
use crate::model::{FleetEntry, JobRecord, JobStatus, Outcome, Step};

/// Hosts named in the error line of a fleet with failures.
const MAX_FAILURES_SHOWN: usize = 5;

/// How often the fallback polls `GET /jobs/{id}`.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Hosts to trace: an agent's hostname or address, a registered client, or an address
    /// reached over SSH; several make a fleet job
    #[arg(value_name = "HOST", required_unless_present = "connected")]
    pub hosts: Vec<String>,
    /// Trace every connected agent instead of naming hosts (a fleet job)
    #[arg(long, conflicts_with = "hosts")]
    pub connected: bool,
    /// With --connected: only agents with this capability (kernel_tracer, userspace_tracer,
    /// babeltrace2, sessiond_running); repeatable
    #[arg(long, value_name = "CAPABILITY", requires = "connected")]
    pub require: Vec<String>,
    /// Analysis type (`tracevisor analyses` lists them: cpu, io, irq, mem, sched, ust, ...)
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub analysis_type: String,
    /// Seconds to trace
    #[arg(long, short = 'd', value_name = "SECONDS")]
    pub duration: f64,
    /// Relay to stream the trace to (registered hostname or address)
    #[arg(long, value_name = "RELAY")]
    pub relay: Option<String>,
    /// Host that runs the analysis (default: the relay, else the traced host)
    #[arg(long, value_name = "HOST")]
    pub analysis: Option<String>,
    /// User for SSH when a host is neither an agent nor a registered client
    #[arg(long, short = 'u', value_name = "USER", default_value = "root")]
    pub username: String,
    /// Fleet jobs: seconds each host may take beyond the duration before it times out
    #[arg(long, value_name = "SECONDS")]
    pub host_timeout: Option<f64>,
    /// Passed to analysis commands declaring {mongohost}
    #[arg(long, value_name = "HOST")]
    pub mongohost: Option<String>,
    /// Passed to analysis commands declaring {mongoport}
    #[arg(long, value_name = "PORT")]
    pub mongoport: Option<u16>,
    /// Keep the trace on the host once analysed (by default it is deleted then); the result
    /// names where it is
    #[arg(long)]
    pub keep: bool,
    /// Rows shown per result table (0: all)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    #[command(flatten)]
    pub conn: Connection,
}

impl TraceArgs {
    /// The `POST /analyses` body.
    pub fn body(&self) -> Json {
        let mut body = Map::new();
        if self.connected {
            body.insert(
                "hosts".into(),
                json!({ "agents": "connected", "require": self.require }),
            );
        } else if self.hosts.len() == 1 {
            body.insert("host".into(), json!(self.hosts[0]));
        } else {
            body.insert("hosts".into(), json!(self.hosts));
        }
        body.insert("duration".into(), json!(self.duration));
        body.insert("type".into(), json!(self.analysis_type));
        body.insert("username".into(), json!(self.username));
        let optional = [
            ("relay", self.relay.as_ref().map(|v| json!(v))),
            ("analysis", self.analysis.as_ref().map(|v| json!(v))),
            ("mongohost", self.mongohost.as_ref().map(|v| json!(v))),
            ("mongoport", self.mongoport.map(|v| json!(v))),
            ("host_timeout", self.host_timeout.map(|v| json!(v))),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                body.insert(key.into(), v);
            }
        }
        if self.keep {
            body.insert("keep_trace".into(), json!(true));
        }
        body.insert("wait".into(), json!(false));
        Json::Object(body)
    }

    fn is_fleet(&self) -> bool {
        self.connected || self.hosts.len() > 1
    }
}

pub async fn run(top: &TopConnection, args: TraceArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let json_out = args.conn.json;
    let answer = client
        .send(Method::POST, "/analyses", Some(&args.body()))
        .await?;
    let submitted = answer.body.clone();
    // A job that already has a job id is followed even when the answer is an error status
    // (a server that ran it synchronously and failed it).
    let id = submitted["jobid"]
        .as_u64()
        .or_else(|| submitted["id"].as_u64())
        .or_else(|| {
            answer
                .location
                .as_deref()
                .and_then(|l| l.rsplit('/').next())
                .and_then(|s| s.parse().ok())
        });
    let Some(id) = id.filter(|_| answer.status.is_success() || submitted["status"].is_i64()) else {
        return Err(if answer.status.is_success() {
            CliError::other(format!(
                "the server accepted the job but named no job id ({})",
                answer.status
            ))
        } else {
            client.answer_error(&answer)
        });
    };
    let label = if args.is_fleet() {
        format!("fleet job {id} ({})", args.analysis_type)
    } else {
        format!("job {id} ({} on {})", args.analysis_type, args.hosts[0])
    };
    let mut progress = Progress::new(&label, args.duration, json_out);
    let job = if job_view::is_final(&submitted) && answer.status != StatusCode::ACCEPTED {
        Ok(submitted)
    } else {
        if let Ok(record) = job_view::parse(&submitted) {
            progress.update(&record);
        }
        tokio::select! {
            job = follow(&client, id, &mut progress) => job,
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                let how = match client.send(Method::DELETE, &format!("/jobs/{id}"), None).await {
                    Ok(a) if a.status.is_success() => "cancelled".to_owned(),
                    Ok(a) => format!("not cancelled ({})", client.answer_error(&a).message),
                    Err(e) => format!("not cancelled ({})", e.message),
                };
                eprintln!("tracevisor: interrupted; {label} {how}");
                return Ok(EXIT_INTERRUPTED);
            }
        }
    };
    progress.finish();
    let job = job?;
    let record = job_view::parse(&job)?;
    report(&job, &record, json_out, args.top, false)
}

/// Prints a final job (text or JSON) and returns the exit code: 6 for a failed job or a
/// fleet where some host did not complete, with one line on stderr saying why. A failed
/// single job's text goes to stdout only with `show_failed` (`tracevisor job ID`).
pub fn report(
    json: &Json,
    job: &JobRecord,
    json_out: bool,
    top: usize,
    show_failed: bool,
) -> Result<u8, CliError> {
    let fleet = job.hosts.is_some();
    if json_out {
        print_json(json);
    } else if fleet || show_failed || job.status != JobStatus::Failed {
        print_text(&job_view::job(job, top));
    }
    let _ = std::io::stdout().flush();
    let id = job.jobid.max(job.id);
    // Tool output quoted in errors can be long: the line stays readable, the JSON has it all.
    let whole = format!(" (`tracevisor job {id} --json` has the whole message)");
    let clip = |text: String, max: usize, clipped: &mut bool| {
        let cut = render::truncate(&text, max);
        *clipped |= cut != text;
        cut
    };
    let mut clipped = false;
    if fleet {
        let failures = job_view::fleet_failures(job);
        if !failures.is_empty() {
            let total = job.hosts.as_ref().map_or(0, Vec::len);
            let mut shown: Vec<String> = failures
                .iter()
                .take(MAX_FAILURES_SHOWN)
                .map(|f| clip(f.clone(), 200, &mut clipped))
                .collect();
            if failures.len() > MAX_FAILURES_SHOWN {
                shown.push(format!("and {} more", failures.len() - MAX_FAILURES_SHOWN));
            }
            eprintln!(
                "tracevisor: fleet job {id}: {} of {total} hosts did not complete: {}{}",
                failures.len(),
                sanitize::line(&shown.join("; ")),
                if clipped { whole.as_str() } else { "" }
            );
            return Ok(EXIT_JOB_FAILED);
        }
        if let (JobStatus::Failed, Some(error)) = (job.status, &job.error) {
            let line = clip(job_view::error_line(error), 400, &mut clipped);
            eprintln!(
                "tracevisor: fleet job {id} failed: {}{}",
                sanitize::line(&line),
                if clipped { whole.as_str() } else { "" }
            );
            return Ok(EXIT_JOB_FAILED);
        }
        return Ok(EXIT_OK);
    }
    match job.status {
        JobStatus::Failed => {
            let (hint, line) = match &job.error {
                Some(error) => (
                    hint_for_step(error.step),
                    clip(job_view::error_line(error), 400, &mut clipped),
                ),
                None => ("", "no error recorded".to_owned()),
            };
            eprintln!(
                "tracevisor: job {id} failed at {}{}{hint}",
                sanitize::line(&line),
                if clipped { whole.as_str() } else { "" }
            );
            Ok(EXIT_JOB_FAILED)
        }
        JobStatus::Complete => Ok(EXIT_OK),
        status => Err(CliError::new(
            EXIT_OTHER,
            format!(
                "job {id} did not finish ({}); `tracevisor job {id}` shows it later",
                job_view::status_name(status)
            ),
        )),
    }
}

/// What to do about a failed step.
fn hint_for_step(step: Step) -> &'static str {
    match step {
        Step::Kernel => "; kernel analyses need the LTTng kernel tracer (lttng-modules) on the host: use --type ust, or a host whose agent reports kernel_tracer",
        Step::Preflight => "; the host needs a root lttng-sessiond and a user that is root or in the tracing group",
        Step::SshConnect => "; run tracesd on the host, or register it as a client and authorize the key `curl SERVER/trace/api/v1.0/ssh` shows",
        Step::AgentLost | Step::AgentRestart => "; the host's agent went away: check tracesd there and trace again",
        Step::Timeout => "; raise --host-timeout or the duration",
        _ => "",
    }
}

/// Follows a job to its end through the event stream, else by polling.
async fn follow(client: &Client, id: u64, progress: &mut Progress) -> Result<Json, CliError> {
    if let Some(mut stream) = client.events(id).await? {
        // Until the stream ends or breaks before `done`: then the job itself tells the rest.
        while let Ok(Some(event)) = stream.next().await {
            let data: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
            match event.event.as_str() {
                "status" => progress.status(data["status"].as_i64().and_then(JobStatus::from_code)),
                "progress" => {
                    if let Some(f) = data["fraction"].as_f64() {
                        progress.fraction(f);
                    }
                }
                "host" => {
                    if let Ok(entry) = serde_json::from_value::<FleetEntry>(data) {
                        progress.host(&entry);
                    }
                }
                "done" if data.is_object() => return Ok(data),
                "done" => break,
                _ => {}
            }
        }
    }
    poll(client, id, progress).await
}

/// Polls `GET /jobs/{id}` until the job ends.
pub async fn poll(client: &Client, id: u64, progress: &mut Progress) -> Result<Json, CliError> {
    loop {
        let job = client
            .get(&format!("/jobs/{id}"))
            .await
            .map_err(|e| e.if_not_found("`tracevisor jobs --all` lists the jobs"))?;
        let record = job_view::parse(&job)?;
        progress.update(&record);
        if record.status.is_ended() {
            return Ok(job);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Progress on stderr: a redrawn bar on a terminal, else plain status lines (none with
/// `--json` unless on a terminal).
pub struct Progress {
    label: String,
    duration: f64,
    tty: bool,
    plain: bool,
    status: Option<JobStatus>,
    fraction: f64,
    trace_started: Option<Instant>,
    hosts_total: usize,
    hosts_done: Vec<String>,
    drawn: bool,
}

impl Progress {
    pub fn new(label: &str, duration: f64, json_out: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            label: sanitize::line(label).into_owned(),
            duration,
            tty,
            plain: !tty && !json_out,
            status: None,
            fraction: 0.0,
            trace_started: None,
            hosts_total: 0,
            hosts_done: Vec::new(),
            drawn: false,
        }
    }

    /// Takes what a job view says: status, fleet hosts.
    pub fn update(&mut self, job: &JobRecord) {
        self.status(Some(job.status));
        if let Some(hosts) = &job.hosts {
            self.hosts_total = hosts.len();
            for h in hosts {
                if h.outcome != Outcome::Pending {
                    self.host(h);
                }
            }
        }
    }

    pub fn status(&mut self, status: Option<JobStatus>) {
        let Some(s) = status else { return };
        if self.status == Some(s) {
            return;
        }
        self.status = Some(s);
        if s == JobStatus::TraceRunning && self.trace_started.is_none() {
            self.trace_started = Some(Instant::now());
        }
        if s >= JobStatus::AnalysisRunning {
            self.fraction = 1.0;
        }
        if self.plain && JobStatus::RUNNING.contains(&s) {
            eprintln!("{}: {}", self.label, job_view::status_name(s));
        }
        self.draw();
    }

    pub fn fraction(&mut self, f: f64) {
        self.fraction = f.clamp(0.0, 1.0);
        self.draw();
    }

    pub fn host(&mut self, h: &FleetEntry) {
        if self.hosts_done.contains(&h.host) {
            return;
        }
        self.hosts_done.push(h.host.clone());
        let host = sanitize::line(&h.host);
        let outcome = h.outcome;
        let reason = h
            .error
            .as_ref()
            .map(|e| format!(" ({})", job_view::error_line(e)))
            .unwrap_or_default();
        if self.tty {
            self.clear();
            eprintln!("  {host}: {outcome}{reason}");
            self.draw();
        } else if self.plain {
            eprintln!("{}: host {host} {outcome}{reason}", self.label);
        }
    }

    fn clear(&mut self) {
        if self.tty && self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn draw(&mut self) {
        if !self.tty {
            return;
        }
        // Without progress events, the local clock estimates the share elapsed.
        let mut fraction = self.fraction;
        if self.status == Some(JobStatus::TraceRunning) && self.duration > 0.0 {
            if let Some(t) = self.trace_started {
                fraction = fraction.max((t.elapsed().as_secs_f64() / self.duration).min(1.0));
            }
        }
        const WIDTH: usize = 30;
        let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        let status = self.status.map_or("submitted", job_view::status_name);
        let hosts = if self.hosts_total > 0 {
            format!(
                "  {}/{} hosts done",
                self.hosts_done.len(),
                self.hosts_total
            )
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[2K{} [{bar}] {:3.0}% {status}{hosts}",
            self.label,
            fraction * 100.0
        );
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TraceArgs,
    }

    fn parse(argv: &[&str]) -> TraceArgs {
        let mut full = vec!["trace"];
        full.extend_from_slice(argv);
        Wrapper::parse_from(full).args
    }

    #[test]
    fn bodies() {
        let one = parse(&["h1", "--type", "io", "--duration", "2"]).body();
        assert_eq!(
            one,
            json!({"host": "h1", "duration": 2.0, "type": "io", "username": "root", "wait": false})
        );
        let many = parse(&[
            "h1",
            "h2",
            "-t",
            "ust",
            "-d",
            "1",
            "--host-timeout",
            "30",
            "--relay",
            "r",
        ])
        .body();
        assert_eq!(many["hosts"], json!(["h1", "h2"]));
        assert_eq!(many["host_timeout"], json!(30.0));
        assert_eq!(many["relay"], json!("r"));
        assert!(many.get("host").is_none());
        let all = parse(&[
            "--connected",
            "--require",
            "kernel_tracer",
            "-t",
            "cpu",
            "-d",
            "1",
        ])
        .body();
        assert_eq!(
            all["hosts"],
            json!({"agents": "connected", "require": ["kernel_tracer"]})
        );
    }

    /// A server without the event stream: the CLI polls `GET /jobs/{id}` instead.
    #[tokio::test]
    async fn falls_back_to_polling_without_an_event_stream() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/trace/api/v1.0/jobs/{id}",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let status = if n < 2 { 2 } else { 4 };
                    axum::Json(json!({"id": 7, "jobid": 7, "status": status, "host": "h", "type": "ust",
                        "username": "root", "duration": 1.0, "created": "2026-01-01T00:00:00Z", "started": "2026-01-01T00:00:00Z",
                        "result": if status == 4 { json!({"kind": "ust", "total": 0, "events": {}, "processes": []}) } else { Json::Null }}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = Client::new(&Settings {
            server: format!("http://{addr}"),
            token: None,
            ca_cert: None,
        })
        .expect("client");
        let mut progress = Progress::new("job 7", 1.0, true);
        let job = follow(&client, 7, &mut progress).await.expect("job");
        assert_eq!(job["status"], 4);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let gone = Client::new(&Settings {
            server: "http://127.0.0.1:9".into(),
            token: None,
            ca_cert: None,
        })
        .expect("client")
        .get("/jobs/1")
        .await
        .expect_err("nothing listens on port 9");
        assert_eq!(gone.code, super::super::EXIT_UNREACHABLE, "{gone:?}");
        assert!(gone.message.contains("cannot reach"), "{}", gone.message);
    }
}
