//! Sending a kept trace to the coordinator (`FetchTrace`), within the credit it grants.
//!
//! The agent runs as root, so a fetch is confined like an analysis-only job: the path must be
//! a Tracevisor trace directory (its name starts with `tracevisor-`) strictly under the trace
//! root or a `relay_roots` directory, checked once resolved ([`TraceRoots::check_path`]), and
//! the archive holds only its regular files and directories (symbolic links and anything else
//! are left out, so nothing outside the directory is ever read).
//!
//! Each fetch is a task: a blocking thread walks the directory and writes the tar stream into
//! a channel of two chunks; the task sends each chunk once it holds enough credit (a
//! semaphore the coordinator's `TraceCredit`s fill). So the agent holds at most about three
//! chunks per fetch, and at most [`MAX_FETCHES`] fetches run on a link.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracevisor_protocol::{FetchError, Message, TRACE_CHUNK_BYTES};

use crate::roots::TraceRoots;

/// Fetches running at once on one link; more are refused (the coordinator retries later).
pub const MAX_FETCHES: usize = 4;
/// Credit an agent accepts for one fetch; a coordinator granting more is not trusted with it.
const MAX_CREDIT: usize = 64 * 1024 * 1024;
/// Frames of all fetches waiting for the link.
const OUTGOING: usize = 8;
/// How long a fetch waits for credit before it gives up.
const CREDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What the tar thread hands to the fetch task.
enum Piece {
    Start { bytes: u64, files: u32 },
    Data(Vec<u8>),
}

struct Active {
    credit: Arc<Semaphore>,
    cancel: CancellationToken,
}

/// The fetches of one link. Dropping it cancels them; [`Fetches::close`] also waits for them.
pub struct Fetches {
    roots: TraceRoots,
    active: HashMap<u64, Active>,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    tasks: TaskTracker,
}

impl Fetches {
    /// No fetch yet; traces are read only where `roots` allow.
    pub fn new(roots: TraceRoots) -> Self {
        let (tx, rx) = mpsc::channel(OUTGOING);
        Fetches {
            roots,
            active: HashMap::new(),
            tx,
            rx,
            tasks: TaskTracker::new(),
        }
    }

    /// The next frame to send for a fetch. A `TraceEnd` also ends the fetch here.
    pub async fn next(&mut self) -> Option<Message> {
        let message = self.rx.recv().await?;
        if let Message::TraceEnd { fetch_id, .. } = &message {
            self.active.remove(fetch_id);
        }
        Some(message)
    }

    /// Handles `FetchTrace`, `TraceCredit` and `CancelFetch`; returns a frame to send at once
    /// (a refusal).
    pub fn handle(&mut self, message: Message) -> Option<Message> {
        match message {
            Message::FetchTrace {
                fetch_id,
                path,
                window,
            } => self.start(fetch_id, path, window),
            Message::TraceCredit { fetch_id, bytes } => {
                if let Some(active) = self.active.get(&fetch_id) {
                    let bytes = bytes as usize;
                    if active.credit.available_permits().saturating_add(bytes) <= MAX_CREDIT {
                        active.credit.add_permits(bytes);
                    } else {
                        tracing::warn!(
                            fetch_id,
                            bytes,
                            "ignoring credit beyond {MAX_CREDIT} bytes"
                        );
                    }
                }
                None
            }
            Message::CancelFetch { fetch_id } => {
                if let Some(active) = self.active.remove(&fetch_id) {
                    tracing::info!(fetch_id, "trace fetch cancelled by the coordinator");
                    active.cancel.cancel();
                }
                None
            }
            _ => None,
        }
    }

    fn start(&mut self, fetch_id: u64, path: String, window: u32) -> Option<Message> {
        let refuse = |gone: bool, message: String| {
            tracing::warn!(fetch_id, %path, %message, "refusing a trace fetch");
            Some(Message::TraceEnd {
                fetch_id,
                error: Some(FetchError { gone, message }),
            })
        };
        if self.active.contains_key(&fetch_id) {
            return refuse(false, format!("fetch {fetch_id} is already running"));
        }
        if self.active.len() >= MAX_FETCHES {
            return refuse(
                false,
                format!(
                    "this agent already sends {MAX_FETCHES} traces; try again once one is done"
                ),
            );
        }
        if (window as usize) < TRACE_CHUNK_BYTES {
            return refuse(
                false,
                format!(
                    "a fetch window of {window} bytes is under one chunk ({TRACE_CHUNK_BYTES})"
                ),
            );
        }
        let dir = match self.check(&path) {
            Ok(dir) => dir,
            Err((gone, why)) => return refuse(gone, why),
        };
        let credit = Arc::new(Semaphore::new((window as usize).min(MAX_CREDIT)));
        let cancel = CancellationToken::new();
        self.active.insert(
            fetch_id,
            Active {
                credit: credit.clone(),
                cancel: cancel.clone(),
            },
        );
        tracing::info!(fetch_id, trace = %dir.display(), "sending a trace");
        let out = self.tx.clone();
        self.tasks
            .spawn(send_trace(fetch_id, dir, credit, cancel, out));
        None
    }

