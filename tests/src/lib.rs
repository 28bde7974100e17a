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

/// Writes `mib` MiB of incompressible (xorshift) bytes to a new file at `path`: trace padding
/// that no compression shrinks.
pub fn write_incompressible(path: &std::path::Path, mib: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.sync_all()
}
