//! Jobs for terminals, read as the server's own types ([`JobRecord`], [`FleetEntry`]): a job's
//! header, its result or error, a fleet's hosts, the `/list` table.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::render::{self, number, short_time, Table};
use super::{sanitize, CliError};
use crate::model::{FleetEntry, JobError, JobRecord, JobStatus, Outcome, OutcomeCounts, Via};

/// Reads a job the server sent.
pub fn parse(json: &Json) -> Result<JobRecord, CliError> {
    serde_json::from_value(json.clone())
        .map_err(|e| CliError::other(format!("the server sent a job this CLI cannot read: {e}")))
}

/// Whether `json` is a job that reached its final status.
pub fn is_final(json: &Json) -> bool {
    parse(json).is_ok_and(|j| j.status.is_ended())
}

/// Job status names.
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Started => "started",
        JobStatus::TraceRunning => "trace running",
        JobStatus::AnalysisRunning => "analysis running",
        JobStatus::Complete => "complete",
        JobStatus::Failed => "error",
    }
}

/// The name of a status sent as JSON (`unknown` when it is not one).
pub fn status_name_of(status: &Json) -> String {
    match serde_json::from_value::<JobStatus>(status.clone()) {
        Ok(s) => status_name(s).to_owned(),
        Err(_) => match status.as_i64() {
            Some(n) => format!("status {n}"),
            None => "unknown".to_owned(),
        },
    }
}

fn parse_time(v: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
}

/// `step on host: message` of a failed job (or fleet host), on one line, sanitized.
pub fn error_line(error: &JobError) -> String {
    let message = sanitize::line(&super::one_line(&error.message)).into_owned();
    match &error.host {
        Some(host) if !host.is_empty() => {
            format!("step {} on {}: {message}", error.step, sanitize::line(host))
        }
        _ => format!("step {}: {message}", error.step),
    }
}

/// The one-line header of a job.
pub fn job_header(job: &JobRecord) -> String {
    let id = job.jobid.max(job.id);
    let kind = sanitize::line(&job.analysis_type);
    let status = status_name(job.status);
    let mut line = match &job.hosts {
        Some(hosts) => {
            let n = hosts.len();
            let plural = if n == 1 { "" } else { "s" };
            format!("fleet job {id}: {kind} on {n} host{plural}, {status}")
        }
        None => {
            let host = sanitize::line(job.host.as_deref().unwrap_or("?"));
            let via = job
                .via
                .map(|v| format!(" (via {})", v.as_str()))
                .unwrap_or_default();
            format!("job {id}: {kind} on {host}{via}, {status}")
        }
    };
    let _ = write!(line, ", traced {} s", number(job.duration));
    let took = job
        .finished
        .as_deref()
        .and_then(parse_time)
        .zip(parse_time(&job.created))
        .map(|(end, start)| (end - start).as_seconds_f64());
    if let Some(s) = took {
        let _ = write!(line, ", took {s:.1} s");
    }
    line
}

/// A job: header, then the result or the error (a fleet: [`fleet`]).
pub fn job(job: &JobRecord, top: usize) -> String {
    if job.hosts.is_some() {
        return fleet(job, top);
    }
    let mut out = job_header(job);
    out.push('\n');
    match job.status {
        JobStatus::Complete => {
            out.push('\n');
            out.push_str(&render::result(
                job.result.as_ref().unwrap_or(&Json::Null),
                top,
            ));
        }
        JobStatus::Failed => {
            if let Some(error) = &job.error {
                let _ = writeln!(out, "error: {}", error_line(error));
            }
        }
        _ => {}
    }
    out
}

/// The reason a fleet host did not complete (one line, sanitized).
fn host_reason(h: &FleetEntry) -> String {
    h.error
        .as_ref()
        .map(|e| {
            format!(
                "{}: {}",
                e.step,
                sanitize::line(&super::one_line(&e.message))
            )
        })
        .unwrap_or_default()
}

/// A fleet job: one line per host with its outcome and reason, the outcome counts, then each
/// complete host's result.
pub fn fleet(job: &JobRecord, top: usize) -> String {
    let mut out = job_header(job);
    out.push('\n');
    let hosts = job.hosts.as_deref().unwrap_or(&[]);
    let mut t = Table::new(["Host", "Outcome", "Job", "Reason"]).right(2);
    for h in hosts {
        t.push(vec![
            h.host.clone(),
            h.outcome.to_string(),
            h.jobid.map(|id| id.to_string()).unwrap_or_default(),
            host_reason(h),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render(2));
    let counts = job
        .outcomes
        .clone()
        .unwrap_or_else(|| OutcomeCounts::of(hosts));
    out.push_str(&outcome_counts(&counts));
    for h in hosts {
        if h.outcome == Outcome::Complete {
            let _ = writeln!(out, "\n===== {} =====", sanitize::line(&h.host));
            out.push_str(&render::result(
                h.result.as_ref().unwrap_or(&Json::Null),
                top,
            ));
        }
    }
    out
}

fn outcome_counts(counts: &OutcomeCounts) -> String {
    let parts: Vec<String> = [
        (counts.complete, Outcome::Complete),
        (counts.error, Outcome::Error),
        (counts.offline, Outcome::Offline),
        (counts.timeout, Outcome::Timeout),
        (counts.skipped, Outcome::Skipped),
        (counts.pending, Outcome::Pending),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, outcome)| format!("{n} {outcome}"))
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("  outcomes: {}\n", parts.join(", "))
    }
}

