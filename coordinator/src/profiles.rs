//! Analysis profiles: which events a trace type enables and which commands analyse the trace.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate;

/// Placeholder replaced by the trace directory in analysis command templates.
pub const TRACE_PLACEHOLDER: &str = "{trace}";
/// Placeholders a command template may contain, each replaced by one whole argv item.
pub const PLACEHOLDERS: [&str; 3] = ["{trace}", "{mongohost}", "{mongoport}"];

/// How the result of a trace is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Summary {
    /// Run the profile's commands; each prints LAMI 1.0 JSON, stored as the result.
    Lami,
    /// Summarise the userspace trace with babeltrace2: events per name and per process.
    Ust,
}

/// One analysis type as `GET /analyses` shows it and as the job engine runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    /// Name of the analysis (the `type` of a trace request).
    pub analysis: String,
    /// One line for humans.
    pub description: String,
    /// Kernel tracepoints enabled with `lttng enable-event -k`.
    pub kernel_events: Vec<String>,
    /// Whether all system calls are traced (`lttng enable-event -k --syscall -a`).
    pub syscalls: bool,
    /// Userspace tracepoint patterns enabled with `lttng enable-event -u`.
    pub userspace_events: Vec<String>,
    /// Analysis commands, one argv each; `{trace}`, `{mongohost}`, `{mongoport}` are replaced.
    pub commands: Vec<Vec<String>>,
    /// How the result is produced.
    pub summary: Summary,
}

impl Profile {
    /// Whether the profile needs the kernel tracer on the traced host.
    pub fn needs_kernel(&self) -> bool {
        self.syscalls || !self.kernel_events.is_empty()
    }

    /// Checks a profile from the configuration file; `key` names it in errors.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        validate::identifier(&self.analysis).map_err(|e| format!("{key}: analysis name {e}"))?;
        for event in self.kernel_events.iter().chain(&self.userspace_events) {
            event_name(event).map_err(|e| format!("{key}: event {event:?} {e}"))?;
        }
        if !self.needs_kernel() && self.userspace_events.is_empty() {
            return Err(format!(
                "{key}: enables no events (set kernel_events, syscalls or userspace_events)"
            ));
        }
        if self.summary == Summary::Lami && self.commands.is_empty() {
            return Err(format!("{key}: a lami profile needs at least one command"));
        }
        for argv in &self.commands {
            let Some(program) = argv.first() else {
                return Err(format!("{key}: a command is empty"));
            };
            if program.starts_with('{') {
                return Err(format!(
                    "{key}: a command must start with a program name, not {program:?}"
                ));
            }
            for arg in argv {
                if arg.contains('{') && !PLACEHOLDERS.contains(&arg.as_str()) {
                    return Err(format!(
                        "{key}: argument {arg:?} has an unknown placeholder (known: {})",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                if arg.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "{key}: argument {arg:?} contains a control character"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks an LTTng event name or pattern: letters, digits, `_`, `:`, `*`, `.`.
fn event_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if value.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*' | '.')))
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn lami(
    name: &str,
    description: &str,
    events: &[&str],
    syscalls: bool,
    commands: &[&str],
) -> Profile {
    Profile {
        analysis: name.to_owned(),
        description: description.to_owned(),
        kernel_events: strings(events),
        syscalls,
        userspace_events: Vec::new(),
        commands: commands
            .iter()
            .map(|c| vec![(*c).to_owned(), TRACE_PLACEHOLDER.to_owned()])
            .collect(),
        summary: Summary::Lami,
    }
}

/// Events every kernel analysis needs to name processes (state dump and process life cycle).
const PROCESS_EVENTS: [&str; 4] = [
    "sched_switch",
    "sched_process_fork",
    "sched_process_exec",
    "lttng_statedump_process_state",
];

/// The built-in profiles: `cpu`, `io` (the original's event lists), `irq`, `mem`, `sched`, `ust`.
pub fn builtin() -> BTreeMap<String, Profile> {
    let with_process = |extra: &[&'static str]| -> Vec<&'static str> {
        PROCESS_EVENTS
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let profiles = [
        lami(
            "cpu",
            "CPU usage per process and per CPU (lttng-cputop)",
            &with_process(&["sched_migrate_task", "sched_process_free"]),
            false,
            &["lttng-cputop-mi"],
        ),
        lami(
            "io",
            "I/O usage and latency per process, file and disk (lttng-iousagetop, lttng-iolatencystats)",
            &with_process(&[
                "block_rq_complete",
                "block_rq_issue",
                "block_bio_remap",
                "block_bio_backmerge",
                "netif_receive_skb",
                "net_dev_xmit",
                "lttng_statedump_file_descriptor",
                "lttng_statedump_block_device",
            ]),
            true,
            &["lttng-iousagetop-mi", "lttng-iolatencystats-mi"],
        ),
        lami(
            "irq",
            "hard and soft interrupt statistics (lttng-irqstats)",
            &[
                "irq_handler_entry",
                "irq_handler_exit",
                "softirq_entry",
                "softirq_exit",
                "softirq_raise",
            ],
            false,
            &["lttng-irqstats-mi"],
        ),
        lami(
            "mem",
            "page allocations and frees per process (lttng-memtop)",
            &with_process(&["mm_page_alloc", "mm_page_free", "kmem_mm_page_alloc", "kmem_mm_page_free"]),
            false,
            &["lttng-memtop-mi"],
        ),
        lami(
            "sched",
            "scheduling latency statistics (lttng-schedstats)",
            &with_process(&["sched_wakeup", "sched_wakeup_new", "sched_waking"]),
            false,
            &["lttng-schedstats-mi"],
        ),
        Profile {
            analysis: "ust".to_owned(),
            description: "all userspace events, summarised per event name and per process".to_owned(),
            kernel_events: Vec::new(),
            syscalls: false,
            userspace_events: strings(&["*"]),
            commands: Vec::new(),
            summary: Summary::Ust,
        },
    ];
    profiles
        .into_iter()
        .map(|p| (p.analysis.clone(), p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid() {
        let all = builtin();
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["cpu", "io", "irq", "mem", "sched", "ust"]
        );
        for (name, p) in &all {
            p.validate(name).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(all["io"].needs_kernel() && !all["ust"].needs_kernel());
    }

    #[test]
    fn rejects_bad_commands() {
        let mut p = builtin()["cpu"].clone();
        p.commands = vec![vec!["script".into(), "--x={trace}".into()]];
        assert!(p
            .validate("analyses.cpu")
            .unwrap_err()
            .contains("unknown placeholder"));
        p.commands = vec![vec!["{trace}".into()]];
        assert!(p.validate("analyses.cpu").is_err());
        p.commands = vec![vec![
            "script".into(),
            "{mongohost}".into(),
            "{trace}".into(),
        ]];
        assert!(p.validate("analyses.cpu").is_ok());
        p.kernel_events = vec!["a;b".into()];
        assert!(p.validate("analyses.cpu").unwrap_err().contains("event"));
    }
}
