//! Trace archives as `GET /jobs/{id}/trace` serves them: the tar streams of one or more hosts'
//! trace directories, each checked and re-rooted under a folder ([`Rebase`]), joined into one
//! archive and compressed on a blocking thread ([`Encoding`], [`compress`]).
//!
//! A host's tar stream is not trusted: only regular files and directories with relative names
//! (no `..`, no absolute path) pass, under fresh headers this coordinator writes (owner 0,
//! the entry's mode bits and modification time); links, devices and anything else are left
//! out. So an archive unpacked by any tool stays inside its folder.

use tokio::sync::mpsc;

/// The archive's encoding, from the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-tar`: no compression.
    Tar,
    /// `application/gzip` (the default): `.tar.gz`, what Trace Compass imports.
    Gzip,
    /// `application/zstd`: `.tar.zst`.
    Zstd,
}

impl Encoding {
    /// The encoding an `Accept` header asks for (gzip unless it names zstd or plain tar).
    pub fn from_accept(accept: &str) -> Encoding {
        let accept = accept.to_ascii_lowercase();
        if accept.contains("application/zstd") {
            Encoding::Zstd
        } else if accept.contains("application/x-tar") && !accept.contains("gzip") {
            Encoding::Tar
        } else {
            Encoding::Gzip
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Tar => "application/x-tar",
            Encoding::Gzip => "application/gzip",
            Encoding::Zstd => "application/zstd",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Tar => "tar",
            Encoding::Gzip => "tar.gz",
            Encoding::Zstd => "tar.zst",
        }
    }
}

const BLOCK: usize = 512;
/// Largest entry accepted from a host (1 TiB).
const MAX_ENTRY_BYTES: u64 = 1 << 40;
/// Longest entry name accepted from a host.
const MAX_NAME: usize = 4096;

/// Where a [`Rebase`] is in its input.
enum State {
    /// Reading a header (the bytes so far).
    Header(Vec<u8>),
    /// Passing on (or skipping) `left` bytes of an entry's data and padding.
    Data { left: u64, keep: bool },
    /// Collecting a GNU long name of `size` bytes (`left` of the padded data to go).
    LongName {
        size: usize,
        left: u64,
        name: Vec<u8>,
    },
    /// After the end-of-archive block: the rest is ignored.
    End,
}

/// Re-roots one host's tar stream under `prefix/`, checking every entry (see the module docs).
pub struct Rebase {
    prefix: String,
    state: State,
    long_name: Option<Vec<u8>>,
    /// Entries written.
    pub entries: u64,
    /// Entries left out (links, devices, the root itself).
    pub skipped: u64,
}

