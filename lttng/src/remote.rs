//! A whole trace job run on a host by its own `tracesd` in one command (`tracesd ssh-job`),
//! which the coordinator's SSH driver starts in one round trip instead of one per step.
//!
//! The coordinator writes the [`JobSpec`](tracevisor_protocol::JobSpec) as one JSON line on
//! the command's standard input and keeps the input open: closing it cancels the job (the
//! session is destroyed, as a cancelled agent job's is). The command answers with JSON lines on
//! its standard output ([`RemoteLine`]): progress, then one result or one error. Every value
//! still reaches `lttng` only after [`validate_spec`](crate::lifecycle::validate_spec), on the
//! host itself; the command line carries no request value but the host's name, checked on both
//! sides.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The `tracesd` subcommand.
pub const SUBCOMMAND: &str = "ssh-job";
/// Largest job description read on standard input.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The pre-flight's message when no root session daemon runs.
pub const NO_ROOT_SESSIOND: &str =
    "no lttng-sessiond running as root (start it with `lttng-sessiond --daemonize` as root)";
/// The pre-flight's message when the user may not trace.
pub const USER_MAY_NOT_TRACE: &str = "the ssh user is neither root nor in the tracing group";

/// The pre-flight's message when a kernel analysis meets a host without the kernel tracer.
pub fn no_kernel_tracer(analysis: &str) -> String {
    format!("kernel tracer not available (lttng-modules not loaded); analysis {analysis} needs kernel events")
}

/// Whether `id` output shows uid 0 or membership of the `tracing` group.
pub fn user_may_trace(id: &str) -> bool {
    let uid_root = id.split_whitespace().any(|f| f.starts_with("uid=0("));
    let tracing = id
        .split_whitespace()
        .find_map(|f| f.strip_prefix("groups="))
        .is_some_and(|g| g.split(',').any(|entry| entry.ends_with("(tracing)")));
    uid_root || tracing
}

/// Whether `/proc/modules` lists the lttng-modules tracer.
pub fn kernel_tracer_loaded(modules: &str) -> bool {
    modules.lines().any(|l| l.starts_with("lttng_tracer "))
}

/// The pre-flight on this host, as the coordinator runs it over SSH (a root session daemon,
/// a user allowed to trace, the kernel tracer for kernel analyses): `Err((step, message))`.
pub async fn preflight(needs_kernel: bool, analysis: &str) -> Result<(), (String, String)> {
    use crate::runner::Cmd;
    let limit = std::time::Duration::from_secs(15);
    let sessiond = Cmd::new("pgrep")
        .args(["-u", "root", "-x", "lttng-sessiond"])
        .timeout(limit);
    let id = Cmd::new("id").timeout(limit);
    let (sessiond, id) = tokio::join!(sessiond.run(), id.run());
    if sessiond.is_err() {
        return Err(("preflight".into(), NO_ROOT_SESSIOND.into()));
    }
    let id = id.map_err(|e| {
        (
            "preflight".to_owned(),
            format!("cannot check the user: {e}"),
        )
    })?;
    if !user_may_trace(&id.stdout_lossy()) {
        return Err(("preflight".into(), USER_MAY_NOT_TRACE.into()));
    }
    if needs_kernel {
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        if !kernel_tracer_loaded(&modules) {
            return Err(("kernel".into(), no_kernel_tracer(analysis)));
        }
    }
    Ok(())
}

/// Whether `name` may be given as `--analysis` (a profile name).
pub fn analysis_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One line of `tracesd ssh-job`'s output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteLine {
    /// A status change ([`run_job`](crate::lifecycle::run_job)'s progress).
    Progress { status: i8, text: String },
    /// The job's result; the last line.
    Result(Json),
    /// The job failed at `step`; the last line.
    Error {
        step: String,
        host: String,
        message: String,
    },
    /// This `tracesd` does not run the job (another version than the coordinator expects):
    /// nothing was done, the coordinator runs the job one command per step. The only line.
    Declined { reason: String },
}

/// Whether `name` may be given as `--host`: a DNS name or an address, as the API accepts
/// (letters, digits, `.-_:`), at most 253 bytes, not starting with `-`.
pub fn host_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for line in [
            RemoteLine::Progress {
                status: 1,
                text: "tracing".into(),
            },
            RemoteLine::Result(serde_json::json!({"kind": "ust", "total": 3})),
            RemoteLine::Error {
                step: "create".into(),
                host: "h".into(),
                message: "Error: x".into(),
            },
        ] {
            let text = serde_json::to_string(&line).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<RemoteLine>(&text).unwrap(), line);
        }
    }

    #[test]
    fn tracing_rights_from_id() {
        assert!(user_may_trace("uid=0(root) gid=0(root) groups=0(root)"));
        assert!(user_may_trace(
            "uid=1000(ann) gid=1000(ann) groups=1000(ann),27(sudo),998(tracing)"
        ));
        assert!(!user_may_trace(
            "uid=1000(ann) gid=1000(ann) groups=1000(ann),27(sudo)"
        ));
        assert!(!user_may_trace(
            "uid=1000(tracing) gid=1000(x) groups=1000(x)"
        ));
    }

    #[test]
    fn host_names() {
        assert!(host_ok("web-1.example"));
        assert!(host_ok("::1"));
        assert!(!host_ok("-oProxyCommand=x"));
        assert!(!host_ok("a b"));
        assert!(!host_ok(""));
    }
}