    /// The trace directory `path` names (a bare directory name is in the trace root), or why
    /// it cannot be sent (and whether it is gone).
    fn check(&self, path: &str) -> Result<PathBuf, (bool, String)> {
        let joined;
        let path = if path.contains('/') {
            path
        } else {
            joined = self.roots.trace_root().join(path).display().to_string();
            joined.as_str()
        };
        let named = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(tracevisor_lttng::lifecycle::SESSION_PREFIX));
        if !named {
            return Err((
                false,
                format!("{path} is not a Tracevisor trace directory (tracevisor-*)"),
            ));
        }
        match self.roots.check_path(path) {
            Ok(real) => Ok(PathBuf::from(real)),
            Err(why) => Err((self.roots.missing_under_roots(path), why)),
        }
    }

    /// Cancels every fetch and waits for their tasks.
    pub async fn close(&mut self) {
        for (_, active) in self.active.drain() {
            active.cancel.cancel();
        }
        self.tasks.close();
        // The tasks may be waiting to hand a frame over: let them see it will not be taken.
        self.rx.close();
        self.tasks.wait().await;
    }
}

impl Drop for Fetches {
    fn drop(&mut self) {
        for active in self.active.values() {
            active.cancel.cancel();
        }
    }
}

/// Sends the tar stream of `dir`, chunk by chunk as credit allows, then `TraceEnd`.
async fn send_trace(
    fetch_id: u64,
    dir: PathBuf,
    credit: Arc<Semaphore>,
    cancel: CancellationToken,
    out: mpsc::Sender<Message>,
) {
    let (tx, mut rx) = mpsc::channel::<Piece>(2);
    let shown = dir.display().to_string();
    let producer = tokio::task::spawn_blocking(move || write_archive(&dir, tx));
    let mut sent = 0u64;
    loop {
        let piece = tokio::select! {
            _ = cancel.cancelled() => return,
            piece = rx.recv() => piece,
        };
        let message = match piece {
            None => break,
            Some(Piece::Start { bytes, files }) => Message::TraceStart {
                fetch_id,
                bytes,
                files,
            },
            Some(Piece::Data(data)) => {
                let needed = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    _ = cancel.cancelled() => return,
                    permit = tokio::time::timeout(CREDIT_TIMEOUT, credit.acquire_many(needed)) => permit,
                };
                match permit {
                    Ok(Ok(permit)) => permit.forget(),
                    Ok(Err(_)) => return,
                    // The coordinator stopped reading (or its cancel was lost): give the slot
                    // back.
                    Err(_) => {
                        let error = Some(FetchError {
                            gone: false,
                            message: format!(
                                "no credit from the coordinator for {} s",
                                CREDIT_TIMEOUT.as_secs()
                            ),
                        });
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = out.send(Message::TraceEnd { fetch_id, error }) => {}
                        }
                        return;
                    }
                }
                sent += data.len() as u64;
                Message::TraceChunk { fetch_id, data }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = out.send(message) => if sent.is_err() { return },
        }
    }
    drop(rx);
    let error = match producer.await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(FetchError {
            gone: error.kind() == std::io::ErrorKind::NotFound,
            message: format!("reading the trace {shown}: {error}"),
        }),
        Err(error) => Some(FetchError {
            gone: false,
            message: format!("reading the trace {shown}: {error}"),
        }),
    };
    match &error {
        None => tracing::info!(fetch_id, trace = %shown, bytes = sent, "trace sent"),
        Some(e) => tracing::warn!(fetch_id, trace = %shown, why = %e.message, "trace fetch failed"),
    }
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = out.send(Message::TraceEnd { fetch_id, error }) => {}
    }
}

