//! `GET /metrics`: the coordinator's figures in the Prometheus text format (version 0.0.4).
//!
//! Counters and histograms are process-wide (a coordinator is one process): agent
//! registrations, ended jobs by kind, type and status, job durations by type, and the
//! database's answer time. Gauges are read when scraped: agents connected, links open, jobs
//! running, dashboard live views, resident memory and open descriptors. Label values are
//! bounded: job types are the configured analysis types, statuses and kinds are enums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::model::{JobRecord, JobStatus};

/// Upper bounds (seconds) of the database answer-time buckets.
const DB_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of the job duration buckets (a job's whole life, trace included).
const JOB_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when written).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The process-wide counters and histograms.
struct Registry {
    registrations: AtomicU64,
    /// Ended jobs by (kind, type, status).
    jobs: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    /// Job durations by type.
    durations: Mutex<BTreeMap<String, Histogram>>,
    db: Mutex<Histogram>,
    /// Requests sent to other members of the cluster, by kind and result.
    forwarded: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Internal API requests refused for a wrong or missing cluster token.
    forwarded_refused: AtomicU64,
    /// Live members of the cluster at the last heartbeat (0: not in a cluster).
    cluster_members: AtomicU64,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        registrations: AtomicU64::new(0),
        jobs: Mutex::new(BTreeMap::new()),
        durations: Mutex::new(BTreeMap::new()),
        db: Mutex::new(Histogram::new(&DB_BUCKETS)),
        forwarded: Mutex::new(BTreeMap::new()),
        forwarded_refused: AtomicU64::new(0),
        cluster_members: AtomicU64::new(0),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An agent registered (its `HelloAck` is on its way).
pub fn agent_registered() {
    registry().registrations.fetch_add(1, Ordering::Relaxed);
}

/// A request was sent to another member of the cluster (`kind`: job, cancel, fleet-share,
/// acks, evict), which took it or not.
pub fn forwarded(kind: &'static str, ok: bool) {
    *lock(&registry().forwarded)
        .entry((kind, if ok { "ok" } else { "failed" }))
        .or_default() += 1;
}

/// The internal API refused a request without the cluster token.
pub fn forwarded_refused() {
    registry().forwarded_refused.fetch_add(1, Ordering::Relaxed);
}

/// The cluster's live members at the last heartbeat.
pub fn cluster_members(n: usize) {
    registry()
        .cluster_members
        .store(n as u64, Ordering::Relaxed);
}

/// One database query answered (or failed) after `elapsed`.
pub fn database_answered(elapsed: Duration) {
    lock(&registry().db).observe(elapsed.as_secs_f64());
}

fn status_label(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Complete => "complete",
        JobStatus::Failed => "failed",
        JobStatus::Started => "started",
        JobStatus::TraceRunning => "trace-running",
        JobStatus::AnalysisRunning => "analysis-running",
    }
}

/// A single job ended here with this stored record.
pub fn job_ended(record: &JobRecord) {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    };
    let secs = match (
        record.finished.as_deref().and_then(parse),
        parse(&record.started),
    ) {
        (Some(finished), Some(started)) => Some((finished - started).as_seconds_f64()),
        _ => None,
    };
    ended("single", &record.analysis_type, record.status, secs);
}

/// A fleet job ended here `elapsed` after it started running (its stored record is not read
/// back for this).
pub fn fleet_ended(analysis_type: &str, status: JobStatus, elapsed: Duration) {
    ended("fleet", analysis_type, status, Some(elapsed.as_secs_f64()));
}

fn ended(kind: &'static str, analysis_type: &str, status: JobStatus, secs: Option<f64>) {
    if !status.is_ended() {
        return;
    }
    let registry = registry();
    *lock(&registry.jobs)
        .entry((kind, analysis_type.to_owned(), status_label(status)))
        .or_default() += 1;
    if let Some(secs) = secs {
        lock(&registry.durations)
            .entry(analysis_type.to_owned())
            .or_insert_with(|| Histogram::new(&JOB_BUCKETS))
            .observe(secs.max(0.0));
    }
}

