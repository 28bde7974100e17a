//! Detects what this host can trace and analyse by asking the real tools (lttng,
//! lttng-sessiond, babeltrace2, the `lttng-*-mi` analyses); nothing missing is fatal.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracevisor_protocol::Capabilities;

use crate::runner::{is_executable, Cmd};

/// Timeout of each probe command: they answer in milliseconds when the tools are healthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the kernel shows the lttng-modules tracer once it is loaded.
const LTTNG_MODULE_DIR: &str = "/sys/module/lttng_tracer";

/// Detects the capabilities with the programs found in the runner's `PATH`
/// ([`CHILD_PATH`](crate::runner::CHILD_PATH)): what is found is what jobs can run.
pub async fn detect() -> Capabilities {
    detect_in(
        OsStr::new(crate::runner::CHILD_PATH),
        Path::new(LTTNG_MODULE_DIR),
    )
    .await
}

/// Detects the capabilities with the programs found in `search_path` (a `PATH`-style list);
/// `module_dir` is where a loaded lttng-modules shows up.
pub async fn detect_in(search_path: &OsStr, module_dir: &Path) -> Capabilities {
    let find = |program: &str| find_in(search_path, program);
    let mut capabilities = Capabilities {
        babeltrace2: find("babeltrace2").is_some(),
        analyses: analyses_in(search_path),
        ..Capabilities::default()
    };

    let Some(lttng) = find("lttng") else {
        let reason = "lttng not found in PATH (install lttng-tools)".to_owned();
        capabilities.kernel_tracer_error = Some(reason.clone());
        capabilities.userspace_tracer_error = Some(reason);
        return capabilities;
    };

    match Cmd::new(&lttng)
        .arg("--version")
        .timeout(PROBE_TIMEOUT)
        .run()
        .await
    {
        Ok(output) => capabilities.lttng_version = parse_lttng_version(&output.stdout_lossy()),
        Err(error) => tracing::warn!(%error, "cannot read the lttng version"),
    }

    // Listing the userspace domain needs a session daemon but no tracer: it tells whether
    // one runs and whether userspace tracing works.
    match probe(&lttng, "-u").await {
        Ok(()) => {
            capabilities.sessiond_running = true;
            capabilities.userspace_tracer = true;
        }
        Err(Probe::NoSessiond) => {
            let reason = "lttng-sessiond is not running".to_owned();
            capabilities.userspace_tracer_error = Some(reason.clone());
            capabilities.kernel_tracer_error = Some(format!("cannot check: {reason}"));
            return capabilities;
        }
        Err(Probe::Failed(reason)) => {
            capabilities.sessiond_running = true;
            capabilities.userspace_tracer_error =
                Some(format!("userspace tracer not available: {reason}"));
        }
    }

    match probe(&lttng, "-k").await {
        Ok(()) => capabilities.kernel_tracer = true,
        Err(Probe::NoSessiond) => {
            capabilities.kernel_tracer_error =
                Some("cannot check: lttng-sessiond is not running".to_owned());
        }
        Err(Probe::Failed(reason)) => {
            capabilities.kernel_tracer_error = Some(kernel_error(&reason, module_dir.exists()));
        }
    }
    capabilities
}

enum Probe {
    NoSessiond,
    Failed(String),
}

/// Runs `lttng list -k` or `lttng list -u`.
async fn probe(lttng: &Path, domain: &str) -> Result<(), Probe> {
    match Cmd::new(lttng)
        .args(["list", domain])
        .timeout(PROBE_TIMEOUT)
        .run()
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => {
            let reason = error
                .stderr()
                .map(lttng_reason)
                .filter(|reason| !reason.is_empty())
                .unwrap_or_else(|| error.to_string());
            if reason.contains("No session daemon is available") {
                Err(Probe::NoSessiond)
            } else {
                Err(Probe::Failed(reason))
            }
        }
    }
}

fn kernel_error(reason: &str, modules_loaded: bool) -> String {
    if reason.contains("Kernel tracer not available") && !modules_loaded {
        "kernel tracer not available (lttng-modules not loaded)".to_owned()
    } else {
        format!("kernel tracer not available: {reason}")
    }
}

/// The last line of lttng's stderr without its `Error: ` prefix (lttng prints warnings
/// first and the error last).
fn lttng_reason(stderr: &str) -> String {
    let line = stderr.lines().rev().find(|line| !line.trim().is_empty());
    let line = line.unwrap_or_default().trim();
    line.strip_prefix("Error: ").unwrap_or(line).to_owned()
}

/// `2.13.9` from `lttng (LTTng Trace Control) 2.13.9 - Nordicité`.
fn parse_lttng_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|word| {
            word.starts_with(|c: char| c.is_ascii_digit())
                && word.contains('.')
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+~".contains(c))
        })
        .map(str::to_owned)
}

