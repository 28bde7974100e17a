//! A whole trace job run on a host by its own `tracesd` in one command (`tracesd ssh-job`),
//! which the coordinator's SSH driver starts in one round trip instead of one per step.
//!
//! The coordinator writes the [`JobSpec`](tracevisor_protocol::JobSpec) as one JSON line on
//! the command's standard input and keeps the input open: closing it cancels the job (the
//! session is destroyed, as a cancelled agent job's is). The command answers with JSON lines on
//! its standard output ([`RemoteLine`]): progress, then one result or one error. Every value
//! still reaches `lttng` only after [`validate_spec`](crate::lifecycle::validate_spec), on the
//! host itself; the command line carries no request value but the host's and the analysis's
//! names, checked on both sides.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::lifecycle::{argv, step_err, Executor, StepError};

/// The `tracesd` subcommand.
pub const SUBCOMMAND: &str = "ssh-job";
/// Largest job description read on standard input.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Whether `id` output shows uid 0 or membership of the `tracing` group.
pub fn user_may_trace(id: &str) -> bool {
    let uid_root = id.split_whitespace().any(|f| f.starts_with("uid=0("));
    let tracing = id
        .split_whitespace()
        .find_map(|f| f.strip_prefix("groups="))
        .is_some_and(|g| g.split(',').any(|entry| entry.ends_with("(tracing)")));
    uid_root || tracing
}

/// The pre-flight checks of the original, the same whether the coordinator runs them over SSH
/// or `tracesd ssh-job` runs them on the host: a root lttng-sessiond runs, the user is root or
/// in the `tracing` group, and for a kernel analysis the kernel tracer is loaded. The checks
/// are independent and run at once (over SSH, one round trip on the multiplexed connection).
/// Fails at step `preflight`, or `kernel`.
pub async fn preflight(
    exec: &impl Executor,
    needs_kernel: bool,
    analysis: &str,
) -> Result<(), StepError> {
    let limit = std::time::Duration::from_secs(15);
    let modules = async {
        if needs_kernel {
            Some(exec.run(argv(&["cat", "/proc/modules"]), limit).await)
        } else {
            None
        }
    };
    let (sessiond, id, modules) = tokio::join!(
        exec.run(
            argv(&["pgrep", "-u", "root", "-x", "lttng-sessiond"]),
            limit
        ),
        exec.run(argv(&["id"]), limit),
        modules
    );
    if sessiond.is_err() {
        return Err(step_err(
            exec,
            "preflight",
            "no lttng-sessiond running as root (start it with `lttng-sessiond --daemonize` as root)",
        ));
    }
    // One `id` answers both: "uid=0(root) gid=0(root) groups=0(root),27(tracing)".
    let id = id.map_err(|e| step_err(exec, "preflight", format!("cannot check the user: {e}")))?;
    if !user_may_trace(&id.stdout_lossy()) {
        return Err(step_err(
            exec,
            "preflight",
            "the ssh user is neither root nor in the tracing group",
        ));
    }
    if let Some(modules) = modules {
        let loaded = modules.is_ok_and(|o| {
            o.stdout_lossy()
                .lines()
                .any(|l| l.starts_with("lttng_tracer "))
        });
        if !loaded {
            return Err(step_err(
                exec,
                "kernel",
                format!("kernel tracer not available (lttng-modules not loaded); analysis {analysis} needs kernel events"),
            ));
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

impl From<StepError> for RemoteLine {
    fn from(e: StepError) -> Self {
        RemoteLine::Error {
            step: e.step,
            host: e.host,
            message: e.message,
        }
    }
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
