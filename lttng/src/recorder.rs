//! Flight recorders on a host: snapshot-mode sessions kept armed, reconciled with the set a
//! coordinator wants ([`arm_recorders`]), the same code for any [`Executor`].
//!
//! A recorder session records into per-CPU ring buffers that overwrite their oldest data; a
//! snapshot job (`JobSpec::snapshot_of`, see the lifecycle) copies them out. Arming an already
//! armed session keeps it as it is, buffers included, so an agent that restarts loses nothing.

use tracevisor_protocol::{RecorderSpec, RecorderState, RECORDER_PREFIX};

use crate::lifecycle::{
    argv, destroy_session, list_sessions, lttng_step, lttng_version, trace_format_args, Executor,
    StepError, LTTNG_TIMEOUT,
};

/// Smallest ring buffer of a recorder channel, per CPU.
pub const MIN_BUFFER_BYTES: u64 = 64 * 1024;
/// Largest ring buffer of a recorder channel, per CPU.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;
/// Most recorders one coordinator keeps on a host.
pub const MAX_RECORDERS_PER_HOST: usize = 8;
/// Sub-buffers of each recorder channel.
const SUBBUFFERS: u64 = 4;
/// The channel of a recorder session (one per domain).
const CHANNEL: &str = "tvrec";

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why `owner` (a coordinator's recorder prefix) or `spec` cannot be armed, if so.
pub fn validate_recorder(owner: &str, host: &str, spec: &RecorderSpec) -> Result<(), String> {
    if !is_recorder_of(&spec.session_name, owner, host) || !name_ok(&spec.session_name) {
        return Err(format!(
            "invalid recorder session name {:?}",
            spec.session_name
        ));
    }
    for event in spec.kernel_events.iter().chain(&spec.userspace_events) {
        if event.is_empty()
            || event.starts_with('-')
            || !event
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*' | '.'))
        {
            return Err(format!("invalid event name {event:?}"));
        }
    }
    if spec.kernel_events.is_empty() && !spec.syscalls && spec.userspace_events.is_empty() {
        return Err("a recorder needs events to record".into());
    }
    if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&spec.buffer_bytes) {
        return Err(format!(
            "a buffer of {} bytes is outside {MIN_BUFFER_BYTES}..={MAX_BUFFER_BYTES}",
            spec.buffer_bytes
        ));
    }
    Ok(())
}

/// Whether `session` is `owner` + a recorder id + `-` + exactly `host` (a host named `x-web-1`
/// is not `web-1`).
fn is_recorder_of(session: &str, owner: &str, host: &str) -> bool {
    session
        .strip_prefix(owner)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(id, rest)| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && rest == host
        })
}

fn owner_ok(owner: &str) -> bool {
    owner.len() > RECORDER_PREFIX.len() + 1
        && owner.starts_with(RECORDER_PREFIX)
        && owner.ends_with('-')
        && name_ok(owner)
}

/// Makes the recorder sessions of `owner` for this host exactly `recorders`: those missing are
/// created and started, those armed are left as they are (started again if stopped), and any
/// other session of `owner` for this host (its name ends with `-<hostname>`; agents of several
/// names may share one session daemon) is destroyed. Returns each recorder's state.
pub async fn arm_recorders(
    exec: &impl Executor,
    owner: &str,
    recorders: &[RecorderSpec],
) -> Vec<RecorderState> {
    let state = |spec: &RecorderSpec, error: Option<String>| RecorderState {
        session_name: spec.session_name.clone(),
        error,
    };
    if !owner_ok(owner) {
        let why = format!("invalid recorder owner {owner:?}");
        return recorders
            .iter()
            .map(|r| state(r, Some(why.clone())))
            .collect();
    }
    if recorders.len() > MAX_RECORDERS_PER_HOST {
        let why = format!("at most {MAX_RECORDERS_PER_HOST} recorders per host");
        return recorders
            .iter()
            .map(|r| state(r, Some(why.clone())))
            .collect();
    }
    let existing = match list_sessions(exec).await {
        Ok(sessions) => sessions,
        Err(e) => {
            let why = e.to_string();
            return recorders
                .iter()
                .map(|r| state(r, Some(why.clone())))
                .collect();
        }
    };
    for stale in existing.iter().filter(|s| {
        is_recorder_of(s, owner, exec.host()) && !recorders.iter().any(|r| &r.session_name == *s)
    }) {
        match destroy_session(exec, stale).await {
            Ok(_) => tracing::info!(session = %stale, "flight recorder disarmed"),
            Err(error) => {
                tracing::warn!(session = %stale, %error, "could not disarm a flight recorder")
            }
        }
    }
    let mut states = Vec::with_capacity(recorders.len());
    for spec in recorders {
        let armed = match validate_recorder(owner, exec.host(), spec) {
            Err(why) => Err(why),
            Ok(()) if existing.contains(&spec.session_name) => {
                keep_armed(exec, spec).await.map_err(|e| e.to_string())
            }
            Ok(()) => create(exec, spec).await.map_err(|e| e.to_string()),
        };
        match &armed {
            Ok(()) => tracing::info!(session = %spec.session_name, "flight recorder armed"),
            Err(why) => {
                tracing::warn!(session = %spec.session_name, %why, "flight recorder not armed")
            }
        }
        states.push(state(spec, armed.err()));
    }
    states
}

