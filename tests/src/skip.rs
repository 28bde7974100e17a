//! Requirement checks that let a test skip itself loudly (or fail under `TRACEVISOR_REQUIRE_ALL=1`) when root, LTTng, sshd or another real component is missing.
//!
//! ```ignore
//! use tracevisor_tests::{require, skip::Req};
//!
//! #[test]
//! fn traces_for_real() {
//!     require!(Req::Root, Req::Lttng, Req::UstToolchain);
//!     // ...
//! }
//!
//! #[tokio::test]
//! async fn returns_a_result() -> anyhow::Result<()> {
//!     require!(Req::Sshd => Ok(()));
//!     Ok(())
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable that turns every skip into a panic (CI sets it to `1`).
pub const REQUIRE_ALL_ENV: &str = "TRACEVISOR_REQUIRE_ALL";

/// Python interpreter that has the Debian `python3-babeltrace` module (override with `TRACEVISOR_PYTHON3`).
pub fn system_python() -> PathBuf {
    std::env::var_os("TRACEVISOR_PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// Something a test needs from the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Effective uid 0 (a root lttng-sessiond, sshd, `/run/sshd`).
    Root,
    /// The `lttng` CLI and `lttng-sessiond` (started on demand by [`crate::lttng::ensure_sessiond`]).
    Lttng,
    /// `lttng-relayd`.
    Relayd,
    /// gcc and the lttng-ust headers and library, to build the test program.
    UstToolchain,
    /// `babeltrace2`, to read traces.
    Babeltrace2,
    /// The lttng-analyses `-mi` commands, babeltrace 1.x and python3-babeltrace's CTF writer.
    Analyses,
    /// `/usr/sbin/sshd` and `ssh-keygen`.
    Sshd,
    /// The OpenSSH client `ssh`.
    SshClient,
    /// The LTTng kernel tracer (lttng-modules loaded: `/proc/lttng` exists); absent in
    /// containers and most VMs, including the development machine.
    KernelTracer,
    /// The machine LACKS the kernel tracer (to test the "kernel tracer not available" error).
    NoKernelTracer,
    /// The Prometheus text-format parser of the official Python client (`python3-prometheus-client`).
    PrometheusParser,
    /// Headless Chromium, its WebDriver and python3-selenium (Debian `chromium`,
    /// `chromium-driver`, `python3-selenium`), for the dashboard's browser tests.
    Browser,
}

impl Req {
    /// Why this requirement is not met here, or `None` when it is.
    pub fn missing(self) -> Option<String> {
        match self {
            Req::Root => (!is_root()).then(|| "needs root (run the tests as root)".to_string()),
            Req::Lttng => missing_programs(&["lttng", "lttng-sessiond"], "lttng-tools"),
            Req::Relayd => missing_programs(&["lttng-relayd"], "lttng-tools"),
            Req::UstToolchain => missing_programs(&["gcc"], "gcc").or_else(|| {
                let header = Path::new("/usr/include/x86_64-linux-gnu/lttng/tracepoint.h");
                let alt = Path::new("/usr/include/lttng/tracepoint.h");
                (!header.exists() && !alt.exists()).then(|| {
                    "needs the lttng-ust headers <lttng/tracepoint.h> (install liblttng-ust-dev)"
                        .to_string()
                })
            }),
            Req::Babeltrace2 => missing_programs(&["babeltrace2"], "babeltrace2"),
            Req::Analyses => missing_programs(
                &[
                    "lttng-cputop-mi",
                    "lttng-iousagetop-mi",
                    "lttng-iolatencystats-mi",
                    "babeltrace",
                ],
                "python3-lttnganalyses babeltrace",
            )
            .or_else(|| {
                missing_python(
                    "from babeltrace import CTFWriter",
                    "babeltrace.CTFWriter",
                    "python3-babeltrace",
                )
            }),
            Req::Sshd => {
                if !Path::new("/usr/sbin/sshd").exists() {
                    Some("needs /usr/sbin/sshd (install openssh-server)".to_string())
                } else {
                    missing_programs(&["ssh-keygen"], "openssh-client")
                }
            }
            Req::SshClient => missing_programs(&["ssh"], "openssh-client"),
            Req::KernelTracer => (!Path::new("/proc/lttng").exists()).then(|| {
                "needs the LTTng kernel tracer (lttng-modules not loaded: /proc/lttng is absent)"
                    .to_string()
            }),
            Req::PrometheusParser => missing_python(
                "import prometheus_client.parser",
                "prometheus_client",
                "python3-prometheus-client",
            ),
            Req::Browser => {
                missing_programs(&["chromium", "chromedriver"], "chromium chromium-driver").or_else(
                    || missing_python("import selenium.webdriver", "selenium", "python3-selenium"),
                )
            }
            Req::NoKernelTracer => Path::new("/proc/lttng").exists().then(|| {
                "needs a machine without the LTTng kernel tracer (lttng-modules is loaded here)"
                    .to_string()
            }),
        }
    }
}

/// Whether every requirement is met; prints `SKIPPED <test>: <reason>` to stderr for each
/// missing one and returns false, or panics with the same text when `TRACEVISOR_REQUIRE_ALL=1`.
pub fn require(test: &str, reqs: &[Req]) -> bool {
    let reasons: Vec<String> = reqs.iter().filter_map(|r| r.missing()).collect();
    if reasons.is_empty() {
        return true;
    }
    let message = format!("SKIPPED {test}: {}", reasons.join("; "));
    if require_all() {
        panic!("{message} ({REQUIRE_ALL_ENV}=1 forbids skipping)");
    }
    eprintln!("{message}");
    false
}

/// Whether skips are forbidden (`TRACEVISOR_REQUIRE_ALL` set to anything but empty or `0`).
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Skip (return early from) the calling test unless every [`Req`] is met; the reason is
/// printed. Use `require!(reqs => value)` in a test that returns something, e.g. `Ok(())`.
#[macro_export]
macro_rules! require {
    ($($req:expr),+ $(,)? => $ret:expr) => {
        if !$crate::skip::require($crate::__test_name!(), &[$($req),+]) {
            return $ret;
        }
    };
    ($($req:expr),+ $(,)?) => {
        if !$crate::skip::require($crate::__test_name!(), &[$($req),+]) {
            return;
        }
    };
}

/// Path of the enclosing function (`harness_smoke::ust_local_session`), for skip messages.
#[doc(hidden)]
#[macro_export]
macro_rules! __test_name {
    () => {{
        fn __here() {}
        $crate::skip::clean_fn_name(::std::any::type_name_of_val(&__here))
    }};
}

#[doc(hidden)]
pub fn clean_fn_name(raw: &'static str) -> &'static str {
    let mut name = raw.strip_suffix("::__here").unwrap_or(raw);
    while let Some(stripped) = name.strip_suffix("::{{closure}}") {
        name = stripped;
    }
    name
}

/// Whether the effective uid is 0 (read from /proc/self/status, no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Full path of `program` in `PATH` (plus the sbin directories, which non-login root shells may lack).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Why `statement` fails in [`system_python`] (what it needs, the package to install), or
/// `None` when it runs.
fn missing_python(statement: &str, what: &str, package: &str) -> Option<String> {
    let python = system_python();
    let ok = Command::new(&python)
        .args(["-c", statement])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| format!("needs {what} in {} (install {package})", python.display()))
}

fn missing_programs(programs: &[&str], package: &str) -> Option<String> {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| format!("needs {} (install {package})", missing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_is_the_enclosing_function() {
        let name = crate::__test_name!();
        assert!(
            name.ends_with("skip::tests::test_name_is_the_enclosing_function"),
            "{name}"
        );
        let closure = || crate::__test_name!();
        let in_closure = closure();
        assert!(
            in_closure.ends_with("skip::tests::test_name_is_the_enclosing_function"),
            "{in_closure}"
        );
    }

    #[test]
    fn missing_program_names_its_package() {
        let reason = missing_programs(&["tracevisor-no-such-program"], "no-such-package");
        assert_eq!(
            reason.as_deref(),
            Some("needs tracevisor-no-such-program (install no-such-package)")
        );
        assert_eq!(missing_programs(&["sh"], "dash"), None);
    }
}
