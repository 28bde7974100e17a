//! Facts about the host the agent runs on: its name and its IP addresses, read from `/proc`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kernel's hostname (`/proc/sys/kernel/hostname`, else `/etc/hostname`), trimmed.
pub fn system_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
}

/// The host's IP addresses, without loopback and IPv6 link-local ones, IPv4 first, sorted.
///
/// IPv4 addresses are the `LOCAL` entries of `/proc/net/fib_trie`; IPv6 ones come from
/// `/proc/net/if_inet6`. A missing file gives no addresses of that family.
pub fn addresses() -> Vec<IpAddr> {
    let mut found = BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        found.extend(parse_fib_trie(&text).into_iter().map(IpAddr::V4));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        found.extend(parse_if_inet6(&text).into_iter().map(IpAddr::V6));
    }
    found.into_iter().collect()
}

/// The local unicast IPv4 addresses in `/proc/net/fib_trie`: a `|-- A.B.C.D` line followed by
/// a `/32 host LOCAL` line.
fn parse_fib_trie(text: &str) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last.take() {
                if !address.is_loopback() && !address.is_unspecified() {
                    found.insert(address);
                }
            }
        }
    }
    found
}

/// The global and unique-local IPv6 addresses in `/proc/net/if_inet6` (32 hex digits first).
fn parse_if_inet6(text: &str) -> BTreeSet<Ipv6Addr> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| {
            u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)
        })
        .map(Ipv6Addr::from)
        .filter(|address| {
            !address.is_loopback()
                && !address.is_unspecified()
                && (address.segments()[0] & 0xffc0) != 0xfe80
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 192.0.2.2
              /32 host LOCAL
";

    const IF_INET6: &str = "\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
";

    #[test]
    fn reads_local_ipv4_without_loopback() {
        let found: Vec<_> = parse_fib_trie(FIB_TRIE).into_iter().collect();
        assert_eq!(found, vec![Ipv4Addr::new(192, 0, 2, 2)]);
    }

    #[test]
    fn reads_ipv6_without_loopback_and_link_local() {
        let found: Vec<_> = parse_if_inet6(IF_INET6).into_iter().collect();
        assert_eq!(found, vec!["fd00::2".parse::<Ipv6Addr>().expect("valid")]);
    }

    #[test]
    fn this_host_has_a_name() {
        assert!(system_hostname().is_some());
    }
}