/// The hosts of a fleet job that did not complete, as `host (outcome: reason)`.
pub fn fleet_failures(job: &JobRecord) -> Vec<String> {
    job.hosts
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .filter(|h| h.outcome != Outcome::Complete)
        .map(|h| {
            let reason = host_reason(h);
            let host = sanitize::line(&h.host);
            if reason.is_empty() {
                format!("{host} ({})", h.outcome)
            } else {
                format!("{host} ({}: {reason})", h.outcome)
            }
        })
        .collect()
}

/// `GET /list` sessions as a table.
pub fn jobs_table(sessions: &[JobRecord]) -> String {
    if sessions.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut t = Table::new([
        "ID", "Type", "Host", "Via", "Status", "Duration", "Created", "Error",
    ])
    .right(0)
    .right(5);
    for j in sessions {
        let host = match &j.hosts {
            Some(hosts) => format!("fleet of {}", hosts.len()),
            None => j.host.clone().unwrap_or_else(|| "?".into()),
        };
        t.push(vec![
            j.jobid.max(j.id).to_string(),
            j.analysis_type.clone(),
            host,
            j.via.map(Via::as_str).unwrap_or("").to_owned(),
            status_name(j.status).to_owned(),
            format!("{} s", number(j.duration)),
            short_time(&Json::from(j.created.clone())),
            j.error.as_ref().map(error_line).unwrap_or_default(),
        ]);
    }
    t.render(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fleet_json() -> Json {
        json!({
            "id": 9, "jobid": 9, "kind": "fleet", "host": null, "type": "ust", "username": "root",
            "duration": 2, "status": -1, "created": "2026-01-01T00:00:00Z",
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:03Z",
            "error": {"step": "fleet", "host": null, "message": "1 of 2 hosts did not complete"},
            "hosts": [
                {"host": "a", "outcome": "complete", "jobid": 5, "status": 4, "via": "agent",
                 "result": {"kind": "ust", "total": 0, "events": [], "processes": []}},
                {"host": "b", "outcome": "offline",
                 "error": {"step": "dispatch", "host": "b", "message": "not\nconnected"}}
            ],
            "outcomes": {"complete": 1, "error": 0, "offline": 1, "timeout": 0, "skipped": 0, "pending": 0}
        })
    }

    #[test]
    fn a_fleet_reads_as_the_servers_types() {
        let job = parse(&fleet_json()).unwrap();
        let text = fleet(&job, 10);
        assert!(
            text.starts_with("fleet job 9: ust on 2 hosts, error, traced 2 s, took 3.0 s"),
            "{text}"
        );
        assert!(text.contains("outcomes: 1 complete, 1 offline"), "{text}");
        assert!(text.contains("===== a ====="), "{text}");
        assert_eq!(
            fleet_failures(&job),
            vec!["b (offline: dispatch: not connected)"]
        );
        assert!(is_final(&fleet_json()));
        assert_eq!(
            error_line(job.error.as_ref().unwrap()),
            "step fleet: 1 of 2 hosts did not complete"
        );
    }

    #[test]
    fn escape_sequences_in_jobs_and_fleets_print_as_text() {
        let hostile = "\x1b]0;pwned\x07evil\x1b[2J";
        let shown = r"\x1b]0;pwned\x07evil\x1b[2J";
        let safe = |text: &str| !text.chars().any(|c| sanitize::is_unsafe(c) && c != '\n');
        let failed = parse(&json!({
            "id": 3, "jobid": 3, "host": format!("h{hostile}"), "type": "ust", "username": "root",
            "duration": 1, "status": -1, "created": "2026-01-01T00:00:00Z",
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z",
            "error": {"step": "analysis", "host": format!("h{hostile}"), "message": format!("tool said {hostile}\nmore")}
        }))
        .unwrap();
        let text = job(&failed, 10);
        assert!(safe(&text), "{text:?}");
        assert!(
            text.contains(&format!(
                "error: step analysis on h{shown}: tool said {shown} more"
            )),
            "{text}"
        );
        assert!(job_header(&failed).starts_with(&format!("job 3: ust on h{shown}")));
        let table = jobs_table(std::slice::from_ref(&failed));
        assert!(safe(&table) && table.contains(shown), "{table:?}");

        let mut fleet_job = fleet_json();
        fleet_job["hosts"][1]["host"] = json!(format!("b{hostile}"));
        fleet_job["hosts"][1]["error"]["message"] = json!(hostile);
        fleet_job["hosts"][0]["result"]["processes"] =
            json!([{"vpid": 1, "procname": hostile, "events": 0, "threads": {}}]);
        let record = parse(&fleet_job).unwrap();
        let text = fleet(&record, 10);
        assert!(safe(&text), "{text:?}");
        assert!(text.contains(&format!("b{shown}")), "{text}");
        assert_eq!(
            fleet_failures(&record),
            vec![format!("b{shown} (offline: dispatch: {shown})")]
        );
    }

    #[test]
    fn statuses_and_unreadable_jobs() {
        assert_eq!(status_name_of(&json!(2)), "trace running");
        assert_eq!(status_name_of(&json!(7)), "status 7");
        assert_eq!(status_name_of(&json!(null)), "unknown");
        assert!(parse(&json!({"id": 1})).is_err());
        assert!(!is_final(&json!({"status": 4})), "not a job");
    }
}
