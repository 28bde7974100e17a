//! Where analysis-only jobs read traces, whatever a coordinator asks.
//!
//! The agent runs as root: a `StartJob` from a fake coordinator (or a man in the middle of a
//! `ws://` link) could otherwise point an analysis at any directory (`/etc`, `/root/.ssh`) as
//! its trace, or make the agent search any directory for a relay's output. A job's
//! [`TraceLocator`] is confined to the agent's trace root (its executor's) and the
//! `relay_roots` of its configuration:
//!
//! - a [`TraceLocator::Path`] must resolve to a directory strictly under one of them;
//! - each root of a [`TraceLocator::RelaySession`] must resolve to one of them or to a
//!   directory under one of them. A root that does not exist can hold no trace: when it is (or
//!   is under) one of the allowed roots as configured, it is left out of the search (the
//!   coordinator sends its default relay output directories, of which a host usually has one);
//!   any other is refused, with the same message as a root outside (so a coordinator cannot
//!   tell whether a path exists where it may not look).
//!
//! Paths are checked once resolved (symbolic links followed, `..` applied), against the roots
//! resolved the same way at check time (configured roots that do not exist are skipped), and
//! the locator is rewritten to the resolved paths, so what was checked is what the job reads.

use std::path::{Component, Path, PathBuf};

use tracevisor_protocol::TraceLocator;

/// The directories analysis-only jobs may read traces in.
#[derive(Debug, Clone)]
pub struct TraceRoots {
    /// The agent's trace root, where its own jobs write traces.
    trace_root: PathBuf,
    /// The `relay_roots` of the configuration: output directories of this host's relay.
    relay_roots: Vec<PathBuf>,
}

/// The allowed roots as resolved for one check.
struct Resolved {
    /// The roots that exist, canonical.
    canonical: Vec<PathBuf>,
    /// The roots as configured (absolute, without `.` or `..` components), and the canonical
    /// ones: where a path that does not exist may be left out rather than refused.
    lexical: Vec<PathBuf>,
}

impl Resolved {
    /// Whether `real` (canonical) is one of the roots or under one; strictly under only when
    /// `strictly`.
    fn contains(&self, real: &Path, strictly: bool) -> bool {
        self.canonical
            .iter()
            .any(|root| real.starts_with(root) && !(strictly && real == root))
    }

    /// Whether `path` (not resolved) is spelled as one of the roots or a path under one.
    fn contains_lexically(&self, path: &Path) -> bool {
        lexical(path).is_some_and(|path| self.lexical.iter().any(|root| path.starts_with(root)))
    }
}

/// `path` without `.` components, if it is absolute and has no `..`.
fn lexical(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    out.is_absolute().then_some(out)
}

/// `resolved` as a string for the locator, or why not.
fn utf8(shown: &str, resolved: PathBuf) -> Result<String, String> {
    resolved.into_os_string().into_string().map_err(|resolved| {
        format!(
            "{shown} resolves to {}, which is not UTF-8",
            Path::new(&resolved).display()
        )
    })
}

impl TraceRoots {
    /// Jobs read traces under `trace_root` (the executor's) and the `relay_roots` (absolute
    /// paths; they need not exist yet: they are resolved at each check).
    pub fn new(trace_root: impl Into<PathBuf>, relay_roots: Vec<PathBuf>) -> Self {
        TraceRoots {
            trace_root: trace_root.into(),
            relay_roots,
        }
    }

    /// The agent's trace root.
    pub fn trace_root(&self) -> &Path {
        &self.trace_root
    }

    /// The configured relay roots.
    pub fn relay_roots(&self) -> &[PathBuf] {
        &self.relay_roots
    }

