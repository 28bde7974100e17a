//! Test harness: launches real coordinators, agents, LTTng daemons and sshd for the integration tests.
pub mod agents;
pub mod coordinator;
pub mod jobs_support;
pub mod lttng;
pub mod procfs;
pub mod skip;
pub mod sshd;

/// A temporary directory named `PREFIX...` (a data directory for a coordinator or an agent),
/// removed when dropped.
#[allow(clippy::unwrap_used)]
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// Runs an async test body on a runtime of its own (tests stay plain `#[test]`s, so that a
/// process-wide guard such as `lttng::ust_exclusive` is never held across an `.await`).
#[allow(clippy::unwrap_used)]
pub fn block_on<F: std::future::Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}
