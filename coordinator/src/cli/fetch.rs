//! `tracevisor fetch JOB`: downloads a job's kept trace (`GET /jobs/{id}/trace`) and unpacks
//! it (or keeps the archive with `--archive`), with a progress bar on a terminal.
//!
//! Unpacking runs on a blocking thread fed through a bounded channel, so memory stays flat
//! whatever the trace's size; it refuses entries that would land outside the output directory
//! and never overwrites an existing file.

use std::io::{IsTerminal as _, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::mpsc;

use super::{sanitize, CliError, Client, Connection, Settings, TopConnection, EXIT_OK};

/// Longest wait for the next bytes of the download.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(180);

pub const FETCH_HELP: &str = "\
Examples:
  tracevisor trace web1 --type ust --duration 5 --keep     # prints the job id
  tracevisor fetch 42                                      # unpacks ./tracevisor-...
  tracevisor fetch 42 -o traces/ --archive --zstd          # keeps traces/job-42-trace.tar.zst

The trace is a CTF directory: open it with `babeltrace2 DIR` or import it in Trace Compass.
A fleet job's traces come in one archive, a folder per host. A trace that was not kept, or that
its host deleted since (retention, quota), is refused with the reason (410, exit code 4).";

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The job id
    pub job: u64,
    /// Directory to unpack into (or to write the archive in with --archive); made if missing
    #[arg(short = 'o', long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Keep the archive as downloaded (job-ID-trace.tar.gz) instead of unpacking it
    #[arg(long)]
    pub archive: bool,
    /// Ask for a zstd archive (.tar.zst) instead of gzip
    #[arg(long)]
    pub zstd: bool,
    #[command(flatten)]
    pub conn: Connection,
}

/// Where the archive's bytes go, on a blocking thread.
enum Sink {
    /// Written as is to this file.
    File(PathBuf),
    /// Decompressed and unpacked into this directory.
    Unpack { dir: PathBuf, zstd: bool },
}

pub async fn run(top: &TopConnection, args: FetchArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", args.output.display())))?;
    let accept = if args.zstd {
        "application/zstd"
    } else {
        "application/gzip"
    };
    let mut resp = client
        .download(&format!("/jobs/{}/trace", args.job), accept)
        .await?;
    let zstd = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/zstd"));
    let total = resp
        .headers()
        .get("x-trace-bytes")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let sink = if args.archive {
        let ext = if zstd { "tar.zst" } else { "tar.gz" };
        let file = args.output.join(format!("job-{}-trace.{ext}", args.job));
        if file.exists() {
            return Err(CliError::other(format!(
                "{} already exists; remove it or choose another --output",
                file.display()
            )));
        }
        Sink::File(file)
    } else {
        Sink::Unpack {
            dir: args.output.clone(),
            zstd,
        }
    };
    let counted = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let worker = {
        let counted = counted.clone();
        tokio::task::spawn_blocking(move || write_out(sink, rx, &counted))
    };
    let mut bar = Bar::new(args.job, total);
    let mut downloaded = 0u64;
    let started = Instant::now();
    let failure = loop {
        let chunk = match tokio::time::timeout(READ_IDLE_TIMEOUT, resp.chunk()).await {
            Err(_) => {
                break Some(format!(
                    "the download stalled: nothing for {} s",
                    READ_IDLE_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(e)) => {
                break Some(format!(
                    "the download was cut off ({e}); the server's log says why"
                ))
            }
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(chunk))) => chunk,
        };
        downloaded += chunk.len() as u64;
        if tx.send(chunk.to_vec()).await.is_err() {
            // The writer stopped: its error is reported below.
            break None;
        }
        bar.draw(counted.load(Ordering::Relaxed), downloaded);
    };
    drop(tx);
    let written = worker
        .await
        .map_err(|e| CliError::other(format!("the unpacking thread failed: {e}")))?;
    bar.clear();
    if let Some(why) = failure {
        return Err(CliError::other(why));
    }
    let placed = written.map_err(CliError::other)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "job {}: {} downloaded in {secs:.1} s",
        args.job,
        human(downloaded)
    );
    for path in placed {
        println!("{}", sanitize::line(&path.display().to_string()));
    }
    Ok(EXIT_OK)
}

