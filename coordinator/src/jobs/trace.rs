//! A job's kept traces as one archive (`GET /jobs/{id}/trace`): where they are (the
//! `kept_trace` of its result, or of each fleet host's), fetched from the host that holds each
//! (through its agent, or over SSH), re-rooted and compressed while streaming.
//!
//! The first trace is opened before the response starts, so a trace that is gone answers 410,
//! an agent that is not connected 503. Once streaming, a failure cuts the response off (the
//! client sees an incomplete archive, never a short one that looks whole); a fleet host whose
//! trace cannot be fetched is listed in `TRACEVISOR-MISSING.txt` at the archive's root.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{sanitize, Engine};
use crate::archive::{self, Encoding, Piece, Rebase, TRAILER};
use crate::hub::{FetchFailure, TraceFetch};
use crate::model::{JobRecord, KeptTrace, Via};
use crate::ssh::{SshExecutor, SshTar, SshTarget};
use tracevisor_protocol::TRACE_CHUNK_BYTES;

/// Archives streamed at once by this coordinator; more are refused with 503.
pub const MAX_TRACE_DOWNLOADS: usize = 16;
/// How long a client may leave the archive unread before the download is dropped.
pub const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Idle bound of an SSH host's `tar` output.
const SSH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a job's trace cannot be fetched: the HTTP status to answer and why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub status: u16,
    pub message: String,
    /// Seconds to wait before trying again (503).
    pub retry_after: Option<u64>,
}