/// What is read when scraped.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub agents_connected: u64,
    pub agent_links_open: u64,
    pub jobs_running: u64,
    pub live_views: u64,
    pub database_up: bool,
    pub uptime_secs: f64,
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(g: &Gauges) -> String {
    let r = registry();
    let mut out = String::with_capacity(8192);
    let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
        metric(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    };
    gauge(
        &mut out,
        "tracevisor_agents_connected",
        "Agents with a registered link.",
        g.agents_connected as f64,
    );
    gauge(
        &mut out,
        "tracevisor_agent_links_open",
        "Agent links open, including those not yet registered.",
        g.agent_links_open as f64,
    );
    metric(
        &mut out,
        "tracevisor_agent_registrations_total",
        "counter",
        "Agent registrations (hellos answered) since start.",
    );
    let _ = writeln!(
        out,
        "tracevisor_agent_registrations_total {}",
        r.registrations.load(Ordering::Relaxed)
    );
    gauge(
        &mut out,
        "tracevisor_jobs_running",
        "Trace jobs (single or fleet) running.",
        g.jobs_running as f64,
    );
    metric(
        &mut out,
        "tracevisor_jobs_ended_total",
        "counter",
        "Jobs that ended in this process, by kind, analysis type and status.",
    );
    for ((kind, kind_type, status), n) in lock(&r.jobs).iter() {
        let _ = writeln!(
            out,
            "tracevisor_jobs_ended_total{{kind=\"{kind}\",type=\"{}\",status=\"{status}\"}} {n}",
            escape(kind_type)
        );
    }
    metric(
        &mut out,
        "tracevisor_job_duration_seconds",
        "histogram",
        "Duration of the jobs that ended in this process, from start to end, by analysis type.",
    );
    for (kind_type, h) in lock(&r.durations).iter() {
        h.write(
            &mut out,
            "tracevisor_job_duration_seconds",
            &format!("type=\"{}\"", escape(kind_type)),
        );
    }
    metric(
        &mut out,
        "tracevisor_database_query_seconds",
        "histogram",
        "Time the database took to answer each query.",
    );
    lock(&r.db).write(&mut out, "tracevisor_database_query_seconds", "");
    gauge(
        &mut out,
        "tracevisor_database_up",
        "1 when the database answered this scrape's health query.",
        if g.database_up { 1.0 } else { 0.0 },
    );
    metric(
        &mut out,
        "tracevisor_forwarded_requests_total",
        "counter",
        "Requests sent to other coordinators of the cluster, by kind and result.",
    );
    for ((kind, result), n) in lock(&r.forwarded).iter() {
        let _ = writeln!(
            out,
            "tracevisor_forwarded_requests_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
        );
    }
    metric(
        &mut out,
        "tracevisor_internal_requests_refused_total",
        "counter",
        "Internal API requests refused for a wrong or missing cluster token.",
    );
    let _ = writeln!(
        out,
        "tracevisor_internal_requests_refused_total {}",
        r.forwarded_refused.load(Ordering::Relaxed)
    );
    gauge(
        &mut out,
        "tracevisor_cluster_members",
        "Live coordinators of the cluster at the last heartbeat (0: not in a cluster).",
        r.cluster_members.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut out,
        "tracevisor_dashboard_live_views",
        "Fleet live views (GET /clients/events) open.",
        g.live_views as f64,
    );
    gauge(
        &mut out,
        "tracevisor_uptime_seconds",
        "Seconds since this coordinator started serving.",
        g.uptime_secs,
    );
    if let Some(bytes) = g.resident_memory_bytes {
        gauge(
            &mut out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            bytes as f64,
        );
    }
    if let Some(fds) = g.open_fds {
        gauge(
            &mut out,
            "process_open_fds",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_a_sum_and_a_count() {
        let mut h = Histogram::new(&JOB_BUCKETS);
        for v in [0.2, 1.5, 1.5, 7000.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "type=\"ust\"");
        assert!(
            out.contains("x_bucket{type=\"ust\",le=\"0.5\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{type=\"ust\",le=\"2\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{type=\"ust\",le=\"3600\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{type=\"ust\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{type=\"ust\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{type=\"ust\"} 7003.2\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