/// Writes or unpacks what arrives on `rx`; returns the file written, or the top-level
/// entries unpacked.
fn write_out(
    sink: Sink,
    rx: mpsc::Receiver<Vec<u8>>,
    counted: &AtomicU64,
) -> Result<Vec<PathBuf>, String> {
    let reader = ChannelReader {
        rx,
        buf: Vec::new(),
        at: 0,
    };
    match sink {
        Sink::File(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut reader = Counted {
                inner: reader,
                counted,
            };
            std::io::copy(&mut reader, &mut file)
                .and_then(|_| file.flush())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(vec![path])
        }
        Sink::Unpack { dir, zstd } => {
            let decoded: Box<dyn Read> = if zstd {
                Box::new(
                    zstd::stream::read::Decoder::new(reader)
                        .map_err(|e| format!("cannot read the zstd archive: {e}"))?,
                )
            } else {
                Box::new(flate2::read::GzDecoder::new(reader))
            };
            unpack(
                Counted {
                    inner: decoded,
                    counted,
                },
                &dir,
            )
        }
    }
}

/// Unpacks a tar stream into `dir`: entries outside it are refused, existing files are not
/// overwritten. Returns the top-level entries.
fn unpack(reader: impl Read, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(false);
    archive.set_preserve_permissions(false);
    let mut top = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("cannot read the archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot read the archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("an archive entry has a bad name: {e}"))?
            .into_owned();
        if let Some(first) = path.components().next() {
            let first = dir.join(first.as_os_str());
            if !top.contains(&first) {
                top.push(first);
            }
        }
        let unpacked = entry
            .unpack_in(dir)
            .map_err(|e| format!("cannot unpack {}: {e}", path.display()))?;
        if !unpacked {
            return Err(format!(
                "refusing the archive entry {}: it would land outside {}",
                path.display(),
                dir.display()
            ));
        }
    }
    Ok(top)
}

/// Reads the chunks of a channel as one stream (on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Counts the bytes read through it (the archive's uncompressed size, for the progress bar).
struct Counted<'a, R> {
    inner: R,
    counted: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.counted.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The progress bar on stderr (a terminal only).
struct Bar {
    job: u64,
    total: Option<u64>,
    tty: bool,
    last: Option<Instant>,
}

impl Bar {
    fn new(job: u64, total: Option<u64>) -> Bar {
        Bar {
            job,
            total,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn draw(&mut self, unpacked: u64, downloaded: u64) {
        if !self.tty
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let line = match self.total.filter(|t| *t > 0) {
            Some(total) => {
                let share = (unpacked as f64 / total as f64).min(1.0);
                let filled = (share * 30.0) as usize;
                format!(
                    "job {}: [{}{}] {:>3.0}% {} of {} ({} downloaded)",
                    self.job,
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    share * 100.0,
                    human(unpacked),
                    human(total),
                    human(downloaded)
                )
            }
            None => format!("job {}: {} downloaded", self.job, human(downloaded)),
        };
        eprint!("\r\x1b[2K{line}");
    }

    fn clear(&mut self) {
        if self.tty && self.last.is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_refuses_entries_outside_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "t/a", b"hi".as_slice()).unwrap();
        let good = b.into_inner().unwrap();
        let top = unpack(good.as_slice(), dir.path()).unwrap();
        assert_eq!(top, [dir.path().join("t")]);
        assert_eq!(std::fs::read(dir.path().join("t/a")).unwrap(), b"hi");
        assert!(
            unpack(good.as_slice(), dir.path()).is_err(),
            "an existing file is kept"
        );

        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, b"x".as_slice()).unwrap();
        let evil = b.into_inner().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        assert!(unpack(evil.as_slice(), &inner).is_err());
        assert!(!dir.path().join("escape").exists());
    }
}
