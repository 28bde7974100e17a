//! What `/proc` says about a process: resident memory, open file descriptors, mappings. Used by
//! the benchmarks and by the tests that check memory bounds.

use anyhow::{Context, Result};

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Number of open file descriptors of a process.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// An anonymous mapping (no file, no name such as `[heap]` or `[stack]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonMapping {
    pub size_kib: u64,
    pub rss_kib: u64,
}

/// The anonymous mappings of a process, from `/proc/PID/smaps`.
pub fn anon_mappings(pid: u32) -> Result<Vec<AnonMapping>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out = Vec::new();
    let (mut anonymous, mut size_kib) = (false, 0u64);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            // "start-end perms offset dev inode [path]": the header of a mapping.
            [range, _perms, _offset, _dev, inode, rest @ ..] if range.contains('-') => {
                anonymous = *inode == "0" && rest.is_empty();
            }
            ["Size:", kib, "kB"] => size_kib = kib.parse().unwrap_or(0),
            ["Rss:", kib, "kB"] if anonymous => out.push(AnonMapping {
                size_kib,
                rss_kib: kib.parse().unwrap_or(0),
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// Resident KiB of the coordinator's storage memtable arena: the anonymous mapping of exactly
/// `memtable_mib` (one `calloc` of that size, plus the allocator's header page). Its pages
/// become resident as writes land and are returned when a full memtable is flushed and freed.
pub fn memtable_rss_kib(pid: u32, memtable_mib: u64) -> Result<u64> {
    let arena_kib = memtable_mib * 1024 + 4;
    Ok(anon_mappings(pid)?
        .iter()
        .filter(|m| m.size_kib == arena_kib)
        .map(|m| m.rss_kib)
        .sum())
}

/// CPU time (user + system) a process used so far, in clock ticks (see [`clock_ticks_per_second`]).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); field 3 (the state) is the first after the name.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