    /// The roots as they are now; those that do not exist (or are not absolute) are skipped.
    fn resolve(&self) -> Resolved {
        let mut resolved = Resolved {
            canonical: Vec::new(),
            lexical: Vec::new(),
        };
        let roots = std::iter::once((&self.trace_root, "trace root"))
            .chain(self.relay_roots.iter().map(|root| (root, "relay_roots")));
        for (root, setting) in roots {
            let Some(spelled) = lexical(root) else {
                tracing::warn!(root = %root.display(), setting, "not an absolute path without `..`; no trace is read there");
                continue;
            };
            resolved.lexical.push(spelled);
            match root.canonicalize() {
                Ok(real) if real.is_dir() => {
                    resolved.lexical.push(real.clone());
                    resolved.canonical.push(real);
                }
                Ok(real) => {
                    tracing::warn!(root = %root.display(), resolved = %real.display(), setting, "not a directory; no trace is read there");
                }
                Err(error) => {
                    tracing::debug!(root = %root.display(), setting, %error, "does not exist; skipped");
                }
            }
        }
        resolved
    }

    /// Why `what` (a trace path or relay root, as the job named it) is not allowed.
    fn outside(&self, what: &str) -> String {
        let relay_roots = self
            .relay_roots
            .iter()
            .map(|root| root.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{what} is outside this agent's trace root {} and its relay_roots [{relay_roots}] (set relay_roots in tracesd.toml; relay_output_dirs for a coordinator's built-in agent)",
            self.trace_root.display()
        )
    }

    /// Checks a job's locator and rewrites it to the canonical paths it was checked as.
    pub fn apply(&self, locator: &mut TraceLocator) -> Result<(), String> {
        match locator {
            TraceLocator::Path(path) => *path = self.check_path(path)?,
            TraceLocator::RelaySession { roots } => *roots = self.check_relay_roots(roots)?,
        }
        Ok(())
    }

    /// The canonical path of a trace directory, if it is strictly under an allowed root.
    pub fn check_path(&self, path: &str) -> Result<String, String> {
        let allowed = self.resolve();
        let real = match Path::new(path).canonicalize() {
            Ok(real) => real,
            Err(error) if allowed.contains_lexically(Path::new(path)) => {
                return Err(format!(
                    "trace path {path} does not exist on this host: {error}"
                ))
            }
            Err(_) => return Err(self.outside(&format!("trace path {path}"))),
        };
        let shown = if real == Path::new(path) {
            format!("trace path {path}")
        } else {
            format!("trace path {path} (resolves to {})", real.display())
        };
        if allowed.canonical.contains(&real) {
            return Err(format!(
                "{shown} is one of this agent's trace and relay roots, not a trace directory under it"
            ));
        }
        if !allowed.contains(&real, true) {
            return Err(self.outside(&shown));
        }
        if !real.is_dir() {
            return Err(format!("{shown} is not a directory"));
        }
        utf8(&shown, real)
    }

    /// Whether `path` does not exist but is spelled under an allowed root: a trace that was
    /// there and is gone (deleted after its retention, beyond the quota, or by hand).
    pub fn missing_under_roots(&self, path: &str) -> bool {
        !Path::new(path).exists() && self.resolve().contains_lexically(Path::new(path))
    }

    /// The canonical paths of the relay roots to search, each an allowed root or a directory
    /// under one; those that do not exist but are spelled under an allowed root are left out.
    pub fn check_relay_roots(&self, roots: &[String]) -> Result<Vec<String>, String> {
        let allowed = self.resolve();
        let mut checked = Vec::new();
        let mut missing = Vec::new();
        for root in roots {
            let real = match Path::new(root).canonicalize() {
                Ok(real) => real,
                Err(error) if allowed.contains_lexically(Path::new(root)) => {
                    tracing::debug!(%root, %error, "relay root does not exist; not searched");
                    missing.push(root.as_str());
                    continue;
                }
                Err(_) => return Err(self.outside(&format!("relay root {root}"))),
            };
            let shown = if real == Path::new(root) {
                format!("relay root {root}")
            } else {
                format!("relay root {root} (resolves to {})", real.display())
            };
            if !allowed.contains(&real, false) {
                return Err(self.outside(&shown));
            }
            if !real.is_dir() {
                return Err(format!("{shown} is not a directory"));
            }
            let real = utf8(&shown, real)?;
            if !checked.contains(&real) {
                checked.push(real);
            }
        }
        if checked.is_empty() {
            return Err(if missing.is_empty() {
                "the job names no relay root to search".to_owned()
            } else {
                format!(
                    "no relay root to search: {} does not exist on this host",
                    missing.join(", ")
                )
            });
        }
        Ok(checked)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A trace root, a relay root and a directory outside both, in a temporary directory.
    struct Fixture {
        _dir: tempfile::TempDir,
        /// Canonical paths.
        traces: PathBuf,
        relay: PathBuf,
        outside: PathBuf,
        roots: TraceRoots,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let [traces, relay, outside] = ["traces", "relay", "outside"].map(|name| base.join(name));
        for d in [&traces, &relay, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(traces.join("tracevisor-1-2-h")).unwrap();
        std::fs::create_dir_all(relay.join("web-1/tracevisor-1-3-web-1-20250101-000000")).unwrap();
        let roots = TraceRoots::new(
            &traces,
            vec![relay.clone(), base.join("relay-not-yet-made")],
        );
        Fixture {
            _dir: dir,
            traces,
            relay,
            outside,
            roots,
        }
    }

    fn s(path: &Path) -> String {
        path.display().to_string()
    }

    fn assert_outside(why: &str, path: &str) {
        assert!(why.contains(path), "names {path}: {why}");
        assert!(why.contains("is outside this agent's trace root"), "{why}");
        assert!(why.contains("set relay_roots in tracesd.toml"), "{why}");
    }

    #[test]
    fn a_trace_under_the_trace_root_or_a_relay_root_passes_canonicalized() {
        let f = fixture();
        let session = f.traces.join("tracevisor-1-2-h");
        assert_eq!(f.roots.check_path(&s(&session)).unwrap(), s(&session));
        // Spelled another way (`.`, a trailing slash, a link inside the root): rewritten.
        let link = f.traces.join("alias");
        std::os::unix::fs::symlink(&session, &link).unwrap();
        for spelled in [format!("{}/./tracevisor-1-2-h/", s(&f.traces)), s(&link)] {
            let mut locator = TraceLocator::Path(spelled.clone());
            f.roots.apply(&mut locator).unwrap();
            assert_eq!(locator, TraceLocator::Path(s(&session)), "{spelled}");
        }
        let relayed = f.relay.join("web-1/tracevisor-1-3-web-1-20250101-000000");
        assert_eq!(f.roots.check_path(&s(&relayed)).unwrap(), s(&relayed));
    }

    #[test]
    fn a_trace_outside_the_roots_is_refused_naming_it_and_the_setting() {
        let f = fixture();
        assert_outside(&f.roots.check_path("/etc").unwrap_err(), "trace path /etc");
        // `..` out of the trace root.
        for escape in [
            format!("{}/../outside", s(&f.traces)),
            format!("{}/../../../../../../etc", s(&f.traces)),
        ] {
            let why = f.roots.check_path(&escape).unwrap_err();
            assert_outside(&why, &escape);
        }
        // A link inside the trace root pointing outside.
        let link = f.traces.join("evil");
        std::os::unix::fs::symlink(&f.outside, &link).unwrap();
        let why = f.roots.check_path(&s(&link)).unwrap_err();
        assert_outside(&why, &s(&link));
        assert!(
            why.contains(&format!("resolves to {}", s(&f.outside))),
            "{why}"
        );
        let etc = f.relay.join("etc");
        std::os::unix::fs::symlink("/etc", &etc).unwrap();
        assert_outside(&f.roots.check_path(&s(&etc)).unwrap_err(), &s(&etc));
        // The roots themselves are not traces.
        for root in [&f.traces, &f.relay] {
            let why = f.roots.check_path(&s(root)).unwrap_err();
            assert!(why.contains("not a trace directory under it"), "{why}");
        }
        // A path that does not exist: outside, the same answer as for one that exists.
        let hidden = s(&f.outside.join("nothing-here"));
        assert_outside(&f.roots.check_path(&hidden).unwrap_err(), &hidden);
        // Under a root: said not to exist.
        let gone = s(&f.traces.join("gone"));
        let why = f.roots.check_path(&gone).unwrap_err();
        assert!(
            why.contains(&format!("trace path {gone} does not exist")),
            "{why}"
        );
        // A file is not a trace directory.
        let file = f.traces.join("file");
        std::fs::write(&file, "").unwrap();
        let why = f.roots.check_path(&s(&file)).unwrap_err();
        assert!(why.ends_with("is not a directory"), "{why}");
        // The locator is left as it was.
        let mut locator = TraceLocator::Path("/etc".into());
        assert!(f.roots.apply(&mut locator).is_err());
        assert_eq!(locator, TraceLocator::Path("/etc".into()));
    }

    #[test]
    fn relay_roots_must_be_an_allowed_root_or_under_one() {
        let f = fixture();
        // A configured relay root, a directory under it, and the trace root pass, canonical.
        let web = f.relay.join("web-1");
        let mut locator = TraceLocator::RelaySession {
            roots: vec![
                format!("{}/", s(&f.relay)),
                s(&web),
                s(&f.traces),
                s(&f.relay),
            ],
        };
        f.roots.apply(&mut locator).unwrap();
        assert_eq!(
            locator,
            TraceLocator::RelaySession {
                roots: vec![s(&f.relay), s(&web), s(&f.traces)]
            }
        );
        // Outside, or escaping through a link, or not existing and not an allowed root.
        let link = f.relay.join("evil");
        std::os::unix::fs::symlink(&f.outside, &link).unwrap();
        let nowhere = s(&f.outside.join("nothing-here"));
        for hostile in ["/", "/etc", "/root", &s(&f.outside), &s(&link), &nowhere] {
            let roots = vec![s(&f.relay), hostile.to_owned()];
            let why = f.roots.check_relay_roots(&roots).unwrap_err();
            assert_outside(&why, &format!("relay root {hostile}"));
        }
    }

    #[test]
    fn relay_roots_that_do_not_exist_are_skipped_when_configured() {
        let f = fixture();
        // Configured but not made yet (a default output directory this host does not use).
        let missing = s(&f.relay.parent().unwrap().join("relay-not-yet-made"));
        let roots = vec![missing.clone(), s(&f.relay)];
        assert_eq!(
            f.roots.check_relay_roots(&roots).unwrap(),
            vec![s(&f.relay)]
        );
        let why = f
            .roots
            .check_relay_roots(std::slice::from_ref(&missing))
            .unwrap_err();
        assert!(why.contains(&missing), "{why}");
        assert!(why.contains("does not exist on this host"), "{why}");
        assert!(f.roots.check_relay_roots(&[]).is_err());
        // No relay roots configured: only the trace root.
        let bare = TraceRoots::new(&f.traces, vec![]);
        assert_outside(
            &bare.check_relay_roots(&[s(&f.relay)]).unwrap_err(),
            &format!("relay root {}", s(&f.relay)),
        );
        assert!(bare
            .check_path(&s(&f.traces.join("tracevisor-1-2-h")))
            .is_ok());
    }

    #[test]
    fn a_configured_root_spelled_through_a_link_is_the_directory_it_names() {
        let f = fixture();
        let link = f.relay.parent().unwrap().join("relay-link");
        std::os::unix::fs::symlink(&f.relay, &link).unwrap();
        let roots = TraceRoots::new(&f.traces, vec![link.clone()]);
        assert_eq!(
            roots.check_relay_roots(&[s(&link)]).unwrap(),
            vec![s(&f.relay)]
        );
        let relayed = link.join("web-1/tracevisor-1-3-web-1-20250101-000000");
        assert_eq!(
            roots.check_path(&s(&relayed)).unwrap(),
            s(&f.relay.join("web-1/tracevisor-1-3-web-1-20250101-000000"))
        );
    }
}
