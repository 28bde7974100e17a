//! Test harness: launches real coordinators, agents, LTTng daemons and sshd for the integration tests.
pub mod agents;
pub mod cluster;
pub mod coordinator;
pub mod jobs_support;
pub mod lttng;
pub mod procfs;
pub mod prometheus;
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

thread_local! {
    static LTTNG_CONTROL: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `test` with every agent the harness starts on this thread (`tracesd`, and the
/// coordinator's built-in one) driving LTTng through `control` (`"library"`: liblttng-ctl,
/// `"cli"`: the lttng command), passed as `--lttng-control`. See [`through_both_lttng_controls`].
pub fn with_lttng_control<T>(control: &'static str, test: impl FnOnce() -> T) -> T {
    let before = LTTNG_CONTROL.with(|c| c.replace(Some(control)));
    let result = test();
    LTTNG_CONTROL.with(|c| c.set(before));
    result
}

/// The `--lttng-control` value tests on this thread give the agents they start, if any.
pub fn lttng_control() -> Option<&'static str> {
    LTTNG_CONTROL.with(|c| c.get())
}

/// Turns each named function (a plain `fn`, or an async one under `#[tokio::main]`) into two
/// tests, `NAME::through_liblttng_ctl` and `NAME::through_the_lttng_cli`, in which every agent
/// the harness starts drives LTTng through that back end (explicitly: an agent told `library`
/// does not start without the library).
#[macro_export]
macro_rules! through_both_lttng_controls {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[test]
            fn through_liblttng_ctl() {
                $crate::with_lttng_control("library", super::$test)
            }
            #[test]
            fn through_the_lttng_cli() {
                $crate::with_lttng_control("cli", super::$test)
            }
        }
    )+};
}