/// An existing recorder session: started again if it was stopped.
async fn keep_armed(exec: &impl Executor, spec: &RecorderSpec) -> Result<(), StepError> {
    let name = spec.session_name.as_str();
    let listed = lttng_step(exec, "arm", &["list", name]).await?;
    if listed.stdout_lossy().contains("[inactive") {
        lttng_step(exec, "arm", &["start", name]).await?;
    }
    Ok(())
}

/// Creates, configures and starts a recorder session; destroys it again if a step fails.
async fn create(exec: &impl Executor, spec: &RecorderSpec) -> Result<(), StepError> {
    let name = spec.session_name.as_str();
    let version = exec
        .run(argv(&["lttng", "--version"]), LTTNG_TIMEOUT)
        .await
        .ok()
        .and_then(|out| lttng_version(&out.stdout_lossy()));
    let mut create = vec!["create", name, "--snapshot", "--no-output"];
    create.extend(trace_format_args(version));
    lttng_step(exec, "arm", &create).await?;
    let configured = configure(exec, spec).await;
    if configured.is_err() {
        let _ = lttng_step(exec, "arm", &["destroy", name]).await;
    }
    configured
}

async fn configure(exec: &impl Executor, spec: &RecorderSpec) -> Result<(), StepError> {
    let name = spec.session_name.as_str();
    let subbuf = (spec.buffer_bytes / SUBBUFFERS)
        .next_power_of_two()
        .max(4096)
        .to_string();
    let num = SUBBUFFERS.to_string();
    let channel = |domain: &'static str| {
        [
            "enable-channel",
            domain,
            "-s",
            name,
            "--subbuf-size",
            subbuf.as_str(),
            "--num-subbuf",
            num.as_str(),
            CHANNEL,
        ]
    };
    if !spec.kernel_events.is_empty() || spec.syscalls {
        lttng_step(exec, "arm", &channel("-k")).await?;
        if !spec.kernel_events.is_empty() {
            let events = spec.kernel_events.join(",");
            lttng_step(
                exec,
                "arm",
                &["enable-event", "-s", name, "-k", "-c", CHANNEL, &events],
            )
            .await?;
        }
        if spec.syscalls {
            lttng_step(
                exec,
                "arm",
                &[
                    "enable-event",
                    "-s",
                    name,
                    "-k",
                    "-c",
                    CHANNEL,
                    "--syscall",
                    "-a",
                ],
            )
            .await?;
        }
    }
    if !spec.userspace_events.is_empty() {
        let events = spec.userspace_events.join(",");
        lttng_step(exec, "arm", &channel("-u")).await?;
        lttng_step(
            exec,
            "arm",
            &["enable-event", "-s", name, "-u", "-c", CHANNEL, &events],
        )
        .await?;
        lttng_step(
            exec,
            "arm",
            &[
                "add-context",
                "-s",
                name,
                "-u",
                "-c",
                CHANNEL,
                "-t",
                "vpid",
                "-t",
                "procname",
            ],
        )
        .await?;
    }
    lttng_step(exec, "arm", &["start", name]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_session_belongs_to_exactly_one_host() {
        let owner = "tracevisor-rec-c0ffee00-";
        assert!(is_recorder_of(
            "tracevisor-rec-c0ffee00-42-web-1",
            owner,
            "web-1"
        ));
        assert!(!is_recorder_of(
            "tracevisor-rec-c0ffee00-42-x-web-1",
            owner,
            "web-1"
        ));
        assert!(!is_recorder_of(
            "tracevisor-rec-c0ffee00-42-web-1",
            owner,
            "eb-1"
        ));
        assert!(!is_recorder_of(
            "tracevisor-rec-c0ffee00-x-web-1",
            owner,
            "web-1"
        ));
        assert!(!is_recorder_of(
            "tracevisor-rec-deadbeef-42-web-1",
            owner,
            "web-1"
        ));
        assert!(!is_recorder_of(
            "tracevisor-c0ffee00-42-web-1",
            owner,
            "web-1"
        ));
    }
}