/// The regular files and directories under `dir` (relative paths, sorted, directories before
/// what they hold); symbolic links and special files are left out.
fn walk(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool, u64)>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir.join(&relative))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let kind = entry.file_type()?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path.clone());
                found.push((path, true, 0));
            } else if kind.is_file() {
                found.push((path, false, entry.metadata()?.len()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Writes the tar stream of `dir` into `tx` in chunks of [`TRACE_CHUNK_BYTES`], after a
/// [`Piece::Start`] with its size. Runs on a blocking thread; ends early when `tx` closes.
fn write_archive(dir: &Path, tx: mpsc::Sender<Piece>) -> std::io::Result<()> {
    let entries = walk(dir)?;
    let bytes = entries.iter().map(|(_, _, size)| size).sum();
    let files = entries.iter().filter(|(_, is_dir, _)| !is_dir).count();
    tx.blocking_send(Piece::Start {
        bytes,
        files: u32::try_from(files).unwrap_or(u32::MAX),
    })
    .map_err(|_| closed())?;
    let mut builder = tar::Builder::new(ChunkWriter {
        tx,
        buf: Vec::with_capacity(TRACE_CHUNK_BYTES),
    });
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    for (relative, is_dir, _) in &entries {
        let full = dir.join(relative);
        if *is_dir {
            builder.append_dir(relative, &full)?;
        } else {
            let file = std::fs::File::open(&full)?;
            let metadata = file.metadata()?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
            // Read in chunk-sized blocks: `io::copy` reads through a `BufReader`'s own buffer
            // (not 8 KiB at a time), and each block goes to the chunk writer in one write.
            // Exactly the size the header says: a file that changes while it is read fails the
            // fetch instead of corrupting the stream.
            let reader = std::io::BufReader::with_capacity(
                TRACE_CHUNK_BYTES,
                Exact {
                    inner: file,
                    left: metadata.len(),
                    path: full.clone(),
                },
            );
            builder.append_data(&mut header, relative, reader)?;
        }
    }
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    Ok(())
}

/// Reads exactly `left` bytes of `inner`: no more (a file that grew), and an error when it ends
/// before (a file that shrank).
struct Exact<R> {
    inner: R,
    left: u64,
    path: PathBuf,
}

impl<R: std::io::Read> std::io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the fetch was cancelled")
}

/// Cuts what is written into chunks for the fetch task.
struct ChunkWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(TRACE_CHUNK_BYTES));
        self.tx
            .blocking_send(Piece::Data(full))
            .map_err(|_| closed())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = TRACE_CHUNK_BYTES - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == TRACE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> TraceRoots {
        TraceRoots::new(dir.to_path_buf(), Vec::new())
    }

    async fn fetch(fetches: &mut Fetches, path: &str, window: u32) -> (Vec<Message>, Vec<u8>) {
        let mut messages = Vec::new();
        let mut archive = Vec::new();
        if let Some(refused) = fetches.handle(Message::FetchTrace {
            fetch_id: 1,
            path: path.into(),
            window,
        }) {
            return (vec![refused], archive);
        }
        loop {
            let message = tokio::time::timeout(std::time::Duration::from_secs(10), fetches.next())
                .await
                .expect("a frame")
                .expect("open");
            match &message {
                Message::TraceChunk { data, .. } => {
                    archive.extend_from_slice(data);
                    // The reader passes the bytes on: credit them.
                    let bytes = data.len() as u32;
                    fetches.handle(Message::TraceCredit { fetch_id: 1, bytes });
                }
                Message::TraceEnd { .. } => {
                    messages.push(message);
                    return (messages, archive);
                }
                _ => {}
            }
            messages.push(message);
        }
    }

    #[tokio::test]
    async fn a_trace_is_sent_as_tar_within_the_window_and_symlinks_are_left_out() {
        let root = tempfile::tempdir().unwrap();
        let trace = root.path().join("tracevisor-x-1-host");
        std::fs::create_dir_all(trace.join("ust/uid/0/64-bit")).unwrap();
        let big: Vec<u8> = (0..3 * TRACE_CHUNK_BYTES + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(trace.join("ust/uid/0/64-bit/channel0_0"), &big).unwrap();
        std::fs::write(trace.join("ust/uid/0/64-bit/metadata"), b"/* CTF 1.8 */").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", trace.join("passwd")).unwrap();
        let mut fetches = Fetches::new(roots(root.path()));
        let (messages, archive) = fetch(
            &mut fetches,
            trace.to_str().unwrap(),
            TRACE_CHUNK_BYTES as u32,
        )
        .await;
        assert!(
            matches!(messages[0], Message::TraceStart { bytes, files: 2, .. } if bytes == big.len() as u64 + 13),
            "{:?}",
            messages[0]
        );
        assert!(matches!(
            messages.last(),
            Some(Message::TraceEnd { error: None, .. })
        ));
        let mut names = Vec::new();
        let mut read = tar::Archive::new(archive.as_slice());
        for entry in read.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            if name.ends_with("channel0_0") {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                assert_eq!(data, big);
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "ust",
                "ust/uid",
                "ust/uid/0",
                "ust/uid/0/64-bit",
                "ust/uid/0/64-bit/channel0_0",
                "ust/uid/0/64-bit/metadata"
            ]
        );
        assert!(fetches.active.is_empty());
    }

    #[tokio::test]
    async fn a_bare_directory_name_is_looked_up_in_the_trace_root_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tracevisor-x-5-host/ust")).unwrap();
        std::fs::write(root.path().join("tracevisor-x-5-host/ust/metadata"), b"m").unwrap();
        let mut fetches = Fetches::new(roots(root.path()));
        let (messages, archive) = fetch(&mut fetches, "tracevisor-x-5-host", 1 << 20).await;
        assert!(
            matches!(messages.last(), Some(Message::TraceEnd { error: None, .. })),
            "{messages:?}"
        );
        assert!(!archive.is_empty());
        for name in ["..", "tracevisor-x-6-host", "secrets"] {
            let (messages, _) = fetch(&mut fetches, name, 1 << 20).await;
            assert!(
                matches!(&messages[..], [Message::TraceEnd { error: Some(_), .. }]),
                "{name}: {messages:?}"
            );
        }
    }

    #[tokio::test]
    async fn without_credit_the_agent_stops_after_the_window() {
        let root = tempfile::tempdir().unwrap();
        let trace = root.path().join("tracevisor-x-2-host");
        std::fs::create_dir_all(&trace).unwrap();
        std::fs::write(trace.join("data"), vec![7u8; 8 * TRACE_CHUNK_BYTES]).unwrap();
        let mut fetches = Fetches::new(roots(root.path()));
        assert!(fetches
            .handle(Message::FetchTrace {
                fetch_id: 9,
                path: trace.display().to_string(),
                window: 2 * TRACE_CHUNK_BYTES as u32,
            })
            .is_none());
        let mut bytes = 0;
        while let Ok(Some(message)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), fetches.next()).await
        {
            if let Message::TraceChunk { data, .. } = message {
                bytes += data.len();
            }
        }
        assert_eq!(
            bytes,
            2 * TRACE_CHUNK_BYTES,
            "no more than the window without credit"
        );
        fetches.handle(Message::CancelFetch { fetch_id: 9 });
        fetches.close().await;
    }

    #[tokio::test]
    async fn only_tracevisor_trace_directories_under_the_roots_are_sent() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("tracevisor-x-3-host");
        std::fs::create_dir_all(&outside).unwrap();
        let not_a_trace = root.path().join("secrets");
        std::fs::create_dir_all(&not_a_trace).unwrap();
        let mut fetches = Fetches::new(roots(root.path()));
        for (path, gone, says) in [
            ("/etc".to_owned(), false, "not a Tracevisor trace directory"),
            (
                not_a_trace.display().to_string(),
                false,
                "not a Tracevisor trace directory",
            ),
            (
                outside.display().to_string(),
                false,
                "outside this agent's trace root",
            ),
            (
                root.path()
                    .join("tracevisor-x-4-host")
                    .display()
                    .to_string(),
                true,
                "does not exist",
            ),
            (
                format!(
                    "{}/../{}",
                    root.path().display(),
                    outside.strip_prefix("/").unwrap().display()
                ),
                false,
                "outside",
            ),
        ] {
            let (messages, archive) = fetch(&mut fetches, &path, 1 << 20).await;
            match &messages[..] {
                [Message::TraceEnd {
                    error: Some(error), ..
                }] => {
                    assert_eq!(error.gone, gone, "{path}: {error:?}");
                    assert!(error.message.contains(says), "{path}: {error:?}");
                }
                other => panic!("{path}: {other:?}"),
            }
            assert!(archive.is_empty());
        }
    }
}