fn find_in(search_path: &OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// The `lttng-*-mi` executables in `search_path`, by name, sorted and deduplicated.
fn analyses_in(search_path: &OsStr) -> Vec<String> {
    let mut found = BTreeSet::new();
    for dir in std::env::split_paths(search_path) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name: OsString = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let is_analysis = name.starts_with("lttng-")
                && name.ends_with("-mi")
                && name.len() > "lttng--mi".len();
            if is_analysis && is_executable(&entry.path()) {
                found.insert(name.to_owned());
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A fake `lttng` that answers `--version`, and `list -u`/`list -k` as given.
    fn fake_lttng(dir: &Path, list_u: &str, list_k: &str) {
        script(
            dir,
            "lttng",
            &format!(
                "case \"$1 $2\" in\n\
                 '--version ') echo 'lttng (LTTng Trace Control) 2.13.9 - Nordicité' ;;\n\
                 'list -u') {list_u} ;;\n\
                 'list -k') {list_k} ;;\n\
                 *) exit 2 ;;\n\
                 esac"
            ),
        );
    }

    #[tokio::test]
    async fn nothing_installed() {
        let dir = tempfile::tempdir().unwrap();
        let caps = detect_in(dir.path().as_os_str(), dir.path()).await;
        assert_eq!(caps.lttng_version, None);
        assert!(!caps.sessiond_running && !caps.kernel_tracer && !caps.userspace_tracer);
        assert_eq!(
            caps.kernel_tracer_error.as_deref(),
            Some("lttng not found in PATH (install lttng-tools)")
        );
        assert!(!caps.babeltrace2);
        assert!(caps.analyses.is_empty());
    }

    #[tokio::test]
    async fn no_session_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let no_daemon =
            "echo 'Error: Unable to list UST events: No session daemon is available' >&2; exit 1";
        fake_lttng(dir.path(), no_daemon, no_daemon);
        let caps = detect_in(dir.path().as_os_str(), &dir.path().join("none")).await;
        assert_eq!(caps.lttng_version.as_deref(), Some("2.13.9"));
        assert!(!caps.sessiond_running && !caps.userspace_tracer && !caps.kernel_tracer);
        assert_eq!(
            caps.userspace_tracer_error.as_deref(),
            Some("lttng-sessiond is not running")
        );
        assert_eq!(
            caps.kernel_tracer_error.as_deref(),
            Some("cannot check: lttng-sessiond is not running")
        );
    }

    #[tokio::test]
    async fn no_kernel_tracer() {
        let dir = tempfile::tempdir().unwrap();
        fake_lttng(
            dir.path(),
            "echo 'UST events:'",
            "echo 'Error: Unable to list kernel events: Kernel tracer not available' >&2; exit 1",
        );
        script(dir.path(), "babeltrace2", "exit 0");
        script(dir.path(), "lttng-cputop-mi", "exit 0");
        script(dir.path(), "lttng-cputop", "exit 0");
        script(dir.path(), "lttng-iousagetop-mi", "exit 0");
        std::fs::write(dir.path().join("lttng-notexec-mi"), "").unwrap();
        let caps = detect_in(dir.path().as_os_str(), &dir.path().join("none")).await;
        assert!(caps.sessiond_running && caps.userspace_tracer && !caps.kernel_tracer);
        assert_eq!(caps.userspace_tracer_error, None);
        assert_eq!(
            caps.kernel_tracer_error.as_deref(),
            Some("kernel tracer not available (lttng-modules not loaded)")
        );
        assert!(caps.babeltrace2);
        assert_eq!(caps.analyses, ["lttng-cputop-mi", "lttng-iousagetop-mi"]);
    }

    #[tokio::test]
    async fn kernel_tracer_available() {
        let dir = tempfile::tempdir().unwrap();
        fake_lttng(dir.path(), "exit 0", "exit 0");
        let caps = detect_in(dir.path().as_os_str(), dir.path()).await;
        assert!(caps.sessiond_running && caps.userspace_tracer && caps.kernel_tracer);
        assert_eq!(caps.kernel_tracer_error, None);
    }

    #[tokio::test]
    async fn other_kernel_errors_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        fake_lttng(
            dir.path(),
            "exit 0",
            "echo 'Warning: something' >&2; echo 'Error: Unable to list kernel events: Permission denied' >&2; exit 1",
        );
        let caps = detect_in(dir.path().as_os_str(), dir.path()).await;
        assert_eq!(
            caps.kernel_tracer_error.as_deref(),
            Some("kernel tracer not available: Unable to list kernel events: Permission denied")
        );
    }

    /// On the real machine: whatever is installed, every missing tracer has a reason.
    #[tokio::test]
    async fn real_detection_explains_what_is_missing() {
        let caps = detect().await;
        assert!(
            caps.kernel_tracer || caps.kernel_tracer_error.is_some(),
            "{caps:?}"
        );
        assert!(
            caps.userspace_tracer || caps.userspace_tracer_error.is_some(),
            "{caps:?}"
        );
        if crate::runner::find_in_path("lttng").is_some() {
            assert!(caps.lttng_version.is_some(), "{caps:?}");
        }
    }

    #[test]
    fn parses_lttng_versions() {
        assert_eq!(
            parse_lttng_version("lttng (LTTng Trace Control) 2.13.9 - Nordicité\n").as_deref(),
            Some("2.13.9")
        );
        assert_eq!(
            parse_lttng_version("lttng (LTTng Trace Control) 2.14.0-rc1 - Joannie\n").as_deref(),
            Some("2.14.0-rc1")
        );
        assert_eq!(parse_lttng_version("garbage"), None);
    }
}
