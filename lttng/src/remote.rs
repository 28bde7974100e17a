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
    fn host_names() {
        assert!(host_ok("web-1.example"));
        assert!(host_ok("::1"));
        assert!(!host_ok("-oProxyCommand=x"));
        assert!(!host_ok("a b"));
        assert!(!host_ok(""));
    }
}