impl Unavailable {
    fn new(status: u16, message: impl Into<String>) -> Unavailable {
        Unavailable {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// One host's trace stream.
enum Source {
    Agent(TraceFetch),
    Ssh(Box<SshTar>),
}

impl Source {
    fn bytes(&self) -> u64 {
        match self {
            Source::Agent(f) => f.bytes,
            Source::Ssh(s) => s.bytes,
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self {
            Source::Agent(f) => f.next_chunk().await.map_err(|e| e.to_string()),
            Source::Ssh(s) => s.next_chunk(TRACE_CHUNK_BYTES, SSH_IDLE_TIMEOUT).await,
        }
    }
}

/// A trace archive being streamed: the response body's chunks, and the size of the traces'
/// files when known (single jobs).
pub struct TraceDownload {
    pub body: mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    pub bytes: Option<u64>,
    pub encoding: Encoding,
}

/// The archive folder of a trace: its directory's name, made safe.
fn folder_of(kept: &KeptTrace) -> String {
    let name = kept.path.rsplit('/').next().unwrap_or_default();
    match sanitize(name).as_str() {
        "" | "." | ".." => "trace".to_owned(),
        safe => safe.to_owned(),
    }
}

fn kept_of(result: Option<&serde_json::Value>) -> Option<KeptTrace> {
    serde_json::from_value(result?.get("kept_trace")?.clone()).ok()
}

/// The kept traces of a job, each with its folder in the archive, or why there is none.
pub fn kept_traces(record: &JobRecord) -> Result<Vec<(String, KeptTrace)>, Unavailable> {
    let id = record.id;
    if !record.status.is_ended() {
        return Err(Unavailable::new(
            409,
            format!(
                "job {id} is still running (status {}): its trace can be fetched once it ends",
                record.status
            ),
        ));
    }
    let ended = record.finished.as_deref().unwrap_or("an unknown time");
    if let Some(hosts) = &record.hosts {
        let traces: Vec<_> = hosts
            .iter()
            .filter_map(|entry| {
                let kept = kept_of(entry.result.as_ref())
                    .or_else(|| entry.error.as_ref()?.kept_trace.as_deref().cloned())?;
                Some((
                    format!("{}/{}", sanitize(&entry.host), folder_of(&kept)),
                    kept,
                ))
            })
            .collect();
        if traces.is_empty() {
            return Err(Unavailable::new(
                410,
                format!(
                    "fleet job {id} (ended {ended}) kept no trace on any of its {} hosts: traces are deleted once analysed unless the request says \"keep_trace\": true",
                    hosts.len()
                ),
            ));
        }
        return Ok(traces);
    }
    if let Some(kept) = kept_of(record.result.as_ref())
        .or_else(|| record.error.as_ref()?.kept_trace.as_deref().cloned())
    {
        return Ok(vec![(folder_of(&kept), kept)]);
    }
    let host = record
        .analysis
        .clone()
        .or_else(|| record.host.clone())
        .unwrap_or_default();
    let message = match (&record.error, &record.result) {
        (Some(error), _) => format!(
            "job {id} failed at step {} (ended {ended}): it has no kept trace",
            error.step
        ),
        (None, Some(result)) if result.get("trace_kept") == Some(&serde_json::Value::Bool(false)) => format!(
            "job {id} did not keep its trace: it was deleted on {host} once analysed (job ended {ended}); ask with \"keep_trace\": true to keep it"
        ),
        _ => format!("job {id} (ended {ended}) has no kept trace on record"),
    };
    Err(Unavailable::new(410, message))
}

/// The answer for a trace that could not be opened.
fn unavailable(record: &JobRecord, kept: &KeptTrace, failure: FetchFailure) -> Unavailable {
    let ended = record.finished.as_deref().unwrap_or("an unknown time");
    match failure {
        FetchFailure::Gone(why) => Unavailable::new(
            410,
            format!(
                "the trace of job {} is no longer on {} ({why}); kept traces are deleted on their host after its trace_retention_secs, or oldest first beyond its trace_quota_mib (the job ended {ended})",
                record.id, kept.host
            ),
        ),
        FetchFailure::NotConnected(_) => Unavailable {
            retry_after: Some(5),
            ..Unavailable::new(
                503,
                format!(
                    "the trace of job {} is on {}, whose agent is not connected; try again once it is",
                    record.id, kept.host
                ),
            )
        },
        FetchFailure::Busy(why) => Unavailable {
            retry_after: Some(5),
            ..Unavailable::new(503, why)
        },
        FetchFailure::Failed(why) => Unavailable::new(502, why),
    }
}

impl Engine {
    async fn open_trace(&self, kept: &KeptTrace) -> Result<Source, FetchFailure> {
        match (kept.via, &kept.agent, &kept.ssh) {
            (Via::Agent, Some(agent), _) => self
                .hub
                .fetch_trace(agent, &kept.path)
                .await
                .map(Source::Agent),
            (Via::Ssh, _, Some(ssh)) => {
                // A bare directory name is in the SSH user's trace root.
                let path = if kept.path.contains('/') {
                    kept.path.clone()
                } else {
                    format!(
                        "{}{}/{}",
                        crate::ssh::SSH_TRACE_ROOT_PREFIX,
                        ssh.user,
                        kept.path
                    )
                };
                let target = SshTarget {
                    display: kept.host.clone(),
                    address: ssh.address.clone(),
                    port: ssh.port,
                    user: ssh.user.clone(),
                };
                let exec = SshExecutor::connect(&target, &self.ssh)
                    .await
                    .map_err(|e| FetchFailure::Failed(e.to_string()))?;
                exec.stream_tar(&path)
                    .await
                    .map(|tar| Source::Ssh(Box::new(tar)))
                    .map_err(|(gone, why)| {
                        if gone {
                            FetchFailure::Gone(why)
                        } else {
                            FetchFailure::Failed(why)
                        }
                    })
            }
            _ => Err(FetchFailure::Failed(format!(
                "the record of the trace on {} does not say how to reach it",
                kept.host
            ))),
        }
    }

    /// Starts streaming a job's kept traces as one archive; fails (with the status to answer)
    /// when the job has none, or the first cannot be opened.
    pub async fn trace_download(
        self: &Arc<Self>,
        record: &JobRecord,
        encoding: Encoding,
    ) -> Result<TraceDownload, Unavailable> {
        let traces = kept_traces(record)?;
        let slot = self.downloads.clone().try_acquire_owned().map_err(|_| Unavailable {
            retry_after: Some(5),
            ..Unavailable::new(
                503,
                format!("{MAX_TRACE_DOWNLOADS} trace downloads are already running; try again later"),
            )
        })?;
        let fleet = record.hosts.is_some();
        let mut pending = traces.into_iter();
        let mut missing = Vec::new();
        let mut first = None;
        for (folder, kept) in pending.by_ref() {
            match self.open_trace(&kept).await {
                Ok(source) => {
                    first = Some((folder, source));
                    break;
                }
                Err(failure) => {
                    let answer = unavailable(record, &kept, failure);
                    if !fleet {
                        return Err(answer);
                    }
                    missing.push(format!("{}: {}", kept.host, answer.message));
                }
            }
        }
        let Some(first) = first else {
            return Err(Unavailable::new(
                502,
                format!(
                    "no trace of fleet job {} could be fetched: {}",
                    record.id,
                    missing.join("; ")
                ),
            ));
        };
        let bytes = (!fleet).then(|| first.1.bytes());
        let rest: Vec<_> = pending.collect();
        let (tar_tx, tar_rx) = mpsc::channel(4);
        let (body_tx, body) = mpsc::channel(4);
        let failed = tokio_util::sync::CancellationToken::new();
        let compressor = archive::compress(
            encoding,
            tar_rx,
            body_tx,
            failed.clone(),
            DOWNLOAD_STALL_TIMEOUT,
        );
        let engine = self.clone();
        let record_id = record.id;
        let shown = record.clone();
        self.spawn(async move {
            let written = engine
                .write_archive(&tar_tx, first, rest, &shown, missing)
                .await;
            if let Err(why) = written {
                tracing::warn!(job_id = record_id, %why, "trace download cut off");
                // Never waits: a stalled compressor learns of the failure from `failed`.
                failed.cancel();
                let _ = tar_tx.try_send(Piece::Fail(why));
            }
            drop(tar_tx);
            // Bounded: each of the compressor's sends gives up after the stall timeout.
            let _ = compressor.await;
            drop(slot);
        });
        Ok(TraceDownload {
            body,
            bytes,
            encoding,
        })
    }

    async fn write_archive(
        &self,
        out: &mpsc::Sender<Piece>,
        first: (String, Source),
        rest: Vec<(String, KeptTrace)>,
        record: &JobRecord,
        mut missing: Vec<String>,
    ) -> Result<(), String> {
        let send = |data: Vec<u8>| async move {
            tokio::select! {
                sent = tokio::time::timeout(DOWNLOAD_STALL_TIMEOUT, out.send(Piece::Data(data))) => match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("the client went away".to_owned()),
                    Err(_) => Err(format!("the client read nothing for {} s", DOWNLOAD_STALL_TIMEOUT.as_secs())),
                },
                _ = self.shutdown.cancelled() => Err("the coordinator is shutting down".to_owned()),
            }
        };
        let (folder, mut source) = first;
        let mut next = Some((folder, String::new()));
        let mut rest = rest.into_iter();
        while let Some((folder, host)) = next.take() {
            let mut buf = Vec::new();
            let mut rebase = Rebase::new(&folder, &mut buf);
            send(buf).await?;
            loop {
                let chunk = tokio::select! {
                    chunk = source.next_chunk() => chunk?,
                    _ = self.shutdown.cancelled() => return Err("the coordinator is shutting down".to_owned()),
                };
                let Some(chunk) = chunk else { break };
                let out = rebase
                    .push_owned(chunk)
                    .map_err(|e| format!("the trace from {}: {e}", source_host(&host, &folder)))?;
                send(out).await?;
            }
            rebase
                .finish()
                .map_err(|e| format!("the trace from {}: {e}", source_host(&host, &folder)))?;
            // The next trace that opens.
            for (folder, kept) in rest.by_ref() {
                match self.open_trace(&kept).await {
                    Ok(opened) => {
                        source = opened;
                        next = Some((folder, kept.host.clone()));
                        break;
                    }
                    Err(failure) => {
                        let answer = unavailable(record, &kept, failure);
                        missing.push(format!("{}: {}", kept.host, answer.message));
                    }
                }
            }
        }
        let mut tail = Vec::new();
        if !missing.is_empty() {
            let text = format!(
                "Traces of job {} that are not in this archive:\n{}\n",
                record.id,
                missing.join("\n")
            );
            archive::note_entry(&mut tail, "TRACEVISOR-MISSING.txt", text.as_bytes());
        }
        tail.extend_from_slice(&TRAILER);
        send(tail).await
    }
}

fn source_host(host: &str, folder: &str) -> String {
    if host.is_empty() {
        folder.to_owned()
    } else {
        host.to_owned()
    }
}