impl Rebase {
    /// A rebase under `prefix` (a relative path of safe components). Writes the prefix's own
    /// directory entries first.
    pub fn new(prefix: &str, out: &mut Vec<u8>) -> Rebase {
        let prefix = prefix.trim_matches('/').to_owned();
        let mut at = String::new();
        for part in prefix.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            write_entry(
                out,
                &format!("{at}/"),
                tar::EntryType::Directory,
                0,
                0o755,
                now(),
            );
        }
        Rebase {
            prefix,
            state: State::Header(Vec::with_capacity(BLOCK)),
            long_name: None,
            entries: 0,
            skipped: 0,
        }
    }

    /// Takes the next bytes of the host's stream; writes what passes to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Data { left, keep } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    if *keep {
                        out.extend_from_slice(&input[..n]);
                    }
                    *left -= n as u64;
                    input = &input[n..];
                    if *left == 0 {
                        self.state = State::Header(Vec::with_capacity(BLOCK));
                    }
                }
                State::LongName { size, left, name } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let wanted = size.saturating_sub(name.len()).min(n);
                    name.extend_from_slice(&input[..wanted]);
                    *left -= n as u64;
                    input = &input[n..];
                    if *left == 0 {
                        let mut name = std::mem::take(name);
                        while name.last() == Some(&0) {
                            name.pop();
                        }
                        self.long_name = Some(name);
                        self.state = State::Header(Vec::with_capacity(BLOCK));
                    }
                }
                State::Header(block) => {
                    let n = (BLOCK - block.len()).min(input.len());
                    block.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if block.len() == BLOCK {
                        let block = std::mem::take(block);
                        self.state = self.header(&block, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Like [`Rebase::push`] for an owned chunk: a chunk that lies wholly inside a kept entry's
    /// data (most of a large trace) is passed on as it is, without a copy.
    pub fn push_owned(&mut self, input: Vec<u8>) -> Result<Vec<u8>, String> {
        if let State::Data { left, keep: true } = &mut self.state {
            if input.len() as u64 <= *left {
                *left -= input.len() as u64;
                if *left == 0 {
                    self.state = State::Header(Vec::with_capacity(BLOCK));
                }
                return Ok(input);
            }
        }
        let mut out = Vec::with_capacity(input.len() + 2 * BLOCK);
        self.push(&input, &mut out)?;
        Ok(out)
    }

    /// Checks that the stream ended between entries.
    pub fn finish(&self) -> Result<(), String> {
        match &self.state {
            State::End => Ok(()),
            State::Header(block) if block.is_empty() && self.long_name.is_none() => Ok(()),
            _ => Err("the trace archive ended in the middle of an entry".into()),
        }
    }

    fn header(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<State, String> {
        if block.iter().all(|b| *b == 0) {
            return Ok(State::End);
        }
        let header = tar::Header::from_byte_slice(block);
        let stored = header
            .cksum()
            .map_err(|e| format!("a tar header has no valid checksum: {e}"))?;
        let computed: u32 = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        if stored != computed {
            return Err("a tar header's checksum does not match".into());
        }
        let size = header
            .entry_size()
            .map_err(|e| format!("a tar header has no valid size: {e}"))?;
        // A hostile size near u64::MAX must not wrap: the entry would swallow what follows.
        let padded = size
            .checked_next_multiple_of(BLOCK as u64)
            .filter(|p| *p <= MAX_ENTRY_BYTES)
            .ok_or_else(|| format!("a tar entry of {size} bytes (at most {MAX_ENTRY_BYTES})"))?;
        let kind = header.entry_type();
        if kind.is_gnu_longname() {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > MAX_NAME {
                return Err(format!(
                    "a tar entry name of {size} bytes (at most {MAX_NAME})"
                ));
            }
            return Ok(State::LongName {
                size,
                left: padded,
                name: Vec::with_capacity(size),
            });
        }
        let name = match self.long_name.take() {
            Some(name) => name,
            None => header.path_bytes().into_owned(),
        };
        let keep = kind.is_file() || kind.is_dir();
        if !keep {
            self.skipped += 1;
            return Ok(skip(padded));
        }
        let Some(relative) = relative_name(&name)? else {
            // The directory itself (".").
            self.skipped += 1;
            return Ok(skip(padded));
        };
        let mode = header.mode().unwrap_or(0o644) & 0o755;
        let mtime = header.mtime().unwrap_or(0);
        self.entries += 1;
        if kind.is_dir() {
            let path = format!("{}/{relative}/", self.prefix);
            write_entry(
                out,
                &path,
                tar::EntryType::Directory,
                0,
                mode | 0o700,
                mtime,
            );
            // A directory's data, if any, is not passed on.
            return Ok(skip(padded));
        }
        let path = format!("{}/{relative}", self.prefix);
        write_entry(
            out,
            &path,
            tar::EntryType::Regular,
            size,
            mode | 0o600,
            mtime,
        );
        Ok(if padded == 0 {
            State::Header(Vec::with_capacity(BLOCK))
        } else {
            State::Data {
                left: padded,
                keep: true,
            }
        })
    }
}

fn skip(padded: u64) -> State {
    if padded == 0 {
        State::Header(Vec::with_capacity(BLOCK))
    } else {
        State::Data {
            left: padded,
            keep: false,
        }
    }
}

/// The entry's path relative to the trace directory, `None` for the directory itself; an
/// absolute path, a `..` component or a name that is not UTF-8 is refused.
fn relative_name(name: &[u8]) -> Result<Option<String>, String> {
    let name =
        std::str::from_utf8(name).map_err(|_| "a tar entry name that is not UTF-8".to_owned())?;
    if name.starts_with('/') || name.contains('\0') || name.chars().any(char::is_control) {
        return Err(format!(
            "the tar entry {name:?} has an absolute or invalid name"
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("the tar entry {name:?} leaves its directory")),
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes one entry's header (a GNU long name entry first when the path is over 100 bytes).
fn write_entry(
    out: &mut Vec<u8>,
    path: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    mtime: u64,
) {
    let bytes = path.as_bytes();
    let mut header = tar::Header::new_gnu();
    if bytes.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(bytes.len() as u64 + 1);
        long.set_mode(0o644);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        let start = out.len();
        out.extend_from_slice(bytes);
        out.push(0);
        let padded = (out.len() - start).div_ceil(BLOCK) * BLOCK;
        out.resize(start + padded, 0);
    }
    let shown = &bytes[..bytes.len().min(100)];
    header.as_old_mut().name[..shown.len()].copy_from_slice(shown);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
}

/// A regular file of `data` at `path` (a note in the archive), padded.
pub fn note_entry(out: &mut Vec<u8>, path: &str, data: &[u8]) {
    write_entry(
        out,
        path,
        tar::EntryType::Regular,
        data.len() as u64,
        0o644,
        now(),
    );
    out.extend_from_slice(data);
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, 0);
}

/// The end of a tar archive: two zero blocks.
pub const TRAILER: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// What the archive's writer hands to the compressor.
pub enum Piece {
    Data(Vec<u8>),
    /// The archive cannot be completed: the response is cut off, never ended cleanly.
    Fail(String),
}

/// Compresses the tar bytes it receives with `encoding` on a blocking thread, passing the
/// output on to `out` (the response body) as it comes; ends when `input` closes or `out` is
/// dropped. Both channels are bounded, so a slow client slows the archive's sources.
pub fn compress(
    encoding: Encoding,
    mut input: mpsc::Receiver<Piece>,
    out: mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    failed: tokio_util::sync::CancellationToken,
    stall: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Each send towards the client is bounded: a client that reads nothing for `stall`
        // ends the download (the body is then dropped unfinished).
        let send = |piece: Result<Vec<u8>, std::io::Error>| -> bool {
            runtime.block_on(async {
                matches!(
                    tokio::time::timeout(stall, out.send(piece)).await,
                    Ok(Ok(()))
                )
            })
        };
        use std::io::Write as _;
        enum Encoder {
            Tar,
            Gzip(flate2::write::GzEncoder<Vec<u8>>),
            Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
        }
        let mut encoder = match encoding {
            Encoding::Tar => Encoder::Tar,
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
            Encoding::Zstd => match zstd::stream::write::Encoder::new(Vec::new(), 3) {
                Ok(e) => Encoder::Zstd(Box::new(e)),
                Err(e) => {
                    let _ = send(Err(e));
                    return;
                }
            },
        };
        let fail = |why: String| std::io::Error::other(why);
        while let Some(piece) = input.blocking_recv() {
            let data = match piece {
                Piece::Fail(why) => {
                    let _ = send(Err(fail(why)));
                    return;
                }
                Piece::Data(data) => data,
            };
            let compressed = match &mut encoder {
                Encoder::Tar => Ok(data),
                Encoder::Gzip(e) => e.write_all(&data).map(|()| std::mem::take(e.get_mut())),
                Encoder::Zstd(e) => e.write_all(&data).map(|()| std::mem::take(e.get_mut())),
            };
            match compressed {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => {
                    if !send(Ok(bytes)) {
                        return;
                    }
                }
                Err(e) => {
                    let _ = send(Err(e));
                    return;
                }
            }
        }
        // The writer failed without getting its failure through (its queue was full): the
        // archive must not end as if it were whole.
        if failed.is_cancelled() {
            let _ = send(Err(fail("the archive could not be completed".into())));
            return;
        }
        let last = match encoder {
            Encoder::Tar => Ok(Vec::new()),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        };
        match last {
            Ok(bytes) if bytes.is_empty() => {}
            other => {
                let _ = send(other);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// A host's archive as the agent writes it, with what a hostile host might add.
    fn host_archive(extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_size(0);
        b.append_data(&mut dir, "./ust", std::io::empty()).unwrap();
        let data = vec![5u8; 1000];
        let mut file = tar::Header::new_gnu();
        file.set_size(data.len() as u64);
        file.set_mode(0o600);
        b.append_data(&mut file, "ust/metadata", data.as_slice())
            .unwrap();
        let long = format!("ust/{}/channel0_0", "d".repeat(150));
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        b.append_data(&mut file, &long, b"abc".as_slice()).unwrap();
        extra(&mut b);
        b.into_inner().unwrap()
    }

    fn rebase_all(input: &[u8], prefix: &str, piece: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut rebase = Rebase::new(prefix, &mut out);
        // Both ways in turn: borrowed, and owned (passed on whole when it is all data).
        for (i, chunk) in input.chunks(piece).enumerate() {
            if i % 2 == 0 {
                rebase.push(chunk, &mut out)?;
            } else {
                out.extend(rebase.push_owned(chunk.to_vec())?);
            }
        }
        rebase.finish()?;
        out.extend_from_slice(&TRAILER);
        Ok(out)
    }

    fn listing(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn a_host_archive_is_rerooted_whatever_the_chunking() {
        let input = host_archive(|_| {});
        let whole = rebase_all(&input, "web-1/tracevisor-a-1-web-1", input.len()).unwrap();
        for piece in [1, 7, 511, 512, 513, 4096] {
            assert_eq!(
                rebase_all(&input, "web-1/tracevisor-a-1-web-1", piece).unwrap(),
                whole
            );
        }
        let entries = listing(&whole);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let long = format!(
            "web-1/tracevisor-a-1-web-1/ust/{}/channel0_0",
            "d".repeat(150)
        );
        assert_eq!(
            names,
            [
                "web-1/",
                "web-1/tracevisor-a-1-web-1/",
                "web-1/tracevisor-a-1-web-1/ust/",
                "web-1/tracevisor-a-1-web-1/ust/metadata",
                long.as_str()
            ]
        );
        assert_eq!(entries[3].1, vec![5u8; 1000]);
        assert_eq!(entries[4].1, b"abc");
    }

    #[test]
    fn links_and_devices_are_left_out_and_escaping_names_refused() {
        let input = host_archive(|b| {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            b.append_link(&mut link, "ust/passwd", "/etc/passwd")
                .unwrap();
        });
        let out = rebase_all(&input, "t", 100).unwrap();
        assert!(listing(&out).iter().all(|(n, _)| !n.contains("passwd")));

        for evil in ["../../etc/cron.d/x", "/etc/passwd", "ust/../../x"] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_entry_type(tar::EntryType::Regular);
            // Written raw: the tar crate refuses such names itself.
            h.as_old_mut().name[..evil.len()].copy_from_slice(evil.as_bytes());
            h.set_cksum();
            b.append(&h, b"x".as_slice()).unwrap();
            let input = b.into_inner().unwrap();
            let error = rebase_all(&input, "t", 512).unwrap_err();
            assert!(error.contains(evil), "{evil}: {error}");
        }
    }

    #[test]
    fn a_truncated_or_corrupt_archive_is_an_error() {
        let input = host_archive(|_| {});
        assert!(rebase_all(&input[..700], "t", 512).is_err());
        let mut corrupt = input.clone();
        corrupt[10] ^= 0xff;
        assert!(rebase_all(&corrupt, "t", 512)
            .unwrap_err()
            .contains("checksum"));
    }

    #[tokio::test]
    async fn compression_round_trips() {
        let input = rebase_all(&host_archive(|_| {}), "t", 512).unwrap();
        for encoding in [Encoding::Tar, Encoding::Gzip, Encoding::Zstd] {
            let (tx, rx) = mpsc::channel(2);
            let (out_tx, mut out) = mpsc::channel(2);
            let task = compress(
                encoding,
                rx,
                out_tx,
                tokio_util::sync::CancellationToken::new(),
                std::time::Duration::from_secs(10),
            );
            let feed = input.clone();
            tokio::spawn(async move {
                for chunk in feed.chunks(300) {
                    tx.send(Piece::Data(chunk.to_vec())).await.unwrap();
                }
            });
            let mut bytes = Vec::new();
            while let Some(piece) = out.recv().await {
                bytes.extend(piece.unwrap());
            }
            task.await.unwrap();
            let plain = match encoding {
                Encoding::Tar => bytes,
                Encoding::Gzip => {
                    let mut d = Vec::new();
                    flate2::read::GzDecoder::new(bytes.as_slice())
                        .read_to_end(&mut d)
                        .unwrap();
                    d
                }
                Encoding::Zstd => zstd::decode_all(bytes.as_slice()).unwrap(),
            };
            assert_eq!(plain, input, "{encoding:?}");
        }
    }

    #[test]
    fn accept_picks_the_encoding() {
        assert_eq!(Encoding::from_accept("*/*"), Encoding::Gzip);
        assert_eq!(Encoding::from_accept("application/zstd"), Encoding::Zstd);
        assert_eq!(Encoding::from_accept("application/x-tar"), Encoding::Tar);
        assert_eq!(
            Encoding::from_accept("application/gzip, application/x-tar;q=0.5"),
            Encoding::Gzip
        );
    }
}
