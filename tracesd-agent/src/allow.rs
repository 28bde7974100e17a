//! Which analysis programs this agent runs, whatever a coordinator asks.
//!
//! The agent runs as root: a `StartJob` from a fake coordinator (or a man in the middle of a
//! `ws://` link) could otherwise name any program as an analysis command. Allowed are the
//! `lttng-*-mi` programs (lttng-analyses) and `babeltrace2` found in the fixed command path
//! ([`runner::CHILD_PATH`]), plus the absolute paths listed in `analysis_programs` of the
//! agent's configuration. A command is checked by the program it resolves to (symbolic links
//! followed), and runs by that absolute path, so what was checked is what runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracevisor_lttng::runner::{self, is_executable};

/// The programs an agent runs as analysis commands.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    /// Canonical paths of the allowed programs.
    allowed: BTreeSet<PathBuf>,
}

/// Whether a program's file name is one of the built-in analyses.
fn builtin_name(name: &str) -> bool {
    name == "babeltrace2" || (name.starts_with("lttng-") && name.ends_with("-mi"))
}

impl Allowlist {
    /// The built-in analyses found on this host, and `extra` (absolute paths; those that do
    /// not exist are left out with a warning).
    pub fn discover(extra: &[PathBuf]) -> Allowlist {
        let mut allowed = BTreeSet::new();
        for dir in runner::CHILD_PATH.split(':') {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if builtin_name(&name.to_string_lossy()) && is_executable(&entry.path()) {
                    if let Ok(real) = entry.path().canonicalize() {
                        allowed.insert(real);
                    }
                }
            }
        }
        for path in extra {
            match path.canonicalize() {
                Ok(real) if is_executable(&real) => {
                    allowed.insert(real);
                }
                _ => {
                    tracing::warn!(program = %path.display(), "analysis_programs: not an executable file; not allowed")
                }
            }
        }
        Allowlist { allowed }
    }

    /// Exactly these programs (tests, embedders).
    pub fn only(programs: impl IntoIterator<Item = PathBuf>) -> Allowlist {
        Allowlist {
            allowed: programs
                .into_iter()
                .map(|p| p.canonicalize().unwrap_or(p))
                .collect(),
        }
    }

    /// The absolute path `program` runs as, if this host allows it; else why not.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, String> {
        let found = if program.contains('/') {
            Some(PathBuf::from(program))
        } else {
            runner::find_in_path(program)
        };
        let real = found
            .as_deref()
            .filter(|p| p.is_absolute())
            .and_then(|p| Path::canonicalize(p).ok());
        match real {
            Some(real) if self.allowed.contains(&real) => Ok(real),
            _ => Err(format!(
                "analysis program {program:?} is not allowed on this host: an agent runs only the lttng-*-mi analyses and babeltrace2 it finds, and the absolute paths listed in analysis_programs of its configuration file"
            )),
        }
    }

    /// Checks every analysis command of a job and rewrites each to the absolute path it was
    /// checked as.
    pub fn apply(&self, commands: &mut [Vec<String>]) -> Result<(), String> {
        for argv in commands.iter_mut() {
            let Some(program) = argv.first_mut() else {
                return Err("an analysis command is empty".to_owned());
            };
            let real = self.resolve(program)?;
            *program = real.display().to_string();
        }
        Ok(())
    }

    /// How many programs are allowed.
    pub fn len(&self) -> usize {
        self.allowed.len()
    }

    /// Whether no program is allowed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn program(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn only_listed_programs_run_and_by_the_path_they_were_checked_as() {
        let dir = tempfile::tempdir().unwrap();
        let mine = program(dir.path(), "my-analysis");
        let link = dir.path().join("alias");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        let allow = Allowlist::only([mine.clone()]);
        let real = mine.canonicalize().unwrap();
        assert_eq!(allow.resolve(mine.to_str().unwrap()).unwrap(), real);
        assert_eq!(
            allow.resolve(link.to_str().unwrap()).unwrap(),
            real,
            "a link to an allowed program is that program"
        );
        for hostile in ["/bin/sh", "sh", "../../bin/sh", "relative/my-analysis", ""] {
            let why = allow.resolve(hostile).unwrap_err();
            assert!(why.contains("analysis_programs"), "{why}");
        }
        let mut commands = vec![
            vec![mine.display().to_string(), "{trace}".into()],
            vec!["/bin/sh".into(), "-c".into(), "touch /tmp/pwned".into()],
        ];
        assert!(allow
            .apply(&mut commands)
            .unwrap_err()
            .contains("\"/bin/sh\""));
        let mut commands = vec![vec![link.display().to_string(), "{trace}".into()]];
        allow.apply(&mut commands).unwrap();
        assert_eq!(commands[0][0], real.display().to_string());
    }

    #[test]
    fn the_builtin_analyses_are_found_in_the_command_path() {
        let allow = Allowlist::discover(&[]);
        for name in ["lttng-cputop-mi", "babeltrace2"] {
            if runner::find_in_path(name).is_some() {
                assert!(allow.resolve(name).is_ok(), "{name} is allowed");
            }
        }
        assert!(allow.resolve("sh").is_err());
        assert!(allow.resolve("/usr/bin/env").is_err());
        assert!(builtin_name("lttng-iousagetop-mi"));
        assert!(!builtin_name("lttng"), "the lttng CLI is not an analysis");
        assert!(!builtin_name("lttng-sessiond"));
    }
}
